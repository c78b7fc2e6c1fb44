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

__all__ = ["TinySpace", "RaisingSpace", "EmptySpace", "NoneSpace", "NOT_A_SPACE"]


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
