"""The ``nas`` command-line tool.

Each subcommand lives in its own module of this package and exposes
``add_parsers(subparsers)`` and ``run(args) -> int``; every subcommand's parser
is a :class:`~nas.cli.options.CommandParser` (one-line errors, no abbreviated
flags, ``-v`` after the subcommand too). Bad input raised as
:class:`~nas.exceptions.NASError` (or ``ValueError`` / ``FileNotFoundError``)
prints one line to stderr and exits with code 2, without a traceback. An
interrupt (Ctrl-C) exits with code 130 and SIGTERM with code 143, each with a
one-line message; both run the same clean-up, and running the same command
again resumes.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import signal
import sys
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from nas.cli.options import OneLineParser

__all__ = ["main", "COMMANDS", "EXIT_ERROR", "EXIT_INTERRUPTED", "EXIT_TERMINATED"]

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
    "export": "export",
}

#: Exit code of bad input (the one-line message says what).
EXIT_ERROR = 2
#: Exit code after Ctrl-C (128 + SIGINT).
EXIT_INTERRUPTED = 130
#: Exit code after SIGTERM (128 + SIGTERM).
EXIT_TERMINATED = 143


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("ghn-nas")
    except PackageNotFoundError:  # a source tree that is not installed
        return "unknown (not installed)"


def _parser() -> OneLineParser:
    from nas.cli.options import CommandParser, OneLineParser

    parser = OneLineParser(
        prog="nas", description="Neural architecture search ranked by a graph hypernetwork.", allow_abbrev=False
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True, parser_class=CommandParser)
    for module_name in dict.fromkeys(COMMANDS.values()):
        module = importlib.import_module(f"nas.cli.{module_name}")
        module.add_parsers(sub)
    return parser


@contextlib.contextmanager
def _sigterm_raises() -> Iterator[None]:
    """Within the block, SIGTERM raises :class:`~nas.exceptions.Terminated` (so clean-up runs)."""
    from nas.exceptions import Terminated

    def handler(signum: int, frame: Any) -> None:
        raise Terminated(f"terminated by signal {signum}")

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread: leave the signal alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``nas`` console script; returns the exit code."""
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # named by the subcommand, as its other errors are
        parser.exit(EXIT_ERROR, f"nas {args.command}: error: unrecognized arguments: {' '.join(extra)}\n")
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    from tqdm.contrib.logging import logging_redirect_tqdm

    from nas.exceptions import NASError, Terminated

    try:
        # Log lines go through tqdm.write, so they print above a progress bar instead of glued onto it.
        with _sigterm_raises(), logging_redirect_tqdm():
            return int(args.func(args) or 0)
    except Terminated:
        print(f"nas {args.command}: terminated; run the same command again to resume.", file=sys.stderr)
        return EXIT_TERMINATED
    except KeyboardInterrupt:
        print(f"nas {args.command}: interrupted; run the same command again to resume.", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (NASError, ValueError, FileNotFoundError, NotADirectoryError, PermissionError, OSError) as err:
        if args.verbose:
            raise
        message = " ".join(str(err).split()) or type(err).__name__
        print(f"nas {args.command}: error: {message}", file=sys.stderr)
        return EXIT_ERROR
    except (RecursionError, MemoryError, SystemExit) as err:
        if args.verbose:
            raise
        print(f"nas {args.command}: error: {_fatal_message(err)}", file=sys.stderr)
        return EXIT_ERROR


def _fatal_message(err: BaseException) -> str:
    """One line for an error no check anticipated: too deep an input, memory exhausted, or exit() in user code."""
    if isinstance(err, RecursionError):
        return ("an input is nested too deeply to process (RecursionError); "
                "check --arch files and search spaces for runaway nesting.")
    if isinstance(err, MemoryError):
        return ("out of memory (MemoryError); lower --batch-size or the space's width settings (--space-arg), "
                "or pick smaller candidates.")
    return (f"the run called sys.exit({getattr(err, 'code', None)!r}) (in a search space or plug-in); "
            "it did not finish.")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
