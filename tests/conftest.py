"""Shared fixtures: small hand-built architecture graphs."""

from __future__ import annotations

import os
from pathlib import Path

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
