"""Ground-truth cache: reuse, resume after an interruption, keys, several processes."""

from __future__ import annotations

import dataclasses
import math
import os
import socket
import sqlite3
import threading
import time
from pathlib import Path

import pytest
import torch

from nas.data import Dataset, load_dataset
from nas.evaluation import ground_truth
from nas.evaluation.ground_truth import GroundTruthCache, GroundTruthRecord, budget_key, dataset_key
from nas.exceptions import StorageError
from nas.graph import ArchGraph, GraphBuilder
from nas.training import TrainConfig

BUDGET = TrainConfig(epochs=1, batch_size=64)


def _graph(width: int, kernel: int = 3) -> ArchGraph:
    b = GraphBuilder((1, 8, 8))
    x = b.add("conv", b.input, out_channels=width, kernel=kernel)
    x = b.add("relu", x)
    x = b.add("global_avg_pool", x)
    return b.build(b.add("linear", x, out_features=10))


@pytest.fixture(scope="module")
def data() -> Dataset:
    return load_dataset("digits", max_train=192)


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int]]:
    """Count the training runs (the in-process path calls ground_truth._train_one)."""
    made: list[tuple[str, int]] = []
    real = ground_truth.train_candidate

    def counting(graph: ArchGraph, data: Dataset, config: TrainConfig) -> GroundTruthRecord:
        made.append((graph.key, config.seed))
        return real(graph, data, config)

    monkeypatch.setattr(ground_truth, "_train_one", counting)
    return made


def test_second_run_trains_nothing_and_larger_n_reuses(tmp_path: Path, data: Dataset, calls: list) -> None:
    graphs = [_graph(2), _graph(3), _graph(4)]
    cache = GroundTruthCache(tmp_path / "gt.sqlite")
    first = cache.train_missing(graphs, data, BUDGET, seeds=2, progress=False)
    assert len(calls) == 6 and not first["cached"].any()
    assert first["val_loss"].notna().all() and (first["steps"] == 3).all()
    # Seeds differ: two runs of one candidate give different losses.
    assert first.loc[0, "val_loss"] != first.loc[1, "val_loss"]

    again = GroundTruthCache(tmp_path / "gt.sqlite").train_missing(graphs, data, BUDGET, seeds=2, progress=False)
    assert len(calls) == 6 and again["cached"].all()
    assert again["val_loss"].tolist() == first["val_loss"].tolist()

    more = cache.train_missing([*graphs, _graph(5)], data, BUDGET, seeds=[0, 1, 2], progress=False)
    assert len(calls) == 6 + 3 + 3  # seed 2 for the three old ones, seeds 0-2 for the new one
    assert more["cached"].sum() == 6 and len(cache) == 12


def test_interrupted_run_resumes(tmp_path: Path, data: Dataset, monkeypatch: pytest.MonkeyPatch) -> None:
    graphs = [_graph(2), _graph(3), _graph(4)]
    done: list[tuple[str, int]] = []

    def crashing(graph: ArchGraph, data: Dataset, config: TrainConfig) -> GroundTruthRecord:
        if len(done) == 2:
            raise KeyboardInterrupt  # as a user's Ctrl-C mid-run
        done.append((graph.key, config.seed))
        return ground_truth.train_candidate(graph, data, config)

    monkeypatch.setattr(ground_truth, "_train_one", crashing)
    cache = GroundTruthCache(tmp_path / "gt.sqlite")
    with pytest.raises(KeyboardInterrupt):
        cache.train_missing(graphs, data, BUDGET, seeds=2, progress=False)
    assert len(cache) == 2  # committed as they finished
    with sqlite3.connect(tmp_path / "gt.sqlite") as conn:
        assert conn.execute("SELECT COUNT(*) FROM claims").fetchone()[0] == 0  # claims released

    resumed: list[tuple[str, int]] = []

    def counting(graph: ArchGraph, data: Dataset, config: TrainConfig) -> GroundTruthRecord:
        resumed.append((graph.key, config.seed))
        return ground_truth.train_candidate(graph, data, config)

    monkeypatch.setattr(ground_truth, "_train_one", counting)
    table = cache.train_missing(graphs, data, BUDGET, seeds=2, progress=False)
    assert len(resumed) == 4 and not set(resumed) & set(done)
    assert table["cached"].sum() == 2 and table["val_loss"].notna().all()


