"""How well does each scorer rank candidates? The correlation pipeline.

:func:`correlate` samples candidates from a search space, trains each from
scratch (several seeds, cached: :class:`~nas.evaluation.ground_truth.GroundTruthCache`),
scores them with every scorer (the GHN and the baselines), and compares each
ranking with the trained one: Kendall's tau, Spearman's rho and top-10%
precision, with bootstrap confidence intervals, next to the noise ceiling (the
agreement between training seeds) and the cost of each method.
:func:`write_results` writes the tables and figures.

The ground truth of a candidate is its validation loss after training, averaged
over the training seeds (lower is better); a candidate whose training failed
under any seed is left out of the correlations.

Examples:
    >>> result = correlate(space, data, archs=50, epochs=3, cache_path="gt.sqlite",
    ...                    scorers=["params", "synflow"])  # doctest: +SKIP
    >>> result.summary[["kendall", "kendall_lo", "kendall_hi"]]  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from nas._atomic import atomic_write
from nas.data import Dataset
from nas.evaluation import metrics
from nas.evaluation.ground_truth import GroundTruthCache
from nas.evaluation.scorers import Scorer, build_scorers
from nas.evaluation.table import TableGroundTruth
from nas.graph import ArchGraph
from nas.training import TrainConfig

if TYPE_CHECKING:
    from nas.space import Candidate, SearchSpace

__all__ = [
    "CorrelationResult",
    "DEFAULT_METHODS",
    "GHN_METHODS",
    "REPORTED_METHODS",
    "correlate",
    "sample_candidates",
    "summarize",
    "write_results",
]

logger = logging.getLogger(__name__)

#: Scorers that need a trained GHN.
GHN_METHODS: tuple[str, ...] = ("ghn", "ghn_plain")

#: Methods ``correlate`` runs when ``scorers`` is not given (GHN ones only with a GHN).
DEFAULT_METHODS: tuple[str, ...] = (
    "ghn",
    "ghn_plain",
    "params",
    "flops",
    "synflow",
    "snip",
    "grad_norm",
    "jacob_cov",
    "naswot",
    "short_training",
    "short_training_tse_k10",
    "short_training_tse_k100",
    "short_training_val_k30",
    "random",
)

#: Methods that always have an entry in ``summary.json`` (``null`` values when not run).
REPORTED_METHODS: tuple[str, ...] = (
    "ghn",
    "ghn_plain",
    "params",
    "flops",
    "synflow",
    "snip",
    "grad_norm",
    "jacob_cov",
    "naswot",
    "short_training",
    "random",
)

#: Size of the top set of :func:`metrics.top_k_precision`.
TOP_FRACTION = 0.1

_SUMMARY_COLUMNS = (
    "kendall", "kendall_lo", "kendall_hi",
    "spearman", "spearman_lo", "spearman_hi",
    "top10_precision", "top10_precision_lo", "top10_precision_hi",
    "seconds_per_candidate", "n", "n_unscored",
)


class CorrelationResult(NamedTuple):
    """Output of :func:`correlate`.

    Attributes:
        frame: One row per candidate: ``key``, ``graph`` (JSON), ``params``,
            ``flops``, the ground truth per seed (``gt_val_loss_s<seed>``,
            ``gt_val_acc_s<seed>``) and averaged (``gt_val_loss``, ``gt_val_acc``,
            ``gt_test_acc``), ``gt_failed``, ``gt_seconds`` (training time,
            all seeds) and one ``score_<method>`` column per method.
        summary: One row per method (index ``method``): ``kendall``,
            ``kendall_lo``, ``kendall_hi``, the same for ``spearman`` and
            ``top10_precision``, ``seconds_per_candidate``, ``n`` (candidates
            correlated) and ``n_unscored`` (candidates the method gave ``nan``,
            ranked last). ``summary.attrs["noise_ceiling"]`` holds the ceiling.
        summary_json: The summary as written to ``summary.json`` (see :func:`summarize`).
    """

    frame: pd.DataFrame
    summary: pd.DataFrame
    summary_json: dict[str, Any]


def sample_candidates(space: SearchSpace, archs: int, *, seed: int = 0) -> list[ArchGraph]:
    """The ``archs`` distinct candidates ``correlate`` evaluates (seeded; same seed, same list).

    Use it to hold the evaluated candidates out of GHN meta-training.
    """
    if isinstance(archs, bool) or not isinstance(archs, int) or archs < 2:
        raise ValueError(f"`archs` must be an int of at least 2, but got {archs!r}.")
    return [c.graph for c in space.sample_many(archs, seed=seed, unique=True)]


def _default_scorers(ghn: Any) -> list[str]:
    out = []
    for name in DEFAULT_METHODS:
        if name in GHN_METHODS:
            available = ghn.get(name) if isinstance(ghn, Mapping) else (ghn if name == "ghn" else None)
            if available is None:
                logger.info("scorer %r skipped: no GHN given for it", name)
                continue
        out.append(name)
    return out


def correlate(
    space: SearchSpace,
    data: Dataset,
    *,
    archs: int | Sequence[ArchGraph | Candidate] | None = None,
    epochs: float | None = None,
    seeds: int | Sequence[int] = 2,
    scorers: Sequence[str | Scorer] | None = None,
    cache_path: str | Path,
    ghn: Any = None,
    seed: int = 0,
    progress: bool = True,
    workers: int = 1,
    train_config: TrainConfig | None = None,
    device: str | None = None,
    batch_size: int = 64,
    n_resamples: int = metrics.N_RESAMPLES,
    table: TableGroundTruth | None = None,
    store: Any = None,
) -> CorrelationResult:
    """Rank candidates with every scorer and compare with trained ground truth.

    Args:
        space: The search space to sample candidates from.
        data: The dataset to train and score on.
        archs: Number of candidates to sample (with ``seed``), or the candidates.
        epochs: Ground-truth training budget in epochs.
        seeds: Training seeds per candidate (a count or the seeds).
        scorers: Scorer names (see :func:`nas.evaluation.scorer_names`) or
            instances; default :data:`DEFAULT_METHODS` (GHN ones when a GHN is given).
        cache_path: SQLite file of the ground-truth cache.
        ghn: A trained GHN for ``ghn``, or ``{scorer name: GHN}``.
        seed: Seed of the candidate sample, the scorers' initialisations and
            minibatches, and the bootstrap.
        progress: Show progress bars.
        workers: Parallel processes training the ground truth.
        train_config: Ground-truth training settings (``epochs`` replaced by
            ``epochs``); also the settings of the short-training scorers.
        device: Device to train and score on (default ``train_config.device``).
        batch_size: Minibatch size of the zero-cost proxies.
        n_resamples: Bootstrap resamples of the confidence intervals.
        store: Where the ground truth is trained and kept instead of the SQLite file
            ``cache_path``: an object with ``GroundTruthCache.train_missing``'s
            signature, e.g. :class:`~nas.campaign.QueuedGroundTruth`
            (runs queued in an Optuna storage, shared by ``nas worker`` processes).
        table: Ground truth read from a table (:func:`nas.evaluation.table.read_ground_truth`):
            its architectures are the candidates (``archs`` and ``epochs`` are then
            not given), nothing is trained and ``cache_path`` is not used.

    Returns:
        The per-candidate frame, the per-method summary and ``summary.json``.

    Raises:
        ValueError: Bad ``archs``/``epochs``/``seeds``, an unknown scorer, a
            GHN scorer without a GHN, or a scorer returning the wrong number of scores.
    """
    if table is not None:
        if archs is not None or epochs is not None:
            raise ValueError("`archs` and `epochs` must not be given with `table`: its architectures were "
                             "trained already.")
        graphs = list(table.graphs)
        epochs = math.nan
    elif archs is None or epochs is None:
        raise ValueError("`archs` and `epochs` are required unless a ground-truth `table` is given.")
    elif isinstance(archs, int):
        graphs = sample_candidates(space, archs, seed=seed)
    else:
        graphs = [getattr(c, "graph", c) for c in archs]  # nas.space.Candidate or ArchGraph
        keys = [g.key for g in graphs]
        if len(set(keys)) != len(keys) or len(graphs) < 2:
            raise ValueError(
                f"`archs` must hold at least 2 distinct candidates, but got {len(graphs)} ({len(set(keys))} distinct)."
            )
    if table is None and not (isinstance(epochs, (int, float)) and not isinstance(epochs, bool) and epochs > 0):
        raise ValueError(f"`epochs` must be positive, but got {epochs!r}.")
    base = train_config or TrainConfig()
    config = dataclasses.replace(base, epochs=epochs if table is None else base.epochs, steps=None,
                                 device=device or base.device, progress=False)
    seed_list = list(range(seeds)) if isinstance(seeds, int) else [int(s) for s in seeds]
    if table is not None:
        seed_list = list(table.seeds)
    if not seed_list:
        raise ValueError(f"`seeds` must name at least one seed, but got {seeds!r}.")
    names = list(scorers) if scorers is not None else _default_scorers(ghn)
    resolved = build_scorers(
        names, ghn=ghn, seed=seed, device=config.device, batch_size=batch_size,
        train_config=config, progress=progress,
    )

    # Ground truth.
    if table is None:
        cache = store if store is not None else GroundTruthCache(cache_path)
        runs = cache.train_missing(graphs, data, config, seed_list, workers=workers, progress=progress)
        facts: dict[str, Any] = {
            "epochs": epochs,
            "train_config": {k: v for k, v in dataclasses.asdict(config).items() if k not in ("progress",)},
        }
    else:
        runs, facts = table.runs, {"table": table.source}
    metric = table.metric if table is not None else "val_loss"

    # Scores.
    scores_by_method: dict[str, np.ndarray] = {}
    costs: dict[str, float] = {}
    bar = tqdm(resolved, desc="scorers", unit="scorer", disable=not progress)
    for scorer in bar:
        bar.set_postfix(scorer=scorer.name, refresh=True)
        for graph in graphs:  # each scorer that uses FLOPs pays for counting them
            graph.forget_flops()
        start = time.perf_counter()
        scores = list(scorer.score(graphs, data))
        elapsed = time.perf_counter() - start
        if len(scores) != len(graphs):
            raise ValueError(f"scorer {scorer.name!r} returned {len(scores)} scores for {len(graphs)} candidates.")
        scores_by_method[scorer.name] = np.asarray(scores, dtype=np.float64)
        costs[scorer.name] = scorer.cost = elapsed / len(graphs)
        logger.info("scored %d candidates with %s in %.2fs", len(graphs), scorer.name, elapsed)

    # The table, after scoring: its FLOP counts must not pre-warm the `flops` scorer's cache.
    frame = _candidate_frame(graphs, runs, seed_list, metric)
    for name, values in scores_by_method.items():
        frame[f"score_{name}"] = values

    summary, summary_json = summarize(
        frame, costs, seeds=seed_list, n_resamples=n_resamples, seed=seed, metric=metric,
        ground_truth={"dataset": data.name, "space": space.describe(), **facts},
    )
    return CorrelationResult(frame, summary, summary_json)


def _candidate_frame(graphs: Sequence[ArchGraph], table: pd.DataFrame, seeds: Sequence[int],
                     metric: str = "val_loss") -> pd.DataFrame:
    by_run = table.set_index(["key", "seed"])
    rows = []
    for graph in graphs:
        row: dict[str, Any] = {
            "key": graph.key,
            "graph": graph.to_json(),
            "num_params": graph.num_params(),
            "flops": graph.flops(),
        }
        runs = [by_run.loc[(graph.key, s)] for s in seeds]
        for name in ("val_loss", "val_acc"):
            for s, run in zip(seeds, runs):
                row[f"gt_{name}_s{s}"] = float(run[name])
        failed = any(bool(run["failed"]) or not math.isfinite(float(run[metric])) for run in runs)
        for name in ("val_loss", "val_acc", "test_acc"):
            row[f"gt_{name}"] = math.nan if failed else float(np.mean([run[name] for run in runs]))
        row["gt_failed"] = failed
        row["gt_seconds"] = float(sum(run["wall_time"] for run in runs))
        rows.append(row)
    return pd.DataFrame(rows)


def _json_float(value: Any) -> Any:
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


def summarize(
    frame: pd.DataFrame,
    costs: Mapping[str, float],
    *,
    seeds: Sequence[int],
    n_resamples: int = metrics.N_RESAMPLES,
    seed: int = 0,
    ground_truth: Mapping[str, Any] | None = None,
    metric: str = "val_loss",
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Correlate every ``score_<method>`` column of ``frame`` with the ground truth.

    Args:
        frame: A :attr:`CorrelationResult.frame`.
        costs: Seconds per candidate of each method.
        seeds: The training seeds (``gt_val_loss_s<seed>`` columns).
        n_resamples: Bootstrap resamples.
        seed: Bootstrap seed.
        ground_truth: Extra facts about the ground truth for ``summary.json``.
        metric: The ground-truth metric: ``"val_loss"`` (lower is better) or
            ``"val_acc"`` (higher is better); columns ``gt_<metric>`` and
            ``gt_<metric>_s<seed>``.

    Returns:
        ``(summary, summary_json)``. ``summary_json`` has the keys
        ``noise_ceiling`` (``kendall``, ``spearman`` and their ``_lo``/``_hi``),
        ``methods`` (one entry per method, always including
        :data:`REPORTED_METHODS`, with ``kendall``, ``spearman``,
        ``top10_precision``, ``seconds_per_candidate``, the CI bounds and
        ``n``; ``null`` values for a method that was not run),
        ``ground_truth`` (``metric``, ``seeds``, ``n``, ``n_failed``,
        ``seconds_per_run``: training one candidate once for the budget,
        ``seconds_per_candidate``: all seeds, plus ``ground_truth``),
        ``n`` and ``top_fraction``. Non-finite numbers are ``null``.
    """
    valid = frame[~frame["gt_failed"]]
    lower_is_better = metric.endswith("loss")
    truth = valid[f"gt_{metric}"].to_numpy(dtype=np.float64) * (-1.0 if lower_is_better else 1.0)  # higher = better
    seed_truth = valid[[f"gt_{metric}_s{s}" for s in seeds]].to_numpy(dtype=np.float64)
    ceiling = metrics.noise_ceiling(seed_truth, n_resamples=n_resamples, seed=seed)
    if len(valid) < len(frame):
        logger.warning("%d of %d candidates failed to train and are left out", len(frame) - len(valid), len(frame))

    rows = {}
    for column in [c for c in frame.columns if c.startswith("score_")]:
        name = column[len("score_"):]
        raw = valid[column].to_numpy(dtype=np.float64)
        score = metrics.ranking_scores(raw)
        tau = metrics.kendall(score, truth, n_resamples=n_resamples, seed=seed)
        rho = metrics.spearman(score, truth, n_resamples=n_resamples, seed=seed)
        top = metrics.top_k_precision(score, truth, fraction=TOP_FRACTION, n_resamples=n_resamples, seed=seed)
        rows[name] = {
            "kendall": tau.value, "kendall_lo": tau.lo, "kendall_hi": tau.hi,
            "spearman": rho.value, "spearman_lo": rho.lo, "spearman_hi": rho.hi,
            "top10_precision": top.value, "top10_precision_lo": top.lo, "top10_precision_hi": top.hi,
            "seconds_per_candidate": float(costs.get(name, math.nan)),
            "n": len(valid),
            "n_unscored": int(np.isnan(raw).sum()),
        }
    summary = pd.DataFrame.from_dict(rows, orient="index", columns=list(_SUMMARY_COLUMNS))
    summary.index.name = "method"
    ceiling_json = {
        "kendall": ceiling["kendall"].value, "kendall_lo": ceiling["kendall"].lo, "kendall_hi": ceiling["kendall"].hi,
        "spearman": ceiling["spearman"].value, "spearman_lo": ceiling["spearman"].lo,
        "spearman_hi": ceiling["spearman"].hi,
    }
    summary.attrs["noise_ceiling"] = dict(ceiling_json)

    methods: dict[str, dict[str, Any]] = {}
    for name in (*REPORTED_METHODS, *[m for m in rows if m not in REPORTED_METHODS]):
        values = rows.get(name, dict.fromkeys(_SUMMARY_COLUMNS))
        methods[name] = {k: _json_float(v) for k, v in values.items()}
    per_run = frame["gt_seconds"].to_numpy(dtype=np.float64) / max(len(seeds), 1)
    gt_json = {
        "metric": metric,
        "lower_is_better": lower_is_better,
        "seeds": list(seeds),
        "n": int(len(valid)),
        "n_failed": int(len(frame) - len(valid)),
        "seconds_per_run": _json_float(float(np.mean(per_run)) if len(per_run) else math.nan),
        "seconds_per_candidate": _json_float(float(np.mean(frame["gt_seconds"])) if len(frame) else math.nan),
        **dict(ground_truth or {}),
    }
    summary_json = {
        "noise_ceiling": {k: _json_float(v) for k, v in ceiling_json.items()},
        "methods": methods,
        "ground_truth": gt_json,
        "n": int(len(valid)),
        "top_fraction": TOP_FRACTION,
        "n_resamples": n_resamples,
    }
    return summary, summary_json


