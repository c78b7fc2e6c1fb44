"""The search benchmark over several builds of the one-time GHN and ranker.

A campaign's ten seeds share one meta-trained GHN and one ranker, and they
converge on the ranker's same few best candidates; the bootstrap of
``bench/bench_search.py`` resamples those seeds, so it cannot say how much the
ratio to TPE owes to that one build. Each ``--results`` folder here holds the
campaigns of one build (``bench_search.py --one-time-seed S`` in its own
``--work`` and ``--out``, reported against the same reference and TPE traces
with ``--reference-labels`` and ``--baseline``).

For one method and judge it reads each folder's ``search_summary<suffix>.csv``
and lays out, per level: each build's hits and marginal ERT, and, pooled, the
mean over builds of their ERTs (what a user who builds once and then runs
campaigns until one hits pays on average; infinite when a build never hits)
with TPE's ERT over it. The interval is a two-level bootstrap: each draw
resamples the builds, then the runs within each drawn build, and TPE's runs
independently.

Writes ``--out`` (CSV) and prints a Markdown table. It reads; it trains nothing.

Usage::

    python experiments/studies/bench_replicates.py --results bench/results/fresh bench/results/replicate_s1 \\
        bench/results/replicate_s2 --out bench/results/search_replicates_ref1234_refsample012.csv
"""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd

_spec = importlib.util.spec_from_file_location("bench_search", Path(__file__).resolve().parents[2] / "bench" / "bench_search.py")
bench_search = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench_search)

def _spent(runs: pd.DataFrame) -> np.ndarray:
    """What a restart of each run pays: all its CPU but the one-time costs."""
    return (runs["cpu_s"] - runs["one_time_cpu_s"]).to_numpy(float)


