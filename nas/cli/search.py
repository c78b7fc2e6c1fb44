"""``nas search``, ``nas worker`` and ``nas demo``: the search campaign from the command line.

``nas search`` ranks candidates (stage 1: by default with the GHN ranker, which
predicts each candidate's short-training loss from its graph; ``--rank-by loss``
ranks by the validation loss of GHN-predicted weights), fine-tunes the top-k
from their GHN-predicted weights (stage 2) and writes the results into ``--out``. Running the same command
again resumes the campaign. Several machines join one campaign by giving the
same ``--storage URL --study NAME``; ``nas worker`` only fine-tunes what is
queued.

Storage URLs: ``sqlite:///FILE.db`` (default ``sqlite:///<out>/campaign.db``),
``journal:///FILE.log`` (several processes on one machine),
``postgresql://USER:PASSWORD@HOST/DB`` (several machines). Without
``--storage``, the URL is read from ``$NAS_STORAGE`` when set, which keeps a
password out of the process list.

Examples::

    nas search --space nb201 --dataset mnist5k --trials 300 --top-k 5 --out runs/nb201
    nas search --dataset mnist5k --storage journal:///tmp/c.log --study c1 --out runs/c1
    nas worker --storage journal:///tmp/c.log --study c1
    nas demo --out runs/demo
"""

from __future__ import annotations

import argparse
import logging
import os
import time
import types
from pathlib import Path
from typing import Any

__all__ = ["DEMO", "STORAGE_ENV", "add_parsers", "run_demo", "run_search", "run_worker"]

logger = logging.getLogger(__name__)

#: Environment variable read when ``--storage`` is not given: keeps a database
#: password off the command line (where ``ps`` shows it to every user).
STORAGE_ENV = "NAS_STORAGE"

#: Settings of ``nas demo`` (nb201 on mnist5k), sized to stay under 15 minutes on 2 CPU cores. Measured
#: single-thread CPU costs on the AMD EPYC development machine: ~0.33 s per GHN meta-training step
#: (400 steps), ~1.1 s per ranker label (30 SGD steps; 700 labels on 2 worker processes: ~6.5 min), ~100 s
#: to fit the ranker on them, ~5 ms per rank trial (300 plus the refinement of the top 3), ~3 s per
#: fine-tuning epoch (3 x 2) and ~7 s per self-check epoch (8 x 1), plus loading, held-out evaluation and
#: plots. The labels are the recipe's default count (``nas.ghn.RANKER_LABELS``).
DEMO: dict[str, Any] = {
    "space": "nb201",
    "dataset": "mnist5k",
    "trials": 300,
    "top_k": 3,
    "finetune_epochs": 2.0,
    "self_check": 8,
    "self_check_epochs": 1.0,
    "batch_size": 50,
    "rank_by": "ranker",
    "ranker_labels": 700,
    "ranker_k": 30,
    "label_workers": 2,
    "ghn_steps": 400,
}


def _one_line_error(self: argparse.ArgumentParser, message: str) -> None:
    """Report a bad flag in one line (no usage block) and exit with code 2."""
    self.exit(2, f"{self.prog}: error: {' '.join(message.split())}\n")


