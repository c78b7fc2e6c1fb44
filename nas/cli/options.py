"""Flags and parsing shared by the ``nas`` subcommands: one home for each.

* :class:`CommandParser`: the parser class of every subcommand (one-line
  errors with exit code 2, no abbreviated flags, ``-v/--verbose`` after the
  subcommand too);
* :class:`DeprecatedAlias`: an old flag name kept for one release, with a warning;
* :func:`parse_space_args`: ``--space-arg KEY=VALUE`` items into space settings;
* :func:`add_space_arguments`, :func:`add_dataset_argument`, :func:`add_threads_argument`:
  the flags several subcommands take, with the same defaults everywhere;
* :func:`set_threads`: apply ``--threads``.
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections.abc import Sequence
from typing import Any

__all__ = [
    "DEFAULT_DATASET",
    "DEFAULT_SPACE",
    "DEFAULT_THREADS",
    "CommandParser",
    "DeprecatedAlias",
    "OneLineParser",
    "add_dataset_argument",
    "add_space_arguments",
    "add_threads_argument",
    "parse_space_args",
    "parse_value",
    "set_threads",
]

#: ``--space`` of every subcommand that takes one, unless given.
DEFAULT_SPACE = "nb201"
#: ``--dataset`` of every subcommand that takes one, unless given.
DEFAULT_DATASET = "mnist5k"
#: ``--threads`` of every subcommand that takes one, unless given. Measured on 2 shared cores: one GHN
#: meta-training step took 0.8 s with 1 thread and 22 s with 2 threads while one other process ran
#: (OpenMP threads spin on each other); the networks of a search space are too small to gain from more.
DEFAULT_THREADS = 1


class OneLineParser(argparse.ArgumentParser):
    """An argument parser that reports a bad flag in one line (no usage block) with exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        """Report a bad flag in one line and exit with code 2."""
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())}\n")


class CommandParser(OneLineParser):
    """The parser of a ``nas`` subcommand.

    A bad flag is reported in one line (``nas search: error: ...``, no usage
    block) with exit code 2; flags are never abbreviated (``--tri`` is not
    ``--trials``); and ``-v/--verbose`` is accepted after the subcommand as
    well as before it.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)
        if kwargs.get("add_help", True):
            # SUPPRESS: without the flag, the main parser's value stands.
            self.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                              help="log debug messages")


class DeprecatedAlias(argparse.Action):
    """An old name of a flag, kept for one release: stores like the new flag and warns on stderr.

    Example:
        >>> p = argparse.ArgumentParser()
        >>> _ = p.add_argument("--out")
        >>> _ = p.add_argument("--output", dest="out", action=DeprecatedAlias, new="--out",
        ...                    help=argparse.SUPPRESS)
    """

    def __init__(self, option_strings: Sequence[str], dest: str, *, new: str, append: bool = False,
                 **kwargs: Any) -> None:
        kwargs.setdefault("default", argparse.SUPPRESS)
        super().__init__(option_strings, dest, **kwargs)
        self.new = new
        self.append = append

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        print(f"{parser.prog}: warning: {option_string} is deprecated and will be removed in the next release; "
              f"use {self.new}", file=sys.stderr)
        if self.append:
            values = [*(getattr(namespace, self.dest, None) or []), values]
        setattr(namespace, self.dest, values)


def parse_value(text: str) -> Any:
    """A Python literal (``16``, ``0.5``, ``True``, ``[1, 2]``, ``'x'``), else the text as a string.

    ``true`` and ``false`` in any case are booleans, as in TOML.
    """
    text = text.strip()
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return text


def parse_space_args(items: Sequence[str], *, flag: str = "--space-arg") -> dict[str, Any]:
    """Parse ``KEY=VALUE`` strings into space settings.

    Args:
        items: Strings such as ``"C=16"``; a value is read as a Python literal
            (:func:`ast.literal_eval`: int, float, tuple, list, quoted string),
            ``true``/``false`` as a bool, and any other bare word as a string.
        flag: The flag named in errors.

    Returns:
        The settings by key.

    Raises:
        ValueError: An item has no ``=``, a key that is not a name, or repeats a key.
    """
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key.isidentifier():
            raise ValueError(f"`{flag}` must be KEY=VALUE with KEY a name, but got {item!r}.")
        if key in out:
            raise ValueError(f"`{flag}` sets {key!r} twice.")
        out[key] = parse_value(value)
    return out


def add_space_arguments(
    parser: argparse.ArgumentParser | Any, *, default: Any = DEFAULT_SPACE, shown: str | None = None
) -> None:
    """Add ``--space`` and ``--space-arg``.

    Args:
        parser: A parser or argument group.
        default: The default space (``argparse.SUPPRESS`` leaves both flags unset unless given).
        shown: The default named in the help (default: ``default``).
    """
    from nas.space import builtin_spaces

    shown = shown if shown is not None else default
    shown = f" (default {shown})" if shown != argparse.SUPPRESS else ""
    parser.add_argument(
        "--space", default=default, metavar="SPACE",
        help=f"built-in space ({', '.join(builtin_spaces())}), 'module:attr' or 'file.py:attr'{shown}",
    )
    parser.add_argument(
        "--space-arg", action="append", default=[] if default is not argparse.SUPPRESS else default,
        metavar="KEY=VALUE", help="a setting of the space, e.g. C=16 (repeatable; values are Python literals)",
    )


def add_dataset_argument(parser: argparse.ArgumentParser | Any, *, default: Any = DEFAULT_DATASET,
                         help: str = "dataset: digits, mnist5k, mnist:PATH or cifar10:PATH") -> None:  # noqa: A002
    """Add ``--dataset``."""
    shown = f" (default {default})" if isinstance(default, str) else ""
    parser.add_argument("--dataset", default=default, metavar="NAME", help=help + shown)


def add_threads_argument(parser: argparse.ArgumentParser | Any) -> None:
    """Add ``--threads`` (the same default in every subcommand)."""
    parser.add_argument(
        "--threads", type=int, default=DEFAULT_THREADS, metavar="N",
        help=f"torch CPU threads of this process (default {DEFAULT_THREADS}; 0: torch's, one per core; on a busy "
        "machine more threads than free cores can run 20x slower)",
    )


def set_threads(threads: int | None) -> None:
    """Apply ``--threads`` (0 or ``None`` keeps torch's choice).

    Raises:
        ValueError: A negative count.
    """
    if threads is None or threads == 0:
        return
    if threads < 0:
        raise ValueError(f"`--threads` must be 0 or positive, but got {threads}.")
    import torch

    torch.set_num_threads(threads)
