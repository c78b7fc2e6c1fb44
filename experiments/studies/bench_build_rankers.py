"""Where each build's ranker, and the mean of several builds' rankers, put the space's top architectures.

A campaign with refinement fine-tunes its ranker's exact global top
candidates in the ranker's order (``git show 7aab067768:bench/RESULTS.md``), so where a ranker
puts the reference's top 1% decides the campaign's ERT. Each build of the
one-time pipeline (``bench_search.py --one-time-seed S``) has its own GHN and
ranker. This script scores every distinct candidate of nb201 with each
build's ranker (``--rankers name=PATH``) and with the mean of every
combination of ``--ensemble-sizes`` builds (mean standardised predicted TSE,
then the first member's capacity prior), trains the ``--top`` best of each
with the referee (the mean of ``--judge-seeds``; missing runs are trained,
``--workers`` processes) and reports, per ranking: the position of its first
validation and test top-1% architecture by the thresholds of the united
240-candidate reference (``bench_search.py --reference-sample-seeds 0 1 2``),
and how many of its top are there.

Writes ``--out`` (CSV, one row per ranking) and prints a summary by ranking
size. It measures; it asserts nothing.

Usage::

    python experiments/studies/bench_build_rankers.py --rankers b0=runs/bench_fw/one_time/ranker.pt \\
        b1=runs/bench_rep1/one_time/ranker.pt b2=runs/bench_rep2/one_time/ranker.pt --workers 2 \\
        --out bench/results/build_rankers.csv
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

import numpy as np
import pandas as pd

# The search benchmark (bench/) and the other studies (this folder), also when loaded by a test.
sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[2] / "bench")]
from bench_ranker_top import all_candidates, setup  # noqa: E402


def ensemble_scores(z: dict[str, np.ndarray], members: tuple[str, ...], prior: dict[str, np.ndarray]) -> np.ndarray:
    """Rank score of a combination of builds: the members' mean standardised TSE plus the first one's prior.

    Args:
        z: Build -> its ranker's standardised predicted TSE of every candidate, ``[N]``.
        members: The builds combined.
        prior: Build -> its ranker's capacity-prior term (``score - standardised``), ``[N]``.

    Returns:
        ``[N]`` scores, lower is better; for one member, that ranker's own score.
    """
    return np.mean([z[m] for m in members], axis=0) + prior[members[0]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rankers", nargs="+", required=True, help="name=PATH of each build's ranker")
    parser.add_argument("--ensemble-sizes", nargs="+", type=int, default=[1, 2, 3],
                        help="combine every subset of this many builds (default 1 2 3; 1: each ranker alone)")
    parser.add_argument("--top", type=int, default=10)
    parser.add_argument("--judge-seeds", nargs="+", type=int, default=[1, 2, 3, 4])
    parser.add_argument("--workers", type=int, default=1, help="processes training referee runs")
    parser.add_argument("--cache", type=Path, default=Path("bench/results/fresh/search_ground_truth.sqlite"))
    parser.add_argument("--reference", type=Path, default=Path("runs/none.sqlite"))
    parser.add_argument("--labels", type=Path, default=Path("runs/bench_fw/one_time/ranker_labels_k30.csv"),
                        help="label architectures left out of the united reference (the first build's)")
    parser.add_argument("--out", type=Path, default=Path("bench/results/build_rankers.csv"))
    args = parser.parse_args()
    from nas.ghn import GHNRanker

    specs = dict(spec.partition("=")[::2] for spec in args.rankers)
    missing = [path for path in specs.values() if not Path(path).is_file()]
    if missing:
        parser.error(f"--rankers: no checkpoint at {missing[0]}")
    if not args.labels.is_file():
        parser.error(f"--labels {args.labels} not found")
    _, space, referee, levels = setup(args.cache, args.reference, args.judge_seeds, sample_seeds=[0, 1, 2],
                                      exclude=set(pd.read_csv(args.labels)["key"]))
    graphs = all_candidates(space)
    z, prior = {}, {}
    for name, path in specs.items():
        ranker = GHNRanker.load(path)
        z[name] = ranker.standardised(graphs)
        prior[name] = ranker.score(graphs) - z[name]
        print(f"{name}: scored {len(graphs)} candidates", flush=True)
    rankings = {}
    for size in args.ensemble_sizes:
        if not 1 <= size <= len(specs):
            parser.error(f"--ensemble-sizes: {size} is not between 1 and the {len(specs)} rankers")
        for members in itertools.combinations(specs, size):
            order = np.argsort(ensemble_scores(z, members, prior), kind="stable")[: args.top]
            rankings["+".join(members)] = [graphs[i] for i in order]
    judged = referee.judge_seeds([g for top in rankings.values() for g in top], args.judge_seeds,
                                 workers=args.workers).set_index("key")
    rows = []
    for name, top in rankings.items():
        val = judged.loc[[g.key for g in top], "val_acc"].to_numpy()
        test = judged.loc[[g.key for g in top], "test_acc"].to_numpy()
        val_hit = val >= levels["val_acc_top1"] - 1e-12
        test_hit = test >= levels["test_acc_top1"] - 1e-12
        rows.append({
            "ranking": name, "builds": name.count("+") + 1,
            "first_val_top1": int(np.argmax(val_hit)) + 1 if val_hit.any() else np.nan,
            "first_test_top1": int(np.argmax(test_hit)) + 1 if test_hit.any() else np.nan,
            "val_top1_in_top": int(val_hit.sum()), "test_top1_in_top": int(test_hit.sum()),
            "first_val_acc": val[0], "first_test_acc": test[0], "top_mean_val_acc": val.mean(),
            "top_mean_test_acc": test.mean(), "keys": " ".join(g.key[:10] for g in top),
        })
    frame = pd.DataFrame(rows)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(args.out, index=False)
    with pd.option_context("display.width", 200, "display.max_rows", 200):
        print(frame.drop(columns="keys").round(4).to_string(index=False))
        by_size = frame.groupby("builds").agg(
            rankings=("ranking", "size"),
            mean_first_val_top1=("first_val_top1", lambda s: s.fillna(args.top + 1).mean()),
            mean_first_test_top1=("first_test_top1", lambda s: s.fillna(args.top + 1).mean()),
            val_top1_first=("first_val_top1", lambda s: float((s == 1).mean())),
            test_top1_first=("first_test_top1", lambda s: float((s == 1).mean())),
        )
        print(f"by number of builds (a miss counts as position {args.top + 1}):")
        print(by_size.round(3).to_string())
    print(f"thresholds: val {levels['val_acc_top1']:.4f}, test {levels['test_acc_top1']:.4f} "
          f"({levels['reference_n']} reference candidates); written: {args.out}")


if __name__ == "__main__":
    main()
