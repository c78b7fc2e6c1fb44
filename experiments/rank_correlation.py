"""Reproduce the rank-correlation results committed under ``experiments/results/``.

One run: sample ``--archs`` held-out candidates, train each with ``--seeds``
seeds for ``--epochs`` (cached, resumable), meta-train a GHN on the space with
those candidates held out (keeping a snapshot every ``--snapshot-every`` steps),
then score every candidate with every method and compare with the trained
ground truth. The GHN rows:

* ``ghn_plain``: validation loss of the final GHN's predicted weights;
* ``ghn_ensemble``: mean loss over the last ``--ensemble`` snapshots;
* ``ghn_speed``: mean loss over *all* snapshots (the area under each
  candidate's predicted-weight loss curve while the GHN meta-trains);
* ``ghn_early``: loss under the first snapshot alone;
* ``ghn_regressor`` / ``opcount_regressor``: ridge regression on GHN
  embeddings / on op counts, fitted out of fold on the other candidates'
  trained losses (5 folds);
* ``ghn_ranker``: the GHN's graph network fine-tuned to predict the
  short-training loss (TSE after the first ``--ranker-k`` steps) of ``--ranker-labels``
  architectures sampled from the space, never the candidates
  (:mod:`nas.ghn._ranker`); ``ghn_ranker_scratch`` is the same network from
  random weights (what meta-training adds) and ``opcount_ranker`` a ridge
  regression on op counts fitted on the same labels (what the graph network adds);
  ``ghn_ranker_k<K>`` the same as ``ghn_ranker`` for each further ``--ranker-k``;
* ``<ranker>_flops``: each of those with the log-FLOPs capacity prior of
  :meth:`nas.ghn.GHNRanker.score` (weight ``RankerConfig.flops_weight``,
  statistics from the labelled architectures), the score a campaign ranks by;
  ``short_training_tse_k100_flops`` puts the same prior on short training itself
  (statistics over the candidates' own scores);
* ``ghn``: the score the campaign uses by default (see ``--ghn-method``).

``summary.json`` also records how the main ranker's tau depends on the
prior's weight (``ranker.flops_weight_sensitivity``).

Examples:
    python experiments/rank_correlation.py --space nb201 --dataset mnist5k --archs 100 \
        --epochs 3 --out experiments/results/nb201-mnist5k
    python experiments/rank_correlation.py --space macro --dataset digits --archs 60 \
        --epochs 3 --out experiments/results/macro-digits
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch

from nas.data import load_dataset
from nas.evaluation import correlate, write_results
from nas.evaluation.correlate import CorrelationResult, sample_candidates, summarize
from nas.evaluation.ghn_variants import (
    GHNEnsembleScorer,
    GHNRankerScorer,
    LabelRegressorScorer,
    cross_validated_scores,
    ghn_embeddings,
    op_count_features,
)
from nas.ghn import (
    GHN,
    GHNRanker,
    MetaTrainConfig,
    RankerConfig,
    fit_ranker,
    log_flops,
    meta_train,
    short_training_labels,
    with_flops_prior,
)
from nas.ghn._meta_train import snapshot_path
from nas.space import load_space

logger = logging.getLogger("experiments.rank_correlation")

BASELINES = [
    "params", "flops", "synflow", "snip", "grad_norm", "jacob_cov", "naswot",
    "short_training", "short_training_tse_k10", "short_training_tse_k100", "random",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--space", default="nb201")
    parser.add_argument("--dataset", default="mnist5k")
    parser.add_argument("--archs", type=int, default=100)
    parser.add_argument("--epochs", type=float, default=3)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--ghn-steps", type=int, default=MetaTrainConfig().steps)
    parser.add_argument("--snapshot-every", type=int, default=150)
    parser.add_argument("--ensemble", type=int, default=4, help="late snapshots averaged by ghn_ensemble")
    parser.add_argument(
        "--ranker-labels", type=int, nargs="+", default=[300, 300],
        help="architectures labelled for the ranker, one value per --ranker-k value (or one for all)",
    )
    parser.add_argument(
        "--ranker-k", type=int, nargs="+", default=[100, 30],
        help="SGD steps per ranker label; the first gives `ghn_ranker`, the others `ghn_ranker_k<K>` rows",
    )
    parser.add_argument("--ghn-method", default="ghn_ranker_flops", help="GHN row reported as `ghn`")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the main process (default 1)")
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)

    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    data = load_dataset(args.dataset)
    space = load_space(args.space, input_shape=data.input_shape, num_classes=data.num_classes)
    graphs = sample_candidates(space, args.archs, seed=0)

    # GHN, meta-trained with every evaluated candidate held out.
    ghn_path = out / "ghn" / "ghn.pt"
    ghn_path.parent.mkdir(exist_ok=True)
    config = MetaTrainConfig(steps=args.ghn_steps, snapshot_every=args.snapshot_every)
    start = time.perf_counter()
    ghn = meta_train(space, data, config, out=ghn_path, held_out=graphs, resume=True)
    logger.info("GHN ready after %.0fs (this session)", time.perf_counter() - start)
    steps = list(range(args.snapshot_every, args.ghn_steps + 1, args.snapshot_every))
    snaps = [GHN.load(snapshot_path(ghn_path, s)) for s in steps if snapshot_path(ghn_path, s).exists()]
    logger.info("%d snapshots at steps %s", len(snaps), steps[: len(snaps)])

    # Rankers: labels from short training of other architectures of the space, one label set per k.
    if len(args.ranker_labels) not in (1, len(args.ranker_k)):
        raise ValueError(f"`--ranker-labels` must have 1 or {len(args.ranker_k)} values, but got {args.ranker_labels}.")
    n_labels = dict(zip(args.ranker_k, args.ranker_labels * len(args.ranker_k) if len(args.ranker_labels) == 1
                        else args.ranker_labels))
    label_sets: dict[int, tuple[list, np.ndarray, float]] = {}
    for k in args.ranker_k:
        t0 = time.perf_counter()
        label_graphs, labels = short_training_labels(
            space, data, n_labels[k], k=k, seed=1, exclude=[g.key for g in graphs],
            cache=out / f"ranker_labels_k{k}.csv", workers=args.workers,
        )
        label_sets[k] = (label_graphs, labels, time.perf_counter() - t0)
    main_k = args.ranker_k[0]
    rankers: dict[str, GHNRanker] = {}
    fit_seconds: dict[str, float] = {}
    jobs = [("ghn_ranker", main_k, True), ("ghn_ranker_scratch", main_k, False)]
    jobs += [(f"ghn_ranker_k{k}", k, True) for k in args.ranker_k[1:]]
    for name, k, pretrained in jobs:
        path = out / "ghn" / f"{'ghn_ranker_scratch' if not pretrained else 'ghn_ranker'}_k{k}.pt"
        label_graphs, labels, _ = label_sets[k]
        t0 = time.perf_counter()
        if path.exists():
            rankers[name] = GHNRanker.load(path)
        else:
            rankers[name] = fit_ranker(
                ghn, label_graphs, labels, RankerConfig(pretrained=pretrained),
                label_info={"target": "tse", "k": k, "n": len(labels)},
            )
            rankers[name].save(path)
        fit_seconds[name] = time.perf_counter() - t0
        logger.info("%s: member validation tau %s", name, rankers[name].member_tau)
    label_graphs, labels, _ = label_sets[main_k]

    flops_weight = RankerConfig().flops_weight
    variants = {
        "ghn_plain": GHNEnsembleScorer([ghn], name="ghn_plain"),
        "ghn_ensemble": GHNEnsembleScorer(snaps[-args.ensemble :], name="ghn_ensemble"),
        "ghn_speed": GHNEnsembleScorer(snaps, name="ghn_speed"),
        "ghn_early": GHNEnsembleScorer(snaps[:1], name="ghn_early"),
        **{name: GHNRankerScorer(r, name=name) for name, r in rankers.items()},
        **{f"{name}_flops": GHNRankerScorer(r, prior=True, name=f"{name}_flops") for name, r in rankers.items()},
        "opcount_ranker": LabelRegressorScorer(label_graphs, labels, name="opcount_ranker"),
        "opcount_ranker_flops": LabelRegressorScorer(
            label_graphs, labels, flops_weight=flops_weight, name="opcount_ranker_flops"
        ),
    }
    if args.ghn_method not in variants:
        raise ValueError(f"`--ghn-method` must be one of {sorted(variants)}, but got {args.ghn_method!r}.")
    result = correlate(
        space, data, archs=graphs, epochs=args.epochs, seeds=args.seeds,
        scorers=[*variants.values(), *BASELINES],
        cache_path=out / "ground_truth.sqlite", ghn=ghn, workers=args.workers,
    )

    # Property prediction, fitted out of fold on the other candidates' trained losses.
    frame = result.frame
    ok = frame["gt_val_loss"].notna().to_numpy()
    target = frame.loc[ok, "gt_val_loss"].to_numpy()
    costs: dict[str, float] = {}
    for name, make in (
        ("ghn_regressor", lambda: ghn_embeddings(ghn, graphs)),
        ("opcount_regressor", lambda: op_count_features(graphs)),
    ):
        t0 = time.perf_counter()
        feats = make()
        elapsed = (time.perf_counter() - t0) / len(graphs)
        scores = np.full(len(graphs), np.nan)
        scores[ok] = cross_validated_scores(feats[ok], target, folds=5, seed=0)
        frame[f"score_{name}"] = scores
        costs[name] = elapsed
    costs = _costs(result, costs)
    # The same prior on short training itself, standardised over the candidates' own scores.
    tse = -frame["score_short_training_tse_k100"].to_numpy()
    flops = log_flops(graphs)
    frame["score_short_training_tse_k100_flops"] = -(_z(tse) - flops_weight * _z(flops))
    costs["short_training_tse_k100_flops"] = costs["short_training_tse_k100"] + costs["flops"]
    sensitivity = _flops_weight_sensitivity(rankers["ghn_ranker"], graphs, frame["gt_val_loss"].to_numpy())
    # `ghn` is the campaign's default score: a copy of the chosen variant's column.
    frame["score_ghn"] = frame[f"score_{args.ghn_method}"]
    costs["ghn"] = costs[args.ghn_method]
    summary, summary_json = summarize(
        frame, costs, seeds=list(range(args.seeds)),
        ground_truth=result.summary_json.get("ground_truth", {}),
    )
    summary_json["ghn_method"] = args.ghn_method
    summary_json["ranker"] = {
        "labels": {k: len(v[1]) for k, v in label_sets.items()}, "k": main_k, "target": "tse",
        "label_seconds": {k: v[2] for k, v in label_sets.items()},
        "fit_seconds": fit_seconds,
        "flops_weight": flops_weight,
        "flops_weight_sensitivity": sensitivity,
        "member_validation_tau": {
            name: [t if np.isfinite(t) else None for t in r.member_tau] for name, r in rankers.items()
        },
        "note": "one-time costs, paid once per space and dataset whatever the number of candidates ranked; "
        "label_seconds is 0 when the labels came from the cache (see ranker_labels_k<K>.csv)",
    }
    final = CorrelationResult(frame, summary, summary_json)
    write_results(final, out)
    print(summary.to_string())
    print(json.dumps(summary_json["noise_ceiling"]))


def _z(x: np.ndarray) -> np.ndarray:
    """Standardise over the finite entries."""
    ok = np.isfinite(x)
    return (x - x[ok].mean()) / (x[ok].std() or 1.0)


def _flops_weight_sensitivity(ranker: GHNRanker, graphs: list, truth: np.ndarray) -> dict[str, float]:
    """Kendall tau against ``truth`` of the ranker's score for several prior weights (0: the prediction alone)."""
    from scipy.stats import kendalltau

    z_pred = (ranker.predict(graphs) - ranker.label_mean) / ranker.label_std
    ok = np.isfinite(truth)
    scores = {
        w: with_flops_prior(z_pred, graphs, weight=w, mean=ranker.flops_mean, std=ranker.flops_std)
        for w in (0.0, 0.25, 0.5, 0.75, 1.0, 2.0)
    }
    return {str(w): float(kendalltau(z[ok], truth[ok]).statistic) for w, z in scores.items()}


def _costs(result: CorrelationResult, extra: dict[str, float]) -> dict[str, float]:
    methods = result.summary_json.get("methods", {})
    costs = {
        name: row["seconds_per_candidate"]
        for name, row in methods.items()
        if isinstance(row, dict) and row.get("seconds_per_candidate") is not None
    }
    costs.update(extra)
    return costs


if __name__ == "__main__":
    main()
