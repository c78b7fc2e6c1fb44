"""A user-style search space of inverted-residual blocks (MobileNetV2-like).

Each stage starts with a stride-2 block and stacks 1-3 inverted-residual blocks:
a 1x1 expansion, a depthwise ``k x k`` convolution and a 1x1 projection, with a
skip connection where the shapes allow one. A stage chooses its expansion ratio,
kernel size, activation and depth; a float choice with a ``step`` sets the width
multiplier. It is one of the ranking suite's round-2 held-out spaces
(``experiments/suite.py``): it was written after the ranking defaults were fixed.

Use it like any space::

    nas sample --space examples/mobile_space.py:MobileSpace -n 3
    nas correlate --space examples/mobile_space.py:MobileSpace --dataset digits --out runs/mobile
"""

from __future__ import annotations

from typing import Any

from nas.graph import ArchGraph, GraphBuilder
from nas.space import SearchSpace


class MobileSpace(SearchSpace):
    """Stages of inverted-residual blocks with per-stage expansion, kernel, activation and depth.

    Args:
        input_shape: Shape ``(C, H, W)`` of one input example.
        num_classes: Number of classes.
        stages: Most stages a candidate may have (at least 1); each after the
            first halves the feature map while it is larger than 2x2.
        depth: Most blocks per stage (at least 1).
        C: Width of the first stage before the width multiplier.
    """

    name = "mobile_space"

    def __init__(
        self,
        *,
        input_shape: tuple[int, int, int] = (1, 28, 28),
        num_classes: int = 10,
        stages: int = 3,
        depth: int = 3,
        C: int = 8,
    ) -> None:
        for arg, value in (("stages", stages), ("depth", depth), ("C", C)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"`{arg}` must be a positive int, but got {value!r}.")
        super().__init__(input_shape=input_shape, num_classes=num_classes, stages=stages, depth=depth, C=C)
        self.stages = stages
        self.depth = depth
        self.C = C

    @staticmethod
    def _block(b: GraphBuilder, x: int, *, width: int, expand: int, kernel: int, stride: int, act: str) -> int:
        c_in = b.shape(x)[0]
        hidden = c_in * expand
        h = x
        if expand > 1:
            h = b.add(act, b.add("bn", b.add("conv", h, out_channels=hidden, kernel=1)))
        h = b.add(act, b.add("bn", b.add("conv", h, out_channels=hidden, kernel=kernel, stride=stride,
                                         groups=hidden)))
        h = b.add("bn", b.add("conv", h, out_channels=width, kernel=1))
        return b.add("sum", x, h) if stride == 1 and c_in == width else h

    def build(self, trial: Any) -> ArchGraph:
        b = GraphBuilder(self.input_shape)
        mult = trial.suggest_float("width_mult", 0.5, 1.5, step=0.25)
        width = max(2, int(round(self.C * mult)))
        x = b.add("relu", b.add("bn", b.add("conv", b.input, out_channels=width, kernel=3)))
        for s in range(trial.suggest_int("stages", 1, self.stages)):
            expand = trial.suggest_categorical(f"expand_{s}", [1, 3, 6])
            kernel = trial.suggest_categorical(f"kernel_{s}", [3, 5])
            act = trial.suggest_categorical(f"act_{s}", ["relu", "gelu"])
            stride = 2 if s > 0 and b.shape(x)[1] > 2 else 1
            if s > 0:
                width *= 2
            for i in range(trial.suggest_int(f"depth_{s}", 1, self.depth)):
                x = self._block(b, x, width=width, expand=expand, kernel=kernel, stride=stride if i == 0 else 1,
                                act=act)
        x = b.add("global_avg_pool", x)
        return b.build(b.add("linear", x, out_features=self.num_classes))