def test_dataset_key_is_reused_until_a_split_changes_in_place(monkeypatch: pytest.MonkeyPatch) -> None:
    data = load_dataset("digits", max_train=64)
    first = dataset_key(data)
    hashed = []
    real = ground_truth.hashlib.blake2b
    monkeypatch.setattr(ground_truth.hashlib, "blake2b", lambda **kw: hashed.append(1) or real(**kw))
    assert dataset_key(data) == first and not hashed  # the same object: no second hash
    data.y_val[0] = (data.y_val[0] + 1) % data.num_classes  # an in-place change
    assert dataset_key(data) != first and len(hashed) == 1
    with torch.inference_mode():  # no version counter: hashed every time, same key as a normal copy
        frozen = load_dataset("digits", max_train=64)
    assert dataset_key(frozen) == first


def test_keys_separate_budgets_and_datasets(tmp_path: Path, data: Dataset) -> None:
    assert budget_key(BUDGET) == budget_key(dataclasses.replace(BUDGET, seed=7, device="cuda", progress=True))
    assert budget_key(BUDGET) != budget_key(dataclasses.replace(BUDGET, lr=0.1))
    assert budget_key(BUDGET) != budget_key(dataclasses.replace(BUDGET, epochs=2))
    assert dataset_key(data) == dataset_key(load_dataset("digits", max_train=192))
    assert dataset_key(data) != dataset_key(load_dataset("digits", max_train=192, seed=1))

    cache = GroundTruthCache(tmp_path / "gt.sqlite")
    graph = _graph(2)
    record = GroundTruthRecord(1.5, 0.5, 1.6, 0.4, 1.4, 3, 0.1, False)
    cache.put(graph, data, BUDGET, 0, record)
    assert cache.get(graph, data, BUDGET, 0) == record
    assert cache.get(graph.key, dataset_key(data), dataclasses.replace(BUDGET, device="cuda"), 0) == record
    assert cache.get(graph, data, BUDGET, 1) is None
    assert cache.get(graph, data, dataclasses.replace(BUDGET, lr=0.1), 0) is None
    assert cache.get(_graph(3), data, BUDGET, 0) is None


def test_failed_run_round_trips_nan(tmp_path: Path, data: Dataset) -> None:
    cache = GroundTruthCache(tmp_path / "gt.sqlite")
    record = GroundTruthRecord(math.nan, math.nan, math.nan, math.nan, math.nan, 2, 0.2, True, "diverged")
    cache.put(_graph(2), data, 1.0, 0, record)
    back = cache.get(_graph(2), data, TrainConfig(epochs=1.0), 0)
    assert back is not None and back.failed and back.error == "diverged" and math.isnan(back.val_loss)


def test_waits_for_a_run_another_process_claimed(tmp_path: Path, data: Dataset, calls: list) -> None:
    path = tmp_path / "gt.sqlite"
    cache = GroundTruthCache(path, poll_interval=0.05)
    mine, theirs = _graph(2), _graph(3)
    other = f"{socket.gethostname()}:{os.getpid()}:other"  # a live process
    with sqlite3.connect(path) as conn:
        conn.execute(
            "INSERT INTO claims VALUES (?, ?, ?, ?, ?, ?)",
            (theirs.key, dataset_key(data), budget_key(BUDGET), 0, other, time.time()),
        )
    record = GroundTruthRecord(2.0, 0.3, 2.1, 0.3, 2.0, 3, 0.1, False)

    def finish_theirs() -> None:
        time.sleep(0.5)
        GroundTruthCache(path).put(theirs, data, BUDGET, 0, record)

    thread = threading.Thread(target=finish_theirs)
    thread.start()
    table = cache.train_missing([mine, theirs], data, BUDGET, seeds=1, progress=False)
    thread.join()
    assert calls == [(mine.key, 0)]
    assert table.set_index("key").loc[theirs.key, "val_loss"] == 2.0


