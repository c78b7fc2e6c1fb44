"""``nas correlate``: rank correlation of the GHN and the baselines with trained ground truth.

Examples:
    nas correlate --space nb201 --dataset mnist5k --archs 100 --epochs 3 --train-seeds 2 --out runs/corr

Samples ``--archs`` candidates, trains each ``--train-seeds`` times for ``--epochs``
(cached in ``OUT/ground_truth.sqlite``, so a rerun resumes), scores them with
every method, prints the summary table and writes ``candidates.csv``,
``summary.csv``, ``summary.json`` and ``figures/`` to ``OUT``.

Method ``ghn`` is the score ``nas search`` ranks by with its defaults: the
graph network fitted from random weights on up to ``--ranker-labels`` architectures
of the space trained for ``--ranker-k`` SGD steps, bought ``--label-batch`` at a time
until a purchase lifts its cross-validated tau by less than ``--label-margin`` (never the evaluated
candidates; labels cached in ``OUT/ranker_labels_k<K>_s<SEED>.csv`` and
rankers in ``OUT/rankers/``, so a rerun resumes), plus its FLOPs prior at
the weight of :class:`nas.ghn.RankerConfig`; it needs no meta-trained GHN.
``ghn_plain`` is the validation loss of the GHN's predicted weights. The
ranker's ablations (``ghn_w05``: the prior at the fixed weight 0.5,
``ghn_noprior``, ``ghn_meta`` and ``ghn_meta_noprior`` from the meta-trained GHN's weights,
``opcount_ranker``, ``opcount_ranker_flops``) run when named in
``--methods``. For ``ghn_plain`` and ``ghn_meta*`` without ``--ghn`` a
default GHN is meta-trained (or reused) at ``OUT/ghn.pt`` with the evaluated
candidates held out of meta-training. ``summary.json`` records the label
count, their SGD steps and the one-time CPU-seconds under ``ranker``.
"""

from __future__ import annotations

import argparse
import inspect
import logging
import math
from pathlib import Path
from typing import Any

from nas.cli.options import (
    DeprecatedAlias,
    add_dataset_argument,
    add_space_arguments,
    add_threads_argument,
    parse_space_args,
    seed_value,
    set_threads,
)

__all__ = ["add_parsers", "run_correlate"]

logger = logging.getLogger(__name__)


