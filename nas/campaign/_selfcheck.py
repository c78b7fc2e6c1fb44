"""Self-check: does the stage-1 ranking agree with training on this space?

A few random candidates are trained from scratch with the ground-truth budget
and their trained validation loss is compared, by Kendall's tau, with their
rank score: the ranker's score (``rank_by="ranker"``: predicted short-training
loss with the log-FLOPs prior, :meth:`nas.ghn.GHNRanker.score`)
or the validation loss of their GHN-predicted weights (``rank_by="loss"``).
A low tau means the stage-1 ranking is not to be trusted on this space and
dataset. The candidates are drawn with a seed of their own
(:func:`self_check_candidates`), so a campaign can keep them out of the
ranker's training labels.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from tqdm.auto import tqdm

from nas.space import SearchSpace
from nas.training import TrainConfig, train_graph

__all__ = ["RELIABLE_TAU", "SelfCheck", "run_self_check", "self_check_candidates"]

logger = logging.getLogger(__name__)

#: Kendall tau below which the stage-1 ranking is reported as unreliable.
RELIABLE_TAU = 0.3

_COLUMNS = (
    "key", "num_params", "rank_by", "rank_score", "ghn_loss", "ghn_acc", "val_loss", "val_acc", "test_loss",
    "test_acc", "failed", "choices",
)

#: Offset of the self-check's sampling seed from the campaign seed.
_SEED_OFFSET = 7919


@dataclass
class SelfCheck:
    """Outcome of :func:`run_self_check`.

    Attributes:
        table: One row per candidate: ``key``, ``num_params``, ``rank_by``,
            ``rank_score`` (the stage-1 score), ``ghn_loss``, ``ghn_acc``
            (``nan`` unless ``rank_by`` is ``"loss"``), ``val_loss``,
            ``val_acc``, ``test_loss``, ``test_acc`` (after training from
            scratch), ``failed``, ``choices`` (JSON).
        tau: Kendall's tau between ``rank_score`` and ``val_loss`` (``nan`` with
            fewer than 3 usable candidates or a constant side).
        tau_low: Lower end of its bootstrap 95% interval (``nan`` when unknown).
        tau_high: Upper end of that interval.
        n: Candidates used (trained without divergence).
        epochs: Training budget of each candidate.
        reliable: ``tau >= threshold``.
        message: One line saying what the check found.
    """

    table: pd.DataFrame
    tau: float
    tau_low: float
    tau_high: float
    n: int
    epochs: float
    reliable: bool
    message: str


def _kendall(score: pd.Series, val_loss: pd.Series) -> tuple[float, float, float]:
    """Kendall's tau of two losses with a bootstrap interval (``nas.evaluation``), else scipy's."""
    try:
        from nas.evaluation.metrics import kendall
    except ImportError:
        from scipy.stats import kendalltau

        return float(kendalltau(score, val_loss).statistic), math.nan, math.nan
    # kendall() takes "higher is better" on both sides; negating both leaves tau unchanged.
    est = kendall(-score.to_numpy(float), -val_loss.to_numpy(float))
    return float(est.value), float(est.lo), float(est.hi)


def _train_all(
    graphs: list[Any], data: Any, config: TrainConfig, *, cache: Path | None, progress: bool
) -> dict[str, dict[str, Any]]:
    """Train each graph from scratch once; results by key (cached when ``cache`` is set)."""
    try:
        from nas.evaluation.ground_truth import GroundTruthCache
    except ImportError:
        GroundTruthCache = None  # noqa: N806
    if GroundTruthCache is not None and cache is not None:
        table = GroundTruthCache(cache).train_missing(graphs, data, config, seeds=[config.seed], progress=progress)
        return {row["key"]: row for row in table.to_dict("records")}
    out: dict[str, dict[str, Any]] = {}
    for graph in tqdm(graphs, desc="self-check (train)", unit="cand", disable=not progress):
        if graph.key in out:
            continue
        out[graph.key] = train_graph(graph, data, config).to_dict()
    return out


def self_check_candidates(space: SearchSpace, n: int, *, seed: int = 0) -> list[Any]:
    """The ``n`` random candidates :func:`run_self_check` trains for campaign seed ``seed``."""
    return space.sample_many(n, seed=seed + _SEED_OFFSET)


def run_self_check(
    space: SearchSpace,
    ghn: Any,
    data: Any,
    *,
    n: int,
    epochs: float,
    seed: int = 0,
    device: str = "cpu",
    cache: str | Path | None = None,
    threshold: float = RELIABLE_TAU,
    progress: bool = True,
    ranker: Any = None,
    rank_by: str | None = None,
) -> SelfCheck:
    """Train ``n`` random candidates and compare their loss with their rank score.

    Args:
        space: The search space.
        ghn: A GHN with ``evaluate(graphs, data, split=, device=)`` (unused with a ``ranker``).
        data: The dataset.
        n: Number of random candidates (distinct keys).
        epochs: Training budget of each (from scratch, default initialisation).
        seed: Seed of the candidate draw and of training.
        device: Device for scoring and training.
        cache: Ground-truth cache file (:class:`nas.evaluation.GroundTruthCache`);
            candidates trained before with the same budget are not trained again.
        threshold: Kendall tau below which the ranking is called unreliable.
        progress: Show a tqdm bar.
        ranker: What scored the candidates in stage 1, with ``score(graphs)``: a
            :class:`nas.ghn.GHNRanker` (``rank_by="ranker"``) or a
            :class:`~nas.campaign.ShortTrainingScore` (``rank_by="short"``);
            ``None`` scores by the predicted-weight validation loss (``rank_by="loss"``).
        rank_by: What ``ranker`` is (``"ranker"`` or ``"short"``; ``None``: ``"ranker"``
            with a ranker, else ``"loss"``), for the message.

    Returns:
        The table and the rank correlation.

    Raises:
        ValueError: ``n`` below 3 or ``epochs`` not positive.
    """
    if not isinstance(n, int) or isinstance(n, bool) or n < 3:
        raise ValueError(f"`self_check` needs at least 3 candidates to rank, but got {n!r}.")
    if not (isinstance(epochs, (int, float)) and epochs > 0):
        raise ValueError(f"`self_check_epochs` must be positive, but got {epochs!r}.")
    cands = self_check_candidates(space, n, seed=seed)
    graphs = [c.graph for c in cands]
    if ranker is not None:
        rank_by = rank_by or "ranker"
        scores = [{"rank_score": float(v)} for v in ranker.score(graphs)]
    else:
        rank_by = "loss"
        scores = [
            {"rank_score": float(r["loss"]), "ghn_loss": float(r["loss"]), "ghn_acc": float(r["acc"])}
            for r in ghn.evaluate(graphs, data, split="val", device=device)
        ]
    config = TrainConfig(epochs=epochs, seed=seed, device=device)
    trained = _train_all(graphs, data, config, cache=Path(cache) if cache is not None else None, progress=progress)
    rows = []
    for cand, score in zip(cands, scores):
        res = trained[cand.graph.key]
        rows.append({
            "key": cand.graph.key,
            "num_params": cand.graph.num_params(),
            "rank_by": rank_by,
            "ghn_loss": math.nan,
            "ghn_acc": math.nan,
            **score,
            **{k: float(res[k]) for k in ("val_loss", "val_acc", "test_loss", "test_acc")},
            "failed": bool(res["failed"]),
            "choices": json.dumps(cand.params, sort_keys=True),
        })
    table = pd.DataFrame(rows, columns=list(_COLUMNS))
    ok = table[~table["failed"] & table["val_loss"].map(math.isfinite) & table["rank_score"].map(math.isfinite)]
    tau, lo, hi = _kendall(ok["rank_score"], ok["val_loss"]) if len(ok) >= 3 else (math.nan, math.nan, math.nan)
    reliable = bool(math.isfinite(tau) and tau >= threshold)
    interval = f" (95% CI {lo:.2f} to {hi:.2f})" if math.isfinite(lo) and math.isfinite(hi) else ""
    score_name = {
        "ranker": "the ranker's score (predicted short-training loss)",
        "short": "the candidates' own short-training loss",
    }.get(rank_by, "the predicted-weight loss")
    if reliable:
        message = (
            f"self-check: Kendall tau {tau:.2f}{interval} between {score_name} and the loss after "
            f"{epochs:g} epochs of training, over {len(ok)} random candidates."
        )
    else:
        remedy = {
            "ranker": "or label more architectures for the ranker (--ranker-labels)",
            "short": "or train each candidate for more steps (--ranker-k)",
        }.get(rank_by, "or meta-train the GHN longer (nas train-ghn)")
        message = (
            f"the stage-1 ranking (rank_by={rank_by}) is unreliable on this space: Kendall tau {tau:.2f}{interval} "
            f"between {score_name} and the loss after {epochs:g} epochs of training over {len(ok)} random "
            f"candidates is below {threshold:g}; trust the fine-tuned results rather than the stage-1 order, "
            f"{remedy}."
        )
        logger.warning("%s", message)
    return SelfCheck(
        table=table,
        tau=tau,
        tau_low=lo,
        tau_high=hi,
        n=len(ok),
        epochs=float(epochs),
        reliable=reliable,
        message=message,
    )
