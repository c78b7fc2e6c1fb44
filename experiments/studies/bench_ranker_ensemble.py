"""Benchmark: CPU to score candidates with several builds' rankers, each converting graphs vs converting once.

A :class:`nas.ghn.RankerEnsemble` of builds that convert graphs alike shares
one cache of converted graphs (``GHN.share_graph_cache``). The baseline, in
the same run, scores with each ranker on its own fresh cache (what the
ensemble did before). Both start from empty caches and score the same
``--graphs`` nb201 candidates in batches of ``--batch`` (the campaign's
batch size); the scores must agree. Prints a table and writes ``--out``. It
measures; it asserts nothing but that agreement.

Usage::

    python experiments/studies/bench_ranker_ensemble.py --rankers runs/bench_fw/one_time/ranker.pt \\
        runs/bench_rep1/one_time/ranker.pt runs/bench_rep2/one_time/ranker.pt \\
        runs/bench_rep3/one_time/ranker.pt runs/bench_rep4/one_time/ranker.pt
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rankers", nargs="+", type=Path, required=True, help="ranker checkpoints, one per build")
    parser.add_argument("--graphs", type=int, default=320)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3, help="timings per way (fresh rankers each time)")
    parser.add_argument("--out", type=Path, default=Path("bench/results/ranker_ensemble.csv"))
    args = parser.parse_args()
    from nas.data import load_dataset
    from nas.ghn import GHNRanker, RankerEnsemble
    from nas.space import load_space

    torch.set_num_threads(1)
    data = load_dataset("mnist5k")
    space = load_space("nb201", input_shape=data.input_shape, num_classes=data.num_classes)
    graphs = [c.graph for c in space.sample_many(args.graphs, seed=5)]
    batches = [graphs[i : i + args.batch] for i in range(0, len(graphs), args.batch)]

    def own_caches() -> np.ndarray:  # each ranker converts every graph itself
        rankers = [GHNRanker.load(p) for p in args.rankers]
        z = [np.concatenate([r.standardised(b) for b in batches]) for r in rankers]
        return np.mean(z, axis=0)

    def shared_cache() -> np.ndarray:
        ensemble = RankerEnsemble.load(args.rankers)
        return np.concatenate([ensemble.standardised(b) for b in batches])

    rows, scores = [], {}
    for repeat in range(args.repeats):
        for name, fn in (("own caches", own_caches), ("shared cache", shared_cache)):
            start = time.process_time()
            scores[name] = fn()
            rows.append({"way": name, "repeat": repeat, "cpu_s": time.process_time() - start})
    np.testing.assert_allclose(scores["shared cache"], scores["own caches"], rtol=1e-6)
    frame = pd.DataFrame(rows).assign(builds=len(args.rankers), graphs=len(graphs), batch=args.batch)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(args.out, index=False)
    table = frame.groupby("way")["cpu_s"].agg(["median", "min", "max"])
    print(f"{len(args.rankers)} builds, {len(graphs)} graphs in batches of {args.batch}, CPU-s (both ways include "
          "loading the same checkpoints):")
    print(table.round(3).to_string())
    print(f"own / shared (median): {table.loc['own caches', 'median'] / table.loc['shared cache', 'median']:.2f}x")
    print(f"written: {args.out}")


if __name__ == "__main__":
    main()
