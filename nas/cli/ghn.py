"""``nas train-ghn`` and ``nas fit-ranker``: the one-time artifacts of a space and a dataset.

``train-ghn`` meta-trains a graph hypernetwork; its checkpoint is written
atomically every ``--eval-every`` steps, and running the same command again
resumes a killed run from its last checkpoint (``--no-resume`` starts over).
``fit-ranker`` labels architectures by short training (resumable, one CSV row
per finished label) and fits the GHN ranker on them. Every later
``nas search --ghn G --ranker R`` on the same space and dataset reuses both.

``train-ghn`` runs data-parallel under ``torchrun`` (each process meta-trains
on its share of every meta-batch; rank 0 writes the checkpoint).

Example::

    nas train-ghn --space nb201 --dataset mnist5k --ghn-steps 400 --out runs/ghn.pt
    torchrun --standalone --nproc-per-node 2 -m nas train-ghn --space nb201 --dataset mnist5k --out runs/ghn.pt
    nas fit-ranker --space nb201 --dataset mnist5k --ghn runs/ghn.pt --ranker-labels 700 --out runs/ranker.pt
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["add_parsers", "run_fit_ranker", "run_train_ghn"]


def add_parsers(subparsers: Any) -> None:
    """Register ``train-ghn`` and ``fit-ranker``."""
    from nas.cli.options import (
        DeprecatedAlias,
        add_dataset_argument,
        add_space_arguments,
        add_threads_argument,
        seed_value,
    )
    from nas.ghn import GHNConfig, MetaTrainConfig

    mt, gc = MetaTrainConfig(), GHNConfig()
    p = subparsers.add_parser(
        "train-ghn",
        help="meta-train a graph hypernetwork (GHN) on a search space",
        description="Meta-train a GHN-2-style graph hypernetwork on architectures sampled from a search space; "
        "resumes from --out when it exists.",
    )
    add_space_arguments(p)
    add_dataset_argument(p)
    p.add_argument("--out", type=Path, required=True, help="checkpoint file (written atomically, resumed from)")
    p.add_argument("--ghn-steps", type=int, default=mt.steps, metavar="N",
                   help=f"meta-training steps (default {mt.steps})")
    p.add_argument("--steps", dest="ghn_steps", type=int, action=DeprecatedAlias, new="--ghn-steps",
                   help=argparse.SUPPRESS)
    p.add_argument("--device", default=mt.device, help="cpu or cuda (default cpu)")
    p.add_argument(
        "--meta-batch", type=int, default=mt.meta_batch, help=f"architectures per step (default {mt.meta_batch})"
    )
    p.add_argument("--batch-size", type=int, default=mt.batch_size, help=f"images per step (default {mt.batch_size})")
    p.add_argument("--hidden", type=int, default=gc.hidden, help=f"GHN width (default {gc.hidden})")
    p.add_argument("--layers", type=int, default=gc.layers, help=f"message-passing rounds (default {gc.layers})")
    p.add_argument("--s-max", type=int, default=gc.s_max, help=f"longest virtual edge in hops (default {gc.s_max})")
    p.add_argument("--lr", type=float, default=mt.lr, help=f"peak learning rate (default {mt.lr})")
    p.add_argument(
        "--eval-every", type=int, default=mt.eval_every,
        help=f"steps between evaluations and checkpoints (default {mt.eval_every})",
    )
    p.add_argument(
        "--num-held-out", type=int, default=mt.num_held_out,
        help=f"held-out architectures (default {mt.num_held_out})",
    )
    p.add_argument("--amp", choices=["bf16", "fp16"], default=None, help="autocast precision (GPU)")
    p.add_argument("--seed", type=seed_value, default=mt.seed, help=f"seed (default {mt.seed})")
    p.add_argument("--data-seed", type=seed_value, default=0, help="seed of the dataset split (default 0)")
    p.add_argument("--no-resume", action="store_true", help="start over even if --out exists")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    add_threads_argument(p)
    p.set_defaults(func=run_train_ghn)
    _add_fit_ranker(subparsers)


def _add_fit_ranker(subparsers: Any) -> None:
    from nas.cli.options import (
        DeprecatedAlias,
        add_dataset_argument,
        add_space_arguments,
        add_threads_argument,
        seed_value,
    )
    from nas.ghn import LABEL_MARGIN, RANKER_K, RANKER_LABELS, RankerConfig

    rc = RankerConfig()
    p = subparsers.add_parser(
        "fit-ranker",
        help="label architectures by short training and fit the ranker",
        description="Train --ranker-labels architectures of the space for --ranker-k SGD steps each (their "
        "training-speed estimate, TSE) and fit a graph network (the GHN's, from random weights) to predict it from "
        "the graph. With --label-batch N the labels are bought N at a time, the ranker refitted after each purchase, "
        "until a purchase lifts its cross-validated Kendall tau by less than --label-margin or --ranker-labels (or "
        "--label-seconds) are spent. "
        "Finished labels go to OUT's *_labels.csv as they come, so running the command again resumes; a ranker that "
        "stopped at a smaller budget is extended. The ranker "
        "is what `nas search --ranker OUT` ranks by. No meta-trained GHN is needed. Its rank score adds a "
        "log-FLOPs prior of weight --flops-weight; a ranker reused from OUT keeps the weight it was saved with.",
    )
    add_space_arguments(p)
    add_dataset_argument(p)
    p.add_argument("--ghn", type=Path, default=None, metavar="PATH",
                   help="a GHN checkpoint whose graph-network settings the ranker takes (default: the default "
                   "settings); its weights are not used: in the ranking suite they did not help the ranker")
    p.add_argument("--out", type=Path, required=True, help="ranker checkpoint to write (reused when it exists)")
    p.add_argument("--ranker-labels", type=int, default=RANKER_LABELS, metavar="N",
                   help=f"the most architectures to label (default {RANKER_LABELS})")
    p.add_argument("--label-batch", type=int, default=0, metavar="N",
                   help="buy labels N at a time, refitting after each purchase (default 0: all at once)")
    p.add_argument("--label-margin", type=float, default=LABEL_MARGIN, metavar="M",
                   help=f"stop when a purchase lifts the cross-validated tau by less (default {LABEL_MARGIN})")
    p.add_argument("--label-seconds", type=float, default=None, metavar="S",
                   help="stop once the labels have cost this many CPU-seconds (default: no limit)")
    p.add_argument("--ranker-k", type=int, default=RANKER_K, metavar="K",
                   help=f"SGD steps per label (default {RANKER_K})")
    for old, new in (("--labels", "--ranker-labels"), ("--k", "--ranker-k")):
        p.add_argument(old, dest=new[2:].replace("-", "_"), type=int, action=DeprecatedAlias, new=new,
                       help=argparse.SUPPRESS)
    p.add_argument("--label-workers", type=int, default=1, metavar="W",
                   help="processes training labels in parallel (default 1)")
    p.add_argument("--flops-weight", type=float, default=rc.flops_weight,
                   help=f"weight of the log-FLOPs prior in the rank score (default {rc.flops_weight})")
    p.add_argument("--ensemble", type=int, default=rc.ensemble, help=f"members averaged (default {rc.ensemble})")
    p.add_argument("--epochs", type=int, default=rc.epochs, help=f"fitting epochs per member (default {rc.epochs})")
    p.add_argument("--seed", type=seed_value, default=0, help="seed of the labels and the fit (default 0)")
    p.add_argument("--data-seed", type=seed_value, default=0, help="seed of the dataset split (default 0)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    add_threads_argument(p)
    p.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    p.set_defaults(func=run_fit_ranker)


def run_fit_ranker(args: argparse.Namespace) -> int:
    """Run ``nas fit-ranker``; prints a summary and returns the exit code."""
    from nas.cli.basic import flag_errors, space_from_args
    from nas.cli.options import CHECKPOINT_SUFFIXES, output_file, set_threads
    from nas.data import load_dataset
    from nas.exceptions import CheckpointError
    from nas.ghn import GHN, RANKER_FORMAT, RankerConfig, check_identity, ensure_ranker, untrained_ghn

    with flag_errors(args):
        for flag in ("ranker_labels", "ranker_k", "label_workers"):
            value = getattr(args, flag)
            if value is not None and value < 1:
                raise ValueError(f"`{flag}` must be positive, but got {value}.")
        if args.ranker_labels < 4:
            raise ValueError(f"`ranker_labels` must be at least 4, but got {args.ranker_labels}.")
        if args.label_batch < 0:
            raise ValueError(f"`label_batch` must be positive (or 0: all at once), but got {args.label_batch}.")
        for flag in ("label_margin", "label_seconds"):
            value = getattr(args, flag)
            if value is not None and not (math.isfinite(value) and value >= 0):
                raise ValueError(f"`{flag}` must be a non-negative number, but got {value}.")
        config = RankerConfig(flops_weight=args.flops_weight, ensemble=args.ensemble, epochs=args.epochs,
                              seed=args.seed)
    if args.ghn is not None and not args.ghn.is_file():
        raise CheckpointError(f"GHN checkpoint {str(args.ghn)!r} does not exist (make one with `nas train-ghn`).")
    output_file(args.out, flag="--out", suffixes=CHECKPOINT_SUFFIXES, kinds=(RANKER_FORMAT,),
                inputs={"--ghn": args.ghn})
    set_threads(args.threads)
    with flag_errors(args, seed="--data-seed"):
        data = load_dataset(args.dataset, seed=args.data_seed)
    space = space_from_args(args, data)
    if args.ghn is not None:
        ghn = GHN.load(args.ghn, map_location=args.device)
        check_identity(ghn.space_info, space, data, where=f"GHN checkpoint {str(args.ghn)!r}")
        ghn.check_compatible(space)
    else:
        ghn = untrained_ghn(space, data, device=args.device)  # the settings only: the ranker starts from random weights
    start = time.perf_counter()
    ranker = ensure_ranker(
        space, data, ghn, path=args.out, ranker_labels=args.ranker_labels, ranker_k=args.ranker_k, seed=args.seed,
        workers=args.label_workers, config=config, label_batch=args.label_batch or None,
        label_margin=args.label_margin, label_seconds=args.label_seconds, progress=not args.no_progress,
    )
    info = ranker.label_info
    taus = ", ".join(f"{t:.3f}" for t in ranker.member_tau) or "-"
    print(f"labels:            {info.get('labelled', '?')} trained for k={info.get('k', '?')} steps "
          f"({info.get('labels', '-')})")
    for h in info.get("history", []):
        seconds = f"{h['label_seconds']:.0f}" if h.get("label_seconds") is not None else "?"
        print(f"  purchase:        {h['labels']:>5} labels, cross-validated tau {h['cv_tau']:.3f}, "
              f"{seconds} CPU-s of labels")
    if info.get("stopped"):
        print(f"stopped:           {info['stopped']}")
    print(f"member val tau:    {taus}")
    print(f"flops weight:      {ranker.config.flops_weight:g}")
    print(f"wall time:         {time.perf_counter() - start:.1f} s")
    print(f"ranker:            {args.out}")
    return 0


@contextlib.contextmanager
def _process_group(device: str) -> Iterator[int]:
    """Under ``torchrun`` (``WORLD_SIZE`` > 1), join its process group for the block; yields this process's rank.

    ``gloo`` on CPU, ``nccl`` on CUDA (each process on the GPU of its ``LOCAL_RANK``).
    Outside ``torchrun`` the block runs as one process (rank 0).
    """
    import torch
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 or dist.is_initialized():
        yield dist.get_rank() if dist.is_initialized() else 0
        return
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend="nccl" if cuda else "gloo")
    try:
        yield dist.get_rank()
    finally:
        dist.destroy_process_group()


def run_train_ghn(args: argparse.Namespace) -> int:
    """Run ``nas train-ghn``; prints a summary and returns the exit code."""
    from nas.cli.basic import flag_errors, space_from_args
    from nas.cli.options import CHECKPOINT_SUFFIXES, output_file, set_threads
    from nas.data import load_dataset
    from nas.ghn import GHN_FORMAT, GHNConfig, MetaTrainConfig, meta_train

    set_threads(args.threads)
    with flag_errors(args, steps="--ghn-steps"):  # the settings are checked before the dataset is loaded
        ghn_config = GHNConfig(hidden=args.hidden, layers=args.layers, s_max=args.s_max)
        config = MetaTrainConfig(
            steps=args.ghn_steps,
            device=args.device,
            meta_batch=args.meta_batch,
            batch_size=args.batch_size,
            lr=args.lr,
            eval_every=args.eval_every,
            num_held_out=args.num_held_out,
            amp=args.amp,
            seed=args.seed,
        )
    output_file(args.out, flag="--out", suffixes=CHECKPOINT_SUFFIXES, kinds=(GHN_FORMAT,))
    with flag_errors(args, seed="--data-seed"):
        data = load_dataset(args.dataset, seed=args.data_seed)
    space = space_from_args(args, data)
    start = time.perf_counter()
    with _process_group(args.device) as rank:
        ghn = meta_train(
            space, data, config, ghn_config=ghn_config, out=args.out, resume=not args.no_resume,
            progress=not args.no_progress,
        )
    if rank != 0:
        return 0  # rank 0 reports
    wall = time.perf_counter() - start
    last = ghn.history[-1] if ghn.history else {}
    state = ghn.training_state or {}
    acc = last.get("held_out_acc")
    print(f"steps:             {state.get('step', 0)}/{config.steps}")
    print(f"wall time:         {wall:.1f} s this run, {state.get('elapsed', wall):.1f} s in total")
    print(f"held-out mean acc: {acc:.4f}" if acc is not None else "held-out mean acc: -")
    print(f"checkpoint:        {args.out}")
    return 0
