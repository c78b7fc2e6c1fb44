"""``nas train-ghn``: meta-train a graph hypernetwork on a search space and a dataset.

The checkpoint is written atomically every ``--eval-every`` steps; running the
same command again resumes a killed run from its last checkpoint
(``--no-resume`` starts over).

Example::

    nas train-ghn --space nb201 --dataset mnist5k --steps 1500 --out runs/ghn.pt
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

__all__ = ["add_parsers", "run_train_ghn"]


def add_parsers(subparsers: Any) -> None:
    """Register ``train-ghn``."""
    from nas.cli.basic import add_space_arguments
    from nas.ghn import GHNConfig, MetaTrainConfig

    mt, gc = MetaTrainConfig(), GHNConfig()
    p = subparsers.add_parser(
        "train-ghn",
        help="meta-train a graph hypernetwork (GHN) on a search space",
        description="Meta-train a GHN-2-style graph hypernetwork on architectures sampled from a search space; "
        "resumes from --out when it exists.",
    )
    add_space_arguments(p, default=None)
    p.add_argument("--dataset", required=True, help="dataset name (digits, mnist5k, mnist:PATH, cifar10:PATH)")
    p.add_argument("--out", type=Path, required=True, help="checkpoint file (written atomically, resumed from)")
    p.add_argument("--steps", type=int, default=mt.steps, help=f"meta-training steps (default {mt.steps})")
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
    p.add_argument("--seed", type=int, default=mt.seed, help=f"seed (default {mt.seed})")
    p.add_argument("--data-seed", type=int, default=0, help="seed of the dataset split (default 0)")
    p.add_argument("--no-resume", action="store_true", help="start over even if --out exists")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(func=run_train_ghn)


def run_train_ghn(args: argparse.Namespace) -> int:
    """Run ``nas train-ghn``; prints a summary and returns the exit code."""
    from nas.cli.basic import flag_errors, space_from_args
    from nas.data import load_dataset
    from nas.ghn import GHNConfig, MetaTrainConfig, meta_train

    with flag_errors(args):  # the settings are checked before the dataset is loaded
        ghn_config = GHNConfig(hidden=args.hidden, layers=args.layers, s_max=args.s_max)
        config = MetaTrainConfig(
            steps=args.steps,
            device=args.device,
            meta_batch=args.meta_batch,
            batch_size=args.batch_size,
            lr=args.lr,
            eval_every=args.eval_every,
            num_held_out=args.num_held_out,
            amp=args.amp,
            seed=args.seed,
        )
    with flag_errors(args, seed="--data-seed"):
        data = load_dataset(args.dataset, seed=args.data_seed)
    space = space_from_args(args, data)
    start = time.perf_counter()
    ghn = meta_train(
        space, data, config, ghn_config=ghn_config, out=args.out, resume=not args.no_resume,
        progress=not args.no_progress,
    )
    wall = time.perf_counter() - start
    last = ghn.history[-1] if ghn.history else {}
    state = ghn.training_state or {}
    acc = last.get("held_out_acc")
    print(f"steps:             {state.get('step', 0)}/{config.steps}")
    print(f"wall time:         {wall:.1f} s this run, {state.get('elapsed', wall):.1f} s in total")
    print(f"held-out mean acc: {acc:.4f}" if acc is not None else "held-out mean acc: -")
    print(f"checkpoint:        {args.out}")
    return 0
