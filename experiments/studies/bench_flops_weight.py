"""Choosing the ranker's capacity-prior weight on a few label architectures trained to the referee's budget.

The ranker's score is ``z(predicted TSE) - flops_weight * z(log FLOPs)``
(:meth:`nas.ghn.GHNRanker.score`). Short-training labels cannot tell how much
the prior should weigh, since the prior stands for what short training does not
see. This script measures one way to set it without looking at any result the
search benchmark judges by:

1. *Calibration.* The first ``--calibration`` architectures of the ranker's own
   label set (disjoint from the reference sample when the ranker was built with
   ``bench_search.py --exclude-reference``) are trained to the referee's budget
   with a training seed the judge never uses (``--calibration-seed``, default
   2). Their CPU time is a one-time cost, like the labels'.
2. For each weight of ``--weights``, Kendall tau between the ranker's score and
   the calibration accuracy; the weight with the highest tau is the one chosen.
3. *Judgement.* Every distinct candidate of the space is scored with each
   weight, and the top ``--top`` of each are judged by the search benchmark's
   referee (3 epochs from scratch, mean of seeds 0 and 1, cached in
   ``bench/results/search_ground_truth.sqlite``), against the thresholds of
   ``bench/bench_search.py``.

Every weight's row is reported, so the table also shows what an oracle choice
would have reached; only the ``chosen`` row is a result a user could get.

4. *Ranking.* For the ranker and for rankers fitted on the same GHN from other
   label sets (``--rankers``, as in ``bench_ranker_top.py``), Kendall tau of
   each weight's score against the 100 reference architectures' two-seed
   accuracy (``<out stem>_reference_tau.csv``): does the calibrated weight
   rank better than the default?

It measures; it asserts nothing.

Usage::

    python experiments/studies/bench_flops_weight.py --work runs/bench_search_disjoint --workers 2
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import kendalltau

# The search benchmark (bench/) and the other studies (this folder), also when loaded by a test.
sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[2] / "bench")]
from bench_ranker_top import DEFAULT_RANKERS, _cpu, all_candidates, first_position, read_labels, setup  # noqa: E402

EXPERIMENT = Path("experiments/results/nb201-mnist5k")
DEFAULT_WEIGHTS = [0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("runs/bench_search_disjoint"),
                        help="folder whose one_time/ holds ghn.pt, ranker.pt and ranker_labels_k30.csv")
    parser.add_argument("--calibration", type=int, default=24, help="label architectures trained to the budget")
    parser.add_argument("--calibration-seed", type=int, default=2, help="their training seed (the judge's are 0, 1)")
    parser.add_argument("--weights", nargs="+", type=float, default=DEFAULT_WEIGHTS)
    parser.add_argument("--top", type=int, default=10)
    parser.add_argument("--rankers", nargs="*", default=DEFAULT_RANKERS[1:],
                        help="name=CSV[:N] label sets of further rankers for the reference-tau table")
    parser.add_argument("--referee-seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--workers", type=int, default=1, help="processes training referee runs")
    parser.add_argument("--cache", type=Path, default=Path("bench/results/search_ground_truth.sqlite"))
    parser.add_argument("--reference", type=Path, default=EXPERIMENT / "ground_truth.sqlite")
    parser.add_argument("--out", type=Path, default=Path("bench/results/disjoint/flops_weight.csv"))
    args = parser.parse_args()
    if args.calibration < 3:
        parser.error(f"--calibration must be at least 3, but got {args.calibration}")
    if args.calibration_seed in args.referee_seeds:
        parser.error(f"--calibration-seed {args.calibration_seed} is one of the judge's --referee-seeds")
    from nas.evaluation.correlate import sample_candidates
    from nas.ghn import GHN, GHNRanker, RankerConfig, fit_ranker, with_flops_prior

    data, space, referee, levels = setup(args.cache, args.reference, args.referee_seeds)
    folder = args.work / "one_time"
    ranker = GHNRanker.load(folder / "ranker.pt")
    label_graphs, _ = read_labels(str(folder / "ranker_labels_k30.csv"))
    ref_graphs = sample_candidates(space, 100, seed=0)
    reference = {g.key for g in ref_graphs}
    calibration = label_graphs[: args.calibration]
    overlap = sum(g.key in reference for g in calibration)

    # 1. calibration: referee budget, a seed the judge never sees
    start = time.perf_counter()
    referee.cache.train_missing(calibration, data, referee.budget, seeds=[args.calibration_seed],
                                workers=args.workers)
    records = [referee.cache.get(g, data, referee.budget, seed=args.calibration_seed) for g in calibration]
    calibration_acc = np.array([r.val_acc for r in records])
    calibration_cpu = float(sum(r.wall_time for r in records))  # one torch thread per run: wall ~ CPU
    print(f"calibration: {len(calibration)} label architectures ({overlap} in the reference), seed "
          f"{args.calibration_seed}, {calibration_cpu:.0f} CPU-s ({time.perf_counter() - start:.0f} s wall here)",
          flush=True)

    # 2. each weight's agreement with the calibration accuracy
    def scored(z: np.ndarray, graphs: list, weight: float, model: GHNRanker = ranker) -> np.ndarray:
        return with_flops_prior(z, graphs, weight=weight, mean=model.flops_mean, std=model.flops_std)

    def calibrate(model: GHNRanker) -> tuple[dict[float, float], float]:
        """Kendall tau of each weight's score against the calibration accuracy, and the weight chosen."""
        z = model.standardised(calibration)
        taus = {w: float(kendalltau(-scored(z, calibration, w, model), calibration_acc).statistic)
                for w in args.weights}
        return taus, max(args.weights, key=lambda w: (round(taus[w], 12), -w))

    cal_tau, chosen = calibrate(ranker)
    print("calibration tau: " + ", ".join(f"{w:g}: {t:.3f}" for w, t in cal_tau.items()) + f"; chosen {chosen:g}",
          flush=True)

    # 3. the top of each weight's ranking of the whole space, judged
    start = _cpu()
    graphs = all_candidates(space)
    z_all = ranker.standardised(graphs)
    print(f"{len(graphs)} distinct candidates built and scored in {_cpu() - start:.0f} CPU-s", flush=True)
    tops = {w: [graphs[i] for i in np.argsort(scored(z_all, graphs, w), kind="stable")[: args.top]]
            for w in args.weights}
    judged = referee.judge_seeds([g for top in tops.values() for g in top], args.referee_seeds,
                                 workers=args.workers).set_index("key")
    rows = []
    for weight, top in tops.items():
        for position, graph in enumerate(top, start=1):
            val, test = judged.loc[graph.key, "val_acc"], judged.loc[graph.key, "test_acc"]
            rows.append({
                "flops_weight": weight, "chosen": weight == chosen, "calibration_tau": cal_tau[weight],
                "position": position, "key": graph.key, "in_reference": graph.key in reference,
                "log_flops": float(np.log(max(graph.flops(), 1))), "val_acc": val, "test_acc": test,
                "val_top1": val >= levels["val_acc_top1"], "val_top5": val >= levels["val_acc_top5"],
                "test_top1": test >= levels["test_acc_top1"], "test_top5": test >= levels["test_acc_top5"],
            })
    table = pd.DataFrame(rows)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.out, index=False)

    summary = pd.DataFrame([
        {"flops_weight": w, "chosen": w == chosen, "calibration_tau": cal_tau[w],
         "calibration_n": len(calibration), "calibration_cpu_s": calibration_cpu,
         "best_val": frame["val_acc"].max(), "first_val_top1": first_position(frame, "val_top1"),
         "first_val_top5": first_position(frame, "val_top5"), "first_test_top1": first_position(frame, "test_top1"),
         "first_test_top5": first_position(frame, "test_top5"), "val_top1_in_top": int(frame["val_top1"].sum()),
         "val_top5_in_top": int(frame["val_top5"].sum()), "test_top1_in_top": int(frame["test_top1"].sum()),
         "in_reference": int(frame["in_reference"].sum())}
        for w, frame in table.groupby("flops_weight", sort=False)
    ])
    print(f"thresholds ({'+'.join(map(str, args.referee_seeds))}): "
          + json.dumps({k: round(v, 4) for k, v in levels.items() if k != "reference_n"}))
    print(summary.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    summary.to_csv(args.out.with_name(args.out.stem + "_summary.csv"), index=False)

    # 4. each weight's ranking of the reference, for this ranker and others on the same GHN
    rankers = {"work": ranker}
    for spec in args.rankers:
        name, _, source = spec.partition("=")
        path = args.work / "flops_weight" / f"{name}.pt"
        if not path.exists():
            graphs_, labels_ = read_labels(source)
            fitted = fit_ranker(GHN.load(folder / "ghn.pt"), graphs_, labels_, RankerConfig(seed=0), progress=False,
                                label_info={"target": "tse", "source": source})
            path.parent.mkdir(parents=True, exist_ok=True)
            fitted.save(path)
        rankers[name] = GHNRanker.load(path)
    ref = referee.judge_seeds(ref_graphs, args.referee_seeds).set_index("key").loc[[g.key for g in ref_graphs]]
    tau_rows = []
    for name, model in rankers.items():
        z_ref = model.standardised(ref_graphs)
        taus, pick = calibrate(model)
        for w in args.weights:
            s = -scored(z_ref, ref_graphs, w, model)
            tau_rows.append({
                "ranker": name, "flops_weight": w, "chosen": w == pick, "calibration_tau": taus[w],
                "reference_tau_val": float(kendalltau(s, ref["val_acc"]).statistic),
                "reference_tau_test": float(kendalltau(s, ref["test_acc"]).statistic),
            })
    tau_table = pd.DataFrame(tau_rows)
    tau_table.to_csv(args.out.with_name(args.out.stem + "_reference_tau.csv"), index=False)
    print(tau_table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print(f"wrote {args.out} at {time.strftime('%Y-%m-%d %H:%M')}")


if __name__ == "__main__":
    main()
