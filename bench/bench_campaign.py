"""Benchmark of the campaign's rank stage: batching and storage overhead.

Measures, for a fixed number of rank trials, the wall time of stage 1
(:func:`nas.campaign.run_rank_stage`) with several GHN batch sizes and
storages, and reports candidates per second. Batch size 1 is the
one-graph-per-forward baseline; the campaign default is 32.

It ranks by the predicted-weight loss (``rank_by="loss"``), the stage whose
cost batching changes; the GHN is untrained (its weights do not change the
cost), so the benchmark needs no checkpoint. It measures; it asserts nothing.

Usage::

    python bench/bench_campaign.py --dataset digits --trials 64
    python bench/bench_campaign.py --dataset mnist5k --trials 96 --batch-sizes 1 32 --storages sqlite journal
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import optuna
import pandas as pd


def bench_one(
    *, dataset: str, space: str, space_args: dict, trials: int, batch_size: int, storage: str, folder: Path
) -> dict:
    """Run one rank stage and time it."""
    from nas.campaign import Campaign
    from nas.data import load_dataset
    from nas.ghn import GHN, GHNConfig
    from nas.space import load_space

    data = load_dataset(dataset)
    search_space = load_space(space, input_shape=data.input_shape, num_classes=data.num_classes, **space_args)
    ghn = GHN(GHNConfig(), space_info={**search_space.describe(), "dataset": dataset})
    url = {
        "sqlite": f"sqlite:///{folder / 'bench.db'}",
        "journal": f"journal://{folder / 'bench.log'}",
    }[storage]
    campaign = Campaign(
        space=search_space, dataset=data, ghn=ghn, trials=trials, top_k=1, out=folder, storage=url, study="bench",
        batch_size=batch_size, progress=False, sampler="random", rank_by="loss",
    )
    campaign.open()
    _ = campaign.ghn
    start = time.perf_counter()
    stats = campaign.rank()
    wall = time.perf_counter() - start
    return {
        "storage": storage,
        "batch_size": batch_size,
        "trials": trials,
        "scored": stats.evaluated,
        "ghn_calls": stats.score_calls,
        "wall_s": round(wall, 2),
        "trials_per_s": round(trials / wall, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--space", default="nb201")
    parser.add_argument("--C", type=int, default=4, help="nb201 channels")
    parser.add_argument("--trials", type=int, default=64)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--storages", nargs="+", default=["sqlite", "journal"])
    parser.add_argument("--csv", type=Path, default=None, help="also write the table here")
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    rows = []
    for storage in args.storages:
        for batch in args.batch_sizes:
            with tempfile.TemporaryDirectory() as tmp:
                rows.append(
                    bench_one(
                        dataset=args.dataset, space=args.space, space_args={"C": args.C}, trials=args.trials,
                        batch_size=batch, storage=storage, folder=Path(tmp),
                    )
                )
            print(rows[-1], flush=True)
    table = pd.DataFrame(rows)
    print(table.to_string(index=False))
    if args.csv is not None:
        table.to_csv(args.csv, index=False)


if __name__ == "__main__":
    main()