def _parser(subparsers: Any, name: str, **kwargs: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(name, **kwargs)
    p.error = types.MethodType(_one_line_error, p)  # type: ignore[method-assign]
    return p


def _add_common(p: argparse.ArgumentParser, *, threads: int | None) -> None:
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument(
        "--threads", type=int, default=threads, metavar="N",
        help="torch CPU threads of this process (default "
        + (f"{threads}: several processes share the cores" if threads else "torch's: one per core")
        + "; on a busy machine more threads than free cores can run 20x slower)",
    )
    p.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    p.add_argument("--heartbeat", type=int, default=30, metavar="S", help="seconds between heartbeats (default 30)")
    p.add_argument(
        "--grace", type=int, default=120, metavar="S",
        help="seconds without heartbeat after which a worker counts as dead (default 120)",
    )


def add_parsers(subparsers: Any) -> None:
    """Register ``search``, ``worker`` and ``demo``."""
    from nas.campaign import FINETUNE_METRICS, OBJECTIVES, PICKS, RANK_BY, SAMPLERS
    from nas.cli.basic import add_space_arguments
    from nas.evaluation.proxies import PROXIES
    from nas.ghn import RANKER_K, RANKER_LABELS

    p = _parser(
        subparsers,
        "search",
        help="search a space: rank with the GHN ranker, fine-tune the top-k",
        description="Rank candidates of a search space (Optuna study <study>-rank) by the short-training loss "
        "that the GHN ranker predicts from each graph (fitted once into OUT/ranker.pt on --ranker-labels short "
        "trainings), or with --rank-by loss by the validation loss of GHN-predicted weights; then fine-tune the "
        "top-k from their GHN-predicted weights (<study>-finetune). Running it again resumes; several processes "
        "may join with the same --storage and --study.",
    )
    add_space_arguments(p)
    p.add_argument("--dataset", default="mnist5k", help="digits, mnist5k, mnist:PATH or cifar10:PATH (default mnist5k)")
    p.add_argument(
        "--ghn", default=None, metavar="PATH",
        help="GHN checkpoint (default: meta-train one into OUT/ghn.pt)",
    )
    p.add_argument(
        "--ghn-steps", type=int, default=None, metavar="N",
        help="meta-training steps of the GHN trained when --ghn is not given (default: the default recipe)",
    )
    p.add_argument(
        "--rank-by", choices=list(RANK_BY), default="ranker",
        help="what scores a candidate in stage 1: "
        + "; ".join(f"{name}: {what}" for name, what in RANK_BY.items())
        + " (default ranker)",
    )
    p.add_argument(
        "--ranker", action="append", default=None, metavar="PATH",
        help="ranker checkpoint (default: fit one into OUT/ranker.pt; with --rank-by ranker only); repeat it to "
        "rank by the mean of several rankers, e.g. fitted on GHNs meta-trained with different seeds",
    )
    p.add_argument(
        "--ranker-labels", type=int, default=RANKER_LABELS, metavar="N",
        help=f"architectures trained briefly to fit the ranker when --ranker is not given (default {RANKER_LABELS})",
    )
    p.add_argument(
        "--ranker-k", type=int, default=RANKER_K, metavar="K",
        help=f"SGD steps of each of those short trainings (default {RANKER_K})",
    )
    p.add_argument(
        "--label-workers", type=int, default=1, metavar="W",
        help="processes running those short trainings in parallel (default 1)",
    )
    p.add_argument("--trials", type=int, default=300, metavar="N", help="rank trials (default 300)")
    p.add_argument(
        "--refine", type=int, default=None, metavar="R",
        help="after the rank trials, score every one-choice change of the R best candidates until they stop "
        "changing: a local search on the rank score (default: --top-k when ranking by the ranker, 0 (off) "
        "with --rank-by loss)",
    )
    p.add_argument(
        "--refine-trials", type=int, default=None, metavar="N", help="most refinement trials (default: --trials)"
    )
    p.add_argument(
        "--rerank", default=None, metavar="PROXY",
        help=f"reorder the --rerank-pool best candidates by a zero-cost proxy ({', '.join(PROXIES)}), or by the "
        "sum of its rank and the rank score's (ranker+PROXY), and fine-tune the --top-k best of them (default: off)",
    )
    p.add_argument(
        "--rerank-pool", type=int, default=30, metavar="N", help="candidates the proxy reorders (default 30)"
    )
    p.add_argument("--top-k", type=int, default=5, metavar="K", help="candidates to fine-tune (default 5)")
    p.add_argument("--finetune-epochs", type=float, default=3.0, metavar="E", help="fine-tuning epochs (default 3)")
    p.add_argument(
        "--finetune-lr", type=float, default=0.05, metavar="LR",
        help="fine-tuning peak learning rate (default 0.05; 0.02 suits fine-tunes of about 1 epoch)",
    )
    p.add_argument("--sampler", default="tpe", help=f"{' | '.join(SAMPLERS)} (default tpe)")
    p.add_argument("--objectives", default="loss", help=f"{' | '.join(OBJECTIVES)} (default loss)")
    p.add_argument(
        "--finetune-metric", default="acc", help=f"fine-tune trial value: {' | '.join(FINETUNE_METRICS)} (default acc)"
    )
    p.add_argument(
        "--pick", choices=list(PICKS), default=None,
        help="what best.json reports: " + "; ".join(f"{name}: {what}" for name, what in PICKS.items())
        + " (default rank with the ranker on one objective, else finetuned)",
    )
    p.add_argument(
        "--storage", default=None, metavar="URL",
        help=f"Optuna storage (default ${STORAGE_ENV}, else sqlite:///OUT/campaign.db)",
    )
    p.add_argument("--study", default=None, metavar="NAME", help="campaign name (default SPACE-DATASET)")
    p.add_argument(
        "--self-check", type=int, default=0, metavar="N",
        help="train N random candidates to check the stage-1 ranking (default 0)",
    )
    p.add_argument(
        "--self-check-epochs", type=float, default=None, metavar="E",
        help="their epochs (default --finetune-epochs)",
    )
    p.add_argument(
        "--batch-size", type=int, default=32, metavar="B",
        help="candidates scored together, in one ranker (or GHN) forward pass (default 32)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="output folder")
    _add_common(p, threads=None)
    p.set_defaults(func=run_search)

    p = _parser(
        subparsers,
        "worker",
        help="fine-tune the queued candidates of a campaign",
        description="Join a campaign started by `nas search` and fine-tune queued candidates until none is left.",
    )
    p.add_argument(
        "--storage", default=None, metavar="URL",
        help=f"the campaign's Optuna storage (default ${STORAGE_ENV}; required when that is unset)",
    )
    p.add_argument("--study", required=True, metavar="NAME", help="the campaign name")
    p.add_argument(
        "--out", type=Path, default=None, metavar="DIR",
        help="where to keep fine-tuned weights (default: the campaign's folder)",
    )
    p.add_argument("--ghn", default=None, metavar="PATH", help="GHN checkpoint (default: the campaign's)")
    p.add_argument(
        "--ranker", action="append", default=None, metavar="PATH",
        help="ranker checkpoint, repeated for an ensemble (default: the campaign's; checked when given, "
        "fine-tuning itself does not use it)",
    )
    _add_common(p, threads=1)
    p.set_defaults(func=run_worker)

    p = _parser(
        subparsers,
        "demo",
        help="the demo: search nb201 on mnist5k end to end",
        description="Meta-train a GHN (or reuse OUT/ghn.pt), fit the GHN ranker on 700 short trainings (or reuse "
        "OUT/ranker.pt), rank 300 nb201 candidates on mnist5k with it, fine-tune the top 3 from their "
        "GHN-predicted weights, run a self-check and write tables and plots into OUT (sized for about 15 minutes "
        "on 2 CPU cores).",
    )
    p.add_argument(
        "--out", type=Path, default=Path("runs/demo"), metavar="DIR",
        help="output folder (default runs/demo)",
    )
    p.add_argument(
        "--trials", type=int, default=DEMO["trials"], metavar="N",
        help=f"rank trials (default {DEMO['trials']})",
    )
    p.add_argument(
        "--top-k", type=int, default=DEMO["top_k"], metavar="K",
        help=f"candidates to fine-tune (default {DEMO['top_k']})",
    )
    p.add_argument(
        "--self-check", type=int, default=DEMO["self_check"], metavar="N",
        help=f"random candidates trained for the self-check (default {DEMO['self_check']})",
    )
    p.add_argument(
        "--ghn-steps", type=int, default=DEMO["ghn_steps"], metavar="N",
        help=f"meta-training steps of the GHN (default {DEMO['ghn_steps']}; reused from OUT/ghn.pt when there)",
    )
    _add_common(p, threads=1)
    p.set_defaults(func=run_demo)


def _positive(flag: str, value: float | int | None) -> None:
    if value is not None and not value > 0:
        raise ValueError(f"`{flag}` must be positive, but got {value}.")


def _check_grace(args: argparse.Namespace) -> None:
    """``--grace`` must exceed ``--heartbeat``, else a live worker's trial may be failed as dead."""
    if args.grace <= args.heartbeat:
        raise ValueError(f"`--grace` ({args.grace}) must exceed `--heartbeat` ({args.heartbeat}).")


#: Keywords of :class:`~nas.campaign.Campaign` named unlike the flag that sets them.
_CAMPAIGN_FLAGS = {"heartbeat_interval": "--heartbeat", "grace_period": "--grace", "space_args": "--space-arg"}


def _setup(args: argparse.Namespace) -> None:
    """Process-wide settings of the command: Optuna's log level and torch's thread count."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    _positive("--threads", args.threads)
    if args.threads is not None:
        import torch

        # Measured on 2 shared cores: one GHN meta-training step took 0.8 s with 1 thread and
        # 22 s with 2 threads while one other process ran (OpenMP threads spin on each other).
        torch.set_num_threads(args.threads)


def _print_result(result: Any, started: float) -> None:
    print(result.summary())
    if result.best is not None and result.out is not None:
        # Short fine-tunes from predicted weights trail full training from scratch (README, search benchmark).
        print(f"to train the best architecture from scratch: nas train --arch {result.out / 'best.json'} "
              f"--dataset {result.best.get('dataset', '<dataset>')} --epochs 3 --save best-scratch.pt")
    print(f"wall time {time.perf_counter() - started:.0f} s")


def run_search(args: argparse.Namespace) -> int:
    """Run ``nas search``; prints the summary table and returns the exit code."""
    from nas.campaign import FINETUNE_METRICS, resolve_objectives, resolve_sampler
    from nas.cli.basic import flag_errors

    for flag in (
        "trials", "top_k", "finetune_epochs", "finetune_lr", "batch_size", "heartbeat", "grace", "ghn_steps",
        "ranker_k", "label_workers",
    ):
        _positive(f"--{flag.replace('_', '-')}", getattr(args, flag))
    _check_grace(args)
    _positive("--self-check-epochs", args.self_check_epochs)
    if args.self_check < 0 or 0 < args.self_check < 3:
        raise ValueError(f"`--self-check` must be 0 or at least 3, but got {args.self_check}.")
    for flag, check in (
        ("sampler", lambda: resolve_sampler(args.sampler)),
        ("objectives", lambda: resolve_objectives(args.objectives)),
    ):
        try:
            check()
        except ValueError as err:
            raise ValueError(str(err).replace(f"`{flag}`", f"`--{flag}`")) from None
    if args.finetune_metric not in FINETUNE_METRICS:
        raise ValueError(
            f"`--finetune-metric` must be one of {', '.join(FINETUNE_METRICS)}, but got {args.finetune_metric!r}."
        )
    _setup(args)
    started = time.perf_counter()
    with flag_errors(args, **_CAMPAIGN_FLAGS, steps="--ghn-steps"):
        campaign = _search_campaign(args)
    _print_result(campaign.run(), started)
    return 0


def _search_campaign(args: argparse.Namespace) -> Any:
    """The :class:`~nas.campaign.Campaign` of ``nas search`` (not run yet)."""
    from nas.campaign import Campaign
    from nas.cli.basic import parse_space_args

    return Campaign(
        space=args.space,
        dataset=args.dataset,
        ghn=args.ghn,
        trials=args.trials,
        top_k=args.top_k,
        finetune_epochs=args.finetune_epochs,
        finetune_lr=args.finetune_lr,
        rerank=args.rerank,
        rerank_pool=args.rerank_pool,
        sampler=args.sampler,
        objectives=args.objectives,
        out=args.out,
        storage=args.storage or os.environ.get(STORAGE_ENV) or None,
        study=args.study,
        device=args.device,
        seed=args.seed,
        batch_size=args.batch_size,
        self_check=args.self_check,
        self_check_epochs=args.self_check_epochs,
        space_args=parse_space_args(args.space_arg),
        finetune_metric=args.finetune_metric,
        pick=args.pick,
        heartbeat_interval=args.heartbeat,
        grace_period=args.grace,
        progress=not args.no_progress,
        meta_train=_meta_train_config(args.ghn_steps, args.device),
        rank_by=args.rank_by,
        ranker=_ranker_arg(args.ranker),
        ranker_labels=args.ranker_labels,
        ranker_k=args.ranker_k,
        label_workers=args.label_workers,
        refine=args.refine,
        refine_trials=args.refine_trials,
    )


def _ranker_arg(paths: list[str] | None) -> str | list[str] | None:
    """``--ranker``, given once (a path) or several times (an ensemble's paths)."""
    if paths is None or len(paths) > 1:
        return paths
    return paths[0]


def _meta_train_config(steps: int | None, device: str) -> Any:
    if steps is None:
        return None
    from nas.ghn import MetaTrainConfig

    default = MetaTrainConfig()
    return MetaTrainConfig(
        steps=steps,
        device=device,
        warmup_steps=min(default.warmup_steps, steps),
        eval_every=min(default.eval_every, steps),
    )


def run_worker(args: argparse.Namespace) -> int:
    """Run ``nas worker``; fine-tunes queued candidates and prints what it did."""
    from nas.campaign import Campaign
    from nas.cli.basic import flag_errors

    _positive("--heartbeat", args.heartbeat)
    _positive("--grace", args.grace)
    _check_grace(args)
    storage = args.storage or os.environ.get(STORAGE_ENV)
    if not storage:
        raise ValueError(f"`--storage` is required (or set ${STORAGE_ENV}).")
    _setup(args)
    started = time.perf_counter()
    with flag_errors(args, **_CAMPAIGN_FLAGS):
        campaign = Campaign.from_storage(
            storage,
            args.study,
            out=args.out,
            ghn=args.ghn,
            ranker=_ranker_arg(args.ranker),
            device=args.device,
            progress=not args.no_progress,
            heartbeat_interval=args.heartbeat,
            grace_period=args.grace,
        )
        if args.ranker is not None:
            _ = campaign.ranker  # a given checkpoint is checked, although fine-tuning does not use it
    stats = campaign.work()
    print(
        f"worker fine-tuned {stats.finetuned} candidates of campaign {args.study!r} "
        f"({stats.failed} diverged, {stats.skipped} skipped) in {time.perf_counter() - started:.0f} s; "
        f"weights in {campaign.out / 'weights'}"
    )
    return 0


def run_demo(args: argparse.Namespace) -> int:
    """Run ``nas demo``: nb201 on mnist5k, default GHN, fit the ranker, rank, fine-tune, self-check, report."""
    from nas.campaign import Campaign
    from nas.cli.basic import flag_errors

    for flag in ("trials", "top_k", "heartbeat", "grace", "ghn_steps"):
        _positive(f"--{flag.replace('_', '-')}", getattr(args, flag))
    _check_grace(args)
    if args.self_check < 0 or 0 < args.self_check < 3:
        raise ValueError(f"`--self-check` must be 0 or at least 3, but got {args.self_check}.")
    _setup(args)
    started = time.perf_counter()
    settings = {k: v for k, v in DEMO.items() if k != "ghn_steps"}
    settings.update(trials=args.trials, top_k=args.top_k, self_check=args.self_check)
    with flag_errors(args, **_CAMPAIGN_FLAGS, steps="--ghn-steps"):
        campaign = Campaign(
            **settings,
            ghn=None,
            meta_train=_meta_train_config(args.ghn_steps, args.device),
            out=args.out,
            device=args.device,
            heartbeat_interval=args.heartbeat,
            grace_period=args.grace,
            progress=not args.no_progress,
        )
    _print_result(campaign.run(), started)
    return 0
