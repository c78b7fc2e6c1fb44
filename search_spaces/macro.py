"""A MobileNetV2-style macro search space: depth, width, kernel and expansion per stage.

References:
    Mark Sandler, Andrew Howard, Menglong Zhu, Andrey Zhmoginov and
    Liang-Chieh Chen. "MobileNetV2: Inverted Residuals and Linear
    Bottlenecks." CVPR 2018. https://arxiv.org/abs/1801.04381

    Han Cai, Chuang Gan, Tianzhe Wang, Zhekai Zhang and Song Han. "Once for
    All: Train One Network and Specialize it for Efficient Deployment." ICLR
    2020 (the per-stage depth / width / kernel / expansion choices).
"""

from __future__ import annotations

import math
from typing import Any

from nas.graph import ArchGraph, GraphBuilder
from nas.space import SearchSpace, register_space

__all__ = ["MacroSpace", "MACRO_CHOICES"]

#: Choices asked per stage.
MACRO_CHOICES: dict[str, tuple[Any, ...]] = {
    "depth": (1, 2, 3),
    "width": (0.5, 1.0, 1.5),
    "kernel": (3, 5, 7),
    "expand": (1, 3, 6),
    "skip": (True, False),
}


@register_space("macro")
class MacroSpace(SearchSpace):
    """A chain of stages of inverted-bottleneck blocks (MobileNetV2 / OFA-like).

    Stem: 3x3 conv to ``C`` channels, BN, ReLU. Stage ``s`` (0-based) has
    ``round(width * C * 2**s)`` channels and chooses:

    * ``stage{s}_depth``: 1, 2 or 3 blocks;
    * ``stage{s}_width``: width multiplier 0.5, 1.0 or 1.5;
    * ``stage{s}_kernel``: depthwise kernel 3, 5 or 7;
    * ``stage{s}_expand``: expansion ratio 1, 3 or 6;
    * ``stage{s}_skip``: residual connection in the blocks whose input and
      output shapes agree.

    A block is 1x1 conv expanding to ``expand * in`` channels, BN, ReLU (left
    out when ``expand == 1``), depthwise kxk conv, BN, ReLU, 1x1 conv
    projecting to the stage's channels, BN. The first block of every stage but
    the first has stride 2. Head: global pooling and linear.

    Args:
        input_shape: Shape ``(C, H, W)`` of one input example.
        num_classes: Number of classes.
        C: Stem channels and base width of the first stage.
        stages: Number of stages.

    Raises:
        ValueError: ``C`` or ``stages`` is not a positive int.
    """

    name = "macro"

    def __init__(
        self,
        *,
        input_shape: tuple[int, int, int] = (1, 28, 28),
        num_classes: int = 10,
        C: int = 8,
        stages: int = 3,
    ) -> None:
        for arg, value in (("C", C), ("stages", stages)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"`{arg}` must be a positive int, but got {value!r}.")
        super().__init__(input_shape=input_shape, num_classes=num_classes, C=C, stages=stages)
        self.C = C
        self.stages = stages

    def size(self) -> int:
        """Choice combinations: (3 * 3 * 3 * 3 * 2) ** stages."""
        return math.prod(len(c) for c in MACRO_CHOICES.values()) ** self.stages

    def build(self, trial: Any) -> ArchGraph:
        """Ask ``trial`` for every stage's choices and return the network graph."""
        b = GraphBuilder(self.input_shape)
        x = b.add("conv", b.input, out_channels=self.C, kernel=3)
        x = b.add("bn", x)
        x = b.add("relu", x)
        for s in range(self.stages):
            choice = {
                key: trial.suggest_categorical(f"stage{s}_{key}", values) for key, values in MACRO_CHOICES.items()
            }
            channels = max(1, round(choice["width"] * self.C * 2**s))
            for block in range(choice["depth"]):
                stride = 2 if s > 0 and block == 0 else 1
                x = _block(
                    b, x, channels, kernel=choice["kernel"], expand=choice["expand"], stride=stride, skip=choice["skip"]
                )
        x = b.add("global_avg_pool", x)
        return b.build(b.add("linear", x, out_features=self.num_classes))


def _block(b: GraphBuilder, x: int, channels: int, *, kernel: int, expand: int, stride: int, skip: bool) -> int:
    """One inverted bottleneck; residual when asked for and the shapes agree."""
    y = x
    c_in = b.shape(x)[0]
    hidden = c_in * expand
    if expand != 1:
        y = b.add("conv", y, out_channels=hidden, kernel=1)
        y = b.add("bn", y)
        y = b.add("relu", y)
    y = b.add("conv", y, out_channels=hidden, kernel=kernel, stride=stride, groups=hidden)
    y = b.add("bn", y)
    y = b.add("relu", y)
    y = b.add("conv", y, out_channels=channels, kernel=1)
    y = b.add("bn", y)
    if skip and b.shape(y) == b.shape(x):
        y = b.add("sum", x, y)
    return y
