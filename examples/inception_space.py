"""A user-style search space of Inception blocks.

A stem convolution, then 1-3 blocks; each block switches on any non-empty subset
of four parallel branches (a 1x1 convolution; a 1x1 reduction then a 3x3; a 1x1
reduction then two 3x3, a factorised 5x5; a 3x3 pooling then a 1x1) and
concatenates them. Each block picks its branch width (an integer choice with a
``step``) and its activation; between blocks a max pooling halves the map while
it is larger than 2x2, when the block asks for it. It is one of the ranking
suite's round-3 held-out spaces (``experiments/suite.py``): it was written after
round 3's defaults were chosen, before any of its numbers existed.

Use it like any space::

    nas sample --space examples/inception_space.py:InceptionSpace -n 3
    nas correlate --space examples/inception_space.py:InceptionSpace --dataset digits --out runs/inception
"""

from __future__ import annotations

from typing import Any

from nas.graph import ArchGraph, GraphBuilder
from nas.space import SearchSpace

#: Branches an Inception block may switch on.
BRANCHES = ("b1", "b3", "b5", "pool")


class InceptionSpace(SearchSpace):
    """Inception blocks with a per-block branch subset, width, activation and reduction.

    Args:
        input_shape: Shape ``(C, H, W)`` of one input example.
        num_classes: Number of classes.
        blocks: Most blocks a candidate may have (at least 1).
    """

    name = "inception_space"

    def __init__(
        self,
        *,
        input_shape: tuple[int, int, int] = (1, 28, 28),
        num_classes: int = 10,
        blocks: int = 3,
    ) -> None:
        if isinstance(blocks, bool) or not isinstance(blocks, int) or blocks < 1:
            raise ValueError(f"`blocks` must be a positive int, but got {blocks!r}.")
        super().__init__(input_shape=input_shape, num_classes=num_classes, blocks=blocks)
        self.blocks = blocks

    @staticmethod
    def _conv(b: GraphBuilder, x: int, width: int, kernel: int, act: str) -> int:
        return b.add(act, b.add("bn", b.add("conv", x, out_channels=width, kernel=kernel)))

    def _branch(self, b: GraphBuilder, x: int, kind: str, width: int, act: str) -> int:
        if kind == "b1":
            return self._conv(b, x, width, 1, act)
        if kind == "b3":
            return self._conv(b, self._conv(b, x, max(2, width // 2), 1, act), width, 3, act)
        if kind == "b5":
            h = self._conv(b, x, max(2, width // 2), 1, act)
            return self._conv(b, self._conv(b, h, width, 3, act), width, 3, act)
        pool = b.add("max_pool" if b.shape(x)[1] > 1 else "avg_pool", x, kernel=3, stride=1)
        return self._conv(b, pool, width, 1, act)

    def build(self, trial: Any) -> ArchGraph:
        b = GraphBuilder(self.input_shape)
        x = self._conv(b, b.input, trial.suggest_categorical("stem_width", [8, 16]), 3, "relu")
        for i in range(trial.suggest_int("blocks", 1, self.blocks)):
            if i > 0 and b.shape(x)[1] > 2 and trial.suggest_categorical(f"reduce_{i}", [True, False]):
                x = b.add("max_pool", x, kernel=3, stride=2)
            width = trial.suggest_int(f"branch_width_{i}", 4, 16, step=4)
            act = trial.suggest_categorical(f"act_{i}", ["relu", "gelu"])
            on = [k for k in BRANCHES if trial.suggest_categorical(f"{k}_{i}", [True, False])]
            outs = [self._branch(b, x, k, width, act) for k in (on or ["b3"])]
            x = outs[0] if len(outs) == 1 else b.add("concat", *outs)
        x = b.add("global_avg_pool", x)
        return b.build(b.add("linear", x, out_features=self.num_classes))
