"""The DARTS search space (derived, discrete cells).

Reference:
    Hanxiao Liu, Karen Simonyan and Yiming Yang. "DARTS: Differentiable
    Architecture Search." ICLR 2019. https://arxiv.org/abs/1806.09055
"""

from __future__ import annotations

import itertools
import math
from typing import Any

from nas.graph import ArchGraph, GraphBuilder
from nas.space import SearchSpace, register_space

__all__ = ["DARTSSpace", "DARTS_OPS"]

#: The operations a derived DARTS cell chooses from (``none`` is excluded at derivation).
DARTS_OPS: tuple[str, ...] = (
    "max_pool_3x3",
    "avg_pool_3x3",
    "skip_connect",
    "sep_conv_3x3",
    "sep_conv_5x5",
    "dil_conv_3x3",
    "dil_conv_5x5",
)

#: Intermediate nodes per cell; each reads two distinct earlier nodes.
_STEPS = 4
_CELL_TYPES = ("normal", "reduce")


def _pairs(step: int) -> list[str]:
    """Input pairs of intermediate node ``step``: distinct earlier nodes, as ``"a,b"`` strings."""
    return [f"{a},{b}" for a, b in itertools.combinations(range(step + 2), 2)]


@register_space("darts")
class DARTSSpace(SearchSpace):
    """DARTS: a normal and a reduction cell, stacked ``layers`` times.

    Each cell reads the outputs of the two previous cells (nodes 0 and 1,
    both preprocessed to the cell's channels by a 1x1 ``relu_conv_bn``, with
    stride 2 when the earlier input is still at the larger resolution). Each
    of its 4 intermediate nodes sums two ops applied to two distinct earlier
    nodes; an op is one of :data:`DARTS_OPS` (``none`` is excluded, as DARTS
    does when deriving a discrete cell). The cell output concatenates the 4
    intermediate nodes and maps them back to the cell's channels with a 1x1
    ``relu_conv_bn``. In a reduction cell ops on the cell inputs use stride 2
    (``skip_connect`` becomes a factorized reduce) and the channels double.

    Ops are composed from graph primitives: ``sep_conv_kxk`` is
    (ReLU, depthwise kxk conv, 1x1 conv, BN) twice; ``dil_conv_kxk`` is
    ReLU, depthwise kxk conv of dilation 2, 1x1 conv, BN.

    Reduction cells sit at positions ``layers // 3`` and ``2 * layers // 3``
    (for ``layers >= 4``; a single one in the middle otherwise), as in DARTS.
    Stem: 3x3 conv to ``C`` channels and BN. Head: global pooling and linear.

    Reference:
        Hanxiao Liu, Karen Simonyan and Yiming Yang. "DARTS: Differentiable
        Architecture Search." ICLR 2019.

    Args:
        input_shape: Shape ``(C, H, W)`` of one input example.
        num_classes: Number of classes.
        C: Channels of the first cells (DARTS uses 16 to search, 36 to evaluate).
        layers: Number of cells (DARTS uses 8 / 20); the default is
            normal, reduce, normal.

    Raises:
        ValueError: ``C`` or ``layers`` is not a positive int.
    """

    name = "darts"

    def __init__(
        self,
        *,
        input_shape: tuple[int, int, int] = (1, 28, 28),
        num_classes: int = 10,
        C: int = 8,
        layers: int = 3,
    ) -> None:
        for arg, value in (("C", C), ("layers", layers)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"`{arg}` must be a positive int, but got {value!r}.")
        super().__init__(input_shape=input_shape, num_classes=num_classes, C=C, layers=layers)
        self.C = C
        self.layers = layers

    def reduction_layers(self) -> list[int]:
        """Indices of the reduction cells."""
        if self.layers >= 4:
            return sorted({self.layers // 3, 2 * self.layers // 3})
        return [self.layers // 2]

    def size(self) -> int:
        """Distinct (normal, reduction) genotype pairs."""
        per_cell = math.prod(len(_pairs(k)) * len(DARTS_OPS) ** 2 for k in range(_STEPS))
        return per_cell ** len(_CELL_TYPES)

    def genotype(self, trial: Any) -> dict[str, list[tuple[str, int]]]:
        """Ask ``trial`` for both cells; returns ``{"normal": [(op, input), ...], "reduce": [...]}``.

        Each list holds 8 ``(op, input node)`` pairs, two per intermediate
        node, in DARTS's genotype order.
        """
        out: dict[str, list[tuple[str, int]]] = {}
        for cell in _CELL_TYPES:
            edges: list[tuple[str, int]] = []
            for k in range(_STEPS):
                node = k + 2
                pair = trial.suggest_categorical(f"{cell}_node{node}_inputs", _pairs(k))
                a, b = (int(s) for s in pair.split(","))
                op_a = trial.suggest_categorical(f"{cell}_node{node}_op0", DARTS_OPS)
                op_b = trial.suggest_categorical(f"{cell}_node{node}_op1", DARTS_OPS)
                edges += [(op_a, a), (op_b, b)]
            out[cell] = edges
        return out

    def build(self, trial: Any) -> ArchGraph:
        """Ask ``trial`` for both cells and return the network graph."""
        genotype = self.genotype(trial)
        reductions = set(self.reduction_layers())
        b = GraphBuilder(self.input_shape)
        stem = b.add("conv", b.input, out_channels=self.C, kernel=3)
        stem = b.add("bn", stem)
        s0 = s1 = stem
        channels = self.C
        for layer in range(self.layers):
            reduce = layer in reductions
            if reduce:
                channels *= 2
            cell = genotype["reduce" if reduce else "normal"]
            s0, s1 = s1, _cell(b, s0, s1, cell, channels, reduce=reduce)
        x = b.add("global_avg_pool", s1)
        return b.build(b.add("linear", x, out_features=self.num_classes))


def _cell(b: GraphBuilder, s0: int, s1: int, edges: list[tuple[str, int]], channels: int, *, reduce: bool) -> int:
    # The earlier input is one resolution step behind when the previous cell reduced.
    stride0 = 2 if b.shape(s0)[1:] != b.shape(s1)[1:] else 1
    states = [
        b.add("relu_conv_bn", s0, out_channels=channels, kernel=1, stride=stride0),
        b.add("relu_conv_bn", s1, out_channels=channels, kernel=1),
    ]
    for k in range(_STEPS):
        terms = []
        for op, src in edges[2 * k : 2 * k + 2]:
            stride = 2 if reduce and src < 2 else 1
            terms.append(_op(b, op, states[src], channels, stride))
        states.append(b.add("sum", *terms))
    x = b.add("concat", *states[2:])
    return b.add("relu_conv_bn", x, out_channels=channels, kernel=1)


def _op(b: GraphBuilder, op: str, x: int, channels: int, stride: int) -> int:
    if op == "max_pool_3x3":
        return b.add("max_pool", x, kernel=3, stride=stride)
    if op == "avg_pool_3x3":
        return b.add("avg_pool", x, kernel=3, stride=stride)
    if op == "skip_connect":
        if stride == 1:
            return b.add("identity", x)
        x = b.add("relu", x)
        x = b.add("conv", x, out_channels=channels, kernel=1, stride=2)
        return b.add("bn", x)
    kind, _, size = op.rpartition("_")
    kernel = int(size.split("x")[0])
    if kind == "sep_conv":
        for repeat_stride in (stride, 1):
            x = _dw_pw_bn(b, x, channels, kernel, repeat_stride, dilation=1)
        return x
    if kind == "dil_conv":
        return _dw_pw_bn(b, x, channels, kernel, stride, dilation=2)
    raise ValueError(f"DARTS op must be one of {DARTS_OPS}, but got {op!r}.")


def _dw_pw_bn(b: GraphBuilder, x: int, channels: int, kernel: int, stride: int, *, dilation: int) -> int:
    """ReLU, depthwise conv, pointwise conv, batch norm."""
    x = b.add("relu", x)
    c = b.shape(x)[0]
    x = b.add("conv", x, out_channels=c, kernel=kernel, stride=stride, dilation=dilation, groups=c)
    x = b.add("conv", x, out_channels=channels, kernel=1)
    return b.add("bn", x)
