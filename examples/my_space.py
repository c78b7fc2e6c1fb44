"""A user-defined search space in its own file.

Use it from the command line or from Python without installing anything::

    nas sample --space examples/my_space.py:MySpace -n 3
    nas train --space examples/my_space.py:MySpace --dataset digits --space-arg max_depth=2

    from nas.space import load_space
    space = load_space("examples/my_space.py:MySpace", input_shape=(1, 8, 8))

and check that it behaves like a built-in space::

    from nas.testing import check_space
    check_space(space)
"""

from __future__ import annotations

from typing import Any

from nas.graph import ArchGraph, GraphBuilder
from nas.space import SearchSpace


class MySpace(SearchSpace):
    """A plain CNN: a few conv blocks of chosen width, kernel and activation, then a classifier.

    Args:
        input_shape: Shape ``(C, H, W)`` of one input example.
        num_classes: Number of classes.
        max_depth: Most conv blocks a candidate may have.
    """

    name = "my_space"

    def __init__(
        self, *, input_shape: tuple[int, int, int] = (1, 28, 28), num_classes: int = 10, max_depth: int = 3
    ) -> None:
        super().__init__(input_shape=input_shape, num_classes=num_classes, max_depth=max_depth)
        self.max_depth = max_depth

    def build(self, trial: Any) -> ArchGraph:
        b = GraphBuilder(self.input_shape)
        x = b.input
        depth = trial.suggest_int("depth", 1, self.max_depth)
        for i in range(depth):
            width = trial.suggest_categorical(f"width_{i}", [8, 16, 32])
            kernel = trial.suggest_categorical(f"kernel_{i}", [3, 5])
            act = trial.suggest_categorical(f"act_{i}", ["relu", "gelu"])
            stride = 2 if i > 0 and b.shape(x)[1] > 2 else 1  # halve the map after the first block
            y = b.add("conv", x, out_channels=width, kernel=kernel, stride=stride)
            y = b.add(act, b.add("bn", y))
            if b.shape(y) == b.shape(x) and trial.suggest_categorical(f"skip_{i}", [True, False]):
                y = b.add("sum", x, y)  # residual connection where the shapes allow
            x = y
        x = b.add("global_avg_pool", x)
        return b.build(b.add("linear", x, out_features=self.num_classes))

    def size(self) -> int:
        """Upper bound: every block's choices, ignoring when a skip is possible."""
        return sum((3 * 2 * 2 * 2) ** d for d in range(1, self.max_depth + 1))
