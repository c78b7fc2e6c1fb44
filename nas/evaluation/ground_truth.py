"""Trained ground truth: train candidates from scratch, once, and remember the result.

:class:`GroundTruthCache` keeps one row per ``(candidate key, dataset,
training budget, training seed)`` in an SQLite file, so a second evaluation
(or one with more candidates) trains only what is missing, and an interrupted
run resumes where it stopped: each result is committed the moment it is done.

Why SQLite through :mod:`sqlite3` and not an Optuna storage: the cache is a
key-value table with a composite key (candidate, dataset, budget, seed) that
is read far more often than written, not a study of trials; Optuna's storage
would force it into studies, trial states and user attributes, and would need
a scan to look a result up. SQLite is in the standard library, has
transactions, and in write-ahead-log (WAL) mode lets readers go on while one
process writes; a busy timeout makes concurrent writers wait their turn
instead of failing. WAL needs a local filesystem (not NFS): put the cache on
local disk when several processes share it.

Several processes may fill one cache at once (e.g. two ``nas correlate`` runs
or a run on each GPU): a process *claims* a job in a short transaction before
training it, other processes skip claimed jobs and pick them up from the cache
when they finish. A background thread refreshes the claims of jobs in flight;
a claim whose owner died (same host, process gone) or was not refreshed for
``claim_ttl`` seconds is taken over.
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import dataclasses
import hashlib
import json
import logging
import math
import multiprocessing
import os
import sqlite3
import threading
import time
import weakref
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
from tqdm.auto import tqdm

from nas._liveness import PeriodicThread, new_owner_id, owner_dead
from nas.data import Dataset
from nas.exceptions import StorageError
from nas.graph import ArchGraph
from nas.training import TrainConfig, train_graph

if TYPE_CHECKING:
    import pandas as pd

    from nas.space import Candidate

# pandas and nas.space (optuna) are imported where used: a spawned training
# worker imports this module and should start fast.

__all__ = [
    "GroundTruthCache",
    "GroundTruthRecord",
    "budget_key",
    "dataset_key",
    "train_candidate",
]

logger = logging.getLogger(__name__)

#: Version of the cache's table layout, stored in the file.
SCHEMA_VERSION = 1

#: TrainConfig fields that do not change the result and are left out of the key.
_NOT_IN_KEY = frozenset({"seed", "device", "progress"})

_RESULT_FIELDS = ("val_loss", "val_acc", "test_loss", "test_acc", "train_loss", "steps", "wall_time", "failed", "error")


@dataclasses.dataclass(frozen=True)
class GroundTruthRecord:
    """The result of training one candidate with one seed.

    Attributes:
        val_loss: Validation cross-entropy after training (``nan`` when failed).
        val_acc: Validation accuracy.
        test_loss: Test cross-entropy.
        test_acc: Test accuracy.
        train_loss: Mean training loss over the last epoch.
        steps: Optimisation steps taken.
        wall_time: Seconds spent training and evaluating.
        failed: Whether training diverged.
        error: Why it failed, or ``None``.
    """

    val_loss: float
    val_acc: float
    test_loss: float
    test_acc: float
    train_loss: float
    steps: int
    wall_time: float
    failed: bool
    error: str | None = None

    @classmethod
    def from_train_result(cls, result: Any) -> GroundTruthRecord:
        """Convert a :class:`nas.training.TrainResult`."""
        return cls(**{name: getattr(result, name) for name in _RESULT_FIELDS})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class _Job(NamedTuple):
    key: str
    graph: ArchGraph
    seed: int


# --------------------------------------------------------------------------- keys


def budget_key(config: TrainConfig) -> str:
    """Canonical text of every :class:`TrainConfig` field that changes a result.

    All fields but ``seed`` (a separate key column), ``device`` and ``progress``
    are included, so a field added to ``TrainConfig`` later is part of the key
    without a change here.
    """
    types = {f.name: str(f.type) for f in dataclasses.fields(config)}
    fields = {}
    for k, v in dataclasses.asdict(config).items():
        if k in _NOT_IN_KEY:
            continue
        if types[k] == "float" and isinstance(v, int) and not isinstance(v, bool):
            v = float(v)  # epochs=3 and epochs=3.0 are the same budget
        fields[k] = v
    return json.dumps(fields, sort_keys=True)


_SPLITS = ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test")

#: Dataset -> (the splits' storage and in-place version counters, its key): hashing
#: every split takes ~12 ms on mnist5k, and a cache lookup needs the key each time.
_DATASET_KEYS: weakref.WeakKeyDictionary[Dataset, tuple[tuple[tuple[int, int], ...], str]] = (
    weakref.WeakKeyDictionary()
)


def dataset_key(data: Dataset) -> str:
    """Name plus a content fingerprint of the dataset's splits.

    The same name loaded with another split seed, split fractions or
    ``max_train`` gets another key. The key is computed once per dataset
    object and recomputed when a split's tensor changes in place.
    """
    tensors = [getattr(data, name) for name in _SPLITS]
    try:
        state = tuple((t.data_ptr(), t._version) for t in tensors)  # _version counts in-place changes
    except RuntimeError:  # inference-mode tensors keep no version counter: hash every time
        state = None
    memo = _DATASET_KEYS.get(data)
    if state is not None and memo is not None and memo[0] == state:
        return memo[1]
    digest = hashlib.blake2b(digest_size=8)
    for name, tensor in zip(_SPLITS, tensors):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}{tuple(tensor.shape)}{tensor.dtype}".encode())
        digest.update(tensor.numpy().tobytes())
    key = f"{data.name}@{digest.hexdigest()}"
    if state is not None:
        _DATASET_KEYS[data] = (state, key)
    return key


def _as_config(budget: TrainConfig | float) -> TrainConfig:
    if isinstance(budget, TrainConfig):
        return budget
    if isinstance(budget, bool) or not isinstance(budget, (int, float)):
        raise ValueError(f"`budget` must be a TrainConfig or a number of epochs, but got {budget!r}.")
    return TrainConfig(epochs=budget)


def _as_seeds(seeds: int | Sequence[int]) -> list[int]:
    if isinstance(seeds, int) and not isinstance(seeds, bool):
        if seeds < 1:
            raise ValueError(f"`seeds` must be at least 1, but got {seeds}.")
        return list(range(seeds))
    out = [int(s) for s in seeds]
    if not out or len(set(out)) != len(out):
        raise ValueError(f"`seeds` must be a non-empty list of distinct ints, but got {list(seeds)!r}.")
    return out


def _as_graphs(candidates: Iterable[ArchGraph | Candidate]) -> list[ArchGraph]:
    out = []
    for c in candidates:
        graph = getattr(c, "graph", c)  # a nas.space.Candidate or a graph
        if not isinstance(graph, ArchGraph):
            raise ValueError(f"`candidates` must hold ArchGraph or Candidate objects, but got {type(c).__name__}.")
        out.append(graph)
    return out


# --------------------------------------------------------------------------- training


def train_candidate(graph: ArchGraph, data: Dataset, config: TrainConfig) -> GroundTruthRecord:
    """Train ``graph`` from a random initialisation seeded with ``config.seed``.

    The global torch RNG is restored afterwards, so calling this does not
    change the random state of the caller.

    Args:
        graph: The candidate.
        data: The dataset.
        config: Training budget and seed.

    Returns:
        The result.
    """
    return GroundTruthRecord.from_train_result(train_graph(graph, data, config))


# The function the training loop calls; a module attribute so tests can count calls.
_train_one = train_candidate

_WORKER_DATA: Dataset | None = None


def _worker_init(data: Dataset) -> None:
    global _WORKER_DATA
    torch.set_num_threads(1)  # one process per core: no oversubscription
    _WORKER_DATA = data


def _worker_train(graph_json: str, config: dict[str, Any]) -> dict[str, Any]:
    assert _WORKER_DATA is not None, "worker initialiser did not run"
    record = train_candidate(ArchGraph.from_json(graph_json), _WORKER_DATA, TrainConfig(**config))
    return record.to_dict()


class _InlineExecutor:
    """Runs each submitted job at once in this process (``workers=1``)."""

    def __init__(self, data: Dataset) -> None:
        self.data = data

    def submit(self, job: _Job, config: TrainConfig) -> cf.Future:
        future: cf.Future = cf.Future()
        record = _train_one(job.graph, self.data, dataclasses.replace(config, seed=job.seed))
        future.set_result(record.to_dict())
        return future

    def shutdown(self) -> None:
        pass


class _PoolExecutor:
    """Runs jobs in ``workers`` spawned processes, one torch thread each."""

    def __init__(self, data: Dataset, workers: int) -> None:
        self.pool = cf.ProcessPoolExecutor(
            max_workers=workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_worker_init,
            initargs=(data,),
        )

    def submit(self, job: _Job, config: TrainConfig) -> cf.Future:
        fields = dataclasses.asdict(dataclasses.replace(config, seed=job.seed, progress=False))
        return self.pool.submit(_worker_train, job.graph.to_json(), fields)

    def shutdown(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


# --------------------------------------------------------------------------- cache


class GroundTruthCache:
    """SQLite cache of trained results, safe for several processes.

    Args:
        path: The SQLite file; created (with its folder) when missing.
        timeout: Seconds a writer waits for a lock held by another process.
        claim_ttl: Seconds after which a claim that was not refreshed is
            considered abandoned and taken over.
        poll_interval: Seconds between checks for jobs another process is training.

    Raises:
        StorageError: The file is not an SQLite database or was written by a
            newer version of this cache.

    Examples:
        >>> cache = GroundTruthCache("runs/ground_truth.sqlite")  # doctest: +SKIP
        >>> table = cache.train_missing(graphs, data, TrainConfig(epochs=3), seeds=2)  # doctest: +SKIP
    """

    def __init__(
        self,
        path: str | Path,
        *,
        timeout: float = 60.0,
        claim_ttl: float = 600.0,
        poll_interval: float = 2.0,
    ) -> None:
        if timeout <= 0 or claim_ttl <= 0 or poll_interval <= 0:
            raise ValueError(
                f"`timeout`, `claim_ttl` and `poll_interval` must be positive, but got "
                f"{timeout}, {claim_ttl} and {poll_interval}."
            )
        self.path = Path(path)
        self.timeout = float(timeout)
        self.claim_ttl = float(claim_ttl)
        self.poll_interval = float(poll_interval)
        self.owner = new_owner_id()
        self._local = threading.local()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._init_schema()

    def __repr__(self) -> str:
        return f"GroundTruthCache({str(self.path)!r})"

    # ------------------------------------------------------------ connection

    def _connect(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is not None and getattr(self._local, "pid", None) == os.getpid():
            return conn
        try:
            conn = sqlite3.connect(self.path, timeout=self.timeout, isolation_level=None)
            conn.execute(f"PRAGMA busy_timeout = {int(self.timeout * 1000)}")
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
        except sqlite3.DatabaseError as err:
            raise StorageError(f"ground-truth cache {str(self.path)!r} is not a usable SQLite file: {err}.") from None
        self._local.conn, self._local.pid = conn, os.getpid()
        return conn

    def _init_schema(self) -> None:
        conn = self._connect()
        try:
            conn.executescript(
                """
                CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
                CREATE TABLE IF NOT EXISTS results (
                    arch_key TEXT NOT NULL, dataset TEXT NOT NULL, budget TEXT NOT NULL, seed INTEGER NOT NULL,
                    graph TEXT NOT NULL,
                    val_loss REAL, val_acc REAL, test_loss REAL, test_acc REAL, train_loss REAL,
                    steps INTEGER, wall_time REAL, failed INTEGER NOT NULL, error TEXT,
                    created_at REAL NOT NULL,
                    PRIMARY KEY (arch_key, dataset, budget, seed)
                );
                CREATE TABLE IF NOT EXISTS claims (
                    arch_key TEXT NOT NULL, dataset TEXT NOT NULL, budget TEXT NOT NULL, seed INTEGER NOT NULL,
                    owner TEXT NOT NULL, claimed_at REAL NOT NULL,
                    PRIMARY KEY (arch_key, dataset, budget, seed)
                );
                """
            )
            conn.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
            (version,) = conn.execute("SELECT value FROM meta WHERE name = 'schema_version'").fetchone()
        except sqlite3.DatabaseError as err:
            raise StorageError(f"ground-truth cache {str(self.path)!r} is not a usable SQLite file: {err}.") from None
        if int(version) > SCHEMA_VERSION:
            raise StorageError(
                f"ground-truth cache {str(self.path)!r} has schema version {version}, newer than this code "
                f"reads ({SCHEMA_VERSION}); upgrade ghn-nas or use another cache file."
            )

    def close(self) -> None:
        """Close this thread's connection (it reopens on the next use)."""
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    # ------------------------------------------------------------ get / put

    def __len__(self) -> int:
        return int(self._connect().execute("SELECT COUNT(*) FROM results").fetchone()[0])

    def get(
        self, graph: ArchGraph | str, data: Dataset | str, budget: TrainConfig | float, seed: int
    ) -> GroundTruthRecord | None:
        """The stored result, or ``None``.

        Args:
            graph: The candidate or its canonical key.
            data: The dataset or its :func:`dataset_key`.
            budget: The training budget (its ``seed`` is ignored).
            seed: The training seed.
        """
        key = graph.key if isinstance(graph, ArchGraph) else str(graph)
        dkey = data if isinstance(data, str) else dataset_key(data)
        return self._get(key, dkey, budget_key(_as_config(budget)), int(seed))

    def _get(self, key: str, dkey: str, bkey: str, seed: int) -> GroundTruthRecord | None:
        row = self._connect().execute(
            f"SELECT {', '.join(_RESULT_FIELDS)} FROM results "
            "WHERE arch_key = ? AND dataset = ? AND budget = ? AND seed = ?",
            (key, dkey, bkey, seed),
        ).fetchone()
        if row is None:
            return None
        values = dict(zip(_RESULT_FIELDS, row))
        for name in ("val_loss", "val_acc", "test_loss", "test_acc", "train_loss", "wall_time"):
            values[name] = math.nan if values[name] is None else float(values[name])
        values["steps"] = int(values["steps"] or 0)
        values["failed"] = bool(values["failed"])
        return GroundTruthRecord(**values)

    def put(
        self,
        graph: ArchGraph,
        data: Dataset | str,
        budget: TrainConfig | float,
        seed: int,
        record: GroundTruthRecord,
    ) -> None:
        """Store (or replace) a result; committed before returning."""
        dkey = data if isinstance(data, str) else dataset_key(data)
        self._put(graph, dkey, budget_key(_as_config(budget)), int(seed), record)

    def _put(self, graph: ArchGraph, dkey: str, bkey: str, seed: int, record: GroundTruthRecord) -> None:
        values = record.to_dict()
        for name, value in values.items():
            if isinstance(value, float) and not math.isfinite(value):
                values[name] = None  # SQLite has no NaN
        conn = self._connect()
        with _transaction(conn):
            conn.execute(
                f"INSERT OR REPLACE INTO results (arch_key, dataset, budget, seed, graph, "
                f"{', '.join(_RESULT_FIELDS)}, created_at) VALUES ({', '.join('?' * (len(_RESULT_FIELDS) + 6))})",
                (graph.key, dkey, bkey, seed, graph.to_json(), *(values[n] for n in _RESULT_FIELDS), time.time()),
            )
            conn.execute(
                "DELETE FROM claims WHERE arch_key = ? AND dataset = ? AND budget = ? AND seed = ?",
                (graph.key, dkey, bkey, seed),
            )

    # ------------------------------------------------------------ claims

    def _claim(self, job: _Job, dkey: str, bkey: str) -> str:
        """``"done"`` (a result exists), ``"busy"`` (another live process has it) or ``"mine"``."""
        conn = self._connect()
        ident = (job.key, dkey, bkey, job.seed)
        where = "arch_key = ? AND dataset = ? AND budget = ? AND seed = ?"
        with _transaction(conn, immediate=True):
            if conn.execute(f"SELECT 1 FROM results WHERE {where}", ident).fetchone():
                return "done"
            row = conn.execute(f"SELECT owner, claimed_at FROM claims WHERE {where}", ident).fetchone()
            if row is not None and row[0] != self.owner and not self._stale(row[0], row[1]):
                return "busy"
            conn.execute("INSERT OR REPLACE INTO claims VALUES (?, ?, ?, ?, ?, ?)", (*ident, self.owner, time.time()))
        return "mine"

    def _stale(self, owner: str, claimed_at: float) -> bool:
        if time.time() - claimed_at > self.claim_ttl:
            return True
        return owner_dead(owner)

    def _release(self, jobs: Iterable[_Job], dkey: str, bkey: str) -> None:
        conn = self._connect()
        with _transaction(conn):
            conn.executemany(
                "DELETE FROM claims WHERE arch_key = ? AND dataset = ? AND budget = ? AND seed = ? AND owner = ?",
                [(j.key, dkey, bkey, j.seed, self.owner) for j in jobs],
            )

    def _refresh_claims(self) -> None:
        conn = self._connect()
        with _transaction(conn):
            conn.execute("UPDATE claims SET claimed_at = ? WHERE owner = ?", (time.time(), self.owner))

    # ------------------------------------------------------------ bulk

    def table(
        self,
        candidates: Sequence[ArchGraph | Candidate],
        data: Dataset,
        budget: TrainConfig | float,
        seeds: int | Sequence[int] = 2,
    ) -> pd.DataFrame:
        """Stored results of ``candidates`` x ``seeds`` as a long table (missing rows absent).

        Returns:
            Columns ``key``, ``seed`` and the :class:`GroundTruthRecord` fields.
        """
        import pandas as pd

        graphs = _as_graphs(candidates)
        dkey, bkey = dataset_key(data), budget_key(_as_config(budget))
        rows = []
        for graph in graphs:
            for seed in _as_seeds(seeds):
                record = self._get(graph.key, dkey, bkey, seed)
                if record is not None:
                    rows.append({"key": graph.key, "seed": seed, **record.to_dict()})
        return pd.DataFrame(rows, columns=["key", "seed", *_RESULT_FIELDS])

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
        """Train every (candidate, seed) pair the cache lacks, then return all results.

        Each result is committed as soon as it is done, so an interrupted call
        loses at most the runs in flight; calling again resumes. Runs another
        process is training are waited for, not repeated.

        Args:
            candidates: The candidates (duplicates by canonical key are trained once).
            data: The dataset.
            budget: A :class:`TrainConfig` (its ``seed`` is replaced by each
                training seed) or a number of epochs with default settings.
            seeds: Number of training seeds (``0..seeds-1``) or the seeds.
            workers: Parallel training processes (spawned; one torch thread
                each). ``1`` trains in this process.
            progress: Show a tqdm progress bar.

        Returns:
            One row per (candidate, seed), in candidate-then-seed order, with
            columns ``key``, ``seed``, the :class:`GroundTruthRecord` fields and
            ``cached`` (False for runs trained by this call).

        Raises:
            ValueError: ``workers`` is below 1, or bad ``budget`` / ``seeds``.
            RuntimeError: Called while a spawned worker imports the main
                script (a script without ``if __name__ == "__main__":``),
                which would otherwise wait forever for the parent's runs.
        """
        import pandas as pd

        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise ValueError(f"`workers` must be a positive int, but got {workers!r}.")
        if getattr(multiprocessing.current_process(), "_inheriting", False):
            # A spawned worker re-imports the main script; without the guard it would
            # reach this call again and wait for the claims its parent holds.
            raise RuntimeError(
                "train_missing was called while a worker process was importing the main script; put the "
                "script's top-level code under `if __name__ == \"__main__\":` to use workers > 1."
            )
        graphs = _as_graphs(candidates)
        config = _as_config(budget)
        seed_list = _as_seeds(seeds)
        dkey, bkey = dataset_key(data), budget_key(config)
        unique = list({g.key: g for g in graphs}.values())
        jobs = [_Job(g.key, g, s) for g in unique for s in seed_list]
        records: dict[tuple[str, int], GroundTruthRecord] = {}
        for job in jobs:
            record = self._get(job.key, dkey, bkey, job.seed)
            if record is not None:
                records[job.key, job.seed] = record
        cached = set(records)
        pending = collections.deque(j for j in jobs if (j.key, j.seed) not in records)
        if pending:
            logger.info(
                "ground truth: %d of %d runs cached in %s; training %d with %d worker(s)",
                len(cached), len(jobs), self.path, len(pending), workers,
            )
        bar = tqdm(total=len(jobs), initial=len(cached), desc="ground truth", unit="run", disable=not progress)
        executor: _InlineExecutor | _PoolExecutor | None = None
        in_flight: dict[cf.Future, _Job] = {}
        try:
            with PeriodicThread(self._refresh_claims, interval=self.claim_ttl / 4, name="ground-truth-heartbeat",
                                on_stop=self.close):
                waiting: list[_Job] = []
                while pending or in_flight or waiting:
                    if not pending and not in_flight:
                        time.sleep(self.poll_interval)  # others are training the rest
                        pending.extend(waiting)
                        waiting.clear()
                    while pending and len(in_flight) < workers:
                        job = pending.popleft()
                        state = self._claim(job, dkey, bkey)
                        if state == "done":
                            record = self._get(job.key, dkey, bkey, job.seed)
                            assert record is not None
                            records[job.key, job.seed] = record
                            cached.add((job.key, job.seed))
                            bar.update()
                        elif state == "busy":
                            waiting.append(job)
                        else:
                            if executor is None:
                                executor = _InlineExecutor(data) if workers == 1 else _PoolExecutor(data, workers)
                            try:
                                in_flight[executor.submit(job, config)] = job
                            except BaseException:
                                self._release([job], dkey, bkey)
                                raise
                    if in_flight:
                        done, _ = cf.wait(in_flight, timeout=self.poll_interval, return_when=cf.FIRST_COMPLETED)
                        for future in done:
                            job = in_flight.pop(future)
                            record = GroundTruthRecord(**future.result())
                            self._put(job.graph, dkey, bkey, job.seed, record)
                            records[job.key, job.seed] = record
                            bar.update()
                            bar.set_postfix(val_loss=f"{record.val_loss:.3f}", refresh=False)
        finally:
            bar.close()
            if executor is not None:
                executor.shutdown()  # lets the runs in flight finish, cancels the rest
            for future, job in list(in_flight.items()):  # keep what finished before an error
                if future.done() and not future.cancelled() and future.exception() is None:
                    self._put(job.graph, dkey, bkey, job.seed, GroundTruthRecord(**future.result()))
                    del in_flight[future]
            if in_flight:
                self._release(in_flight.values(), dkey, bkey)
        rows = []
        for graph in graphs:
            for seed in seed_list:
                record = records[graph.key, seed]
                rows.append({"key": graph.key, "seed": seed, **record.to_dict(), "cached": (graph.key, seed) in cached})
        return pd.DataFrame(rows, columns=["key", "seed", *_RESULT_FIELDS, "cached"])


class _transaction:
    """``BEGIN`` (or ``BEGIN IMMEDIATE``) ... ``COMMIT``, rolled back on error."""

    def __init__(self, conn: sqlite3.Connection, *, immediate: bool = False) -> None:
        self.conn = conn
        self.begin = "BEGIN IMMEDIATE" if immediate else "BEGIN"

    def __enter__(self) -> sqlite3.Connection:
        self.conn.execute(self.begin)
        return self.conn

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        self.conn.execute("ROLLBACK" if exc_type is not None else "COMMIT")

