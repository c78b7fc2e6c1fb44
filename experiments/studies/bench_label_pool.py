"""Rankers fitted on pooled labels: one GHN build, the short-training labels of several builds.

Each build of the search benchmark's one-time pipeline
(``bench_search.py --one-time-seed S``) labels 150 architectures of its own
sample (30 SGD steps each) and fits its ranker on them; builds that differ
only in their seeds rank the space's top very differently
(``git show 7aab067768:bench/RESULTS.md``). This script asks whether more labels make builds
agree: it fits a ranker on one build's GHN and the union of several builds'
label files (a label seen twice keeps the mean of its TSEs), with the default
:class:`nas.ghn.RankerConfig` seeded by ``--seed`` plus the fit's position.

``--fit NAME=GHN:CSV[,CSV...]`` (repeatable) writes ``<--work>/NAME.pt``
(skipped when it exists, so a killed run resumes) and one row per fit to
``--out``: labels, CPU-seconds of the fit, member validation taus, path.
Judge the rankers with ``bench_build_rankers.py --ensemble-sizes 1``. The
labels' own CPU is the builds' (``search_one_time.csv``); this script
measures the fit only. It measures; it asserts nothing.

Usage::

    python experiments/studies/bench_label_pool.py --work runs/label_pool --out bench/results/label_pool_fits.csv \\
        --fit g5A=runs/bench_rep5/one_time/ghn.pt:runs/bench_fw/one_time/ranker_labels_k30.csv,runs/bench_rep1/one_time/ranker_labels_k30.csv
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import pandas as pd
import torch

# The search benchmark (bench/) and the other studies (this folder), also when loaded by a test.
sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[2] / "bench")]
from bench_ranker_top import _cpu  # noqa: E402

COLUMNS = ["name", "ghn", "label_files", "labels", "seed", "fit_cpu_s", "fit_wall_s", "member_tau", "path"]


def pooled_labels(paths: list[Path]) -> pd.DataFrame:
    """The union of label caches: one row per architecture key, its TSEs averaged."""
    table = pd.concat([pd.read_csv(p) for p in paths], ignore_index=True)
    return table.groupby("key", sort=False).agg(graph=("graph", "first"), tse=("tse", "mean")).reset_index()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fit", nargs="+", required=True, metavar="NAME=GHN:CSV[,CSV...]")
    parser.add_argument("--work", type=Path, default=Path("runs/label_pool"))
    parser.add_argument("--out", type=Path, default=Path("bench/results/label_pool_fits.csv"))
    parser.add_argument("--seed", type=int, default=0, help="fit i uses seed SEED + i (default 0)")
    parser.add_argument("--k", type=int, default=30, help="SGD steps of the pooled labels, recorded in the ranker "
                        "(default 30; every label file must have the same)")
    args = parser.parse_args()
    from nas.ghn import GHN, RankerConfig, fit_ranker
    from nas.graph import ArchGraph

    torch.set_num_threads(1)
    fits = []
    for spec in args.fit:
        name, _, rest = spec.partition("=")
        ghn_path, _, csvs = rest.partition(":")
        paths = [Path(p) for p in csvs.split(",") if p]
        missing = [p for p in [Path(ghn_path), *paths] if not p.is_file()]
        if not name or not paths or missing:
            parser.error(f"--fit {spec!r}: expected NAME=GHN:CSV[,CSV...] of existing files"
                         + (f" ({missing[0]} not found)" if missing else ""))
        fits.append((name, Path(ghn_path), paths))
    args.work.mkdir(parents=True, exist_ok=True)
    done = pd.read_csv(args.out) if args.out.exists() else pd.DataFrame(columns=COLUMNS)
    for i, (name, ghn_path, paths) in enumerate(fits):
        path = args.work / f"{name}.pt"
        if path.exists() and name in set(done["name"]):
            print(f"{name}: {path} exists, skipped", flush=True)
            continue
        labels = pooled_labels(paths)
        graphs = [ArchGraph.from_json(g) for g in labels["graph"]]
        ghn = GHN.load(ghn_path)
        seed = args.seed + i
        start_cpu, start_wall = _cpu(), time.perf_counter()
        ranker = fit_ranker(ghn, graphs, labels["tse"].to_numpy(dtype=float), RankerConfig(seed=seed),
                            label_info={"target": "tse", "k": args.k, "n": len(graphs), "labelled": len(graphs),
                                        "seed": seed, "labels": ",".join(map(str, paths))},
                            progress=False)
        row = {"name": name, "ghn": str(ghn_path), "label_files": len(paths), "labels": len(graphs), "seed": seed,
               "fit_cpu_s": _cpu() - start_cpu, "fit_wall_s": time.perf_counter() - start_wall,
               "member_tau": " ".join(f"{t:.3f}" for t in ranker.member_tau), "path": str(path)}
        ranker.save(path)
        done = pd.concat([done[done["name"] != name], pd.DataFrame([row])], ignore_index=True)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        done.to_csv(args.out, index=False)
        print(f"{name}: {row['labels']} labels, fit {row['fit_cpu_s']:.0f} CPU-s, member tau {row['member_tau']}",
              flush=True)
    print(done.to_string(index=False))


if __name__ == "__main__":
    main()
