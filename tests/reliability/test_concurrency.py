"""Several ``nas worker`` processes on one campaign, on PostgreSQL and on Optuna's journal file.

The rank stage runs in this process and queues the top-4 candidates; then
three ``nas worker`` subprocesses start together (a barrier after their
imports; the two survivors start claiming once the victim holds a trial) and
fine-tune the queue, each unit of work slowed to a second so that they really
overlap. The victim is killed with SIGKILL in the middle of its first trial. Checked at the end:

* every queued candidate was fine-tuned exactly once: one COMPLETE trial per
  key in the storage, and one finished training per key in the work log;
* the killed worker's trial is FAIL, its candidate was re-queued
  (``nas_retry_of``) and finished by another worker;
* at least two workers trained at the same time.

On PostgreSQL the killed worker reports another host name, so the others
cannot see that its process is gone: only the heartbeats (Optuna's and the
campaign's) reveal it. On the journal file it is on this host and its dead
pid gives it away.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from _helpers import HOOK, TINY, base_env, read_log, run_subprocess

pytestmark = pytest.mark.slow

WORKERS = 3
TOP_K = 4
UNIT_DELAY = 1.0
HEARTBEAT, GRACE = 1, 3


def _queue_campaign(storage: str, out: Path, ghn: Path, study: str) -> None:
    """Rank stage and queue in this process (40 random trials find >= 4 of the 6 candidates but for odds of 1e-10)."""
    from nas.campaign import Campaign

    campaign = Campaign(
        space=TINY, dataset="digits", ghn=str(ghn), trials=40, top_k=TOP_K, finetune_epochs=1, sampler="random",
        storage=storage, study=study, out=out, seed=0, batch_size=16, progress=False,
        heartbeat_interval=HEARTBEAT, grace_period=GRACE,
    )
    campaign.open()
    campaign.rank()
    assert len(campaign.enqueue()) == TOP_K


def _run_workers(storage: str, study: str, out: Path, ghn: Path, tmp: Path, *, victim_host: str | None) -> Path:
    """Start the workers together, SIGKILL worker 0 inside its first trial, wait for the rest."""
    log = tmp / "work.log"
    argv = [
        "worker", "--storage", storage, "--study", study, "--out", str(out), "--ghn", str(ghn), "--no-progress",
        "--heartbeat-interval", str(HEARTBEAT), "--grace-period", str(GRACE),
    ]
    procs = []
    for i in range(WORKERS):
        env = base_env(
            tmp, NAS_TEST_WORK_LOG=str(log), NAS_TEST_RUN=f"w{i}", NAS_TEST_UNIT_DELAY=str(UNIT_DELAY),
            NAS_TEST_BARRIER=f"{tmp / 'barrier'}:{WORKERS}",
        )
        if i == 0 and victim_host:
            env["NAS_TEST_FAKE_HOST"] = victim_host
        if i > 0:  # the victim claims a trial first, so it cannot find the queue already empty
            env["NAS_TEST_AFTER"] = "w0:train:start"
        procs.append(subprocess.Popen(
            [sys.executable, str(HOOK), *argv], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL, text=True,
        ))
    try:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            if any(e["run"] == "w0" and e["kind"] == "train" and e["event"] == "start" for e in read_log(log)):
                break
            assert procs[0].poll() is None, f"worker 0 exited early:\n{procs[0].communicate()[1][-3000:]}"
            time.sleep(0.02)
        else:
            raise AssertionError("worker 0 never started a trial")
        time.sleep(random.Random(3).uniform(0, UNIT_DELAY * 0.6))
        os.kill(procs[0].pid, signal.SIGKILL)
        outputs = [p.communicate(timeout=600) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert procs[0].returncode == -signal.SIGKILL
    for p, (_, err) in zip(procs[1:], outputs[1:]):
        assert p.returncode == 0, err[-3000:]
    return log


def _check(storage: str, study: str, out: Path, ghn: Path, tmp: Path, log: Path) -> None:
    from nas.campaign import open_storage

    ft = optuna.load_study(study_name=f"{study}-finetune", storage=open_storage(storage))
    victim_pid = next(e["pid"] for e in read_log(log) if e["run"] == "w0")
    killed = [t for t in ft.get_trials(deepcopy=False) if f":{victim_pid}:" in str(t.user_attrs.get("nas_worker"))]
    assert len(killed) == 1
    if killed[0].state != TrialState.FAIL or ft.get_trials(states=(TrialState.WAITING, TrialState.RUNNING)):
        # The survivors ran out of queue before the victim's heartbeat went stale: a later worker
        # (as a rerun of `nas search` would) reaps the dead trial and fine-tunes the candidate.
        time.sleep(GRACE + 0.5)
        late = run_subprocess(
            ["worker", "--storage", storage, "--study", study, "--out", str(out), "--ghn", str(ghn),
             "--no-progress", "--heartbeat-interval", str(HEARTBEAT), "--grace-period", str(GRACE)],
            env=base_env(tmp, NAS_TEST_WORK_LOG=str(log), NAS_TEST_RUN="late"),
        )
        assert late.code == 0, late.err[-3000:]
    trials = ft.get_trials(deepcopy=False)
    victim = next(t for t in trials if t.number == killed[0].number)
    assert victim.state == TrialState.FAIL
    retries = [t for t in trials if t.user_attrs.get("nas_retry_of") == victim.number]
    assert len(retries) == 1 and retries[0].state == TrialState.COMPLETE
    assert retries[0].user_attrs["key"] == victim.user_attrs["key"]
    assert f":{victim_pid}:" not in retries[0].user_attrs["nas_worker_done"]

    complete = Counter(t.user_attrs["key"] for t in trials if t.state == TrialState.COMPLETE)
    assert len(complete) == TOP_K and set(complete.values()) == {1}, complete
    assert not [t for t in trials if t.state in (TrialState.WAITING, TrialState.RUNNING)]
    events = read_log(log)
    done = Counter(e["key"] for e in events if e["kind"] == "train" and e["event"] == "done")
    assert done == complete  # no candidate was trained twice, none was lost
    assert victim_pid not in {e["pid"] for e in events if e["kind"] == "train" and e["event"] == "done"}

    # The workers overlapped: some training started while another worker's was still running.
    spans: dict[int, list[tuple[float, float]]] = {}
    starts: dict[tuple[int, str], float] = {}
    for e in events:
        if e["kind"] == "train" and e["event"] == "start":
            starts[(e["pid"], e["key"])] = e["t"]
        elif e["kind"] == "train" and e["event"] == "done":
            spans.setdefault(e["pid"], []).append((starts[(e["pid"], e["key"])], e["t"]))
    assert len(spans) >= 2, f"only {len(spans)} worker(s) trained anything"
    flat = sorted((a, b, pid) for pid, items in spans.items() for a, b in items)
    assert any(a2 < b1 and p1 != p2 for (a1, b1, p1), (a2, b2, p2) in zip(flat, flat[1:])), flat


def test_three_workers_on_postgresql(postgres_url: str, tiny_ghn: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    _queue_campaign(postgres_url, out, tiny_ghn, "pg")
    log = _run_workers(postgres_url, "pg", out, tiny_ghn, tmp_path, victim_host="ghost-machine")
    _check(postgres_url, "pg", out, tiny_ghn, tmp_path, log)


def test_three_workers_on_journal_file(tiny_ghn: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    storage = f"journal://{tmp_path / 'campaign.log'}"
    _queue_campaign(storage, out, tiny_ghn, "jr")
    log = _run_workers(storage, "jr", out, tiny_ghn, tmp_path, victim_host=None)
    _check(storage, "jr", out, tiny_ghn, tmp_path, log)
