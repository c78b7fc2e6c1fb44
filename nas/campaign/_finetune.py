"""Stage 2: fine-tune the best-ranked candidates, starting from their predicted weights.

The top-k candidates of the rank study (lowest rank score, whatever its
``rank_by``) are enqueued, once, in the
``<name>-finetune`` study (``study.enqueue_trial``). Workers claim the WAITING
trials through Optuna, so several processes (or machines) fine-tune different
candidates and none twice; a worker stops when the queue is empty. Each trial
rebuilds its candidate from its choices, initialises it with the GHN's
predicted weights (``ghn.materialize``), records their validation loss and
accuracy before any SGD step (``ghn_loss``, ``ghn_acc``, when the rank stage
did not already) and trains it with :func:`nas.training.train` for the
campaign's budget.
"""

from __future__ import annotations

import json
import logging
import math
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
from optuna.trial import FrozenTrial, TrialState
from tqdm.auto import tqdm

from nas._atomic import save_torch
from nas.space import SearchSpace
from nas.training import TrainConfig, evaluate, train

from nas.campaign._storage import QUEUE_ATTRS, Heartbeat, reap_stale_trials, requeue_trial

__all__ = [
    "FINETUNE_METRICS",
    "FinetuneStats",
    "enqueue_candidates",
    "run_finetune_worker",
    "scored_candidates",
    "select_candidates",
    "wait_for_running",
]

logger = logging.getLogger(__name__)

#: Fine-tune metric -> (user attribute returned as the trial value, study direction).
FINETUNE_METRICS: dict[str, tuple[str, str]] = {
    "acc": ("val_acc", "maximize"),
    "loss": ("val_loss", "minimize"),
}

#: Rank-study user attribute listing the keys already enqueued for fine-tuning.
ENQUEUED_ATTR = "nas_enqueued"


@dataclass
class FinetuneStats:
    """What one worker did in the fine-tune stage.

    Attributes:
        finetuned: Candidates this worker trained (including diverged ones).
        failed: Of those, how many diverged.
        skipped: Claimed trials that were duplicates or not queued candidates.
    """

    finetuned: int = 0
    failed: int = 0
    skipped: int = 0


def scored_candidates(candidates: pd.DataFrame) -> pd.DataFrame:
    """The rows of the rank table with a finite ``rank_score`` (the ones that can be fine-tuned)."""
    return candidates[candidates["rank_score"].map(lambda v: isinstance(v, float) and math.isfinite(v))]


def select_candidates(candidates: pd.DataFrame, top_k: int, *, pareto: bool = False) -> pd.DataFrame:
    """Choose the candidates to fine-tune from the rank table.

    Args:
        candidates: One row per distinct candidate (:func:`nas.campaign.candidates_frame`),
            with ``rank_score`` and, for a multi-objective campaign, ``pareto``.
        top_k: How many.
        pareto: Take the Pareto front first (sorted by ``rank_score``), then fill
            up with the rest by ``rank_score``.

    Returns:
        ``top_k`` rows in fine-tuning order.

    Raises:
        ValueError: ``top_k`` is not positive or exceeds the distinct candidates.
    """
    if not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 1:
        raise ValueError(f"`top_k` must be a positive int, but got {top_k!r}.")
    scored = scored_candidates(candidates)
    if len(scored) < top_k:
        raise ValueError(
            f"`top_k` is {top_k}, but the rank stage scored only {len(scored)} distinct candidates; "
            "lower --top-k or raise --trials."
        )
    order = scored.sort_values(["rank_score", "trial"], kind="stable")
    if pareto and "pareto" in order.columns:
        order = pd.concat([order[order["pareto"]], order[~order["pareto"]]])
    return order.head(top_k).reset_index(drop=True)


