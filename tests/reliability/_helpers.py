"""Helpers of the reliability tests: running ``nas``, killing it, reading what it did."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
HOOK = HERE / "_hooked_nas.py"
SPACE_FILE = HERE / "tiny_space.py"
TINY = f"{SPACE_FILE}:TinySpace"

#: Number of distinct candidates of ``TinySpace``.
TINY_SIZE = 6

#: Settings of the tiny GHN (command-line flags of ``nas train-ghn`` and the API alike).
GHN_ARGS = ["--hidden", "8", "--layers", "1", "--meta-batch", "2", "--batch-size", "16", "--num-held-out", "1"]

#: A tiny campaign: 80 random rank trials see all 6 candidates (a miss has probability 6 * (5/6)**80 < 3e-6).
SEARCH_ARGS = [
    "--space", TINY, "--dataset", "digits", "--trials", "80", "--top-k", "3", "--finetune-epochs", "1",
    "--sampler", "random", "--batch-size", "8", "--seed", "0", "--no-progress",
]

#: Columns of the result tables that must not depend on interruptions (trial numbers, times, workers
#: and file paths do).
CANDIDATE_VALUE_COLUMNS = ["key", "num_params", "flops", "rank_score", "ghn_loss", "ghn_acc", "finetuned"]
FINETUNED_VALUE_COLUMNS = [
    "key", "num_params", "flops", "ghn_loss", "ghn_acc", "val_loss", "val_acc", "test_loss",
    "test_acc", "train_loss", "steps", "failed",
]


def base_env(tmp: Path, **extra: str) -> dict[str, str]:
    """Environment of a ``nas`` subprocess: one thread, no display, a private cache folder."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("NAS_TEST_")}
    env.update(
        OMP_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
        MPLBACKEND="Agg",
        PYTHONUNBUFFERED="1",
        PYTHONDONTWRITEBYTECODE="1",
        NAS_CACHE_DIR=str(tmp / "nas-cache"),
    )
    env.update(extra)
    return env


@dataclass
class CliResult:
    """Exit code and captured output of one ``nas`` run."""

    code: int
    out: str
    err: str


def run_inprocess(argv: Sequence[str]) -> CliResult:
    """Call ``nas.cli.main(argv)`` in this process, capturing stdout and stderr."""
    from nas.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(list(argv))
        except SystemExit as exc:  # argparse exits on a bad flag
            code = exc.code if isinstance(exc.code, int) else 2
    return CliResult(int(code), out.getvalue(), err.getvalue())


def run_subprocess(
    argv: Sequence[str], *, env: dict[str, str], cwd: Path | None = None, timeout: float = 480, hooked: bool = True
) -> CliResult:
    """Run ``nas ARGV`` (through the hook wrapper by default) to the end."""
    cmd = [sys.executable, str(HOOK), *argv] if hooked else [sys.executable, "-c", "import sys; from nas.cli import main; sys.exit(main())", *argv]
    proc = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    return CliResult(proc.returncode, proc.stdout, proc.stderr)


def read_log(path: Path) -> list[dict[str, Any]]:
    """The events of a work log (see ``_hooked_nas.py``), in order."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@dataclass
class KilledRun:
    """What :func:`run_and_kill` saw."""

    killed: bool
    code: int
    out: str
    err: str
    trigger: dict[str, Any] | None


def run_and_kill(
    argv: Sequence[str],
    *,
    env: dict[str, str],
    log: Path,
    when: Callable[[list[dict[str, Any]]], dict[str, Any] | None],
    rng: random.Random,
    delay: float,
    timeout: float = 480,
    cwd: Path | None = None,
) -> KilledRun:
    """Start ``nas ARGV`` under the hook wrapper and SIGKILL it once ``when(events of this run)`` fires.

    ``when`` gets the work-log events of this run and returns the triggering
    event (or ``None``). The kill is sent after a random pause in
    ``[0, delay)``; units of work sleep ``NAS_TEST_UNIT_DELAY`` seconds after
    logging their start, so with ``delay`` below that the kill lands inside the
    unit that triggered it.
    """
    run = env["NAS_TEST_RUN"]
    proc = subprocess.Popen(
        [sys.executable, str(HOOK), *argv], env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL, text=True,
    )
    deadline = time.monotonic() + timeout
    trigger = None
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            events = [e for e in read_log(log) if e["run"] == run]
            trigger = when(events)
            if trigger is not None:
                time.sleep(rng.uniform(0, delay))
                os.kill(proc.pid, signal.SIGKILL)
                break
            time.sleep(0.02)
        else:
            if proc.poll() is None:
                proc.kill()
                out, err = proc.communicate()
                raise AssertionError(f"`nas {' '.join(argv)}` did not finish in {timeout} s:\n{err[-3000:]}")
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    killed = proc.returncode == -signal.SIGKILL
    return KilledRun(killed, proc.returncode, out, err, trigger)


def nth(kind: str, event: str, n: int) -> Callable[[list[dict[str, Any]]], dict[str, Any] | None]:
    """A kill trigger: the ``n``-th (1-based) event ``kind/event`` of the run."""

    def when(events: list[dict[str, Any]]) -> dict[str, Any] | None:
        hits = [e for e in events if e["kind"] == kind and e["event"] == event]
        return hits[n - 1] if len(hits) >= n else None

    return when


def _sqlite_digest(path: Path) -> str:
    """Hash of an SQLite database's content (rows and schema, WAL included), not of its bytes."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return hashlib.sha256("\n".join(conn.iterdump()).encode()).hexdigest()
    finally:
        conn.close()


def snapshot(folder: Path) -> dict[str, str]:
    """Relative path -> content hash and mode of every file under ``folder`` (empty when it is missing).

    SQLite databases are hashed by content (a dump), since SQLite may rewrite
    their bytes (WAL checkpoints) without changing a row; their ``-wal``,
    ``-shm`` and ``-journal`` companions are covered by that dump.
    """
    if not folder.exists():
        return {}
    out: dict[str, str] = {}
    for path in sorted(folder.rglob("*")):
        rel = str(path.relative_to(folder))
        if path.is_symlink():
            out[rel] = f"link:{os.readlink(path)}"
        elif path.is_dir():
            out[rel + "/"] = "dir"
        elif path.name.endswith(("-wal", "-shm", "-journal")):
            continue
        elif path.is_file():
            with path.open("rb") as handle:
                head = handle.read(16)
            digest = _sqlite_digest(path) if head == b"SQLite format 3\x00" else hashlib.sha256(path.read_bytes()).hexdigest()
            out[rel] = f"{digest}:{oct(path.stat().st_mode)}"
    return out


def error_lines(err: str) -> list[str]:
    """The non-empty lines of stderr that are not log records (``LEVEL name: ...``)."""
    levels = ("DEBUG ", "INFO ", "WARNING ")
    return [line for line in err.splitlines() if line.strip() and not line.startswith(levels)]


def assert_one_line_error(result: CliResult, *needles: str) -> str:
    """Exit code 2, no traceback, exactly one error line that contains every needle (case-insensitive)."""
    assert "Traceback" not in result.err, result.err[-3000:]
    lines = error_lines(result.err)
    assert result.code == 2, f"exit code {result.code}, stderr:\n{result.err[-3000:]}"
    assert len(lines) == 1, f"expected one error line, got {len(lines)}:\n{result.err[-3000:]}"
    line = lines[0]
    for needle in needles:
        assert needle.lower() in line.lower(), f"{needle!r} not in error line {line!r}"
    return line
