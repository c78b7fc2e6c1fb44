"""One table of the search benchmark's ratio to TPE under every judge it was reported with.

``bench/bench_search.py --report --referee-seeds ...`` writes one
``search_expected_cost<suffix>.csv`` per judge (the training seeds whose mean
accuracy judges an architecture) and reference (``_refsample012``: the
240-candidate reference). This script reads them all from ``--results`` and
lays out, per judge, reference, method and level: hits / runs, the marginal
ERT, TPE's ERT, the ratio, its bootstrap 5-95% interval over runs and the
share of bootstrap draws at 20x or more. A judge is marked ``unseen`` when
none of its seeds is seed 0, the one TPE and random search select on. Each
file names its judge and reference in its ``judge`` and ``reference`` columns.

Writes ``--out`` (CSV) and prints a Markdown table. It reads; it trains nothing.

Usage::

    python experiments/studies/bench_judges.py --results bench/results/fresh
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

def judges(results: Path) -> pd.DataFrame:
    """Every ``search_expected_cost*.csv`` of ``results`` (but ``--strict`` ones), with whether its judge is unseen.

    Each file names its judge (``judge``, e.g. ``"1+2+3"``: the training seeds
    averaged) and reference (``reference``: its candidates) in its own columns.

    Args:
        results: The folder ``bench_search.py --out`` wrote.

    Returns:
        Their rows with the column ``unseen`` (no seed 0 in the judge) added.

    Raises:
        FileNotFoundError: ``results`` holds no such file.
        ValueError: A file lacks the ``judge`` column (written before it existed:
            rerun ``bench_search.py --report`` with its judge).
    """
    frames = []
    for path in sorted(results.glob("search_expected_cost*.csv")):
        frame = pd.read_csv(path, dtype={"judge": str})
        if not {"judge", "reference", "strict"} <= set(frame.columns):
            raise ValueError(f"{path} does not name its judge (no `judge` / `reference` / `strict` columns); "
                             "rerun bench_search.py --report with its --referee-seeds to rewrite it")
        frames.append(frame[~frame["strict"].astype(bool)])
    if not frames:
        raise FileNotFoundError(f"no search_expected_cost*.csv in {results}")
    frame = pd.concat(frames, ignore_index=True)
    return frame.assign(unseen=~frame["judge"].str.split("+").map(lambda seeds: "0" in seeds))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=Path("bench/results/fresh"))
    parser.add_argument("--methods", nargs="+", default=["campaign-refine-journal", "campaign-refine-blend-journal"])
    parser.add_argument("--levels", nargs="+", default=["top1_val", "top1_test"])
    parser.add_argument("--out", type=Path, default=None, help="CSV (default: <results>/search_judges.csv)")
    args = parser.parse_args()
    frame = judges(args.results)
    tpe = frame[frame["method"] == "tpe"].set_index(["judge", "reference", "level"])["ert_cpu_s"]
    frame["tpe_ert_cpu_s"] = [tpe.get(key) for key in zip(frame["judge"], frame["reference"], frame["level"])]
    table = frame[frame["method"].isin(args.methods) & frame["level"].isin(args.levels)]
    order = {"method": {m: i for i, m in enumerate(args.methods)}, "level": {lv: i for i, lv in enumerate(args.levels)}}
    table = table.assign(
        _seeds=table["judge"].str.len(), _method=table["method"].map(order["method"]),
        _level=table["level"].map(order["level"]),
    ).sort_values(["unseen", "_seeds", "judge", "reference", "_method", "_level"]).drop(
        columns=["_seeds", "_method", "_level"])
    columns = ["judge", "unseen", "reference", "method", "level", "runs", "hits", "marginal_ert_cpu_s", "tpe_ert_cpu_s",
               "tpe_over_marginal_ert", "tpe_over_marginal_ert_q05", "tpe_over_marginal_ert_q95",
               "p_marginal_ratio_ge_20"]
    out = args.out or args.results / "search_judges.csv"
    table[columns].to_csv(out, index=False)
    print("| judge | reference | method | level | hits | ERT, CPU-s | TPE's ERT | ratio [5%, 95%] | P(ratio >= 20) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for row in table.itertuples():
        ratio = ("no hit" if pd.isna(row.tpe_over_marginal_ert) else
                 f"{row.tpe_over_marginal_ert:.1f}x [{row.tpe_over_marginal_ert_q05:.1f}, "
                 f"{row.tpe_over_marginal_ert_q95:.1f}]")
        p = "" if pd.isna(row.p_marginal_ratio_ge_20) else f"{row.p_marginal_ratio_ge_20:.2f}"
        ert = "" if pd.isna(row.marginal_ert_cpu_s) else f"{row.marginal_ert_cpu_s:.1f}"
        tpe_ert = "" if pd.isna(row.tpe_ert_cpu_s) else f"{row.tpe_ert_cpu_s:.0f}"
        judge = f"{row.judge}{' (unseen)' if row.unseen else ''}"
        print(f"| {judge} | {row.reference} | {row.method} | {row.level} | {row.hits}/{row.runs} | {ert} | "
              f"{tpe_ert} | {ratio} | {p} |")
    print(f"written: {out}")


if __name__ == "__main__":
    main()
