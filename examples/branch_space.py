"""A user-style search space of two-branch blocks, written the way a user would write one.

Each block runs two branches on the same input and merges them with ``sum``
or ``concat``. A branch is a plain, separable (depthwise then pointwise) or
dilated convolution, or a pooling branch; a float choice with a ``step`` sets
the width multiplier of the whole network. It is one of the suite's held-out
spaces (``experiments/suite.py``): no ranking default was chosen on it.

Use it like any space::

    nas sample --space examples/branch_space.py:BranchSpace -n 3
    nas correlate --space examples/branch_space.py:BranchSpace --dataset digits --out runs/branch
"""

from __future__ import annotations

from typing import Any

from nas.graph import ArchGraph, GraphBuilder
from nas.space import SearchSpace

#: Branch kinds a block chooses from.
BRANCHES = ("conv3", "sep3", "sep5", "dil3", "max_pool", "avg_pool")


class BranchSpace(SearchSpace):
    """Stages of two-branch blocks merged by ``sum`` or ``concat``.

    Args:
        input_shape: Shape ``(C, H, W)`` of one input example.
        num_classes: Number of classes.
        blocks: Most blocks a candidate may have (at least 1).
        C: Base width before the width multiplier.
    """

    name = "branch_space"

    def __init__(
        self,
        *,
        input_shape: tuple[int, int, int] = (1, 28, 28),
        num_classes: int = 10,
        blocks: int = 3,
        C: int = 8,
    ) -> None:
        for arg, value in (("blocks", blocks), ("C", C)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"`{arg}` must be a positive int, but got {value!r}.")
        super().__init__(input_shape=input_shape, num_classes=num_classes, blocks=blocks, C=C)
        self.blocks = blocks
        self.C = C

    def _branch(self, b: GraphBuilder, x: int, kind: str, width: int) -> int:
        c_in = b.shape(x)[0]
        if kind == "conv3":
            y = b.add("conv", x, out_channels=width, kernel=3)
        elif kind in ("sep3", "sep5"):
            depthwise = b.add("conv", x, out_channels=c_in, kernel=int(kind[-1]), groups=c_in)
            y = b.add("conv", depthwise, out_channels=width, kernel=1)
        elif kind == "dil3":
            y = b.add("conv", x, out_channels=width, kernel=3, dilation=2)
        else:  # a pooling branch, projected to the block's width
            y = b.add("conv", b.add(kind, x, kernel=3), out_channels=width, kernel=1)
        return b.add("relu", b.add("bn", y))

    def build(self, trial: Any) -> ArchGraph:
        b = GraphBuilder(self.input_shape)
        mult = trial.suggest_float("width_mult", 0.5, 1.5, step=0.25)
        width = max(2, int(round(self.C * mult)))
        x = b.add("relu", b.add("bn", b.add("conv", b.input, out_channels=width, kernel=3)))
        for i in range(trial.suggest_int("blocks", 1, self.blocks)):
            if i > 0 and b.shape(x)[1] > 2:  # halve the map and double the width after the first block
                width *= 2
                x = b.add("relu", b.add("bn", b.add("conv", x, out_channels=width, kernel=3, stride=2)))
            left = self._branch(b, x, trial.suggest_categorical(f"left_{i}", list(BRANCHES)), width)
            right = self._branch(b, x, trial.suggest_categorical(f"right_{i}", list(BRANCHES)), width)
            if trial.suggest_categorical(f"merge_{i}", ["sum", "concat"]) == "sum":
                x = b.add("sum", left, right)
            else:
                x = b.add("conv", b.add("concat", left, right), out_channels=width, kernel=1)
        x = b.add("global_avg_pool", x)
        return b.build(b.add("linear", x, out_features=self.num_classes))

    def size(self) -> int:
        """Distinct choice sets: 5 multipliers times, per depth, (6 * 6 * 2) per block."""
        per_block = len(BRANCHES) ** 2 * 2
        return 5 * sum(per_block**d for d in range(1, self.blocks + 1))
