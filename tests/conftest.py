"""Shared fixtures: small hand-built architecture graphs, a full disk."""

from __future__ import annotations

import contextlib
import errno
import os
import resource
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NoReturn

import pytest
import torch

from nas.graph import ArchGraph, GraphBuilder

# The tests run tiny tensors, where intra-op threads only add overhead: on a
# busy 2-core machine an 8x8 forward pass takes ~4 ms on one thread and
# ~300 ms on two. OMP_NUM_THREADS, when set, still wins.
if "OMP_NUM_THREADS" not in os.environ:
    torch.set_num_threads(1)

#: Repository root (for ``examples/``).
ROOT = Path(__file__).resolve().parents[1]


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """Run ``nas ARGV`` in-process: its exit code (argparse's refusals included), stdout and stderr."""
    from nas.cli import main

    try:
        code = main(list(argv))
    except SystemExit as exit_:  # argparse refuses a flag's value while parsing
        code = int(exit_.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def make_chain(input_shape: tuple[int, int, int] = (1, 8, 8), *, channels: int = 4, kernel: int = 3) -> ArchGraph:
    """input -> conv -> bn -> relu -> global pool -> linear(10) -> output."""
    b = GraphBuilder(input_shape)
    x = b.add("conv", b.input, out_channels=channels, kernel=kernel)
    x = b.add("relu", b.add("bn", x))
    x = b.add("global_avg_pool", x)
    return b.build(b.add("linear", x, out_features=10))


def make_branchy(input_shape: tuple[int, int, int] = (3, 8, 8)) -> ArchGraph:
    """Two conv branches merged by sum and by concat, then a classifier (a 5-op diamond)."""
    b = GraphBuilder(input_shape)
    a = b.add("relu_conv_bn", b.input, out_channels=4, kernel=3)
    c = b.add("conv", b.input, out_channels=4, kernel=5)
    s = b.add("sum", a, c)
    x = b.add("concat", s, a)
    x = b.add("max_pool", x, kernel=3, stride=2)
    x = b.add("global_avg_pool", x)
    return b.build(b.add("linear", x, out_features=5))


@pytest.fixture
def chain_graph() -> ArchGraph:
    return make_chain()


@pytest.fixture
def branchy_graph() -> ArchGraph:
    return make_branchy()


@pytest.fixture
def examples_dir() -> Path:
    return ROOT / "examples"


#: Stages at which :func:`full_disk` makes a write fail.
DISK_FULL_STAGES = ("torch.save", "mid-write", "fsync")


def _no_space(*_: object, **__: object) -> NoReturn:
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.fixture(params=DISK_FULL_STAGES)
def full_disk(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> Callable[[], contextlib.AbstractContextManager[None]]:
    """``with full_disk(): ...`` fills the disk for the block, at one of three stages (the parameter).

    - ``"torch.save"``: :func:`torch.save` raises ``ENOSPC``.
    - ``"mid-write"``: files may not grow past 512 bytes (``RLIMIT_FSIZE``), so a
      write fails with ``EFBIG`` after its first bytes reached the disk.
    - ``"fsync"``: the bytes are written but :func:`os.fsync` raises ``ENOSPC``
      (what a file system with delayed allocation reports).
    """
    stage = request.param

    @contextlib.contextmanager
    def fill() -> Iterator[None]:
        if stage == "mid-write":
            soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
            handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of a killed process
            resource.setrlimit(resource.RLIMIT_FSIZE, (512, hard))
            try:
                yield
            finally:
                resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
                signal.signal(signal.SIGXFSZ, handler)
            return
        with monkeypatch.context() as patch:
            if stage == "torch.save":
                patch.setattr(torch, "save", _no_space)
            else:
                patch.setattr(os, "fsync", _no_space)
            yield

    return fill


def assert_only_files(folder: Path, names: set[str]) -> None:
    """``folder`` holds exactly the files ``names``: no temporary file was left behind."""
    assert {p.name for p in folder.iterdir()} == names