def add_parsers(subparsers: Any) -> None:
    """Register ``nas correlate``."""
    p = subparsers.add_parser(
        "correlate",
        help="rank correlation of the GHN and baselines with trained ground truth",
        description=(
            "Sample candidates, train each from scratch (cached: a rerun resumes), score them with the GHN "
            "and the baselines, and report Kendall tau, Spearman rho and top-10% precision with bootstrap "
            "CIs next to the seed-to-seed noise ceiling."
        ),
    )
    add_space_arguments(p)
    add_dataset_argument(p)
    p.add_argument("--out", required=True, type=Path, help="output folder for tables, figures and caches")
    p.add_argument("--archs", type=int, default=None, help="candidates to sample and evaluate (default 100)")
    p.add_argument("--epochs", type=float, default=None, help="ground-truth training epochs (default 3)")
    p.add_argument("--train-seeds", type=int, default=None, metavar="N",
                   help="training seeds per candidate: 0..N-1 (default 2)")
    p.add_argument("--ground-truth", type=Path, default=None, metavar="TABLE",
                   help="read the ground truth from this .csv or .parquet table of trained architectures instead of "
                   "training (nas correlate's candidates.csv, or a `graph` / `arch` column with gt_val_loss_s<seed>, "
                   "val_loss or accuracy columns); its architectures are the candidates")
    p.add_argument("--seeds", dest="train_seeds", type=int, action=DeprecatedAlias, new="--train-seeds",
                   help=argparse.SUPPRESS)
    p.add_argument(
        "--ghn", type=Path, default=None,
        help="GHN checkpoint for method 'ghn_plain' and the start of the 'ghn_meta' rankers (default: meta-train, "
        "or reuse, OUT/ghn.pt with the evaluated candidates held out)",
    )
    p.add_argument("--ghn-plain", type=Path, default=None,
                   help="another GHN checkpoint for method 'ghn_plain' (default: the --ghn one)")
    p.add_argument("--ranker", type=Path, default=None,
                   help="a fitted ranker for methods 'ghn' and 'ghn_noprior' (default: label and fit one in OUT)")
    p.add_argument("--ranker-labels", type=int, default=None,
                   help="the most architectures labelled for the ranker (default: nas search's, %d)"
                   % _default_recipe().labels)
    p.add_argument("--label-batch", type=int, default=None,
                   help="buy the ranker's labels N at a time until it stops improving (default 0, as nas search: "
                   "all --ranker-labels at once)")
    p.add_argument("--label-margin", type=float, default=None,
                   help="stop buying when a purchase lifts the ranker's cross-validated tau by less (default: "
                   "nas search's, %g)" % _default_recipe().margin)
    p.add_argument("--ranker-k", type=int, default=None,
                   help="SGD steps per ranker label (default: nas search's, %d)" % _default_recipe().k)
    p.add_argument("--label-seed", type=seed_value, default=1,
                   help="seed of the ranker's label sample and trainings (default %(default)s)")
    p.add_argument(
        "--methods", default=None,
        help="comma-separated method names (default: ghn, ghn_plain and every baseline; ranker ablations: "
        "ghn_w05, ghn_noprior, ghn_meta, ghn_meta_noprior, opcount_ranker, opcount_ranker_flops)",
    )
    p.add_argument(
        "--workers", type=int, default=1, help="parallel processes training the ground truth (default %(default)s)"
    )
    p.add_argument("--device", default="cpu", help="torch device to train and score on (default %(default)s)")
    p.add_argument("--seed", type=seed_value, default=0,
                   help="seed of the candidate sample, scorers and bootstrap (default %(default)s)")
    p.add_argument("--cache", type=Path, default=None, help="ground-truth cache file (default OUT/ground_truth.sqlite)")
    p.add_argument("--storage", default=None, metavar="URL",
                   help="keep the ground truth in this Optuna storage as a queue of training runs instead of --cache; "
                   "`nas worker --storage URL --study NAME` on any machine trains queued runs too")
    p.add_argument("--study", default=None, metavar="NAME",
                   help="name of the evaluation in --storage (its queue is the study NAME-gt; default SPACE-DATASET)")
    p.add_argument("--heartbeat-interval", type=int, default=30, metavar="S",
                   help="with --storage: seconds between heartbeats of a run in progress (default %(default)s)")
    p.add_argument("--grace-period", type=int, default=120, metavar="S",
                   help="with --storage: seconds without heartbeat after which a run's worker counts as dead and "
                   "the run is queued again (default %(default)s)")
    p.add_argument(
        "--batch-size", type=int, default=64, help="minibatch size of the zero-cost proxies (default %(default)s)"
    )
    p.add_argument("--max-train", type=int, default=None, help="use at most this many training images")
    p.add_argument("--no-figures", action="store_true", help="write the tables only")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    add_threads_argument(p)
    p.set_defaults(func=run_correlate)


def _default_recipe() -> Any:
    from nas.evaluation.ranker_methods import LabelRecipe

    return LabelRecipe.default()


def _load_ghn(path: Path, space: Any, data: Any, device: str) -> Any:
    try:
        from nas.ghn import GHN, check_identity
    except ImportError as err:
        raise ValueError(f"`--ghn` needs the nas.ghn package, which cannot be imported: {err}") from None
    ghn = GHN.load(path, map_location=device)
    check_identity(ghn.space_info, space, data, where=f"GHN checkpoint {str(path)!r}")
    ghn.check_compatible(space)
    return ghn.eval()


def _default_ghn(space: Any, data: Any, path: Path, held_out: list[Any], *, progress: bool) -> Any:
    """Load or meta-train the default GHN at ``path``, never training on ``held_out``.

    The checkpoint lives in the output folder, not the shared default path:
    a GHN there was meta-trained with exactly these candidates held out.
    """
    try:
        from nas.ghn import ensure_ghn, meta_train
    except ImportError as err:
        raise ValueError(
            f"the default GHN needs the nas.ghn package, which cannot be imported ({err}); "
            "pass `--ghn PATH`, or `--methods` without ghn."
        ) from None
    logger.info("default GHN at %s (the %d evaluated candidates are held out)", path, len(held_out))
    if "held_out" in inspect.signature(ensure_ghn).parameters:
        return ensure_ghn(space, data, path=path, progress=progress, held_out=held_out)
    # ensure_ghn without `held_out`: meta_train resumes or reuses the checkpoint itself.
    return meta_train(space, data, None, out=path, resume=True, progress=progress, held_out=held_out).eval()


