"""A user-style search space of residual stages (ResNet-like).

A stem of a chosen width, then 1-3 stages; each stage after the first doubles the
width and halves the feature map (by a strided convolution or by average pooling,
a per-stage choice) while it is larger than 2x2. A stage stacks 1-3 residual
blocks of one kind, ``basic`` (two 3x3 convolutions) or ``bottleneck`` (1x1,
3x3, 1x1 at a quarter of the width), with an identity skip or, where the shape
changes, a 1x1 projection. It is one of the ranking suite's round-2 held-out
spaces (``experiments/suite.py``): it was written after the ranking defaults were
fixed.

Use it like any space::

    nas sample --space examples/resnet_space.py:ResNetSpace -n 3
    nas correlate --space examples/resnet_space.py:ResNetSpace --dataset digits --out runs/resnet
"""

from __future__ import annotations

from typing import Any

from nas.graph import ArchGraph, GraphBuilder
from nas.space import SearchSpace


class ResNetSpace(SearchSpace):
    """Residual stages with a per-stage block kind, depth and downsampling.

    Args:
        input_shape: Shape ``(C, H, W)`` of one input example.
        num_classes: Number of classes.
        stages: Most stages a candidate may have (at least 1).
        depth: Most blocks per stage (at least 1).
    """

    name = "resnet_space"

    def __init__(
        self,
        *,
        input_shape: tuple[int, int, int] = (1, 28, 28),
        num_classes: int = 10,
        stages: int = 3,
        depth: int = 3,
    ) -> None:
        for arg, value in (("stages", stages), ("depth", depth)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"`{arg}` must be a positive int, but got {value!r}.")
        super().__init__(input_shape=input_shape, num_classes=num_classes, stages=stages, depth=depth)
        self.stages = stages
        self.depth = depth

    @staticmethod
    def _conv_bn(b: GraphBuilder, x: int, width: int, kernel: int, stride: int = 1) -> int:
        return b.add("bn", b.add("conv", x, out_channels=width, kernel=kernel, stride=stride))

    def _block(self, b: GraphBuilder, x: int, *, kind: str, width: int, stride: int) -> int:
        if kind == "basic":
            h = self._conv_bn(b, b.add("relu", self._conv_bn(b, x, width, 3, stride)), width, 3)
        else:  # bottleneck
            narrow = max(2, width // 4)
            h = b.add("relu", self._conv_bn(b, x, narrow, 1))
            h = b.add("relu", self._conv_bn(b, h, narrow, 3, stride))
            h = self._conv_bn(b, h, width, 1)
        skip = x if stride == 1 and b.shape(x)[0] == width else self._conv_bn(b, x, width, 1, stride)
        return b.add("relu", b.add("sum", skip, h))

    def build(self, trial: Any) -> ArchGraph:
        b = GraphBuilder(self.input_shape)
        width = trial.suggest_categorical("stem_width", [8, 16])
        x = b.add("relu", self._conv_bn(b, b.input, width, 3))
        for s in range(trial.suggest_int("stages", 1, self.stages)):
            kind = trial.suggest_categorical(f"block_{s}", ["basic", "bottleneck"])
            stride = 1
            if s > 0:
                width *= 2
                if b.shape(x)[1] > 2:
                    if trial.suggest_categorical(f"downsample_{s}", ["conv", "avg_pool"]) == "avg_pool":
                        x = b.add("avg_pool", x, kernel=3, stride=2)
                    else:
                        stride = 2
            for i in range(trial.suggest_int(f"depth_{s}", 1, self.depth)):
                x = self._block(b, x, kind=kind, width=width, stride=stride if i == 0 else 1)
        x = b.add("global_avg_pool", x)
        return b.build(b.add("linear", x, out_features=self.num_classes))
