"""Benchmark: wall time of ``nas correlate``'s ground truth with 1 and 2 processes, locally and through a queue.

Four ways to train the same ground truth (``--archs`` candidates x 2 seeds):

* ``local, 1 process``: ``nas correlate`` with its SQLite cache (the default);
* ``local, 2 processes``: the same with ``--workers 2`` (a process pool);
* ``queue, 1 process``: ``nas correlate --storage journal:///... --study S`` alone;
* ``queue, 2 processes``: the same plus one ``nas worker --storage ... --study S``.

Each row starts from an empty cache or storage and times the whole command
(start-up included), so it is what a user waits. On a machine with 2 cores the
speed-up is bounded by 2; the queue's point is that the second process could be
on another machine. Results are printed and written to ``bench/results/queue.csv``.

Example::

    python bench/bench_queue.py --archs 12 --epochs 0.5
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

RESULTS = Path(__file__).resolve().parent / "results"


def _nas(*argv: str) -> list[str]:
    return [sys.executable, "-m", "nas", *argv]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--space", default="nb201")
    parser.add_argument("--space-arg", action="append", default=["C=8", "N=1"])
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--archs", type=int, default=12)
    parser.add_argument("--epochs", type=float, default=0.5)
    args = parser.parse_args(argv)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    common = ["correlate", "--space", args.space, *[x for a in args.space_arg for x in ("--space-arg", a)],
              "--dataset", args.dataset, "--archs", str(args.archs), "--epochs", str(args.epochs),
              "--methods", "params", "--no-progress", "--no-figures"]
    rows = []
    with tempfile.TemporaryDirectory() as tmp_text:
        tmp = Path(tmp_text)
        for way, processes in (("local", 1), ("local", 2), ("queue", 1), ("queue", 2)):
            out = tmp / f"{way}{processes}"
            start = time.perf_counter()
            if way == "local":
                subprocess.run(_nas(*common, "--out", str(out), "--workers", str(processes)), env=env, check=True,
                               capture_output=True)
            else:
                storage = f"journal://{tmp / f'{way}{processes}.log'}"
                coordinator = subprocess.Popen(_nas(*common, "--out", str(out), "--storage", storage, "--study", "b"),
                                               env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
                helpers = []
                if processes > 1:
                    for line in coordinator.stderr:  # the helpers start once the runs are queued
                        if "queued now" in line:
                            break
                    helpers = [subprocess.Popen(_nas("worker", "--storage", storage, "--study", "b", "--no-progress"),
                                                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
                               for _ in range(processes - 1)]
                _, err = coordinator.communicate()
                for h in helpers:
                    h.communicate()
                if coordinator.returncode:
                    raise RuntimeError(err[-2000:])
            seconds = time.perf_counter() - start
            runs = pd.read_csv(out / "candidates.csv")["gt_seconds"].sum() / 2
            rows.append({"way": way, "processes": processes, "wall_s": seconds, "runs": 2 * args.archs,
                         "train_cpu_s_per_run": runs / args.archs})
    table = pd.DataFrame(rows)
    for way in ("local", "queue"):
        one = float(table[(table["way"] == way) & (table["processes"] == 1)]["wall_s"].iloc[0])
        table.loc[table["way"] == way, "speedup_vs_1"] = one / table[table["way"] == way]["wall_s"]
    RESULTS.mkdir(parents=True, exist_ok=True)
    table.to_csv(RESULTS / "queue.csv", index=False)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
          f"{args.archs} candidates x 2 seeds, {args.epochs:g} epochs on {args.dataset}")
    print(table.round(2).to_string(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