def run_correlate(args: argparse.Namespace) -> int:
    """Run ``nas correlate``; returns the exit code."""
    import pandas as pd

    from nas.cli.basic import flag_errors
    from nas.data import load_dataset
    from nas.evaluation import (
        DEFAULT_METHODS,
        RANKER_METHODS,
        LabelRecipe,
        correlate,
        ranker_methods,
        sample_candidates,
        scorer_names,
        write_results,
    )
    from nas.space import load_space
    from nas.training import TrainConfig

    set_threads(args.threads)
    if args.ground_truth is not None:
        given = [flag for flag, value in (("--archs", args.archs), ("--epochs", args.epochs),
                                          ("--train-seeds", args.train_seeds), ("--cache", args.cache))
                 if value is not None]
        if given:
            raise ValueError(f"`{given[0]}` cannot be used with `--ground-truth`: the table's architectures and "
                             "their trained results are the ground truth; drop it.")
    args.archs = 100 if args.archs is None else args.archs
    args.epochs = 3.0 if args.epochs is None else args.epochs
    args.train_seeds = 2 if args.train_seeds is None else args.train_seeds
    for name in ("archs", "train_seeds", "workers", "batch_size"):
        value = getattr(args, name)
        if value < 1:
            raise ValueError(f"`--{name.replace('_', '-')}` must be at least 1, but got {value}.")
    if args.archs < 2:
        raise ValueError(f"`--archs` must be at least 2, but got {args.archs}.")
    if not args.epochs > 0:
        raise ValueError(f"`--epochs` must be positive, but got {args.epochs}.")
    with flag_errors(args):
        train_config = TrainConfig(device=args.device)
    progress = not args.no_progress

    valid = [*scorer_names(), *[m for m in RANKER_METHODS if m not in scorer_names()]]
    if args.methods is not None:
        methods = [m.strip() for m in args.methods.split(",") if m.strip()]
        unknown = [m for m in methods if m not in valid]
        if unknown or not methods:
            raise ValueError(f"`--methods` has unknown methods {unknown or [args.methods]}; valid: {', '.join(valid)}.")
    else:
        methods = list(DEFAULT_METHODS)
    for flag in ("ranker_labels", "ranker_k"):
        value = getattr(args, flag)
        if value is not None and value < (4 if flag == "ranker_labels" else 1):
            raise ValueError(f"`--{flag.replace('_', '-')}` must be at least {4 if flag == 'ranker_labels' else 1}, "
                             f"but got {value}.")
    default = _default_recipe()
    if args.label_batch is not None and args.label_batch < 0:
        raise ValueError(f"`--label-batch` must be positive (or 0: all at once), but got {args.label_batch}.")
    if args.label_margin is not None and not (math.isfinite(args.label_margin) and args.label_margin >= 0):
        raise ValueError(f"`--label-margin` must be a non-negative number, but got {args.label_margin}.")
    batch = default.batch if args.label_batch is None else (args.label_batch or None)
    recipe = LabelRecipe(labels=args.ranker_labels or default.labels, k=args.ranker_k or default.k,
                         seed=args.label_seed, batch=batch,
                         margin=default.margin if args.label_margin is None else args.label_margin)
    ranker_rows = [m for m in methods if m in RANKER_METHODS]

    with flag_errors(args):
        data = load_dataset(args.dataset, seed=0, max_train=args.max_train)
    space = load_space(
        args.space, input_shape=data.input_shape, num_classes=data.num_classes, **parse_space_args(args.space_arg)
    )
    space.check_choices()
    gt_table = None
    if args.ground_truth is not None:
        from nas.evaluation import read_ground_truth

        gt_table = read_ground_truth(args.ground_truth, space, data)
        graphs = list(gt_table.graphs)
    else:
        graphs = sample_candidates(space, args.archs, seed=args.seed)

    # Given checkpoints are checked before anything is written.
    ranker = None
    if args.ranker is not None and {"ghn", "ghn_noprior"} & set(ranker_rows):
        from nas.ghn import GHNRanker, check_identity

        ranker = GHNRanker.load(args.ranker, map_location=args.device)
        check_identity(ranker.space_info, space, data, where=f"ranker checkpoint {str(args.ranker)!r}")
        ranker.check_compatible(space, source=args.ranker)
    # Only the ghn_meta rows and ghn_plain need a meta-trained GHN; the campaign's ranker does not.
    meta_rows = [m for m in ranker_rows if RANKER_METHODS[m][0] == "ghn"]
    ghn = None
    needs_ghn = bool(meta_rows) or ("ghn_plain" in methods and args.ghn_plain is None)
    if needs_ghn and args.ghn is not None:
        ghn = _load_ghn(args.ghn, space, data, args.device)
    plain = _load_ghn(args.ghn_plain, space, data, args.device) if args.ghn_plain is not None else None
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    if needs_ghn and ghn is None:
        ghn = _default_ghn(space, data, out / "ghn.pt", graphs, progress=progress)
    plain = plain if plain is not None else ghn

    scorers: list[Any] = list(methods)
    cost = None
    if ranker_rows:
        built, cost = ranker_methods(
            space, data, ghn=ghn, methods=ranker_rows, out=out, exclude=[g.key for g in graphs], recipe=recipe,
            ranker=ranker, workers=args.workers, progress=progress,
        )
        by_name = {s.name: s for s in built}
        scorers = [by_name.get(m, m) for m in methods]

    store = None
    if args.storage is not None:
        from nas.campaign import QueuedGroundTruth

        if args.cache is not None or args.workers != 1:
            given = "--cache" if args.cache is not None else "--workers"
            raise ValueError(f"`{given}` cannot be used with `--storage`: the ground truth is kept in the storage, "
                             "and more processes join with `nas worker --storage URL --study NAME`.")
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)  # one line per queued run is noise
        study = args.study or f"{space.name}-{data.name}"
        if args.heartbeat_interval < 1 or args.grace_period <= args.heartbeat_interval:
            raise ValueError(f"`--grace-period` ({args.grace_period}) must exceed `--heartbeat-interval` "
                             f"({args.heartbeat_interval}), which must be positive.")
        store = QueuedGroundTruth(args.storage, study, dataset={"name": args.dataset, "seed": 0,
                                                                "max_train": args.max_train},
                                  heartbeat_interval=args.heartbeat_interval, grace_period=args.grace_period)
        logger.info("ground truth queued in study %s-gt; add workers with: nas worker --storage URL --study %s",
                    study, study)
    elif args.study is not None:
        raise ValueError("`--study` names the evaluation in `--storage`; give --storage too.")

    result = correlate(
        space,
        data,
        store=store,
        archs=graphs if gt_table is None else None,
        epochs=args.epochs if gt_table is None else None,
        seeds=args.train_seeds,
        table=gt_table,
        scorers=scorers,
        cache_path=args.cache or out / "ground_truth.sqlite",
        ghn={"ghn_plain": plain} if plain is not None else None,
        seed=args.seed,
        progress=progress,
        workers=args.workers,
        train_config=train_config,
        device=args.device,
        batch_size=args.batch_size,
    )
    if ranker_rows:
        info = cost.to_dict() if cost is not None else {}
        if ranker is not None:
            info["given"] = str(args.ranker)
            info.update({k: ranker.label_info.get(k) for k in ("n", "k", "seed") if k in ranker.label_info})
        result.summary_json["ranker"] = info
    paths = write_results(result, out, figures=not args.no_figures)

    gt = result.summary_json["ground_truth"]
    ceiling = result.summary_json["noise_ceiling"]
    columns = ["kendall", "kendall_lo", "kendall_hi", "spearman", "top10_precision", "seconds_per_candidate"]
    table = result.summary[columns]
    table = table.sort_values("kendall", ascending=False)
    with pd.option_context("display.width", 120, "display.max_rows", 200):
        if gt_table is None:
            print(
                f"{len(graphs)} candidates ({gt['n_failed']} failed), {args.epochs:g} epochs x {args.train_seeds} "
                f"seeds on {data.name}; training one candidate once: {gt['seconds_per_run'] or float('nan'):.2f} s"
            )
        else:
            print(f"{len(graphs)} architectures of {args.ground_truth} ({gt['n_failed']} failed or missing), "
                  f"{gt_table.metric} over {len(gt_table.seeds)} seed(s); nothing trained for the ground truth")
        if ceiling["kendall"] is None and len(gt["seeds"]) < 2:
            print("noise ceiling (seed vs seed): not available (the ground truth has one seed)")
        else:
            print(
                f"noise ceiling (seed vs seed): kendall {_fmt(ceiling['kendall'])} "
                f"[{_fmt(ceiling['kendall_lo'])}, {_fmt(ceiling['kendall_hi'])}], "
                f"spearman {_fmt(ceiling['spearman'])}"
            )
        print(table.to_string(float_format=lambda v: f"{v:.4g}"))
        ranker_info = result.summary_json.get("ranker")
        if ranker_info and "labelled" in ranker_info:
            once = ranker_info["one_time_seconds"]
            print(
                f"ranker: {ranker_info['labelled']} labels of {ranker_info['k']} SGD steps "
                f"({ranker_info['label_seconds']:.0f} s); one-time seconds "
                + ", ".join(f"{name} {_fmt(v, '.0f')}" for name, v in once.items())
            )
    print(f"wrote {paths['summary_json']} and {len(paths) - 3} figure files to {out}")
    return 0


def _fmt(value: float | None, spec: str = ".3f") -> str:
    return "n/a" if value is None else format(value, spec)
