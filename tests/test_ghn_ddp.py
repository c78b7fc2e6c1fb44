"""Data-parallel GHN meta-training: ``torchrun --nproc-per-node 2 -m nas train-ghn`` on 2 CPU processes (gloo)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


from nas.ghn import GHN

ARGS = ["train-ghn", "--space", "nb201", "--space-arg", "C=4", "--space-arg", "N=1", "--dataset", "digits",
        "--meta-batch", "4", "--batch-size", "16", "--hidden", "16", "--layers", "1", "--eval-every", "2",
        "--num-held-out", "2", "--no-progress"]
#: Largest difference allowed between one process and two (float sums in another order).
TOLERANCE = 1e-5


def _run(out: Path, steps: int, processes: int) -> None:
    launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}"] if processes > 1 else []
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, *launcher, "-m", "nas", *ARGS, "--ghn-steps", str(steps), "--out", str(out)],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]


def test_two_processes_follow_one_process_and_resume(tmp_path: Path) -> None:
    _run(tmp_path / "one.pt", 4, 1)
    _run(tmp_path / "two.pt", 2, 2)  # killed after 2 steps, as it were ...
    _run(tmp_path / "two.pt", 4, 2)  # ... and resumed by the same command with 4
    one, two = GHN.load(tmp_path / "one.pt"), GHN.load(tmp_path / "two.pt")
    assert [r["step"] for r in two.history] == [r["step"] for r in one.history] == [2, 4]
    for a, b in zip(one.history, two.history):
        assert abs(a["train_loss"] - b["train_loss"]) <= TOLERANCE
        assert abs(a["held_out_acc"] - b["held_out_acc"]) <= TOLERANCE
    params = dict(two.named_parameters())
    diff = max(float((p - params[name]).abs().max()) for name, p in one.named_parameters())
    assert diff <= TOLERANCE