def enqueue_candidates(rank_study: optuna.Study, finetune_study: optuna.Study, selected: pd.DataFrame) -> list[str]:
    """Enqueue the selected candidates for fine-tuning, each key once per campaign.

    The keys enqueued are recorded in the rank study's user attribute
    ``nas_enqueued``; a key already recorded there, or already present in the
    fine-tune study, is not enqueued again (so a rerun enqueues nothing).
    Each trial records its place in the queue (``queue_position``, from 0
    over the whole campaign), the order ``pick="rank"`` reports by.

    Args:
        rank_study: The rank study (holds the record).
        finetune_study: The study to enqueue in.
        selected: Rows of :func:`select_candidates`.

    Returns:
        The keys enqueued by this call.
    """
    done = set(rank_study.user_attrs.get(ENQUEUED_ATTR, []))
    done.update(t.user_attrs.get("key") for t in finetune_study.get_trials(deepcopy=False))
    new: list[str] = []
    position = sum(isinstance(k, str) for k in done)
    for row in selected.to_dict("records"):
        key = row["key"]
        if key in done:
            continue
        choices = json.loads(row["choices"]) if isinstance(row["choices"], str) else dict(row["choices"])
        attrs = {
            name: _plain(row[name])
            for name in QUEUE_ATTRS
            if name in row and name not in ("rank_trial", "choices") and not _missing(row[name])
        }
        attrs.update(choices=choices, rank_trial=int(row["trial"]), queue_position=position)
        finetune_study.enqueue_trial(params=choices, user_attrs=attrs, skip_if_exists=False)
        done.add(key)
        new.append(key)
        position += 1
    if new:
        rank_study.set_user_attr(ENQUEUED_ATTR, sorted(k for k in done if isinstance(k, str)))
        logger.info("enqueued %d candidates for fine-tuning in %s", len(new), finetune_study.study_name)
    return new


def _missing(value: Any) -> bool:
    """``None``, ``NaN`` or ``<NA>`` (e.g. ``ghn_loss`` of a candidate ranked by the ranker)."""
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):  # a list or dict
        return False


def _plain(value: Any) -> Any:
    if hasattr(value, "item") and not isinstance(value, (str, bytes, dict, list)):
        return value.item()
    return value


def _frozen(study: optuna.Study, number: int) -> FrozenTrial:
    for trial in study.get_trials(deepcopy=False):
        if trial.number == number:
            return trial
    raise RuntimeError(f"trial {number} is missing from study {study.study_name!r}.")


def _atomic_save(obj: Any, path: Path) -> None:
    """``torch.save(obj)`` into ``path`` atomically (fine-tuned weights).

    Raises:
        CheckpointError: The write failed (e.g. a full disk); the message names
            ``path``, no temporary file is left and a previous file is unchanged.
    """
    save_torch(obj, path, what="fine-tuned weights")