def write_results(result: CorrelationResult, out_dir: str | Path, *, figures: bool = True) -> dict[str, Path]:
    """Write ``candidates.csv``, ``summary.csv``, ``summary.json`` and the figures.

    Figures (PNG at 200 dpi and PDF) go to ``out_dir/figures``:
    ``method_bars`` and one ``score_vs_truth_<method>`` per method.

    Args:
        result: The output of :func:`correlate`.
        out_dir: The folder (created when missing).
        figures: Also draw the figures.

    Returns:
        The written paths by name (``"candidates"`` and ``"candidates_parquet"``,
        ``"summary"`` and ``"summary_parquet"``, ``"summary_json"``, ``"figure:<name>"``);
        tables are written atomically, as CSV and Parquet.
    """
    from nas.evaluation import plots

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "candidates": out / "candidates.csv",
        "candidates_parquet": out / "candidates.parquet",
        "summary": out / "summary.csv",
        "summary_parquet": out / "summary.parquet",
        "summary_json": out / "summary.json",
    }
    atomic_write(paths["candidates"], lambda p: result.frame.to_csv(p, index=False))
    atomic_write(paths["candidates_parquet"], lambda p: result.frame.to_parquet(p, index=False))
    atomic_write(paths["summary"], lambda p: result.summary.to_csv(p))
    atomic_write(paths["summary_parquet"], lambda p: result.summary.to_parquet(p))
    tmp = paths["summary_json"].with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result.summary_json, indent=2, default=str, allow_nan=False) + "\n")
    tmp.replace(paths["summary_json"])
    if figures:
        fig_dir = out / "figures"
        ceiling = result.summary_json["noise_ceiling"]
        ax = plots.plot_method_bars(result.summary, noise_ceiling=ceiling)
        for path in plots.save_figure(ax.figure, fig_dir / "method_bars"):
            paths[f"figure:{path.name}"] = path
        for method in result.summary.index:
            ax = plots.plot_score_vs_truth(result.frame, method=method,
                                           metric=result.summary_json["ground_truth"].get("metric", "val_loss"))
            for path in plots.save_figure(ax.figure, fig_dir / f"score_vs_truth_{method}"):
                paths[f"figure:{path.name}"] = path
    return paths
