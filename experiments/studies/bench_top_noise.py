"""How often can any ranking put a top-1% architecture first, when the ground truth is one training run?

The search benchmark (``bench/bench_search.py``) asks whether a method reaches
the top 1% of a trained reference sample. This measures how much of that
level is signal. On the reference sample of the search benchmark (candidates
sampled uniformly per seed of ``--sample-seeds``, the ranker's label
architectures left out, each trained for 3 epochs with training seeds 0 and
1, all read from ``--cache``), it draws ``--resamples`` random subsets of
``--subset`` candidates and, in each, orders them by:

* ``oracle``: the mean accuracy over the training seeds ``--oracle-seeds``
  (a ranker as good as that much full training of every candidate);
* ``ranker``: the GHN ranker's score (``--ranker``);
* ``flops``: log-FLOPs (more is better);
* ``random``: a random order.

Every order is judged by the mean accuracy over ``--judge-seeds`` (default
0 and 1, the search benchmark's two-seed judge), which must not share a seed
with the oracle's. Reported per order, metric (validation or
test accuracy), level (top 1% or 5% of the subset, at or above its quantile,
as the search benchmark counts) and ``k``: the fraction of subsets whose first
``k`` candidates include one of that level, and the mean Kendall tau against
the judge. Ties in the oracle's accuracy (accuracies are quantised) are broken
at random.

Writes ``--out`` (one row per order, metric, level and k) and prints it. It
measures; it asserts nothing.

Usage::

    python bench/bench_search.py --report --referee-seeds 0 1 --referee-workers 2 \\
        --reference-sample-seeds 0 1 2 $F          # trains the reference sample's seeds 0 and 1
    python experiments/studies/bench_top_noise.py                                   # oracle seed 2, judge seeds 0+1
    python experiments/studies/bench_top_noise.py --judge-seeds 1 --oracle-seeds 0  # one training run against another
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from scipy.stats import kendalltau

# The search benchmark (bench/) and the other studies (this folder), also when loaded by a test.
sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[2] / "bench")]
from bench_search import Referee, reference_graphs  # noqa: E402

KS = (1, 3, 10)
LEVELS = {"top1": 0.99, "top5": 0.95}


def mean_accuracy(referee: Referee, graphs: list[Any], seeds: list[int]) -> pd.DataFrame:
    """Validation and test accuracy of each graph, averaged over training ``seeds``: columns ``val``, ``test``.

    Every run must be in the cache already (:meth:`Referee.judge_seeds` with ``train=False``).
    """
    judged = referee.judge_seeds(graphs, seeds, train=False).set_index("key")
    return judged.rename(columns={"val_acc": "val", "test_acc": "test"}).loc[[g.key for g in graphs]]


def hit_rates(orders: dict[str, np.ndarray], judge: np.ndarray, rng: np.random.Generator) -> dict[tuple, float]:
    """For each order (scores, higher first): ``{(order, level, k): hit}`` and ``{(order, "tau", 0): tau}``."""
    out: dict[tuple, float] = {}
    for name, score in orders.items():
        order = np.lexsort((rng.random(len(score)), -score))  # by score, ties at random
        for level, q in LEVELS.items():
            top = judge >= np.quantile(judge, q) - 1e-12
            for k in KS:
                out[(name, level, k)] = float(top[order[:k]].any())
        out[(name, "tau", 0)] = float(kendalltau(score, judge)[0])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, default=Path("bench/results/fresh/search_ground_truth.sqlite"))
    parser.add_argument("--sample-seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--archs", type=int, default=100, help="reference candidates per sample seed")
    parser.add_argument("--labels", type=Path, default=Path("runs/bench_fw/one_time/ranker_labels_k30.csv"),
                        help="the ranker's label architectures, left out of the reference")
    parser.add_argument("--ranker", type=Path, default=Path("runs/bench_fw/one_time/ranker.pt"))
    parser.add_argument("--subset", type=int, default=100, help="candidates per resampled subset")
    parser.add_argument("--resamples", type=int, default=2000)
    parser.add_argument("--judge-seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--oracle-seeds", nargs="*", type=int, default=[2], help="none: no oracle order")
    parser.add_argument("--seed", type=int, default=0, help="seed of the resampling")
    parser.add_argument("--out", type=Path, default=Path("bench/results/top_noise.csv"))
    args = parser.parse_args()
    if set(args.judge_seeds) & set(args.oracle_seeds):
        parser.error(f"--oracle-seeds {args.oracle_seeds} share a seed with --judge-seeds {args.judge_seeds}")

    from nas.data import load_dataset
    from nas.ghn import GHNRanker
    from nas.ghn import log_flops
    from nas.space import load_space

    torch.set_num_threads(1)
    data = load_dataset("mnist5k")
    space = load_space("nb201", input_shape=data.input_shape, num_classes=data.num_classes)
    if not args.ranker.is_file():
        raise SystemExit(f"error: no ranker at {args.ranker}; bench/bench_search.py fits it into <work>/one_time/")
    exclude = set(pd.read_csv(args.labels)["key"]) if args.labels.exists() else set()
    if not exclude:
        print(f"note: no label file at {args.labels}, so no candidate is left out of the reference")
    graphs, excluded = reference_graphs(space, args.archs, args.sample_seeds, exclude)
    if args.subset > len(graphs):
        raise SystemExit(f"error: --subset {args.subset} exceeds the {len(graphs)} reference candidates")
    referee = Referee(args.cache, data, 3)  # the search benchmark's referee: 3 epochs from scratch
    judge = mean_accuracy(referee, graphs, args.judge_seeds)
    oracle = mean_accuracy(referee, graphs, args.oracle_seeds or args.judge_seeds)
    table = judge.add_suffix("_judge").join(oracle.add_suffix("_oracle"))
    table["ranker"] = -GHNRanker.load(args.ranker).score(graphs)  # lower score is better
    table["flops"] = log_flops(graphs)
    agreement = "no oracle" if not args.oracle_seeds else (
        f"Kendall tau oracle (seeds {args.oracle_seeds}) vs judge (seeds {args.judge_seeds}): validation "
        f"{kendalltau(table['val_oracle'], table['val_judge'])[0]:.3f}, "
        f"test {kendalltau(table['test_oracle'], table['test_judge'])[0]:.3f}")
    print(f"reference: {len(graphs)} candidates ({excluded} label architectures left out); {agreement}")

    rng = np.random.default_rng(args.seed)
    records: list[dict] = []
    for r in range(args.resamples):
        part = table.iloc[rng.choice(len(table), args.subset, replace=False)]
        for metric in ("val", "test"):
            orders = {
                "oracle": part[f"{metric}_oracle"].to_numpy(),
                "ranker": part["ranker"].to_numpy(),
                "flops": part["flops"].to_numpy(),
                "random": rng.random(args.subset),
            }
            if not args.oracle_seeds:
                del orders["oracle"]
            for (order, level, k), value in hit_rates(orders, part[f"{metric}_judge"].to_numpy(), rng).items():
                records.append({"resample": r, "metric": metric, "order": order, "level": level, "k": k,
                                "value": value})
    frame = pd.DataFrame(records)
    summary = (frame.groupby(["metric", "order", "level", "k"])["value"].mean().rename("mean").reset_index()
               .assign(subset=args.subset, resamples=args.resamples, reference=len(graphs),
                       judge_seeds=" ".join(map(str, args.judge_seeds)),
                       oracle_seeds=" ".join(map(str, args.oracle_seeds))))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    summary.to_csv(args.out, index=False)
    wide = summary.assign(column=lambda f: np.where(f["level"] == "tau", "tau",
                                                    f["level"] + "_first" + f["k"].astype(str)))
    wide = wide.pivot_table(index=["metric", "order"], columns="column", values="mean").round(3)
    with pd.option_context("display.width", 200):
        print(f"subsets of {args.subset}, {args.resamples} resamples; share of subsets whose first k include "
              "a top-q candidate of the judge, and Kendall tau:")
        print(wide.to_string())
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
