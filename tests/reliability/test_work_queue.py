"""Queued runs in an Optuna storage: ``nas correlate --storage`` and ``nas search --queue-labels`` with ``nas worker``.

The coordinator (``nas correlate --storage URL --study NAME``) queues 6 candidates x 2 seeds
and trains too; three ``nas worker --storage URL --study NAME`` processes join, each unit of
work slowed to a second so that they overlap, and worker 0 is SIGKILLed inside its first run.
Checked: every run finished exactly once (one COMPLETE trial per run, one finished training
per run in the work log, none by the victim), the victim's run was failed, re-queued and
finished by another process, and the tables equal a single-process run's.

A campaign with ``--queue-labels`` labels with one ``nas worker`` beside it: each label was
trained once, by both processes between them, and labels and ranker equal a campaign's that
labelled alone. The same with ``--rank-by short``, where the queued runs are the candidates'
own short trainings and the ranking equals a campaign's that trained them alone.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import optuna
import pandas as pd
import pytest
from optuna.trial import TrialState

from _helpers import HOOK, base_env, read_log, run_inprocess

pytestmark = pytest.mark.slow

WORKERS = 3
UNIT_DELAY = 1.0
#: The coordinator's runs are slower, so that the workers, which start once the queue exists, find work left.
COORDINATOR_DELAY = 4.0
HEARTBEAT, GRACE = 1, 3
CORRELATE = ["correlate", "--space", "nb201", "--space-arg", "C=4", "--space-arg", "N=1", "--dataset", "digits",
             "--archs", "6", "--epochs", "0.05", "--methods", "params,flops", "--no-progress", "--no-figures"]


def _start(argv: list[str], env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(HOOK), *argv], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)


def _wait_for(log: Path, run: str, proc: subprocess.Popen, what: str) -> None:
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if any(e["run"] == run and e["kind"] == "train" and e["event"] == "start" for e in read_log(log)):
            return
        assert proc.poll() is None, f"{what} exited early:\n{proc.communicate()[1][-3000:]}"
        time.sleep(0.02)
    raise AssertionError(f"{what} never started a run")


def _run(storage: str, tmp: Path, victim_host: str | None) -> tuple[Path, subprocess.CompletedProcess]:
    log = tmp / "work.log"
    timing = ["--heartbeat-interval", str(HEARTBEAT), "--grace-period", str(GRACE)]
    coordinator = _start([*CORRELATE, "--storage", storage, "--study", "ev", "--out", str(tmp / "queued"), *timing],
                         base_env(tmp, NAS_TEST_WORK_LOG=str(log), NAS_TEST_RUN="c",
                                               NAS_TEST_UNIT_DELAY=str(COORDINATOR_DELAY)))
    procs = []
    try:
        _wait_for(log, "c", coordinator, "the coordinator")  # the queue exists
        for i in range(WORKERS):
            env = base_env(tmp, NAS_TEST_WORK_LOG=str(log), NAS_TEST_RUN=f"w{i}", NAS_TEST_UNIT_DELAY=str(UNIT_DELAY),
                           NAS_TEST_BARRIER=f"{tmp / 'barrier'}:{WORKERS}")
            if i == 0 and victim_host:
                env["NAS_TEST_FAKE_HOST"] = victim_host
            if i > 0:
                env["NAS_TEST_AFTER"] = "w0:train:start"
            procs.append(_start(["worker", "--storage", storage, "--study", "ev", "--no-progress", *timing], env))
        _wait_for(log, "w0", procs[0], "worker 0")
        time.sleep(UNIT_DELAY * 0.3)
        os.kill(procs[0].pid, signal.SIGKILL)
        outputs = [p.communicate(timeout=600) for p in procs]
        out, err = coordinator.communicate(timeout=600)
    finally:
        for p in [coordinator, *procs]:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert procs[0].returncode == -signal.SIGKILL
    for p, (_, werr) in zip(procs[1:], outputs[1:]):
        assert p.returncode == 0, werr[-3000:]
    assert coordinator.returncode == 0, err[-3000:]
    return log, subprocess.CompletedProcess([], coordinator.returncode, out, err)


def _check(storage: str, tmp: Path, log: Path) -> None:
    from nas.campaign import open_storage

    gt = optuna.load_study(study_name="ev-gt", storage=open_storage(storage))
    trials = gt.get_trials(deepcopy=False)
    complete = Counter(t.user_attrs["choices"]["unit"] for t in trials if t.state == TrialState.COMPLETE)
    assert len(complete) == 12 and set(complete.values()) == {1}, complete  # 6 candidates x 2 seeds, once each
    assert not [t for t in trials if t.state in (TrialState.WAITING, TrialState.RUNNING)]
    events = read_log(log)
    victim_pid = next(e["pid"] for e in events if e["run"] == "w0")
    done = Counter((e["key"], e["seed"]) for e in events if e["kind"] == "train" and e["event"] == "done")
    assert len(done) == 12 and set(done.values()) == {1}, done  # no run trained twice, none lost
    assert victim_pid not in {e["pid"] for e in events if e["kind"] == "train" and e["event"] == "done"}
    killed = [t for t in trials if f":{victim_pid}:" in str(t.user_attrs.get("nas_worker"))]
    assert len(killed) == 1 and killed[0].state == TrialState.FAIL
    retry = [t for t in trials if t.user_attrs.get("nas_retry_of") == killed[0].number]
    assert len(retry) == 1 and retry[0].state == TrialState.COMPLETE
    assert len({e["pid"] for e in events if e["kind"] == "train" and e["event"] == "done"}) >= 2

    single = run_inprocess([*CORRELATE, "--out", str(tmp / "single")])
    assert single.code == 0, single.err
    columns = ["key", "gt_val_loss_s0", "gt_val_loss_s1", "gt_val_acc_s0", "gt_val_acc_s1"]
    queued = pd.read_csv(tmp / "queued" / "candidates.csv")[columns]
    alone = pd.read_csv(tmp / "single" / "candidates.csv")[columns]
    pd.testing.assert_frame_equal(queued, alone)
    a, b = (json.loads((tmp / name / "summary.json").read_text()) for name in ("queued", "single"))
    timing = {"seconds_per_candidate"}
    for method in ("params", "flops"):
        assert {k: v for k, v in a["methods"][method].items() if k not in timing} == {
            k: v for k, v in b["methods"][method].items() if k not in timing}
    assert a["noise_ceiling"] == b["noise_ceiling"]


def test_correlate_ground_truth_on_postgresql_with_three_workers(postgres_url: str, tmp_path: Path) -> None:
    log, _ = _run(postgres_url, tmp_path, victim_host="ghost-machine")
    _check(postgres_url, tmp_path, log)


def test_correlate_ground_truth_on_journal_file_with_three_workers(tmp_path: Path) -> None:
    storage = f"journal://{tmp_path / 'eval.log'}"
    log, _ = _run(storage, tmp_path, victim_host=None)
    _check(storage, tmp_path, log)


# ---------------------------------------------------------------- a campaign's labels over two processes

SEARCH = ["search", "--space", "nb201", "--space-arg", "C=4", "--space-arg", "N=1", "--dataset", "digits",
          "--ranker-labels", "10", "--ranker-k", "5", "--top-k", "1", "--finetune-epochs", "0.02",
          "--refine", "0", "--no-progress"]
#: Per --rank-by: the trials, and the cache of short trainings the queue fills (10 ranker labels, or 10 candidates).
RANK_MODES = {"ranker": (["--trials", "10", "--rank-by", "ranker"], "ranker_labels.csv"),
              "short": (["--trials", "10", "--rank-by", "short"], "rank_tse.csv")}


@pytest.mark.parametrize("rank_by", list(RANK_MODES))
def test_campaign_labels_over_two_processes_once_each_and_the_same_ranker(tmp_path: Path, rank_by: str) -> None:
    from nas.campaign import open_storage
    from nas.ghn import GHNRanker
    from search_spaces import NB201Space

    ghn = tmp_path / "ghn.pt"
    made = run_inprocess(["train-ghn", "--space", "nb201", "--space-arg", "C=4", "--space-arg", "N=1", "--dataset",
                          "digits", "--ghn-steps", "2", "--hidden", "16", "--layers", "1", "--num-held-out", "2",
                          "--no-progress", "--out", str(ghn)])
    assert made.code == 0, made.err
    storage = f"journal://{tmp_path / 'campaign.log'}"
    log = tmp_path / "work.log"
    timing = ["--heartbeat-interval", str(HEARTBEAT), "--grace-period", str(GRACE)]
    mode, cache = RANK_MODES[rank_by]
    coordinator = _start([*SEARCH, *mode, "--ghn", str(ghn), "--queue-labels", "--storage", storage, "--study", "lb",
                          "--out", str(tmp_path / "queued"), *timing],
                         base_env(tmp_path, NAS_TEST_WORK_LOG=str(log), NAS_TEST_RUN="c", NAS_TEST_UNIT_DELAY="1"))
    try:
        deadline = time.monotonic() + 300
        while not any(e["run"] == "c" and e["kind"] == "label" for e in read_log(log)):
            assert coordinator.poll() is None and time.monotonic() < deadline, coordinator.communicate()[1][-3000:]
            time.sleep(0.05)
        helper = _start(["worker", "--storage", storage, "--study", "lb", "--no-progress", *timing],
                        base_env(tmp_path, NAS_TEST_WORK_LOG=str(log), NAS_TEST_RUN="w", NAS_TEST_UNIT_DELAY="1"))
        _, herr = helper.communicate(timeout=600)
        _, err = coordinator.communicate(timeout=600)
    finally:
        for p in [coordinator, *([helper] if "helper" in locals() else [])]:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert coordinator.returncode == 0, err[-3000:]
    assert helper.returncode == 0, herr[-3000:]

    labels = optuna.load_study(study_name="lb-labels", storage=open_storage(storage)).get_trials(deepcopy=False)
    complete = Counter(t.user_attrs["choices"]["unit"] for t in labels if t.state == TrialState.COMPLETE)
    assert len(complete) == 10 and set(complete.values()) == {1}, complete
    events = [e for e in read_log(log) if e["kind"] == "label" and e["event"] == "done"]
    assert len(events) == 10 and len({e["key"] for e in events}) == 10  # each label trained once
    assert {e["run"] for e in events} == {"c", "w"}  # by both processes

    alone = run_inprocess([*SEARCH, *mode, "--ghn", str(ghn), "--out", str(tmp_path / "alone")])
    assert alone.code == 0, alone.err
    queued_labels = pd.read_csv(tmp_path / "queued" / cache).set_index("key")["tse"]
    alone_labels = pd.read_csv(tmp_path / "alone" / cache).set_index("key")["tse"]
    pd.testing.assert_series_equal(queued_labels.sort_index(), alone_labels.sort_index())
    if rank_by == "short":  # the candidates themselves, scored by their own queued runs: the same ranking
        queued = pd.read_csv(tmp_path / "queued" / "candidates.csv").set_index("key")["rank_score"]
        by_alone = pd.read_csv(tmp_path / "alone" / "candidates.csv").set_index("key")["rank_score"]
        pd.testing.assert_series_equal(queued.sort_index(), by_alone.sort_index())
        assert set(queued.index) == set(queued_labels.index)
        return
    graphs = [c.graph for c in NB201Space(input_shape=(1, 8, 8), num_classes=10, C=4, N=1).sample_many(8, seed=9)]
    a = GHNRanker.load(tmp_path / "queued" / "ranker.pt").score(graphs)
    b = GHNRanker.load(tmp_path / "alone" / "ranker.pt").score(graphs)
    assert [round(float(x), 6) for x in a] == [round(float(x), 6) for x in b]