def run_finetune_worker(
    study: optuna.Study,
    space: SearchSpace,
    ghn: Any,
    data: Any,
    *,
    config: TrainConfig,
    metric: str = "acc",
    weights_dir: str | Path | None = None,
    worker: str,
    heartbeat_interval: float = 30.0,
    grace_period: float = 120.0,
    progress: bool = True,
    max_trials: int | None = None,
) -> FinetuneStats:
    """Fine-tune queued candidates until no WAITING trial is left.

    Args:
        study: The ``<name>-finetune`` study.
        space: The search space (rebuilds each candidate from its choices).
        ghn: A GHN with ``materialize(graph) -> Network``.
        data: The dataset trained on.
        config: Training settings of the fine-tuning budget.
        metric: ``"acc"`` (trial value = validation accuracy, maximised) or
            ``"loss"`` (validation loss, minimised).
        weights_dir: Folder for the fine-tuned ``state_dict`` of each trial
            (``<key[:16]>-t<trial>.pt``); ``None`` keeps no weights.
        worker: This worker's identity.
        heartbeat_interval: Seconds between heartbeats of the held trial.
        grace_period: Seconds after which another worker's silent trial is dead.
        progress: Show a tqdm bar.
        max_trials: Stop after claiming this many trials.

    Returns:
        What this worker did.

    Raises:
        ValueError: Unknown ``metric``.
    """
    if metric not in FINETUNE_METRICS:
        raise ValueError(f"`metric` must be one of {', '.join(FINETUNE_METRICS)}, but got {metric!r}.")
    value_attr = FINETUNE_METRICS[metric][0]
    stats = FinetuneStats()
    folder = Path(weights_dir) if weights_dir is not None else None
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)

    def objective(trial: optuna.Trial) -> float:
        key = trial.user_attrs.get("key")
        if key is None:
            # Another worker claimed the last queued trial between our check and our ask.
            trial.set_user_attr("nas_skipped", "no queued candidate was left to claim")
            stats.skipped += 1
            raise optuna.TrialPruned()
        for other in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.RUNNING)):
            if other.number == trial.number or other.user_attrs.get("key") != key:
                continue
            if other.state == TrialState.COMPLETE or other.number < trial.number:
                trial.set_user_attr("duplicate_of", other.number)
                stats.skipped += 1
                raise optuna.TrialPruned()
        try:
            with Heartbeat([trial], worker, interval=heartbeat_interval):
                return _finetune_one(trial, key)
        except BaseException:
            # Interrupted or crashed: Optuna marks the trial FAIL and re-raises; the candidate goes
            # back in the queue (at most MAX_RETRIES times) so a rerun fine-tunes it.
            requeue_trial(study, _frozen(study, trial.number))
            raise

    def _finetune_one(trial: optuna.Trial, key: str) -> float:
        graph = space.build(trial)
        if graph.key != key:
            logger.warning(
                "fine-tune trial %d: the choices rebuild a different graph (key %s, queued %s); "
                "has the search space changed?",
                trial.number,
                graph.key[:12],
                key[:12],
            )
        net = ghn.materialize(graph, data)
        if "ghn_acc" not in trial.user_attrs:
            # Ranked by the ranker, so the predicted weights were never run: record what they reach
            # before any SGD step (one pass over the validation split).
            ghn_loss, ghn_acc = evaluate(net, data.x_val, data.y_val, device=config.device)
            trial.set_user_attr("ghn_loss", ghn_loss)
            trial.set_user_attr("ghn_acc", ghn_acc)
        result = train(net, data, config)
        for name, value in result.to_dict().items():
            if name != "stopped":  # fine-tuning runs its whole budget
                trial.set_user_attr(name, value)
        trial.set_user_attr("nas_worker_done", worker)
        stats.finetuned += 1
        if result.failed:
            stats.failed += 1
            logger.warning("fine-tune trial %d (key %s) diverged: %s", trial.number, key[:12], result.error)
            return math.nan  # Optuna records a NaN value as a FAIL trial; the worker goes on
        if folder is not None:
            path = folder / f"{key[:16]}-t{trial.number}.pt"
            state = {k: v.detach().cpu() for k, v in net.state_dict().items()}
            _atomic_save(state, path)
            trial.set_user_attr("weights", str(path.resolve()))
            trial.set_user_attr("weights_host", socket.gethostname())
        return float(getattr(result, value_attr))

    reap_stale_trials(study, grace_period=grace_period)
    total = len(study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))
    claimed = 0
    with tqdm(total=total, desc="fine-tune", unit="cand", disable=not progress) as bar:
        while max_trials is None or claimed < max_trials:
            if not study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
                if reap_stale_trials(study, grace_period=grace_period):
                    continue
                break
            study.optimize(objective, n_trials=1, gc_after_trial=False)
            claimed += 1
            bar.total = max(bar.total or 0, claimed)
            bar.update()
    return stats


def wait_for_running(study: optuna.Study, *, grace_period: float, poll_interval: float = 5.0) -> bool:
    """Block until no trial of ``study`` is RUNNING, reaping those of dead workers.

    Args:
        study: The fine-tune study.
        grace_period: Seconds after which a silent trial is dead.
        poll_interval: Seconds between checks.

    Returns:
        ``True`` when WAITING trials appeared (re-queued candidates of dead
        workers) that the caller should fine-tune; ``False`` when all is done.
    """
    announced = False
    while True:
        trials = study.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.WAITING))
        if any(t.state == TrialState.WAITING for t in trials):
            return True
        if not trials:
            return False
        if not announced:
            logger.info("waiting for %d trials of %s held by other workers", len(trials), study.study_name)
            announced = True
        if not reap_stale_trials(study, grace_period=grace_period):
            time.sleep(poll_interval)


def directions_for(metric: str) -> Sequence[str]:
    """The direction of the fine-tune study for ``metric``."""
    if metric not in FINETUNE_METRICS:
        raise ValueError(f"`metric` must be one of {', '.join(FINETUNE_METRICS)}, but got {metric!r}.")
    return [FINETUNE_METRICS[metric][1]]
