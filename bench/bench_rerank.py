"""Does a zero-cost proxy order the top of a ranker's ranking better than the ranker itself?

For each ranker checkpoint (``--rankers``, fitted on the search benchmark's
GHN), every distinct nb201 candidate is scored and the ranker's best
``--pool`` are kept. Each of those is scored by the zero-cost proxies of
``--proxies`` (:class:`nas.evaluation.ProxyScorer`, at each initialisation
and minibatch seed of ``--proxy-seeds``) and judged by the
search benchmark's referee (3 epochs from scratch, mean of the training
seeds ``--judge-seeds``, default 0 and 1, trained if missing into
``--cache``). Orders compared, within the pool: the ranker's, each proxy's,
and each proxy's rank summed with the ranker's (``ranker+PROXY``). With
several proxy seeds, each proxy's mean rank over them is one more order (rows
with ``proxy_seed`` -1), alone and summed with the ranker's. Per ranker and
order it reports Kendall tau
against the ground truth, the ground truth of the first and of the first
three candidates, and the position of the first top-1% architecture
(validation and test, thresholds of ``bench/bench_search.py``).

Writes ``--out`` (one row per ranker, proxy seed and order) and prints the
mean over rankers per proxy seed. It measures; it asserts nothing.

Usage::

    python bench/bench_rerank.py --workers 2
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import kendalltau, rankdata

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_ranker_top import all_candidates, first_position, setup  # noqa: E402

DEFAULT_RANKERS = [
    "runs/bench_fw/one_time/ranker.pt",
    "runs/bench_fw/ranker_top/k30-other-150.pt",
    "runs/bench_fw/ranker_top/k30-other-300.pt",
    "runs/bench_fw/ranker_top/k100-other-300.pt",
]


def _worst_if_not_finite(x: np.ndarray) -> np.ndarray:
    """``x`` with ``nan`` and ``inf`` set to ``-inf``: ordered last, as ``nas.campaign.rerank_candidates`` does."""
    x = np.asarray(x, dtype=float)
    return np.where(np.isfinite(x), x, -np.inf)


def judge_orders(pool: pd.DataFrame, columns: list[str], levels: dict[str, float]) -> list[dict]:
    """One row per column of ``pool`` (higher is better): tau, first / top-3 ground truth, first top-1%."""
    rows = []
    for column in columns:
        x = _worst_if_not_finite(pool[column].to_numpy(float))
        order = np.argsort(-x, kind="stable")
        ranked = pool.iloc[order].assign(
            position=np.arange(1, len(pool) + 1),
            val_top1=lambda f: f["val_acc"] >= levels["val_acc_top1"] - 1e-12,
            test_top1=lambda f: f["test_acc"] >= levels["test_acc_top1"] - 1e-12,
        )
        rows.append({
            "order": column,
            "tau_val": kendalltau(x, pool["val_acc"])[0],
            "tau_test": kendalltau(x, pool["test_acc"])[0],
            "first_key": pool["key"].iloc[order[0]][:10],
            "first_val": pool["val_acc"].iloc[order[0]],
            "first_test": pool["test_acc"].iloc[order[0]],
            "top3_val": pool["val_acc"].iloc[order[:3]].mean(),
            "top3_test": pool["test_acc"].iloc[order[:3]].mean(),
            "first_top1_val_position": first_position(ranked, "val_top1"),
            "first_top1_test_position": first_position(ranked, "test_top1"),
        })
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rankers", nargs="+", type=Path, default=[Path(p) for p in DEFAULT_RANKERS])
    parser.add_argument("--pool", type=int, default=30)
    parser.add_argument("--proxies", nargs="+", default=["snip", "grad_norm", "jacob_cov", "synflow"])
    parser.add_argument("--proxy-seeds", nargs="+", type=int, default=[0, 1, 2],
                        help="seeds of the proxies' initialisation and minibatch (default 0 1 2)")
    parser.add_argument("--judge-seeds", nargs="+", type=int, default=[0, 1],
                        help="training seeds whose mean judges a candidate (default 0 1)")
    parser.add_argument("--workers", type=int, default=1, help="processes training referee runs")
    parser.add_argument("--cache", type=Path, default=Path("bench/results/fresh/search_ground_truth.sqlite"))
    parser.add_argument("--reference", type=Path, default=Path("runs/none.sqlite"))
    parser.add_argument("--out", type=Path, default=Path("bench/results/rerank.csv"))
    args = parser.parse_args()
    from nas.campaign import rank_sum
    from nas.evaluation import ProxyScorer
    from nas.ghn import GHNRanker

    data, space, referee, levels = setup(args.cache, args.reference, args.judge_seeds)
    graphs = all_candidates(space)
    rows = []
    for path in args.rankers:
        ranker = GHNRanker.load(path)
        score = -np.asarray(ranker.score(graphs))  # [len(graphs)], higher is better
        best = np.argsort(-score, kind="stable")[: args.pool]
        shortlist = [graphs[i] for i in best]
        truth = referee.judge_seeds(shortlist, args.judge_seeds, workers=args.workers).set_index("key")
        pool = pd.DataFrame({"key": [g.key for g in shortlist], "ranker": score[best]})
        pool["val_acc"] = pool["key"].map(truth["val_acc"])
        pool["test_acc"] = pool["key"].map(truth["test_acc"])
        ranks: dict[str, list[np.ndarray]] = {proxy: [] for proxy in args.proxies}  # per proxy: [len(pool)] per seed
        for seed in args.proxy_seeds:
            for proxy in args.proxies:
                start = time.process_time()
                pool[proxy] = ProxyScorer(proxy, seed=seed).score(shortlist, data)
                cpu = (time.process_time() - start) / len(shortlist)
                print(f"{path.stem}, seed {seed}: {proxy} {cpu:.3f} CPU-s per candidate", flush=True)
                pool[f"ranker+{proxy}"] = rank_sum(-pool["ranker"].to_numpy(), pool[proxy].to_numpy())
                ranks[proxy].append(rankdata(_worst_if_not_finite(pool[proxy].to_numpy(float))))
            columns = ["ranker", *args.proxies, *(f"ranker+{p}" for p in args.proxies)]
            rows += [{"ranker": path.stem, "proxy_seed": seed, **row} for row in judge_orders(pool, columns, levels)]
        if len(args.proxy_seeds) > 1:  # each proxy's mean rank over its initialisations (proxy_seed -1)
            for proxy in args.proxies:
                pool[proxy] = np.mean(ranks[proxy], axis=0)
                pool[f"ranker+{proxy}"] = rank_sum(-pool["ranker"].to_numpy(), pool[proxy].to_numpy())
            rows += [{"ranker": path.stem, "proxy_seed": -1, **row} for row in judge_orders(pool, columns, levels)]
    frame = pd.DataFrame(rows)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(args.out, index=False)
    print(f"top-1% thresholds (judge seeds {args.judge_seeds}): validation {levels['val_acc_top1']:.4f}, "
          f"test {levels['test_acc_top1']:.4f}")
    with pd.option_context("display.width", 250, "display.max_columns", 30):
        print(frame.round(4).to_string(index=False))
        numeric = frame.drop(columns=["ranker", "first_key"])
        print(f"mean over {frame['ranker'].nunique()} rankers, per proxy seed:")
        print(numeric.groupby(["order", "proxy_seed"]).mean().round(4).to_string())
        print("mean over rankers and proxy seeds:")
        print(numeric.drop(columns="proxy_seed").groupby("order").mean().round(4).to_string())
    print(f"written: {args.out}")


if __name__ == "__main__":
    main()
