"""Benchmark of the rank stage's storage traffic when a ranker scores the candidates.

A ranker scores a candidate in a few milliseconds, so what the rank stage
costs is mostly Optuna: asking, filling and telling each trial in the
storage. This script runs the same rank stage (seeded TPE, the same ranker)
two ways on each storage and reports the CPU-seconds of each:

* ``stored``: every trial is asked from the storage, its choices and
  attributes are written one by one, and it is told there (the path of the
  predicted-weight loss, and of every campaign before local sampling);
* ``local``: the sampler asks from an in-memory copy of the study and each
  result is stored as one finished trial (the default with a ranker).

The ranker is fitted for a few steps on an untrained GHN: its weights do not
change the cost of scoring, so no checkpoint is needed (``--ranker`` uses a
real one). CPU-seconds are this process's own (one torch thread). It
measures; it asserts nothing.

Usage::

    python bench/bench_rank_storage.py --csv bench/results/rank_storage.csv
    python bench/bench_rank_storage.py --trials 100 --refine 0 --storages sqlite
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
import torch


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def make_ranker(space: Any, data: Any, path: Path | None) -> Any:
    """The ranker checkpoint at ``path``, or one fitted for 2 epochs on 16 random candidates."""
    from nas.ghn import GHN, GHNConfig, GHNRanker, RankerConfig, fit_ranker

    if path is not None:
        return GHNRanker.load(path)
    torch.manual_seed(0)
    ghn = GHN(GHNConfig(), space_info={**space.describe(), "dataset": data.name})
    graphs = [c.graph for c in space.sample_many(16, seed=0)]
    labels = [float(g.flops()) for g in graphs]  # any finite labels: only the cost of scoring matters
    return fit_ranker(ghn, graphs, labels, RankerConfig(epochs=2, ensemble=3), progress=False)


def bench_one(*, space: Any, data: Any, ranker: Any, storage: str, mode: str, trials: int, refine: int,
              batch_size: int, folder: Path) -> dict[str, Any]:
    """Run one rank stage in a fresh storage and measure it."""
    from nas.campaign import resolve_sampler, run_rank_stage
    from nas.campaign import open_storage

    url = {"sqlite": f"sqlite:///{folder / 'bench.db'}", "journal": f"journal:///{folder / 'bench.log'}"}[storage]
    study = optuna.create_study(storage=open_storage(url), study_name="bench-rank",
                                sampler=resolve_sampler("tpe", seed=0))
    start_cpu, start_wall = _cpu(), time.perf_counter()
    stats = run_rank_stage(study, space, None, data, n_trials=trials, batch_size=batch_size, ranker=ranker,
                           worker="bench", progress=False, refine=refine, local_sampling=mode == "local")
    cpu, wall = _cpu() - start_cpu, time.perf_counter() - start_wall
    stored = len(study.get_trials(deepcopy=False))
    return {
        "storage": storage, "mode": mode, "trials": trials, "refine": refine, "batch_size": batch_size,
        "stored_trials": stored, "scored": stats.evaluated, "refined": stats.refined,
        "cpu_s": round(cpu, 2), "wall_s": round(wall, 2), "cpu_ms_per_trial": round(1000 * cpu / max(stored, 1), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="mnist5k")
    parser.add_argument("--space", default="nb201")
    parser.add_argument("--trials", type=int, default=300)
    parser.add_argument("--refine", type=int, default=10, help="best candidates refined after the sampler (0: none)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--storages", nargs="+", default=["sqlite", "journal"], choices=["sqlite", "journal"])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--ranker", type=Path, default=None, help="a ranker checkpoint (default: a quickly fitted one)")
    parser.add_argument("--csv", type=Path, default=None, help="also write the table here")
    args = parser.parse_args()
    torch.set_num_threads(1)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    from nas.data import load_dataset
    from nas.space import load_space

    data = load_dataset(args.dataset)
    space = load_space(args.space, input_shape=data.input_shape, num_classes=data.num_classes)
    ranker = make_ranker(space, data, args.ranker)
    rows = []
    for repeat in range(args.repeats):
        for storage in args.storages:
            for mode in ("stored", "local"):
                with tempfile.TemporaryDirectory() as tmp:
                    row = bench_one(space=space, data=data, ranker=ranker, storage=storage, mode=mode,
                                    trials=args.trials, refine=args.refine, batch_size=args.batch_size,
                                    folder=Path(tmp))
                rows.append({"repeat": repeat, **row})
                print(rows[-1], flush=True)
    table = pd.DataFrame(rows)
    base = table[table["mode"] == "stored"].set_index(["repeat", "storage"])["cpu_s"]
    table["stored_cpu_over_this"] = [
        round(base[(r.repeat, r.storage)] / r.cpu_s, 2) for r in table.itertuples()
    ]
    print(table.to_string(index=False))
    if args.csv is not None:
        table.to_csv(args.csv, index=False)
        print(f"wrote {args.csv}")


if __name__ == "__main__":
    main()
