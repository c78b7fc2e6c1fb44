"""Benchmark: wall time of ground truth and ranker labels with 1 and 2 processes, locally and through a queue.

For each stage, four ways to do the same work:

* ``local, 1``: one process (ground truth: ``nas correlate`` with its SQLite
  cache; labels: :func:`nas.ghn.short_training_labels` with ``workers=1``);
* ``local, 2``: a process pool of 2 (``--workers 2`` / ``workers=2``);
* ``queue, 1``: the runs queued in an Optuna journal file and done by the
  process that queued them (``nas correlate --storage``; labels with ``queue=``);
* ``queue, 2``: the same plus one ``nas worker --storage ... --study ...``,
  started once runs are queued.

Every row starts from an empty cache or storage and times the whole call
(start-up included for the commands). On 2 cores the speed-up is bounded by 2;
the queue's point is that the second process could be on another machine.
Results are printed and written to ``bench/results/queue.csv``.

Example::

    python bench/bench_queue.py                       # 20 candidates x 2 seeds x 3 epochs, 60 labels
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

#: Waits until the queue study holds runs, then becomes ``nas worker`` (argv: storage, study, queue).
_HELPER = """
import sys, time, optuna
from nas.campaign import open_storage
storage, study, queue = sys.argv[1:4]
opened = open_storage(storage)
while True:
    try:
        s = optuna.load_study(study_name=study + queue, storage=opened)
        if s.get_trials(deepcopy=False):  # runs are queued (or, on a fast machine, already done)
            break
    except KeyError:
        pass
    time.sleep(0.05)
from nas.cli import main
sys.exit(main(["worker", "--storage", storage, "--study", study, "--no-progress"]))
"""


def _helper(storage: str, study: str, queue: str, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", _HELPER, storage, study, queue], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _ground_truth(args: argparse.Namespace, tmp: Path, way: str, processes: int, env: dict[str, str]) -> None:
    common = ["correlate", "--space", args.space, *[x for a in args.space_arg for x in ("--space-arg", a)],
              "--dataset", args.dataset, "--archs", str(args.archs), "--epochs", str(args.epochs),
              "--methods", "params", "--no-progress", "--no-figures", "--out", str(tmp / f"gt-{way}{processes}")]
    command = [sys.executable, "-m", "nas", *common]
    if way == "local":
        subprocess.run([*command, "--workers", str(processes)], env=env, check=True, capture_output=True)
        return
    storage = f"journal://{tmp / f'gt-{way}{processes}.log'}"
    helpers = [_helper(storage, "b", "-gt", env) for _ in range(processes - 1)]
    done = subprocess.run([*command, "--storage", storage, "--study", "b"], env=env, capture_output=True, text=True)
    for h in helpers:
        h.communicate()
    if done.returncode:
        raise RuntimeError(done.stderr[-2000:])


def _labels(args: argparse.Namespace, tmp: Path, way: str, processes: int, env: dict[str, str]) -> None:
    from nas.data import load_dataset
    from nas.ghn import short_training_labels
    from nas.space import load_space
    from nas.campaign import QueuedLabels

    data = load_dataset(args.dataset)
    settings = dict(a.split("=", 1) for a in args.space_arg)
    space = load_space(args.space, input_shape=data.input_shape, num_classes=data.num_classes,
                       **{k: int(v) for k, v in settings.items()})
    cache = tmp / f"labels-{way}{processes}.csv"
    if way == "local":
        short_training_labels(space, data, args.labels, k=args.k, cache=cache, workers=processes, progress=False)
        return
    storage = f"journal://{tmp / f'labels-{way}{processes}.log'}"
    helpers = [_helper(storage, "b", "-labels", env) for _ in range(processes - 1)]
    queue = QueuedLabels(storage, "b", dataset={"name": args.dataset, "seed": 0, "max_train": None})
    short_training_labels(space, data, args.labels, k=args.k, cache=cache, progress=False, queue=queue)
    for h in helpers:
        h.communicate()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--space", default="nb201")
    parser.add_argument("--space-arg", action="append", default=None, help="KEY=INT (default C=8, N=1)")
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--archs", type=int, default=20, help="ground-truth candidates (2 seeds each)")
    parser.add_argument("--epochs", type=float, default=3.0, help="ground-truth epochs")
    parser.add_argument("--labels", type=int, default=60, help="ranker labels")
    parser.add_argument("--k", type=int, default=30, help="SGD steps per label")
    args = parser.parse_args(argv)
    args.space_arg = args.space_arg or ["C=8", "N=1"]
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # one line per queued run is noise
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    rows = []
    with tempfile.TemporaryDirectory() as tmp_text:
        tmp = Path(tmp_text)
        (tmp / "warm").mkdir()
        _labels(argparse.Namespace(**{**vars(args), "labels": 1}), tmp / "warm", "local", 1, env)  # untimed warm-up
        for stage, run, units in (("ground truth", _ground_truth, 2 * args.archs), ("labels", _labels, args.labels)):
            for way, processes in (("local", 1), ("local", 2), ("queue", 1), ("queue", 2)):
                start = time.perf_counter()
                run(args, tmp, way, processes, env)
                rows.append({"stage": stage, "way": way, "processes": processes, "runs": units,
                             "wall_s": time.perf_counter() - start})
    table = pd.DataFrame(rows)
    one = table[table["processes"] == 1].set_index(["stage", "way"])["wall_s"]
    table["speedup_vs_1"] = [one[(s, w)] / t for s, w, t in zip(table["stage"], table["way"], table["wall_s"])]
    RESULTS.mkdir(parents=True, exist_ok=True)
    table.to_csv(RESULTS / "queue.csv", index=False)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; ground truth: "
          f"{args.archs} candidates x 2 seeds, {args.epochs:g} epochs; labels: {args.labels} x {args.k} steps; "
          f"{args.space} {' '.join(args.space_arg)} on {args.dataset}")
    print(table.round(2).to_string(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
