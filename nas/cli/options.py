"""Flags and parsing shared by the ``nas`` subcommands: one home for each.

* :class:`CommandParser`: the parser class of every subcommand (one-line
  errors with exit code 2, no abbreviated flags, ``-v/--verbose`` after the
  subcommand too);
* :class:`DeprecatedAlias`: an old flag name kept for one release, with a warning;
* :func:`parse_space_args`: ``--space-arg KEY=VALUE`` items into space settings;
* :func:`add_space_arguments`, :func:`add_dataset_argument`, :func:`add_threads_argument`:
  the flags several subcommands take, with the same defaults everywhere;
* :func:`set_threads`: apply ``--threads``;
* :func:`output_file`: the guard every command runs on the file it writes.
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "CHECKPOINT_SUFFIXES",
    "DEFAULT_DATASET",
    "DEFAULT_SPACE",
    "DEFAULT_THREADS",
    "CommandParser",
    "DeprecatedAlias",
    "OneLineParser",
    "add_dataset_argument",
    "add_space_arguments",
    "add_threads_argument",
    "seed_value",
    "threads_value",
    "file_kind",
    "output_file",
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

    Examples:
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
        "--threads", type=threads_value, default=DEFAULT_THREADS, metavar="N",
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


#: Endings of the checkpoint files the commands write.
CHECKPOINT_SUFFIXES = (".pt",)

#: What each :func:`file_kind` is, in words.
_KIND_NAMES = {"ghn-nas/ghn": "a GHN checkpoint", "ghn-nas/ranker": "a ranker checkpoint",
               "state_dict": "a state_dict", "png": "a PNG image", "pdf": "a PDF file"}

#: The first bytes of the figure formats the commands write.
_MAGIC = {b"\x89PNG": "png", b"%PDF": "pdf"}


def file_kind(path: str | Path) -> str:
    """What an existing file holds, as far as a command writing artefacts cares.

    Returns:
        A checkpoint's ``format`` entry (``"ghn-nas/ghn"``, ``"ghn-nas/ranker"``),
        ``"state_dict"`` for a plain dict of tensors, ``"png"`` / ``"pdf"`` for
        figures, else ``"other"``.
    """
    path = Path(path)
    with path.open("rb") as f:
        head = f.read(8)
    for magic, kind in _MAGIC.items():
        if head.startswith(magic):
            return kind
    if not head.startswith(b"PK"):  # torch.save files are zip archives
        return "other"
    import torch

    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - any unreadable archive is simply not ours
        return "other"
    if isinstance(payload, dict) and isinstance(payload.get("format"), str):
        return payload["format"]
    if isinstance(payload, dict) and payload and all(isinstance(v, torch.Tensor) for v in payload.values()):
        return "state_dict"
    return "other"


def output_file(
    path: str | Path,
    *,
    flag: str,
    suffixes: Sequence[str],
    kinds: Sequence[str],
    inputs: Mapping[str, str | Path | None] | None = None,
) -> Path:
    """The file a command writes its artefact to, refused where writing it would lose work.

    Every command that writes an artefact file runs this before any work: it
    never overwrites one of its own inputs, nor an existing file of another
    kind (a GHN checkpoint passed as a ranker's ``--out``, a CSV as a figure).
    A file of the artefact's own kind may be replaced or resumed.

    Args:
        path: The path given with ``flag``.
        flag: The flag, named in errors.
        suffixes: Allowed endings (lower case, with the dot).
        kinds: :func:`file_kind` values an existing file may have.
        inputs: The command's input files by flag.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        ValueError: A wrong ending, a folder, an input, or a file of another kind.
        FileNotFoundError: The parent folder does not exist.
    """
    out = Path(path)
    if out.suffix.lower() not in suffixes:
        raise ValueError(f"`{flag}` must end in {' or '.join(suffixes)}, but got {str(path)!r}.")
    if out.is_dir():
        raise ValueError(f"`{flag}` {str(path)!r} is a folder; name the file to write.")
    for name, given in (inputs or {}).items():
        if given is not None and Path(given).exists() and out.exists() and out.resolve() == Path(given).resolve():
            raise ValueError(f"`{flag}` {str(path)!r} is the input `{name}`; writing there would destroy it.")
    if not out.parent.is_dir():
        raise FileNotFoundError(f"output folder {str(out.parent)!r} does not exist; create it first.")
    if out.exists():
        kind = file_kind(out) if out.is_file() else "special"
        if kind not in kinds:
            found = _KIND_NAMES.get(kind, "a file of another kind" if kind != "special" else "no regular file")
            wanted = " or ".join(_KIND_NAMES.get(k, k) for k in kinds)
            raise ValueError(
                f"`{flag}` {str(path)!r} exists and is {found}, not {wanted}; it is not overwritten: "
                "choose another path or delete it."
            )
    return out


def _int_in(text: str, low: int, high: int, what: str) -> int:
    """``text`` as an int in ``[low, high]``, else an ``ArgumentTypeError`` saying ``what`` it must be."""
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or not low <= value <= high:
        raise argparse.ArgumentTypeError(f"must be {what}, but got {text!r}")
    return value


def seed_value(text: str) -> int:
    """The ``type`` of every seed flag: an integer in ``[0, nas.training.MAX_SEED]``.

    argparse names the flag in the error (``argument --seed: must be ...``).
    """
    from nas.training import MAX_SEED

    return _int_in(text, 0, MAX_SEED, f"an integer in [0, {MAX_SEED}]")


#: Most torch threads ``--threads`` accepts (far above any machine's cores; torch fails beyond some limit).
MAX_THREADS = 1024


def threads_value(text: str) -> int:
    """The ``type`` of ``--threads``: 0 (torch's choice) or 1 to :data:`MAX_THREADS`."""
    return _int_in(text, 0, MAX_THREADS, f"0 (torch's choice) or 1 to {MAX_THREADS}")
