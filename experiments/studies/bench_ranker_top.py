"""What sits at the top of a ranker's ranking of the whole space, judged by training.

A campaign with refinement fine-tunes (close to) its ranker's exact global
top candidates, so what it reaches is decided by the ranker, not by the
sampler. This script fits rankers on several label sets, scores every distinct
candidate of the space with each, and trains the top ``--top`` of each with
the search benchmark's referee (3 epochs from scratch, the mean of training
seeds 0 and 1, cached in ``bench/results/search_ground_truth.sqlite``). It
reports, per ranker, where its first top-1% and top-5% architecture sits
(validation and test), by the thresholds of ``bench/bench_search.py``.

Label sets (``--rankers``, each ``name=CSV[:N]``, the first N rows of a label
cache written by :func:`nas.ghn.short_training_labels`), plus ``bench``: the
search benchmark's own ranker checkpoint, and ``bench-refit``: the same
labels fitted again. Every ranker is fitted on the
search benchmark's GHN with the default :class:`nas.ghn.RankerConfig`
(seed 0). ``--ensembles name=A+B`` adds rankings by the mean standardised
predicted TSE of named rankers (:class:`nas.ghn.RankerEnsemble`). For every
ranker it also reports Kendall tau against the 100 reference architectures
(``reference_tau_val`` / ``_test``).
It measures; it asserts nothing.

Usage::

    python experiments/studies/bench_ranker_top.py --workers 2
"""

from __future__ import annotations

import argparse
import itertools
import json
import re
import resource
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pandas as pd
import torch

# The search benchmark (bench/) and the other studies (this folder), also when loaded by a test.
sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[2] / "bench")]
from bench_search import Referee, thresholds  # noqa: E402

EXPERIMENT = Path("experiments/results/nb201-mnist5k")
DEFAULT_RANKERS = [
    f"k30-other-150={EXPERIMENT / 'ranker_labels_k30_s1.csv'}:150",
    f"k30-other-300={EXPERIMENT / 'ranker_labels_k30_s1.csv'}:300",
    f"k100-other-300={EXPERIMENT / 'ranker_labels_k100.csv'}",
]


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def all_candidates(space: Any) -> list[Any]:
    """Every distinct architecture of a space of categorical choices (one graph per canonical key)."""
    choices: dict[str, list[Any]] = {}

    class Recorder:
        def suggest_categorical(self, name: str, values: Any) -> Any:
            choices[name] = list(values)
            return values[0]

    space.build(Recorder())
    graphs: dict[str, Any] = {}
    for combo in itertools.product(*choices.values()):
        graph = space.from_params(dict(zip(choices, combo)))
        graphs.setdefault(graph.key, graph)
    return list(graphs.values())


def setup(cache: Path, reference: Path, referee_seeds: list[int], *, sample_seeds: list[int] | None = None,
          exclude: set[str] | None = None) -> tuple[Any, Any, Referee, dict[str, Any]]:
    """nb201 on mnist5k, the search benchmark's referee and its thresholds: ``(data, space, referee, levels)``.

    The thresholds come from the reference of ``sample_seeds`` (default: the held-out 100) less ``exclude``
    (:func:`bench_search.thresholds`).
    """
    from nas.data import load_dataset
    from nas.space import load_space

    torch.set_num_threads(1)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    data = load_dataset("mnist5k")
    space = load_space("nb201", input_shape=data.input_shape, num_classes=data.num_classes)
    referee = Referee(cache, data, 3, reference=reference)
    return data, space, referee, thresholds(referee, space, 100, referee_seeds, sample_seeds=sample_seeds,
                                            exclude=exclude)


def first_position(frame: pd.DataFrame, column: str) -> float:
    """``position`` of the first row where the boolean ``column`` holds, or NaN."""
    hits = frame.loc[frame[column], "position"]
    return float(hits.iloc[0]) if len(hits) else float("nan")


