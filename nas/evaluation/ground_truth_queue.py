"""Ground-truth runs as queued work in an Optuna storage, so several machines share one evaluation.

:class:`QueuedGroundTruth` is the storage-backed twin of
:class:`~nas.evaluation.ground_truth.GroundTruthCache`: the same
``train_missing`` call and the same table, but each run (candidate, dataset,
budget, training seed) is a trial of the study ``<study>-gt`` in the given
Optuna storage (PostgreSQL for several machines, a journal file for several
processes on one). The process that calls ``train_missing`` enqueues the runs
not stored yet and works through the queue itself; ``nas worker --storage URL
--study NAME`` on any machine takes queued runs too (:func:`run_ground_truth_worker`).
A worker holds its run with a heartbeat; a run whose worker died is failed and
put back in the queue (:func:`~nas.campaign._storage.reap_stale_trials`), so
nothing is lost and, apart from a run cut short by a dead worker, nothing is
trained twice. Results equal a single-process run's: each run is seeded by its
training seed alone.

A run is one trial: ``user_attrs["choices"]`` is ``{"unit": <id>}`` (what the
queue re-enqueues), ``nas_unit`` describes the run (graph JSON, dataset, budget,
seed), and a finished trial's value is the validation loss (``inf`` when the
training diverged) with every :class:`~nas.evaluation.ground_truth.GroundTruthRecord`
field as a user attribute.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import optuna
from optuna.trial import TrialState
from tqdm.auto import tqdm

from nas.campaign._finetune import _frozen
from nas.campaign._storage import Heartbeat, open_storage, reap_stale_trials, requeue_trial, worker_session
from nas.evaluation.ground_truth import (
    _RESULT_FIELDS,
    GroundTruthRecord,
    _as_config,
    _as_graphs,
    _as_seeds,
    budget_key,
    dataset_key,
    train_candidate,
)
from nas.graph import ArchGraph
from nas.training import TrainConfig

if TYPE_CHECKING:
    import pandas as pd

    from nas.data import Dataset
    from nas.space import Candidate

__all__ = ["GT_SUFFIX", "QueuedGroundTruth", "ground_truth_study", "run_ground_truth_worker"]

logger = logging.getLogger(__name__)

#: Suffix of the queue study's name (``<study>-gt``).
GT_SUFFIX = "-gt"
#: User attribute describing the run of a queued trial.
UNIT_ATTR = "nas_unit"


def ground_truth_study(storage: Any, study: str, *, create: bool = True) -> optuna.Study | None:
    """The queue study ``<study>-gt`` in ``storage`` (``None`` when it does not exist and ``create`` is false)."""
    name = study + GT_SUFFIX
    if not create:
        names = {s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)}
        if name not in names:
            return None
    gt = optuna.create_study(storage=storage, study_name=name, direction="minimize", load_if_exists=True)
    if gt.metric_names != ["val_loss"]:
        gt.set_metric_names(["val_loss"])
    return gt


def _unit_id(key: str, dkey: str, bkey: str, seed: int) -> str:
    return hashlib.blake2b(f"{key}|{dkey}|{bkey}|{seed}".encode(), digest_size=10).hexdigest()


class QueuedGroundTruth:
    """Ground truth kept in an Optuna storage as a queue of training runs.

    Args:
        storage: Optuna storage URL (``postgresql://...``, ``journal:///path.log``, ``sqlite:///...``).
        study: Name of the evaluation; the queue is the study ``<study>-gt``.
        dataset: How a worker loads the dataset: keyword arguments of
            :func:`nas.data.load_dataset` (``name``, ``seed``, ``max_train``).
            Each worker checks that it loads the same data (by content).
        heartbeat_interval: Seconds between heartbeats of a held run.
        grace_period: Seconds without heartbeat after which a run's worker is dead.
        poll_interval: Seconds between looks at the queue while other workers finish.
    """

    def __init__(self, storage: str, study: str, *, dataset: dict[str, Any], heartbeat_interval: float = 30.0,
                 grace_period: float = 120.0, poll_interval: float = 2.0) -> None:
        self.url = storage
        self.storage = open_storage(storage, heartbeat_interval=int(heartbeat_interval),
                                    grace_period=int(grace_period))
        self.study = ground_truth_study(self.storage, study)
        self.dataset = dict(dataset)
        self.heartbeat_interval = heartbeat_interval
        self.grace_period = grace_period
        self.poll_interval = poll_interval

    def __repr__(self) -> str:
        return f"QueuedGroundTruth(study={self.study.study_name!r})"

    def _finished(self) -> dict[str, Any]:
        """unit id -> the first COMPLETE trial of it."""
        done: dict[str, Any] = {}
        for t in self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            unit = (t.user_attrs.get("choices") or {}).get("unit")
            if unit is not None and "val_loss" in t.user_attrs and (unit not in done or t.number < done[unit].number):
                done[unit] = t
        return done

    def _queued(self) -> set[str]:
        states = (TrialState.WAITING, TrialState.RUNNING)
        return {(t.user_attrs.get("choices") or {}).get("unit")
                for t in self.study.get_trials(deepcopy=False, states=states)}

    def train_missing(
        self,
        candidates: Sequence[ArchGraph | Candidate],
        data: Dataset,
        budget: TrainConfig | float,
        seeds: int | Sequence[int] = 2,
        *,
        workers: int = 1,
        progress: bool = True,
    ) -> pd.DataFrame:
        """Queue the runs not stored yet, work on the queue until every run is finished, return the table.

        Args:
            candidates: The candidates (duplicates by key are run once).
            data: The dataset (loaded with :attr:`dataset`).
            budget: A :class:`TrainConfig` or a number of epochs.
            seeds: Training seeds (a count or the seeds).
            workers: Must be 1: other processes join with ``nas worker``.
            progress: Show a progress bar of finished runs.

        Returns:
            As :meth:`GroundTruthCache.train_missing`: ``key``, ``seed``, the record
            fields and ``cached`` (False for runs this process trained).

        Raises:
            ValueError: ``workers`` is not 1, or bad ``budget`` / ``seeds``.
        """
        import pandas as pd

        if workers != 1:
            raise ValueError(f"`workers` must be 1 with a storage queue (start more `nas worker` processes), "
                             f"but got {workers!r}.")
        graphs = _as_graphs(candidates)
        config = _as_config(budget)
        seed_list = _as_seeds(seeds)
        dkey, bkey = dataset_key(data), budget_key(config)
        unique = list({g.key: g for g in graphs}.values())
        units = {_unit_id(g.key, dkey, bkey, s): (g, s) for g in unique for s in seed_list}
        done, queued = self._finished(), self._queued()
        todo = [u for u in units if u not in done and u not in queued]
        for unit in todo:
            graph, seed = units[unit]
            spec = {"graph": graph.to_json(), "key": graph.key, "seed": seed, "dataset": self.dataset,
                    "dataset_key": dkey, "budget": {k: v for k, v in json.loads(bkey).items()}}
            self.study.enqueue_trial(params={}, user_attrs={"choices": {"unit": unit}, UNIT_ATTR: spec},
                                     skip_if_exists=False)
        logger.info("ground truth in %s: %d of %d runs stored, %d queued now",
                    self.study.study_name, len(set(units) & set(done)), len(units), len(todo))
        mine: set[str] = set()
        with tqdm(total=len(units), initial=len(set(units) & set(done)), desc="ground truth", unit="run",
                  disable=not progress) as bar:
            with worker_session() as worker:
                while True:
                    done = self._finished()
                    bar.n = len(set(units) & set(done))
                    bar.refresh()
                    if set(units) <= set(done):
                        break
                    trained = run_ground_truth_worker(
                        self.study, worker=worker, heartbeat_interval=self.heartbeat_interval,
                        grace_period=self.grace_period, progress=False, max_runs=1,
                        loaded={json.dumps(self.dataset, sort_keys=True): data}, device=config.device,
                    )
                    mine.update(trained)
                    if not trained:
                        if not reap_stale_trials(self.study, grace_period=self.grace_period):
                            missing = set(units) - set(done) - self._queued()
                            for unit in missing:  # retried too often: queue it once more, visibly
                                logger.warning("ground-truth run %s is in no queue; queued again", unit)
                                graph, seed = units[unit]
                                spec = {"graph": graph.to_json(), "key": graph.key, "seed": seed,
                                        "dataset": self.dataset, "dataset_key": dkey, "budget": json.loads(bkey)}
                                self.study.enqueue_trial(params={}, user_attrs={"choices": {"unit": unit},
                                                                                UNIT_ATTR: spec})
                            time.sleep(self.poll_interval)  # other workers hold the rest
        done = self._finished()
        rows = []
        for graph in graphs:
            for seed in seed_list:
                unit = _unit_id(graph.key, dkey, bkey, seed)
                attrs = done[unit].user_attrs
                record = GroundTruthRecord(**{f: attrs.get(f) for f in _RESULT_FIELDS})
                rows.append({"key": graph.key, "seed": seed, **record.to_dict(), "cached": unit not in mine})
        frame = pd.DataFrame(rows, columns=["key", "seed", *_RESULT_FIELDS, "cached"])
        frame["val_loss"] = frame["val_loss"].astype(float)
        return frame


def _load(spec: dict[str, Any]) -> Dataset:
    from nas.data import load_dataset

    return load_dataset(spec["name"], seed=spec.get("seed", 0), max_train=spec.get("max_train"))


def run_ground_truth_worker(
    study: optuna.Study,
    *,
    worker: str,
    heartbeat_interval: float = 30.0,
    grace_period: float = 120.0,
    progress: bool = True,
    max_runs: int | None = None,
    loaded: dict[str, Dataset] | None = None,
    load: Callable[[dict[str, Any]], Dataset] = _load,
    device: str = "cpu",
) -> list[str]:
    """Train queued ground-truth runs of ``study`` (``<name>-gt``) until none is waiting.

    Args:
        study: The queue study.
        worker: This worker's identity (:func:`~nas.campaign._storage.new_worker_id`).
        heartbeat_interval: Seconds between heartbeats of the held run.
        grace_period: Seconds after which another worker's silent run is dead.
        progress: Show a progress bar.
        max_runs: Stop after claiming this many runs.
        loaded: Datasets already loaded, by the JSON of their load arguments.
        load: Loads a dataset from its load arguments.
        device: Torch device this worker trains on (results do not depend on it beyond float noise).

    Returns:
        The unit ids this worker finished.

    Raises:
        ValueError: A queued run's dataset loads with other contents here than
            where it was queued (another data folder or library version).
    """
    datasets = dict(loaded or {})
    finished: list[str] = []

    def objective(trial: optuna.Trial) -> float:
        unit = (trial.user_attrs.get("choices") or {}).get("unit")
        spec = trial.user_attrs.get(UNIT_ATTR)
        if unit is None or spec is None:
            trial.set_user_attr("nas_skipped", "no queued run was left to claim")
            raise optuna.TrialPruned()
        for other in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.RUNNING)):
            if other.number != trial.number and (other.user_attrs.get("choices") or {}).get("unit") == unit and (
                    other.state == TrialState.COMPLETE or other.number < trial.number):
                trial.set_user_attr("duplicate_of", other.number)
                raise optuna.TrialPruned()
        try:
            with Heartbeat([trial], worker, interval=heartbeat_interval):
                name = json.dumps(spec["dataset"], sort_keys=True)
                if name not in datasets:
                    datasets[name] = load(spec["dataset"])
                data = datasets[name]
                if dataset_key(data) != spec["dataset_key"]:
                    raise ValueError(f"dataset {spec['dataset']} loads with other contents on this machine "
                                     f"({dataset_key(data)}) than where the run was queued ({spec['dataset_key']}).")
                config = TrainConfig(**{**spec["budget"], "seed": int(spec["seed"]), "device": device,
                                        "progress": False})
                record = train_candidate(ArchGraph.from_json(spec["graph"]), data, config)
        except optuna.TrialPruned:
            raise
        except BaseException:
            requeue_trial(study, _frozen(study, trial.number))
            raise
        for name, value in record.to_dict().items():
            trial.set_user_attr(name, value)
        trial.set_user_attr("nas_worker_done", worker)
        finished.append(unit)
        return record.val_loss if math.isfinite(record.val_loss) else math.inf

    reap_stale_trials(study, grace_period=grace_period)
    claimed = 0
    with tqdm(desc="ground truth", unit="run", disable=not progress) as bar:
        while max_runs is None or claimed < max_runs:
            if not study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
                if reap_stale_trials(study, grace_period=grace_period):
                    continue
                break
            study.optimize(objective, n_trials=1, gc_after_trial=False, catch=())
            claimed += 1
            bar.update()
    return finished
