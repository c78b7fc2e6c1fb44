"""The ``nas`` command-line tool.

Each subcommand lives in its own module of this package and exposes
``add_parser(subparsers)`` and ``run(args) -> int``. Bad input raised as
:class:`~nas.exceptions.NASError` (or ``ValueError`` / ``FileNotFoundError``)
prints one line to stderr and exits with code 2, without a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

__all__ = ["main", "COMMANDS"]

#: Subcommand name -> module (relative to this package) implementing it.
COMMANDS: dict[str, str] = {
    "spaces": "basic",
    "sample": "basic",
    "draw": "basic",
    "train": "basic",
    "train-ghn": "ghn",
    "fit-ranker": "ghn",
    "search": "search",
    "worker": "search",
    "demo": "search",
    "correlate": "correlate",
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nas", description="Neural architecture search ranked by a graph hypernetwork."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    seen: set[str] = set()
    for module_name in dict.fromkeys(COMMANDS.values()):
        module = importlib.import_module(f"nas.cli.{module_name}")
        module.add_parsers(sub)
        seen.add(module_name)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``nas`` console script; returns the exit code."""
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    from nas.exceptions import NASError

    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("nas: interrupted; run the same command again to resume.", file=sys.stderr)
        return 130
    except (NASError, ValueError, FileNotFoundError, NotADirectoryError, PermissionError, OSError) as err:
        if args.verbose:
            raise
        message = " ".join(str(err).split()) or type(err).__name__
        print(f"nas {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
