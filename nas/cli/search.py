"""``nas search``, ``nas worker`` and ``nas demo``: the search campaign from the command line.

``nas search`` ranks candidates (stage 1: by each candidate's short-training
loss, measured when ``--trials`` is at most ``--ranker-labels``, else predicted
from its graph by the GHN ranker; ``--rank-by loss`` ranks by the validation
loss of GHN-predicted weights), fine-tunes the top-k
from their GHN-predicted weights (stage 2) and writes the results into ``--out``. Running the same command
again resumes the campaign. Several machines join one campaign by giving the
same ``--storage URL --study NAME``; ``nas worker`` only fine-tunes what is
queued.

Storage URLs: ``sqlite:///FILE.db`` (default ``sqlite:///<out>/campaign.db``),
``journal:///FILE.log`` (several processes on one machine),
``postgresql://USER:PASSWORD@HOST/DB`` (several machines). Without
``--storage``, the URL is read from ``$NAS_STORAGE`` when set, which keeps a
password out of the process list.

Every setting of ``nas search`` is a field of :class:`nas.campaign.CampaignConfig`
and its flag is built from it (``top_k`` -> ``--top-k``). ``--config FILE``
reads the settings from a TOML file, flags given with it override the file, and
``--print-config`` prints the settings in effect as TOML and exits.

Examples::

    nas search --space nb201 --dataset mnist5k --trials 300 --top-k 5 --out runs/nb201
    nas search --trials 100 --print-config > campaign.toml
    nas search --config campaign.toml --out runs/c2
    nas search --dataset mnist5k --storage journal:///tmp/c.log --study c1 --out runs/c1
    nas worker --storage journal:///tmp/c.log --study c1
    nas demo --out runs/demo
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

__all__ = ["DEMO", "STORAGE_ENV", "add_parsers", "run_demo", "run_search", "run_worker"]

logger = logging.getLogger(__name__)

#: Environment variable read when ``--storage`` is not given: keeps a database
#: password off the command line (where ``ps`` shows it to every user).
STORAGE_ENV = "NAS_STORAGE"

#: Settings of ``nas demo`` (a :class:`~nas.campaign.CampaignConfig` as a dict): nb201 on mnist5k,
#: sized to stay under 15 minutes on 2 CPU cores. Measured single-thread CPU costs on the AMD EPYC
#: development machine: ~0.33 s per GHN meta-training step (400 steps), ~1.1 s per ranker label (30 SGD
#: steps; the recipe's ``nas.ghn.RANKER_LABELS``, capped at the 300 rank trials: 300 labels on 2 worker
#: processes, ~3 min), ~45 s to fit the ranker on them, ~5 ms per rank trial (300 plus the refinement of
#: the top 3), ~3 s per fine-tuning epoch (3 x 2) and ~7 s per self-check epoch (8 x 1), plus loading,
#: held-out evaluation and plots.
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
    "out": "runs/demo",
}

#: Flags named unlike their setting of :class:`~nas.campaign.CampaignConfig`.
_FLAG_OF = {"space_args": "--space-arg", "progress": "--no-progress"}

#: Old flag -> new flag, kept as deprecated aliases for one release.
_DEPRECATED = {"--heartbeat": "--heartbeat-interval", "--grace": "--grace-period"}


def _flag(name: str) -> str:
    return _FLAG_OF.get(name, "--" + name.replace("_", "-"))


def _flags() -> dict[str, str]:
    """Setting -> flag, for :func:`nas.cli.basic.flag_errors`."""
    from nas.campaign import setting_names

    return {name: _flag(name) for name in setting_names()}


def _add_setting(
    parser: Any, name: str, *, default: Any = argparse.SUPPRESS, shown: Any = None
) -> None:
    """Add the flag of setting ``name`` of :class:`~nas.campaign.CampaignConfig`, its help taken from the field.

    Args:
        parser: A parser or argument group.
        name: The setting.
        default: The flag's default (``SUPPRESS``: unset unless given, so that it
            overrides a ``--config`` file only when given).
        shown: The default named in the help (default: the setting's own default).
    """
    from nas.campaign import CampaignConfig
    from nas.cli.options import add_space_arguments

    field = {f.name: f for f in dataclasses.fields(CampaignConfig)}[name]
    meta = field.metadata
    value = shown if shown is not None else (default if default is not argparse.SUPPRESS else field.default)
    text = meta["help"] + (f" (default {value})" if value not in (None, dataclasses.MISSING) else "")
    if name == "space":
        add_space_arguments(parser, default=default, shown=value)
        return
    if name == "space_args":
        return  # --space-arg comes with --space
    if name == "progress":
        parser.add_argument("--no-progress", dest="progress", action="store_false", default=default,
                            help="hide the progress bars")
        return
    if field.type == "bool":  # an off-by-default switch
        parser.add_argument(_flag(name), dest=name, action="store_true", default=default, help=meta["help"])
        return
    kind = float if "float" in field.type else int if "int" in field.type else str
    kwargs: dict[str, Any] = {"default": default, "help": text, "metavar": meta["metavar"], "type": kind}
    choices = meta["choices"]
    if choices and any(k != v for k, v in choices.items()):  # described choices: argparse checks them
        described = "; ".join(f"{k}: {v}" for k, v in choices.items())
        kwargs.update(choices=list(choices), metavar=None, help=text.replace(meta["help"], f"{meta['help']}: {described}"))
    elif choices:  # plain names: the setting checks them, naming the flag
        kwargs.update(metavar="NAME",
                      help=text.replace(meta["help"], f"{meta['help']}: {' | '.join(choices)}"))
    if name == "ranker":
        kwargs["action"] = "append"
    parser.add_argument(_flag(name), **kwargs)
    old = next((o for o, n in _DEPRECATED.items() if n == _flag(name)), None)
    if old is not None:
        from nas.cli.options import DeprecatedAlias

        parser.add_argument(old, dest=name, type=kind, action=DeprecatedAlias, new=_flag(name),
                            help=argparse.SUPPRESS)


def _add_process(parser: Any) -> None:
    from nas.cli.options import add_threads_argument

    add_threads_argument(parser)


def add_parsers(subparsers: Any) -> None:
    """Register ``search``, ``worker`` and ``demo``."""
    from nas.campaign import GROUPS, CampaignConfig

    p = subparsers.add_parser(
        "search",
        help="search a space: rank by short training or the GHN ranker, fine-tune the top-k",
        description="Rank candidates of a search space (Optuna study <study>-rank) by their short-training loss: "
        "measured on each candidate when --trials is at most --ranker-labels (--rank-by short), else predicted "
        "from each graph by the GHN ranker (fitted once into OUT/ranker.pt on --ranker-labels short trainings; "
        "--rank-by ranker), or with --rank-by loss by the validation loss of GHN-predicted weights; then "
        "fine-tune the top-k from their GHN-predicted weights (<study>-finetune). Running it again resumes; "
        "several processes may join with the same --storage and --study. Settings come from the flags, over "
        "--config FILE (TOML, as --print-config writes it), over the defaults.",
    )
    p.add_argument("--config", type=Path, default=None, metavar="FILE",
                   help="read the settings from this TOML file; flags given as well override it")
    p.add_argument("--print-config", action="store_true",
                   help="print the settings in effect as TOML (for --config) and exit")
    groups = {name: p.add_argument_group(name, what) for name, what in GROUPS.items()}
    for field in dataclasses.fields(CampaignConfig):
        _add_setting(groups[field.metadata["group"]], field.name)
    _add_process(groups["output"])
    p.set_defaults(func=run_search)

    p = subparsers.add_parser(
        "worker",
        help="fine-tune the queued candidates of a campaign",
        description="Join a campaign started by `nas search` and fine-tune queued candidates until none is left. "
        "The settings are the campaign's own, read from its storage.",
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
    p.add_argument("--device", default=None, metavar="DEVICE", help="cpu or cuda (default: the campaign's)")
    for name in ("heartbeat_interval", "grace_period"):
        _add_setting(p, name, default=None, shown="the campaign's")
    _add_setting(p, "progress", default=True)
    _add_process(p)
    p.set_defaults(func=run_worker)

    p = subparsers.add_parser(
        "demo",
        help="the demo: search nb201 on mnist5k end to end",
        description="Meta-train a GHN (or reuse OUT/ghn.pt), fit the GHN ranker on 700 short trainings (or reuse "
        "OUT/ranker.pt), rank 300 nb201 candidates on mnist5k with it, fine-tune the top 3 from their "
        "GHN-predicted weights, run a self-check and write tables and plots into OUT (sized for about 15 minutes "
        "on 2 CPU cores).",
    )
    demo = _demo_config()
    for name in ("out", "trials", "top_k", "self_check", "ghn_steps", "device", "heartbeat_interval",
                 "grace_period", "progress"):
        _add_setting(p, name, default=getattr(demo, name))
    _add_process(p)
    p.set_defaults(func=run_demo)


def _demo_config() -> Any:
    from nas.campaign import CampaignConfig

    return CampaignConfig(**DEMO)


def _config_from_args(args: argparse.Namespace, base: Any) -> Any:
    """``base`` with the settings given as flags applied (errors name the flags)."""
    from nas.campaign import setting_names
    from nas.cli.basic import flag_errors
    from nas.cli.options import parse_space_args

    given = {name: getattr(args, name) for name in setting_names() if hasattr(args, name)}
    if getattr(args, "space_arg", None):
        given["space_args"] = {**base.space_args, **parse_space_args(args.space_arg)}
    if isinstance(given.get("ranker"), list) and len(given["ranker"]) == 1:
        given["ranker"] = given["ranker"][0]
    if "out" in given:
        given["out"] = str(given["out"])
    with flag_errors(args, **_flags()):
        return base.replace(**given)


#: Exit code of a campaign that ran to its end but picked no architecture (every fine-tune failed).
EXIT_NO_RESULT = 1


def _print_result(result: Any, started: float) -> None:
    print(result.summary())
    if result.best is not None and result.out is not None:
        # Short fine-tunes from predicted weights trail full training from scratch (README, search benchmark).
        print(f"to train the best architecture from scratch: nas train --arch {result.out / 'best.json'} "
              f"--dataset {result.best.get('dataset', '<dataset>')} --epochs 3 --save best-scratch.pt")
    print(f"wall time {time.perf_counter() - started:.0f} s")


def _setup(args: argparse.Namespace) -> None:
    """Process-wide settings of the command: Optuna's log level and torch's thread count."""
    import optuna

    from nas.cli.options import set_threads

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    set_threads(args.threads)


def _run_campaign(args: argparse.Namespace, config: Any, *, storage_env: bool = True) -> int:
    from nas.campaign import Campaign
    from nas.cli.basic import flag_errors

    if storage_env and config.storage is None and os.environ.get(STORAGE_ENV):
        config = config.replace(storage=os.environ[STORAGE_ENV])
    _setup(args)
    started = time.perf_counter()
    with flag_errors(args, **_flags()):
        campaign = Campaign(config)
    result = campaign.run()
    _print_result(result, started)
    if result.best is None and len(result.finetuned):
        # The run finished, but gave no architecture: not a success a script should take for one.
        print(f"nas {args.command}: error: all {len(result.finetuned)} fine-tuned candidates failed (see the "
              f"`error` column of {config.out}/finetuned.csv): no architecture picked", file=sys.stderr)
        return EXIT_NO_RESULT
    return 0


def run_search(args: argparse.Namespace) -> int:
    """Run ``nas search``; prints the summary table (or, with ``--print-config``, the settings).

    Returns 0, or :data:`EXIT_NO_RESULT` (1) when every fine-tuned candidate failed and nothing was picked.
    """
    from nas.campaign import CampaignConfig

    if args.config is not None and not args.config.is_file():
        raise FileNotFoundError(f"`--config`: no such file {str(args.config)!r}.")
    base = CampaignConfig.read(args.config) if args.config is not None else CampaignConfig()
    config = _config_from_args(args, base)
    if args.print_config:
        print(config.to_toml(), end="")
        return 0
    return _run_campaign(args, config)


def _check_worker_flags(args: argparse.Namespace) -> None:
    """Check ``--heartbeat-interval`` and ``--grace-period`` before the storage is opened."""
    from nas.campaign import CampaignConfig
    from nas.cli.basic import flag_errors

    given = {name: getattr(args, name) for name in ("heartbeat_interval", "grace_period")
             if getattr(args, name) is not None}
    with flag_errors(args, **_flags()):
        for name, value in given.items():
            if value < 1:
                raise ValueError(f"`{name}` must be positive, but got {value}.")
        if len(given) == 2:
            CampaignConfig(**given)


def _work_queues(args: argparse.Namespace, storage: str, started: float) -> bool:
    """Run the queued labels and ground-truth runs of ``--study`` (``nas search --queue-labels``,
    ``nas correlate --storage``), where it has such queues.

    Returns:
        Whether ``--study`` names only an evaluation (no campaign to fine-tune for).
    """
    import optuna

    from nas.campaign import mask_url, open_storage, worker_session
    from nas.campaign import QUEUES, queue_study, run_queue_worker

    heartbeat = args.heartbeat_interval or 30
    grace = args.grace_period or 120
    opened = open_storage(storage, heartbeat_interval=heartbeat, grace_period=grace)
    names = {s.study_name for s in optuna.get_all_study_summaries(opened, include_best_trial=False)}
    for kind, suffix in QUEUES.items():
        if args.study + suffix not in names:
            continue
        with worker_session() as worker:
            finished = run_queue_worker(queue_study(opened, args.study, kind), worker=worker, heartbeat_interval=heartbeat,
                                  grace_period=grace, progress=args.progress, device=args.device or "cpu")
        what = "ranker labels" if kind == "tse" else "ground-truth runs"
        print(f"worker ran {len(finished)} {what} of {args.study!r} in {mask_url(storage)} "
              f"in {time.perf_counter() - started:.0f} s")
    queues = any(args.study + suffix in names for suffix in QUEUES.values())
    return queues and f"{args.study}-rank" not in names


def run_worker(args: argparse.Namespace) -> int:
    """Run ``nas worker``: trains queued ground-truth runs (``nas correlate --storage``), fine-tunes queued
    candidates, and prints what it did."""
    from nas.campaign import Campaign
    from nas.cli.basic import flag_errors

    storage = args.storage or os.environ.get(STORAGE_ENV)
    _check_worker_flags(args)
    if not storage:
        raise ValueError(f"`--storage` is required (or set ${STORAGE_ENV}).")
    _setup(args)
    started = time.perf_counter()
    if _work_queues(args, storage, started):
        return 0
    with flag_errors(args, **_flags()):
        campaign = Campaign.from_storage(
            storage,
            args.study,
            out=args.out,
            ghn=args.ghn,
            ranker=(args.ranker[0] if args.ranker and len(args.ranker) == 1 else args.ranker),
            device=args.device,
            progress=args.progress,
            heartbeat_interval=args.heartbeat_interval,
            grace_period=args.grace_period,
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
    return _run_campaign(args, _config_from_args(args, _demo_config()), storage_env=False)
