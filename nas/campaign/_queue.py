"""Training runs queued in an Optuna storage, so several machines share one evaluation or one campaign's labels.

Two kinds of run are queued, each in a study of its own in the given Optuna
storage (PostgreSQL for several machines, a journal file for several processes
on one):

* ``ground_truth`` (study ``<name>-gt``): one candidate trained for the
  evaluation budget with one seed, the record of
  :class:`~nas.evaluation.ground_truth.GroundTruthRecord`.
  :class:`QueuedGroundTruth` is the storage twin of
  :class:`~nas.evaluation.ground_truth.GroundTruthCache` (``nas correlate --storage``);
* ``tse`` (study ``<name>-labels``): one ranker label, the sum of ``k`` SGD
  losses (:func:`nas.ghn.short_training_labels` with ``queue=``; ``nas search
  --queue-labels``).

The process that needs the results enqueues the runs not stored yet and works
through the queue itself; ``nas worker --storage URL --study NAME`` on any
machine takes queued runs too (:func:`run_queue_worker`). A worker holds its run with
a heartbeat; a run whose worker died is failed and put back in the queue
(:func:`~nas.campaign._storage.reap_stale_trials`), so nothing is lost and,
apart from a run cut short by a dead worker, nothing is trained twice. Results
equal a single-process run's: each run is seeded by its own seed alone.

A run is one trial: ``user_attrs["choices"]`` is ``{"unit": <id>}`` (what the
queue re-enqueues), ``nas_unit`` describes the run (kind, graph JSON, dataset,
budget, seed), and a finished trial's value is the measured loss (``inf`` when
the training diverged) with the full result as user attributes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import time
import warnings
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import optuna
from optuna.trial import TrialState
from tqdm.auto import tqdm

from nas.campaign._storage import Heartbeat, open_storage, reap_stale_trials, requeue_trial, worker_session
from nas.evaluation.ground_truth import GroundTruthRecord, budget_key, dataset_key, train_candidate
from nas.graph import ArchGraph
from nas.training import TrainConfig

if TYPE_CHECKING:
    import pandas as pd

    from nas.data import Dataset
    from nas.space import Candidate

__all__ = ["QUEUES", "QueuedGroundTruth", "QueuedLabels", "WorkQueue", "queue_study", "run_queue_worker"]

logger = logging.getLogger(__name__)

#: Kind of run -> suffix of its queue study's name.
QUEUES: dict[str, str] = {"tse": "-labels", "ground_truth": "-gt"}
#: User attribute describing the run of a queued trial.
UNIT_ATTR = "nas_unit"
#: The fields of a ground-truth record, the columns of the table after ``key`` and ``seed``.
_FIELDS = tuple(f.name for f in dataclasses.fields(GroundTruthRecord))


def queue_study(storage: Any, study: str, kind: str, *, create: bool = True) -> optuna.Study | None:
    """The queue study of ``kind`` runs of ``study`` (``None`` when it does not exist and ``create`` is false)."""
    name = study + QUEUES[kind]
    if not create:
        names = {s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)}
        if name not in names:
            return None
    queue = optuna.create_study(storage=storage, study_name=name, direction="minimize", load_if_exists=True)
    metric = "tse" if kind == "tse" else "val_loss"
    if queue.metric_names != [metric]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            queue.set_metric_names([metric])
    return queue


def _unit_id(*parts: Any) -> str:
    return hashlib.blake2b("|".join(map(str, parts)).encode(), digest_size=10).hexdigest()


def _unit(trial: Any) -> str | None:
    return (trial.user_attrs.get("choices") or {}).get("unit")


# --------------------------------------------------------------------------- what a run does


def _run_ground_truth(graph: ArchGraph, data: Dataset, spec: dict[str, Any], device: str) -> tuple[float, dict]:
    config = TrainConfig(**{**spec["budget"], "seed": int(spec["seed"]), "device": device, "progress": False})
    record = train_candidate(graph, data, config)
    return (record.val_loss if math.isfinite(record.val_loss) else math.inf), record.to_dict()


def _run_tse(graph: ArchGraph, data: Dataset, spec: dict[str, Any], device: str) -> tuple[float, dict]:
    from nas.ghn import tse_label

    value, seconds = tse_label(graph, data, int(spec["budget"]["steps"]), int(spec["seed"]))
    return (value if math.isfinite(value) else math.inf), {"tse": value, "seconds": seconds}


#: Kind -> what a worker runs: (graph, data, unit spec, device) -> (trial value, result attributes).
_RUNS: dict[str, Callable[..., tuple[float, dict]]] = {"ground_truth": _run_ground_truth, "tse": _run_tse}


def _load(spec: dict[str, Any]) -> Dataset:
    from nas.data import load_dataset

    return load_dataset(spec["name"], seed=spec.get("seed", 0), max_train=spec.get("max_train"))


# --------------------------------------------------------------------------- the queue


class WorkQueue:
    """One queue study of runs of one kind, worked on by this process and any ``nas worker``.

    Args:
        storage: Optuna storage URL.
        study: Name of the evaluation or campaign (the queue is ``<study>`` + :data:`QUEUES` ``[kind]``).
        kind: ``"ground_truth"`` or ``"tse"``.
        dataset: How a worker loads the dataset: keyword arguments of
            :func:`nas.data.load_dataset` (``name``, ``seed``, ``max_train``).
            Each worker checks that it loads the same data (by content).
        heartbeat_interval: Seconds between heartbeats of a held run.
        grace_period: Seconds without heartbeat after which a run's worker is dead.
        poll_interval: Seconds between looks at the queue while other workers finish.
    """

    def __init__(self, storage: str, study: str, kind: str, *, dataset: dict[str, Any],
                 heartbeat_interval: float = 30.0, grace_period: float = 120.0, poll_interval: float = 2.0) -> None:
        if kind not in QUEUES:
            raise ValueError(f"`kind` must be one of {', '.join(QUEUES)}, but got {kind!r}.")
        self.kind = kind
        self.storage = open_storage(storage, heartbeat_interval=int(heartbeat_interval),
                                    grace_period=int(grace_period))
        self.study = queue_study(self.storage, study, kind)
        self.dataset = dict(dataset)
        self.heartbeat_interval = heartbeat_interval
        self.grace_period = grace_period
        self.poll_interval = poll_interval

    def __repr__(self) -> str:
        return f"WorkQueue(study={self.study.study_name!r})"

    def finished(self) -> dict[str, Any]:
        """unit id -> the first COMPLETE trial of it."""
        done: dict[str, Any] = {}
        for t in self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            unit = _unit(t)
            if unit is not None and (unit not in done or t.number < done[unit].number):
                done[unit] = t
        return done

    def _queued(self) -> set[str | None]:
        states = (TrialState.WAITING, TrialState.RUNNING)
        return {_unit(t) for t in self.study.get_trials(deepcopy=False, states=states)}

    def _enqueue(self, unit: str, spec: dict[str, Any]) -> None:
        self.study.enqueue_trial(params={}, user_attrs={"choices": {"unit": unit}, UNIT_ATTR: spec},
                                 skip_if_exists=False)

    def run(self, units: dict[str, dict[str, Any]], data: Dataset, *, device: str = "cpu", progress: bool = True,
            desc: str = "queued runs") -> tuple[dict[str, dict[str, Any]], set[str]]:
        """Enqueue the ``units`` (id -> spec) not stored yet, work until every one is finished.

        Returns:
            ``(results, mine)``: each unit's result attributes, and the units this process ran.
        """
        done, queued = self.finished(), self._queued()
        todo = [u for u in units if u not in done and u not in queued]
        for unit in todo:
            self._enqueue(unit, units[unit])
        logger.info("%s: %d of %d runs stored, %d queued now", self.study.study_name,
                    len(set(units) & set(done)), len(units), len(todo))
        mine: set[str] = set()
        loaded = {json.dumps(self.dataset, sort_keys=True): data}
        with tqdm(total=len(units), initial=len(set(units) & set(done)), desc=desc, unit="run",
                  disable=not progress) as bar, worker_session() as worker:
            while True:
                done = self.finished()
                bar.n = len(set(units) & set(done))
                bar.refresh()
                if set(units) <= set(done):
                    break
                ran = run_queue_worker(self.study, worker=worker, heartbeat_interval=self.heartbeat_interval,
                                 grace_period=self.grace_period, progress=False, max_runs=1, loaded=loaded,
                                 device=device)
                mine.update(ran)
                if ran or reap_stale_trials(self.study, grace_period=self.grace_period):
                    continue
                for unit in set(units) - set(done) - self._queued():  # retried too often: once more, visibly
                    logger.warning("%s: run %s is in no queue; queued again", self.study.study_name, unit)
                    self._enqueue(unit, units[unit])
                time.sleep(self.poll_interval)  # other workers hold the rest
        done = self.finished()
        return {u: dict(done[u].user_attrs) for u in units}, mine

    def spec(self, graph: ArchGraph, data: Dataset, budget: dict[str, Any], seed: int) -> dict[str, Any]:
        """The description of one run that a worker needs."""
        return {"kind": self.kind, "graph": graph.to_json(), "key": graph.key, "seed": int(seed),
                "dataset": self.dataset, "dataset_key": dataset_key(data), "budget": budget}


class QueuedGroundTruth:
    """Ground truth kept in an Optuna storage as a queue of training runs (``nas correlate --storage``).

    Args:
        storage: Optuna storage URL.
        study: Name of the evaluation; the queue is the study ``<study>-gt``.
        dataset: Load arguments of the dataset (see :class:`WorkQueue`).
        heartbeat_interval: Seconds between heartbeats of a held run.
        grace_period: Seconds without heartbeat after which a run's worker is dead.
    """

    def __init__(self, storage: str, study: str, *, dataset: dict[str, Any], heartbeat_interval: float = 30.0,
                 grace_period: float = 120.0) -> None:
        self.queue = WorkQueue(storage, study, "ground_truth", dataset=dataset,
                               heartbeat_interval=heartbeat_interval, grace_period=grace_period)

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
            data: The dataset (loaded with the queue's ``dataset`` arguments).
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
        graphs = [getattr(c, "graph", c) for c in candidates]  # a nas.space.Candidate or a graph
        config = budget if isinstance(budget, TrainConfig) else TrainConfig(epochs=budget)
        seed_list = list(range(seeds)) if isinstance(seeds, int) else [int(s) for s in seeds]
        if not seed_list or len(set(seed_list)) != len(seed_list):
            raise ValueError(f"`seeds` must be a positive count or distinct seeds, but got {seeds!r}.")
        dkey, bkey = dataset_key(data), budget_key(config)
        ids = {(g.key, s): _unit_id(g.key, dkey, bkey, s) for g in graphs for s in seed_list}
        units = {ids[g.key, s]: self.queue.spec(g, data, json.loads(bkey), s) for g in graphs for s in seed_list}
        results, mine = self.queue.run(units, data, device=config.device, progress=progress, desc="ground truth")
        rows = []
        for graph in graphs:
            for seed in seed_list:
                unit = ids[graph.key, seed]
                record = GroundTruthRecord(**{f: results[unit].get(f) for f in _FIELDS})
                rows.append({"key": graph.key, "seed": seed, **record.to_dict(), "cached": unit not in mine})
        frame = pd.DataFrame(rows, columns=["key", "seed", *_FIELDS, "cached"])
        frame["val_loss"] = frame["val_loss"].astype(float)
        return frame


class QueuedLabels:
    """The ranker's short-training labels as queued runs of the study ``<study>-labels`` (``--queue-labels``).

    Args: as :class:`QueuedGroundTruth`.
    """

    def __init__(self, storage: str, study: str, *, dataset: dict[str, Any], heartbeat_interval: float = 30.0,
                 grace_period: float = 120.0) -> None:
        self.queue = WorkQueue(storage, study, "tse", dataset=dataset, heartbeat_interval=heartbeat_interval,
                               grace_period=grace_period)

    def measure(self, graphs: Sequence[ArchGraph], data: Dataset, k: int, seed: int, *,
                progress: bool = True) -> dict[str, tuple[float, float]]:
        """TSE after ``k`` SGD steps (seed ``seed``) of each graph: key -> (tse, seconds); ``nan`` when it failed."""
        dkey = dataset_key(data)
        ids = {g.key: _unit_id("tse", g.key, dkey, k, seed) for g in graphs}
        units = {ids[g.key]: self.queue.spec(g, data, {"steps": int(k)}, seed) for g in graphs}
        results, _ = self.queue.run(units, data, progress=progress, desc=f"TSE labels (k={k})")
        return {g.key: (float(results[ids[g.key]]["tse"]), float(results[ids[g.key]]["seconds"])) for g in graphs}


# --------------------------------------------------------------------------- the worker


def run_queue_worker(
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
    """Run queued runs of ``study`` (a queue of :data:`QUEUES`) until none is waiting.

    Args:
        study: The queue study.
        worker: This worker's identity (:func:`~nas.campaign._storage.new_worker_id`).
        heartbeat_interval: Seconds between heartbeats of the held run.
        grace_period: Seconds after which another worker's silent run is dead.
        progress: Show a progress bar.
        max_runs: Stop after claiming this many runs.
        loaded: Datasets already loaded, by the JSON of their load arguments.
        load: Loads a dataset from its load arguments.
        device: Torch device this worker trains ground-truth runs on.

    Returns:
        The unit ids this worker finished.

    Raises:
        ValueError: A queued run's dataset loads with other contents here than
            where it was queued (another data folder or library version).
    """
    datasets = dict(loaded or {})
    finished: list[str] = []

    def objective(trial: optuna.Trial) -> float:
        unit, spec = _unit(trial), trial.user_attrs.get(UNIT_ATTR)
        if unit is None or spec is None:
            trial.set_user_attr("nas_skipped", "no queued run was left to claim")
            raise optuna.TrialPruned()
        for other in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.RUNNING)):
            if other.number != trial.number and _unit(other) == unit and (
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
                value, result = _RUNS[spec.get("kind", "ground_truth")](
                    ArchGraph.from_json(spec["graph"]), data, spec, device)
        except optuna.TrialPruned:
            raise
        except BaseException:
            frozen = next(t for t in study.get_trials(deepcopy=False) if t.number == trial.number)
            requeue_trial(study, frozen)
            raise
        for name, item in result.items():
            trial.set_user_attr(name, item)
        trial.set_user_attr("nas_worker_done", worker)
        finished.append(unit)
        return value

    reap_stale_trials(study, grace_period=grace_period)
    claimed = 0
    with tqdm(desc=study.study_name, unit="run", disable=not progress) as bar:
        while max_runs is None or claimed < max_runs:
            if not study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
                if reap_stale_trials(study, grace_period=grace_period):
                    continue
                break
            study.optimize(objective, n_trials=1, gc_after_trial=False, catch=())
            claimed += 1
            bar.update()
    return finished
