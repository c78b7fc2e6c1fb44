"""Tiny search spaces for the reliability tests (loaded as ``tiny_space.py:ATTR``).

``TinySpace`` has six candidates on 8x8 images (``digits``), small enough that
a campaign of a few dozen rank trials sees every one of them, so an interrupted
and an uninterrupted campaign end with the same candidate table whatever order
the sampler proposed them in. The other attributes are broken on purpose.
"""

from __future__ import annotations

from typing import Any

from nas.graph import ArchGraph, GraphBuilder
from nas.space import SearchSpace

__all__ = [
    "ChainSpace", "DynamicSpace", "EmptySpace", "ExitingSpace", "NOT_A_SPACE", "NoneSpace", "RaisingSpace", "TinySpace",
    "WideSpace",
]


class TinySpace(SearchSpace):
    """conv(width, kernel) -> bn -> relu -> global pool -> linear: 3 widths x 2 kernels."""

    name = "tiny"

    def build(self, trial: Any) -> ArchGraph:
        b = GraphBuilder(self.input_shape)
        width = trial.suggest_categorical("width", [2, 4, 8])
        kernel = trial.suggest_categorical("kernel", [1, 3])
        x = b.add("conv", b.input, out_channels=width, kernel=kernel)
        x = b.add("relu", b.add("bn", x))
        x = b.add("global_avg_pool", x)
        return b.build(b.add("linear", x, out_features=self.num_classes))

    def size(self) -> int:
        return 6


class ExitingSpace(SearchSpace):
    """A space whose ``build`` calls ``sys.exit(0)``."""

    name = "exiting"

    def build(self, trial: Any) -> ArchGraph:
        import sys

        trial.suggest_categorical("width", [2, 4])
        sys.exit(0)


class RaisingSpace(SearchSpace):
    """A space whose ``build`` fails with a bug of the user's."""

    name = "raising"

    def build(self, trial: Any) -> ArchGraph:
        trial.suggest_categorical("width", [2, 4])
        raise ZeroDivisionError("division by zero in the user's build()")


class EmptySpace(SearchSpace):
    """A space that offers no choice at all (an empty choice list)."""

    name = "empty"

    def build(self, trial: Any) -> ArchGraph:
        trial.suggest_categorical("width", [])
        raise AssertionError("unreachable: an empty choice list must be refused")


class NoneSpace(SearchSpace):
    """A space whose ``build`` offers no choices and returns nothing."""

    name = "none"

    def build(self, trial: Any) -> ArchGraph:
        return None  # type: ignore[return-value]


#: Not a search space at all.
NOT_A_SPACE = 42


class ChainSpace(SearchSpace):
    """A chain of 10,000 ReLUs after a conv of one of two widths: two candidates, each of 10,005 nodes."""

    name = "chain"

    def build(self, trial: Any) -> ArchGraph:
        b = GraphBuilder(self.input_shape)
        x = b.add("conv", b.input, out_channels=trial.suggest_categorical("width", [2, 4]), kernel=1)
        for _ in range(10_000):
            x = b.add("relu", x)
        x = b.add("global_avg_pool", x)
        return b.build(b.add("linear", x, out_features=self.num_classes))


class WideSpace(SearchSpace):
    """Two 1x1 convs of 2**17 channels: 2**34 weights in the second one, far too many to allocate."""

    name = "wide"

    def build(self, trial: Any) -> ArchGraph:
        b = GraphBuilder(self.input_shape)
        width = trial.suggest_categorical("width", [2**17])
        x = b.add("conv", b.input, out_channels=width, kernel=1)
        x = b.add("conv", x, out_channels=width, kernel=1)
        x = b.add("global_avg_pool", x)
        return b.build(b.add("linear", x, out_features=self.num_classes))


class DynamicSpace(SearchSpace):
    """A space whose second choice list depends on the first: Optuna refuses it when the second list comes up."""

    name = "dynamic"

    def build(self, trial: Any) -> ArchGraph:
        b = GraphBuilder(self.input_shape)
        family = trial.suggest_categorical("family", ["small", "large"])
        widths = [2, 4] if family == "small" else [8, 16]
        x = b.add("conv", b.input, out_channels=trial.suggest_categorical("width", widths), kernel=1)
        x = b.add("global_avg_pool", x)
        return b.build(b.add("linear", x, out_features=self.num_classes))