def replicates(builds: dict[str, pd.DataFrame], tpe: pd.DataFrame, *, resamples: int = 10_000,
               seed: int = 0) -> pd.DataFrame:
    """Per-build and pooled ERTs of one campaign method, with TPE's ERT over them.

    Args:
        builds: Build name -> that build's per-run summary rows of the method
            (``cpu_s``, ``one_time_cpu_s`` and the ``marginal_cpu_to_*`` columns).
        tpe: TPE's per-run summary rows (``cpu_s``, ``one_time_cpu_s``, ``cpu_to_*``).
        resamples: Bootstrap draws.
        seed: Seed of the bootstrap.

    Returns:
        One row per level and build (``build`` ``"pooled"`` last): ``runs``,
        ``hits``, ``marginal_ert_cpu_s`` (pooled: the mean of the builds'),
        ``tpe_ert_cpu_s``, ``tpe_over_marginal_ert`` and, on the pooled row,
        the two-level bootstrap's ``..._q05``, ``..._q95`` and
        ``p_marginal_ratio_ge_20``.

    Raises:
        ValueError: ``builds`` or ``tpe`` is empty.
    """
    if not builds or any(len(runs) == 0 for runs in builds.values()):
        raise ValueError(f"`builds` must hold runs for every build, but got {sorted(builds)} with "
                         f"{[len(r) for r in builds.values()]} runs.")
    if len(tpe) == 0:
        raise ValueError("`tpe` must hold at least one run.")
    rng = np.random.default_rng(seed)
    names = list(builds)
    rows = []
    for level, tpe_column in bench_search.LEVELS.items():
        column = f"marginal_{tpe_column}"  # a campaign's cost leaves its one-time steps out
        tpe_reach, tpe_spent = tpe[tpe_column].to_numpy(float), _spent(tpe)
        tpe_ert = float(bench_search._ert(tpe_reach, tpe_spent))
        erts = []
        for name in names:
            runs = builds[name]
            reach = runs[column].to_numpy(float)
            ert = float(bench_search._ert(reach, _spent(runs)))
            erts.append(ert)
            rows.append({"level": level, "build": name, "runs": len(runs), "hits": int(np.isfinite(reach).sum()),
                         "marginal_ert_cpu_s": ert, "tpe_ert_cpu_s": tpe_ert, "tpe_over_marginal_ert": tpe_ert / ert})
        pooled = float(np.mean(erts))
        # Two levels: builds with replacement, then each drawn build's runs with replacement. Every build
        # gets a resample of its runs for every (draw, slot); a draw averages the builds its slots drew.
        B = len(names)  # builds, and slots per draw
        which = rng.integers(0, B, size=(resamples, B))  # [resamples, slots]
        per_build = np.stack([
            bench_search._ert(runs[column].to_numpy(float)[pick], _spent(runs)[pick])
            for runs in builds.values()
            for pick in [rng.integers(0, len(runs), size=(resamples, B, len(runs)))]
        ])  # [builds, resamples, slots]
        drawn = per_build[which, np.arange(resamples)[:, None], np.arange(B)].mean(axis=1)  # [resamples]
        tpe_pick = rng.integers(0, len(tpe), size=(resamples, len(tpe)))
        tpe_drawn = bench_search._ert(tpe_reach[tpe_pick], tpe_spent[tpe_pick])  # [resamples]
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = tpe_drawn / drawn  # inf / inf -> nan: neither hit, no evidence of a speed-up
        ratio = np.where(np.isnan(ratio), 0.0, ratio)
        q05, q95 = np.quantile(ratio, [0.05, 0.95], method="inverted_cdf")
        rows.append({"level": level, "build": "pooled", "runs": sum(len(r) for r in builds.values()),
                     "hits": sum(row["hits"] for row in rows if row["level"] == level),
                     "marginal_ert_cpu_s": pooled, "tpe_ert_cpu_s": tpe_ert, "tpe_over_marginal_ert": tpe_ert / pooled,
                     "tpe_over_marginal_ert_q05": q05, "tpe_over_marginal_ert_q95": q95,
                     "p_marginal_ratio_ge_20": float((ratio >= 20).mean())})
    return pd.DataFrame(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", nargs="+", type=Path, required=True,
                        help="one bench_search.py --out folder per build of the GHN and ranker")
    parser.add_argument("--method", default="campaign-refine-journal")
    parser.add_argument("--judge-seeds", nargs="+", type=int, default=[1, 2, 3, 4])
    parser.add_argument("--reference-sample-seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--levels", nargs="+", default=["top1_val", "top1_test", "top1_reported_val",
                                                        "top1_reported_test"])
    parser.add_argument("--out", type=Path, required=True, help="CSV to write")
    args = parser.parse_args()
    suffix = bench_search.report_suffix(args.judge_seeds, args.reference_sample_seeds)
    builds, tpe = {}, None
    for folder in args.results:
        path = folder / f"search_summary{suffix}.csv"
        if not path.is_file():
            raise SystemExit(f"error: {path} not found; run bench_search.py --report with --referee-seeds "
                             f"{' '.join(map(str, args.judge_seeds))} on that folder first")
        summary = pd.read_csv(path)
        runs = summary[summary["method"] == args.method]
        if runs.empty:
            raise SystemExit(f"error: {path} has no run of {args.method!r}")
        builds[folder.name] = runs
        this_tpe = summary[summary["method"] == "tpe"]
        if tpe is None:
            tpe = this_tpe
        elif not this_tpe["cpu_s"].reset_index(drop=True).equals(tpe["cpu_s"].reset_index(drop=True)):
            raise SystemExit(f"error: {path} holds other TPE runs than {args.results[0]}; report every build "
                             "with --baseline set to the same folder")
    if tpe is None or tpe.empty:
        raise SystemExit(f"error: no TPE run in {args.results[0]}")
    judge = "+".join(map(str, args.judge_seeds))
    frame = replicates(builds, tpe)
    frame = frame[frame["level"].isin(args.levels)].assign(method=args.method, judge=judge)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(args.out, index=False)
    print(f"{args.method}, judge {judge}; TPE's ERT over the campaign's marginal ERT")
    print("| build | " + " | ".join(args.levels) + " |")
    print("| --- |" + " --- |" * len(args.levels))
    for build in [*builds, "pooled"]:
        cells = []
        for level in args.levels:
            row = frame[(frame["build"] == build) & (frame["level"] == level)].iloc[0]
            text = f"{row['hits']}/{row['runs']}, {row['tpe_over_marginal_ert']:.1f}x"
            if build == "pooled":
                text += (f" [{row['tpe_over_marginal_ert_q05']:.1f}, {row['tpe_over_marginal_ert_q95']:.1f}] "
                         f"{row['p_marginal_ratio_ge_20']:.2f}")
            cells.append(text)
        print(f"| {build} | " + " | ".join(cells) + " |")
    print(f"written: {args.out}")


if __name__ == "__main__":
    main()
