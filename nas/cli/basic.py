"""Basic subcommands: ``nas spaces``, ``nas sample``, ``nas draw`` and ``nas train``.

``--space`` takes a built-in name (see ``nas spaces``), ``module:attr`` or
``path/to/file.py:attr`` (default nb201); ``--space-arg KEY=VALUE``
(repeatable) passes a setting to the space, the value read as a Python literal
(:func:`nas.cli.options.parse_space_args`). ``--dataset`` names a dataset of
:func:`nas.data.load_dataset` (default mnist5k); the space is built for its
image shape and number of classes.

Examples::

    nas spaces
    nas sample --space nb201 -n 5 --seed 0 > candidates.jsonl
    nas draw --space darts --seed 3 --out cell.png
    nas train --space nb201 --dataset digits --epochs 1 --space-arg C=16
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import json
import logging
import math
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd

from nas.cli.options import (
    CHECKPOINT_SUFFIXES,
    DEFAULT_SPACE,
    DeprecatedAlias,
    add_dataset_argument,
    add_space_arguments,
    add_threads_argument,
    output_file,
    parse_space_args,
    seed_value,
    set_threads,
)
from nas.graph import ArchGraph
from nas.space import SearchSpace, builtin_spaces, load_space

__all__ = [
    "add_parsers",
    "flag_errors",
    "space_from_args",
    "run_draw",
    "run_sample",
    "run_spaces",
    "run_train",
]

logger = logging.getLogger(__name__)

#: File types ``nas draw`` writes, by suffix.
DRAW_FORMATS = (".png", ".pdf")


# --------------------------------------------------------------------------- shared helpers


@contextlib.contextmanager
def flag_errors(args: argparse.Namespace, **flags: str) -> Iterator[None]:
    """Name command-line flags, not keyword arguments, in a ``ValueError`` raised inside the block.

    Library code names its keyword arguments ("`steps` must be a positive
    int"); a user of the command line knows the flag (``--steps``). Inside
    the block, a backquoted name that is the ``dest`` of one of the command's
    flags becomes that flag (``batch_size`` -> ``--batch-size``), and the
    keywords given in ``flags`` become the flag they map to.

    Args:
        args: The parsed arguments of the command; each of its names ``x_y``
            stands for the flag ``--x-y``.
        **flags: Further keyword -> flag pairs, for keywords named unlike their
            flag (``grace_period="--grace"``).

    Raises:
        ValueError: The error of the block (the same class when it can be
            rebuilt from a message), with the flags named.

    Examples:
        >>> with flag_errors(args, steps="--ghn-steps"):  # doctest: +SKIP
        ...     config = MetaTrainConfig(steps=args.ghn_steps)
    """
    names = {name: "--" + name.replace("_", "-") for name in vars(args)} | flags
    try:
        yield
    except ValueError as err:
        message = str(err)
        renamed = re.sub(r"`(\w+)`", lambda m: f"`{names.get(m.group(1), m.group(1))}`", message)
        if renamed == message:
            raise
        try:
            new = type(err)(renamed)
        except Exception:  # an error class whose constructor takes more than a message
            new = ValueError(renamed)
        raise new from err


def space_from_args(args: argparse.Namespace, data: Any = None) -> SearchSpace:
    """Resolve ``args.space`` with ``args.space_arg`` settings, shaped for ``data`` when given.

    Args:
        args: Parsed arguments holding ``space`` and ``space_arg``.
        data: A :class:`nas.data.Dataset` whose ``input_shape`` and
            ``num_classes`` the space must use, or ``None`` for the space's defaults.

    Returns:
        The search space.

    Raises:
        SpaceError: The space cannot be resolved, rejects its settings, or fails
            :meth:`~nas.space.SearchSpace.check_choices` (checked here, before any slow work).
    """
    settings = parse_space_args(args.space_arg)
    if data is not None:
        space = load_space(args.space, input_shape=data.input_shape, num_classes=data.num_classes, **settings)
    else:
        space = load_space(args.space, **settings)
    space.check_choices()
    return space


def _load_data(name: str | None, *, seed: int = 0, max_train: int | None = None) -> Any:
    if name is None:
        return None
    from nas.data import load_dataset

    return load_dataset(name, seed=seed, max_train=max_train)


def _format_size(size: int | None) -> str:
    if size is None:
        return "?"
    return f"{size:,}" if size < 10**9 else f"{size:.2e}"


def _summary(cls: type) -> str:
    doc = inspect.getdoc(cls) or ""
    return doc.strip().splitlines()[0].replace("``", "") if doc.strip() else ""


# --------------------------------------------------------------------------- spaces


def run_spaces(args: argparse.Namespace) -> int:
    """Print a table of the built-in spaces: name, size, description and default settings."""
    rows = []
    for name, cls in builtin_spaces().items():
        space = cls()
        rows.append(
            {
                "name": name,
                "size": _format_size(space.size()),
                "description": _summary(cls),
                "settings": ", ".join(f"{k}={v}" for k, v in space.settings.items()),
            }
        )
    table = pd.DataFrame(rows, columns=["name", "size", "description", "settings"])
    widths = {col: max(len(col), *(len(v) for v in table[col])) for col in table.columns}
    left = {col: (lambda v, w=w: f"{v:<{w}}") for col, w in widths.items()}
    print(table.to_string(index=False, justify="left", formatters=left))
    return 0


# --------------------------------------------------------------------------- sample


def run_sample(args: argparse.Namespace) -> int:
    """Print ``-n`` distinct candidates as JSON lines ``{"key", "choices", "graph"}``."""
    if args.n < 1:
        raise ValueError(f"`-n` must be positive, but got {args.n}.")
    space = space_from_args(args, _load_data(args.dataset))
    for cand in space.iter_samples(args.n, seed=args.seed):  # printed as drawn: a long run shows progress at once
        line = {"key": cand.graph.key, "choices": cand.params, "graph": cand.graph.to_dict()}
        print(json.dumps(line, sort_keys=False), flush=True)
    return 0


# --------------------------------------------------------------------------- draw


def run_draw(args: argparse.Namespace) -> int:
    """Draw the candidate of ``--seed`` to a PNG or PDF file."""
    from nas._atomic import save_figure
    from nas.draw import draw_graph

    if args.dpi < 1:
        raise ValueError(f"`--dpi` must be positive, but got {args.dpi}.")
    if args.out is None:
        raise ValueError("`--out` is required: the .png or .pdf file to write.")
    out = output_file(args.out, flag="--out", suffixes=DRAW_FORMATS, kinds=("png", "pdf"))
    space = space_from_args(args, _load_data(args.dataset))
    cand = space.sample(args.seed)
    ax = draw_graph(cand.graph)
    save_figure(ax.figure, out, formats=(out.suffix,), dpi=args.dpi)
    print(f"wrote {out} ({len(cand.graph)} nodes, key {cand.graph.key[:12]})")
    return 0


# --------------------------------------------------------------------------- train


def _read_arch(path: str) -> ArchGraph:
    """The architecture in a JSON file: a graph, or an object holding one under ``"graph"``.

    That covers ``best.json`` of a campaign, a line of ``nas sample`` saved to a
    file, and :meth:`ArchGraph.to_json` output.

    Raises:
        FileNotFoundError: No such file.
        GraphError: The file holds no valid architecture (the message names the file).
    """
    from nas.exceptions import GraphError

    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"`--arch`: no such file {path!r}.")
    try:
        data = json.loads(file.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise GraphError(f"`--arch` file {path!r} is not JSON: {err}.") from None
    except RecursionError:
        raise GraphError(f"`--arch` file {path!r} is nested too deeply to be an architecture.") from None
    if isinstance(data, dict) and isinstance(data.get("graph"), (dict, str)):
        data = data["graph"]
    if not isinstance(data, str) and not (isinstance(data, dict) and "nodes" in data):
        raise GraphError(
            f"`--arch` file {path!r} holds no architecture (a graph, or an object with a \"graph\" entry)."
        )
    try:
        return ArchGraph.from_json(data) if isinstance(data, str) else ArchGraph.from_dict(data)
    except GraphError as err:
        raise GraphError(f"`--arch` file {path!r}: {err}") from None


def run_train(args: argparse.Namespace) -> int:
    """Train a candidate from scratch (the one of ``--seed``, or the one in ``--arch``) and print its metrics."""

    from nas.training import TrainConfig, train_graph

    set_threads(args.threads)
    if args.arch is not None and (args.space is not None or args.space_arg):
        given = "--space" if args.space is not None else "--space-arg"
        raise ValueError(f"`{given}` cannot be used with `--arch`: the architecture in {args.arch!r} is trained as it "
                         f"is; drop {given}, or drop --arch to train a candidate of the space.")
    args.space = args.space if args.space is not None else DEFAULT_SPACE
    with flag_errors(args):
        config = TrainConfig(
            epochs=args.epochs,
            lr=args.lr,
            batch_size=args.batch_size,
            device=args.device,
            seed=args.seed,
            progress=sys.stderr.isatty() and not args.json,
        )
    with flag_errors(args, seed="--data-seed"):
        data = _load_data(args.dataset, seed=args.data_seed, max_train=args.max_train)
    if args.arch is not None:
        graph, choices, source = _read_arch(args.arch), None, args.arch
        if tuple(graph.input_shape) != tuple(data.input_shape) or graph.num_classes != data.num_classes:
            raise ValueError(
                f"`--arch` {args.arch!r} takes inputs {tuple(graph.input_shape)} with {graph.num_classes} classes, "
                f"but dataset {data.name!r} has {tuple(data.input_shape)} with {data.num_classes}."
            )
    else:
        space = space_from_args(args, data)
        cand = space.sample(args.seed)
        graph, choices, source = cand.graph, cand.params, space.name
    save = None
    if args.save is not None:
        save = output_file(args.save, flag="--save", suffixes=CHECKPOINT_SUFFIXES, kinds=("state_dict",),
                           inputs={"--arch": args.arch})
    logger.info("training candidate %s of %s on %s", graph.key[:12], source, data.name)
    trained: list[Any] = []
    result = train_graph(graph, data, config, model_out=trained)
    model = trained[0]
    if save is not None and not result.failed:
        from nas._atomic import save_torch

        save_torch({k: v.detach().cpu() for k, v in model.state_dict().items()}, save, what="weights")
        logger.info("weights saved to %s", save)
    report: dict[str, Any] = {
        "space": source,
        "dataset": data.name,
        "seed": args.seed,
        "key": graph.key,
        "num_params": graph.num_params(),
        "flops": graph.flops(),
        "val_acc": result.val_acc,
        "val_loss": result.val_loss,
        "test_acc": result.test_acc,
        "test_loss": result.test_loss,
        "train_loss": result.train_loss,
        "steps": result.steps,
        "wall_time": result.wall_time,
        "failed": result.failed,
    }
    if result.error:
        report["error"] = result.error
    if args.json:
        report["choices"] = choices
        finite = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in report.items()}
        print(json.dumps(finite))  # NaN (a failed run) becomes null, which JSON readers accept
    else:
        shown = dict(report, key=graph.key[:12], num_params=f"{report['num_params']:,}", flops=f"{report['flops']:,}")
        for name in ("val_acc", "val_loss", "test_acc", "test_loss", "train_loss"):
            shown[name] = f"{report[name]:.4f}"
        shown["wall_time"] = f"{report['wall_time']:.1f} s"
        print(pd.Series(shown, dtype=object).to_string())
    return 1 if result.failed else 0


# --------------------------------------------------------------------------- parsers


def add_parsers(subparsers: Any) -> None:
    """Register ``spaces``, ``sample``, ``draw`` and ``train`` on the ``nas`` parser's subparsers."""
    shape_help = "shape the space for this dataset's images and classes"
    p = subparsers.add_parser("spaces", help="list the built-in search spaces", description=run_spaces.__doc__)
    p.set_defaults(func=run_spaces)

    p = subparsers.add_parser(
        "sample", help="print random candidates as JSON lines", description=run_sample.__doc__
    )
    add_space_arguments(p)
    add_dataset_argument(p, help=shape_help)
    p.add_argument("-n", type=int, default=1, help="number of distinct candidates (default 1)")
    p.add_argument("--seed", type=seed_value, default=0, help="random seed (default 0)")
    p.set_defaults(func=run_sample)

    p = subparsers.add_parser("draw", help="draw one candidate's graph", description=run_draw.__doc__)
    add_space_arguments(p)
    add_dataset_argument(p, help=shape_help)
    p.add_argument("--seed", type=seed_value, default=0, help="random seed of the candidate (default 0)")
    p.add_argument("--out", default=None, metavar="FILE", help="output file, .png or .pdf (required)")
    for old in ("-o", "--output"):
        p.add_argument(old, dest="out", action=DeprecatedAlias, new="--out", help=argparse.SUPPRESS)
    p.add_argument("--dpi", type=int, default=100, help="resolution of a PNG (default 100)")
    p.set_defaults(func=run_draw)

    p = subparsers.add_parser("train", help="train one candidate from scratch", description=run_train.__doc__)
    add_space_arguments(p, default=None, shown=DEFAULT_SPACE)  # None: tells a given --space from the default
    add_dataset_argument(p)
    p.add_argument("--arch", default=None, metavar="FILE",
                   help="train this architecture instead of a sampled one: a campaign's best.json, a saved "
                        "line of `nas sample`, or a graph's JSON")
    p.add_argument("--save", default=None, metavar="PATH", help="write the trained state_dict here (.pt)")
    p.add_argument("--seed", type=seed_value, default=0, help="seed of the candidate and of training (default 0)")
    p.add_argument("--data-seed", type=seed_value, default=0, help="seed of the dataset split (default 0)")
    p.add_argument("--max-train", type=int, default=None, help="use at most this many training images")
    p.add_argument("--epochs", type=float, default=3, help="training epochs (default 3)")
    p.add_argument("--lr", type=float, default=0.05, help="peak learning rate (default 0.05)")
    p.add_argument("--batch-size", type=int, default=64, help="batch size (default 64)")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    add_threads_argument(p)
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    p.set_defaults(func=run_train)