def test_stale_claim_is_taken_over(tmp_path: Path, data: Dataset, calls: list) -> None:
    path = tmp_path / "gt.sqlite"
    cache = GroundTruthCache(path, claim_ttl=60.0, poll_interval=0.05)
    graph = _graph(2)
    with sqlite3.connect(path) as conn:
        conn.execute(
            "INSERT INTO claims VALUES (?, ?, ?, ?, ?, ?)",
            (graph.key, dataset_key(data), budget_key(BUDGET), 0, "elsewhere:1:x", time.time() - 3600),
        )
    cache.train_missing([graph], data, BUDGET, seeds=1, progress=False)
    assert calls == [(graph.key, 0)]


def test_workers_train_in_spawned_processes(tmp_path: Path, data: Dataset, calls: list) -> None:
    # One job, so the pool starts a single process (each spawned process
    # imports torch: seconds on a busy machine); the path is the same for many.
    graph = _graph(3, kernel=1)
    cache = GroundTruthCache(tmp_path / "gt.sqlite")
    table = cache.train_missing([graph], data, BUDGET, seeds=[1], workers=2, progress=False)
    assert calls == []  # trained in a worker process, not here
    assert len(cache) == 1 and not table.loc[0, "cached"]
    direct = ground_truth.train_candidate(graph, data, dataclasses.replace(BUDGET, seed=1))
    assert table.loc[0, "val_loss"] == pytest.approx(direct.val_loss, rel=1e-4)
    assert table.loc[0, "steps"] == direct.steps


def test_bad_arguments(tmp_path: Path, data: Dataset) -> None:
    bad = tmp_path / "bad.sqlite"
    bad.write_bytes(b"this is not a database" * 100)
    with pytest.raises(StorageError, match="bad.sqlite"):
        GroundTruthCache(bad)
    cache = GroundTruthCache(tmp_path / "gt.sqlite")
    with pytest.raises(ValueError, match="workers"):
        cache.train_missing([_graph(2)], data, BUDGET, workers=0)
    with pytest.raises(ValueError, match="seeds"):
        cache.train_missing([_graph(2)], data, BUDGET, seeds=[1, 1])


def test_budget_key_treats_int_and_float_epochs_alike() -> None:
    from nas.evaluation.ground_truth import budget_key

    assert budget_key(TrainConfig(epochs=3)) == budget_key(TrainConfig(epochs=3.0))
    assert budget_key(TrainConfig(epochs=3)) != budget_key(TrainConfig(epochs=4))


def test_a_script_without_a_main_guard_fails_instead_of_waiting_forever(tmp_path: Path) -> None:
    # Spawned workers re-import the main script; without `if __name__ == "__main__":` each one
    # calls train_missing again and would wait for the claims of its parent.
    import subprocess
    import sys

    script = tmp_path / "unguarded.py"
    script.write_text(
        "from nas.data import load_dataset\n"
        "from nas.evaluation.ground_truth import GroundTruthCache\n"
        "from nas.graph import GraphBuilder\n"
        "from nas.training import TrainConfig\n"
        "b = GraphBuilder((1, 8, 8))\n"
        "g = b.build(b.add('linear', b.add('global_avg_pool', b.input), out_features=10))\n"
        f"cache = GroundTruthCache({str(tmp_path / 'gt.sqlite')!r})\n"
        "cache.train_missing([g], load_dataset('digits', max_train=64), TrainConfig(epochs=1), seeds=[0],\n"
        "                    workers=2, progress=False)\n"
    )
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300,
                          cwd=tmp_path)
    assert done.returncode != 0
    assert 'if __name__ == "__main__":' in done.stderr
    assert len(GroundTruthCache(tmp_path / "gt.sqlite")) == 0