def read_labels(spec: str) -> tuple[list[Any], np.ndarray]:
    """``CSV[:N]`` -> the first N (all without N) labelled graphs and their TSE."""
    from nas.graph import ArchGraph

    match = re.fullmatch(r"(.+):(\d+)", spec)
    path, n = (match.group(1), match.group(2)) if match else (spec, "")
    table = pd.read_csv(path)
    if n:
        table = table.head(int(n))
    return [ArchGraph.from_json(g) for g in table["graph"]], table["tse"].to_numpy(dtype=float)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rankers", nargs="*", default=DEFAULT_RANKERS, help="name=CSV[:N] label sets to fit on")
    parser.add_argument("--work", type=Path, default=Path("runs/bench_search"))
    parser.add_argument("--ensembles", nargs="*", default=[],
                        help="name=A+B+...: also rank by the mean standardised predicted TSE of those rankers "
                             "(plus the first one's capacity prior)")
    parser.add_argument("--top", type=int, default=10)
    parser.add_argument("--referee-seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--workers", type=int, default=1, help="processes training referee runs")
    parser.add_argument("--cache", type=Path, default=Path("bench/results/search_ground_truth.sqlite"))
    parser.add_argument("--reference", type=Path, default=EXPERIMENT / "ground_truth.sqlite")
    parser.add_argument("--out", type=Path, default=Path("bench/results/ranker_top.csv"))
    args = parser.parse_args()
    from nas.ghn import GHN, GHNRanker, RankerConfig, RankerEnsemble, fit_ranker

    _, space, referee, levels = setup(args.cache, args.reference, args.referee_seeds)
    start = _cpu()
    graphs = all_candidates(space)
    print(f"{len(graphs)} distinct candidates built in {_cpu() - start:.0f} CPU-s", flush=True)

    folder = args.work / "one_time"
    ghn = GHN.load(folder / "ghn.pt")
    bench_labels = {g.key for g in read_labels(str(folder / "ranker_labels_k30.csv"))[0]}
    rankers: dict[str, tuple[Any, float, int, int]] = {
        "bench": (GHNRanker.load(folder / "ranker.pt"), float("nan"), 150, 150),
    }
    # The bench's labels fitted again: tells whether a fit on the same GHN and labels is reproducible.
    for spec in [f"bench-refit={folder / 'ranker_labels_k30.csv'}", *args.rankers]:
        name, _, source = spec.partition("=")
        label_graphs, labels = read_labels(source)
        path = args.work / "ranker_top" / f"{name}.pt"
        start = _cpu()
        if path.exists():
            ranker = GHNRanker.load(path)
        else:
            ranker = fit_ranker(ghn, label_graphs, labels, RankerConfig(seed=0), progress=False,
                                label_info={"target": "tse", "source": source})
            path.parent.mkdir(parents=True, exist_ok=True)
            ranker.save(path)
        shared = len({g.key for g in label_graphs} & bench_labels)
        rankers[name] = (ranker, _cpu() - start, len(label_graphs), shared)
        print(f"{name}: {len(label_graphs)} labels ({shared} shared with the bench's), fit {rankers[name][1]:.0f} "
              "CPU-s", flush=True)

    for spec in args.ensembles:
        name, _, members = spec.partition("=")
        unknown = [m for m in members.split("+") if m not in rankers]
        if not members or unknown:
            parser.error(f"--ensembles {spec!r}: unknown rankers {unknown} (known: {sorted(rankers)})")
        parts = [rankers[m] for m in members.split("+")]
        rankers[name] = (RankerEnsemble([p[0] for p in parts]), sum(p[1] for p in parts), sum(p[2] for p in parts),
                         sum(p[3] for p in parts))

    from nas.evaluation.correlate import sample_candidates
    from scipy.stats import kendalltau

    reference = sample_candidates(space, 100, seed=0)
    ref = referee.judge_seeds(reference, args.referee_seeds).set_index("key").loc[[g.key for g in reference]]
    tops: dict[str, list[Any]] = {}
    score_cpu: dict[str, float] = {}
    ref_tau: dict[str, tuple[float, float]] = {}
    for name, (ranker, *_rest) in rankers.items():
        start = _cpu()
        scores = ranker.score(graphs)
        score_cpu[name] = _cpu() - start
        order = np.argsort(scores, kind="stable")[: args.top]
        tops[name] = [graphs[i] for i in order]
        ref_scores = -ranker.score(reference)
        ref_tau[name] = (float(kendalltau(ref_scores, ref["val_acc"]).statistic),
                         float(kendalltau(ref_scores, ref["test_acc"]).statistic))
    judged = referee.judge_seeds([g for top in tops.values() for g in top], args.referee_seeds,
                                 workers=args.workers).set_index("key")
    rows = []
    for name, top in tops.items():
        _, fit_cpu, n_labels, shared = rankers[name]
        for position, graph in enumerate(top, start=1):
            val, test = judged.loc[graph.key, "val_acc"], judged.loc[graph.key, "test_acc"]
            rows.append({
                "ranker": name, "labels": n_labels, "labels_shared_with_bench": shared, "fit_cpu_s": fit_cpu,
                "score_cpu_s": score_cpu[name], "position": position, "key": graph.key, "val_acc": val,
                "test_acc": test, "val_top1": val >= levels["val_acc_top1"], "val_top5": val >= levels["val_acc_top5"],
                "test_top1": test >= levels["test_acc_top1"], "test_top5": test >= levels["test_acc_top5"],
            })
    table = pd.DataFrame(rows)
    table.to_csv(args.out, index=False)

    summary = pd.DataFrame([
        {"ranker": name, "labels": frame["labels"].iloc[0], "shared": frame["labels_shared_with_bench"].iloc[0],
         "best_val": frame["val_acc"].max(), "first_val_top1": first_position(frame, "val_top1"),
         "reference_tau_val": ref_tau[name][0], "reference_tau_test": ref_tau[name][1],
         "first_val_top5": first_position(frame, "val_top5"), "first_test_top1": first_position(frame, "test_top1"),
         "first_test_top5": first_position(frame, "test_top5"), "val_top1_in_top": int(frame["val_top1"].sum()),
         "test_top1_in_top": int(frame["test_top1"].sum())}
        for name, frame in table.groupby("ranker", sort=False)
    ])
    print(f"thresholds ({'+'.join(map(str, args.referee_seeds))}): "
          + json.dumps({k: round(v, 4) for k, v in levels.items() if k != "reference_n"}))
    print(summary.to_string(index=False))
    summary.to_csv(args.out.with_name(args.out.stem + "_summary.csv"), index=False)
    print(f"wrote {args.out} at {time.strftime('%Y-%m-%d %H:%M')}")


if __name__ == "__main__":
    main()
