"""A user-style search space of densely connected stages (DenseNet-like).

A stem convolution, then 1-3 stages. Inside a stage each layer (batch norm,
activation, convolution of a chosen kernel) reads the concatenation of the
stage's input and every earlier layer's output and adds ``growth`` channels.
Between stages a transition compresses the channels by a float factor (a
``suggest_float`` with a ``step``) with a 1x1 convolution and halves the map by
average pooling while it is larger than 2x2. It is one of the ranking suite's
round-3 held-out spaces (``experiments/suite.py``): it was written after round
3's defaults were chosen, before any of its numbers existed.

Use it like any space::

    nas sample --space examples/dense_space.py:DenseSpace -n 3
    nas correlate --space examples/dense_space.py:DenseSpace --dataset digits --out runs/dense
"""

from __future__ import annotations

from typing import Any

from nas.graph import ArchGraph, GraphBuilder
from nas.space import SearchSpace


class DenseSpace(SearchSpace):
    """Dense stages with a per-stage depth, growth rate and kernel, and compressing transitions.

    Args:
        input_shape: Shape ``(C, H, W)`` of one input example.
        num_classes: Number of classes.
        stages: Most stages a candidate may have (at least 1).
        depth: Most layers per stage (at least 1).
    """

    name = "dense_space"

    def __init__(
        self,
        *,
        input_shape: tuple[int, int, int] = (1, 28, 28),
        num_classes: int = 10,
        stages: int = 3,
        depth: int = 4,
    ) -> None:
        for arg, value in (("stages", stages), ("depth", depth)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"`{arg}` must be a positive int, but got {value!r}.")
        super().__init__(input_shape=input_shape, num_classes=num_classes, stages=stages, depth=depth)
        self.stages = stages
        self.depth = depth

    def build(self, trial: Any) -> ArchGraph:
        b = GraphBuilder(self.input_shape)
        x = b.add("conv", b.input, out_channels=trial.suggest_categorical("stem_width", [8, 16]), kernel=3)
        for s in range(trial.suggest_int("stages", 1, self.stages)):
            if s > 0:
                compression = trial.suggest_float(f"compression_{s}", 0.5, 1.0, step=0.25)
                width = max(4, int(b.shape(x)[0] * compression))
                x = b.add("conv", b.add("relu", b.add("bn", x)), out_channels=width, kernel=1)
                if b.shape(x)[1] > 2:
                    x = b.add("avg_pool", x, kernel=2, stride=2)
            growth = trial.suggest_categorical(f"growth_{s}", [4, 8, 12])
            kernel = trial.suggest_categorical(f"kernel_{s}", [1, 3, 5])
            act = trial.suggest_categorical(f"act_{s}", ["relu", "gelu"])
            features = [x]
            for _ in range(trial.suggest_int(f"depth_{s}", 1, self.depth)):
                inp = features[0] if len(features) == 1 else b.add("concat", *features)
                features.append(b.add("conv", b.add(act, b.add("bn", inp)), out_channels=growth, kernel=kernel))
            x = b.add("concat", *features)
        x = b.add("relu", b.add("bn", x))
        x = b.add("global_avg_pool", x)
        return b.build(b.add("linear", x, out_features=self.num_classes))
