"""Do the search benchmark's top architectures at 3 epochs stay on top at 9 epochs?

The search benchmark's cost model (``bench/bench_search.py``, ``search_cost_model_*.csv``) carries each
method's number of trainings, measured at the 3-epoch ground truth (162 SGD steps on nb201 / mnist5k), to
other training budgets. That holds only if the architectures on top at 3 epochs are, by and large, the ones
on top at a longer budget. This study trains a part of the benchmark's 240-candidate reference at 9 epochs
(486 SGD steps), training seeds 1 and 2 (two of the benchmark judge's four), and compares:

- every architecture of the reference's 3-epoch top 10% (judge: mean of seeds 1-4 at 3 epochs) and
  ``--others`` drawn uniformly (seed 0) from the rest, so that the top is covered exactly and the rest by a
  sample whose each member stands for ``rest / others`` architectures (inverse-probability weights);
- Kendall tau between the 3-epoch judge and the 9-epoch mean, beside the tau between the first two of
  ``--seeds`` at 9 epochs (the noise there) and the 3-epoch seed-1 / seed-2 tau on the same architectures;
- the share of the 9-epoch top 5% (weighted quantile over the reference) that was in the 3-epoch top 5%;
- the seconds of a 9-epoch training (one torch thread per worker), for the cost model's per-step fit.

The 9-epoch runs go to ``--cache`` (not committed; resumable: a killed run trains only what is missing),
the per-architecture table to ``experiments/results/budget_persistence/persistence.csv``. The rule that
decides it is in ``bench/RESULTS.md`` ("Cost model: does the top persist at 9 epochs?"), written first.

Example:
    python experiments/studies/budget_persistence.py --workers 2
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from scipy.stats import kendalltau

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "experiments" / "results" / "budget_persistence"
FRESH = ROOT / "bench" / "results" / "fresh"


def _bench():
    """``bench/bench_search.py`` as a module (its reference sample and referee are the ones judged here)."""
    spec = importlib.util.spec_from_file_location("bench_search", ROOT / "bench" / "bench_search.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_search"] = module
    spec.loader.exec_module(module)
    return module


def weighted_top_share(long: np.ndarray, short_top: np.ndarray, weights: np.ndarray, q: float) -> float:
    """Weighted share of the architectures at or above the weighted ``q`` quantile of ``long`` that are in
    ``short_top`` (a bool mask); each architecture counts ``weights`` times."""
    order = np.argsort(-long)
    cum = np.cumsum(weights[order]) / weights.sum()
    top = order[: int(np.searchsorted(cum, 1 - q - 1e-12)) + 1]  # the best (1 - q) of the weighted reference
    return float(weights[top][short_top[top]].sum() / weights[top].sum())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("--epochs", type=float, default=9, help="the longer budget (default 9 epochs)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2], help="its training seeds (default 1 2)")
    parser.add_argument("--top", type=float, default=0.10, help="share of the reference kept whole (default 0.10)")
    parser.add_argument("--others", type=int, default=36, help="architectures per draw from the rest (default 36)")
    parser.add_argument("--draws", type=int, default=1,
                        help="draws of --others, draw d with seed d from what earlier draws left (default 1); "
                             "outputs of more than one draw get the suffix _draws<D>")
    parser.add_argument("--cache", type=Path, default=ROOT / "runs" / "budget_persistence.sqlite")
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    if not 0 < args.top < 1:
        raise SystemExit(f"error: --top must be in (0, 1), but got {args.top}")
    if len(args.seeds) < 2:
        raise SystemExit(f"error: --seeds needs at least two training seeds (seed-to-seed tau), but got {args.seeds}")
    if args.draws < 1:
        raise SystemExit(f"error: --draws must be at least 1, but got {args.draws}")
    if args.others < 2:
        raise SystemExit(f"error: --others must be at least 2, but got {args.others}")
    torch.set_num_threads(1)
    from nas.data import load_dataset
    from nas.evaluation import GroundTruthCache
    from nas.space import load_space
    from nas.training import TrainConfig

    bench = _bench()
    data = load_dataset("mnist5k")
    space = load_space("nb201", input_shape=data.input_shape, num_classes=data.num_classes)
    excluded = set(pd.read_csv(FRESH / "reference_excluded_keys.csv")["key"])
    graphs, _ = bench.reference_graphs(space, 100, [0, 1, 2], excluded)
    short = bench.Referee(FRESH / "search_ground_truth.sqlite", data, 3)
    judge = short.judge_seeds(graphs, [1, 2, 3, 4], train=False).set_index("key")
    each = {s: short.judge_seeds(graphs, [s], train=False).set_index("key")["val_acc"] for s in (1, 2)}
    ranked = judge.sort_values("val_acc", ascending=False).index.tolist()
    n_top = int(round(args.top * len(ranked)))
    top, rest = ranked[:n_top], ranked[n_top:]
    drawn: list[str] = []
    for d in range(args.draws):  # each draw from what the earlier ones left, so draw 0 is the same at every --draws
        taken = set(drawn)
        left = [k for k in rest if k not in taken]
        drawn += list(np.random.default_rng(d).choice(left, size=min(args.others, len(left)), replace=False))
    draw_of = {key: i // args.others for i, key in enumerate(drawn)}  # a top architecture has no draw: -1
    rank_of = {key: i + 1 for i, key in enumerate(ranked)}
    chosen = top + drawn
    by_key = {g.key: g for g in graphs}
    cache = GroundTruthCache(args.cache)
    budget = TrainConfig(epochs=args.epochs)
    cache.train_missing([by_key[k] for k in chosen], data, budget, seeds=args.seeds, workers=args.workers)

    rows = []
    for key in chosen:
        records = [cache.get(by_key[key], data, budget, seed=s) for s in args.seeds]
        in_top = key not in draw_of
        row = {"key": key, "stratum": "top" if in_top else "rest", "draw": draw_of.get(key, -1),
               "weight": 1.0 if in_top else len(rest) / len(drawn),
               "rank_3ep": rank_of[key], "val_3ep": judge.loc[key, "val_acc"],
               "test_3ep": judge.loc[key, "test_acc"], "val_3ep_s1": each[1][key], "val_3ep_s2": each[2][key]}
        for s, r in zip(args.seeds, records):
            row.update({f"val_{args.epochs:g}ep_s{s}": r.val_acc, f"test_{args.epochs:g}ep_s{s}": r.test_acc,
                        f"seconds_s{s}": r.wall_time})
        rows.append(row)
    table = pd.DataFrame(rows)
    long = table[[f"val_{args.epochs:g}ep_s{s}" for s in args.seeds]].mean(axis=1).to_numpy()
    table[f"val_{args.epochs:g}ep"] = long
    OUT.mkdir(parents=True, exist_ok=True)
    suffix = "" if args.draws == 1 else f"_draws{args.draws}"
    table.to_csv(OUT / f"persistence{suffix}.csv", index=False)

    w = table["weight"].to_numpy()
    short_val = table["val_3ep"].to_numpy()
    q5_short = ranked[: int(round(0.05 * len(ranked)))]
    in_short_top5 = table["key"].isin(q5_short).to_numpy()
    s1, s2 = (table[f"val_{args.epochs:g}ep_s{s}"] for s in args.seeds[:2])
    seconds = table[[f"seconds_s{s}" for s in args.seeds]].to_numpy().ravel()
    steps = bench.training_steps(data, args.epochs)
    summary = {
        "architectures": len(table), "top_stratum": n_top, "rest_drawn": len(drawn), "rest": len(rest),
        "draws": args.draws,
        "kendall_3ep_vs_long": float(kendalltau(short_val, long).statistic),
        "kendall_long_seed_vs_seed": float(kendalltau(s1, s2).statistic),
        "kendall_3ep_seed_vs_seed": float(kendalltau(table["val_3ep_s1"], table["val_3ep_s2"]).statistic),
        "kendall_3ep_vs_long_within_top": float(kendalltau(short_val[w == 1], long[w == 1]).statistic),
        "share_long_top5_in_3ep_top5": weighted_top_share(long, in_short_top5, w, 0.95),
        "long_best_rank_3ep": int(table.loc[int(np.argmax(long)), "rank_3ep"]),
        "long_top5_ranks_3ep": table.loc[np.argsort(-long)[:5], "rank_3ep"].tolist(),
        "seconds_per_training": float(np.mean(seconds)), "steps": steps,
    }
    pd.Series(summary).to_frame("value").to_csv(OUT / f"summary{suffix}.csv")
    for name, value in summary.items():
        print(f"{name}: {value if not isinstance(value, float) else round(value, 3)}")


if __name__ == "__main__":
    main()
