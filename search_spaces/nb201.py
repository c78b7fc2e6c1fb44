"""The NAS-Bench-201 search space.

Reference:
    Xuanyi Dong and Yi Yang. "NAS-Bench-201: Extending the Scope of
    Reproducible Neural Architecture Search." ICLR 2020.
    https://arxiv.org/abs/2001.00326
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from nas.exceptions import SpaceError
from nas.graph import ArchGraph, GraphBuilder
from nas.space import Candidate, SearchSpace, register_space

__all__ = ["NB201Space", "NB201_OPS", "NB201_EDGES", "arch_string", "params_from_arch_string"]

#: The five candidate operations of a cell edge, in NAS-Bench-201's order.
NB201_OPS: tuple[str, ...] = ("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3")

#: Cell edges ``(to, from)`` in the order of the NAS-Bench-201 arch string.
NB201_EDGES: tuple[tuple[int, int], ...] = tuple((i, j) for i in range(1, 4) for j in range(i))


def _edge_name(i: int, j: int) -> str:
    return f"edge_{i}_{j}"


def arch_string(params: Mapping[str, Any] | Candidate) -> str:
    """The NAS-Bench-201 arch string of a candidate's choices.

    Args:
        params: The choices of an :class:`NB201Space` candidate (``candidate.params``,
            ``trial.params``) or the candidate itself.

    Returns:
        A string such as ``"|nor_conv_3x3~0|+|none~0|skip_connect~1|+|...~0|...~1|...~2|"``,
        the key NAS-Bench-201's tables are indexed by.

    Raises:
        SpaceError: A choice is missing or is not one of :data:`NB201_OPS`.
    """
    if isinstance(params, Candidate):
        params = params.params
    stages = []
    for i in range(1, 4):
        ops = []
        for j in range(i):
            name = _edge_name(i, j)
            op = params.get(name)
            if op not in NB201_OPS:
                raise SpaceError(f"NAS-Bench-201 choice {name!r} must be one of {NB201_OPS}, but got {op!r}.")
            ops.append(f"{op}~{j}")
        stages.append("|" + "|".join(ops) + "|")
    return "+".join(stages)


def params_from_arch_string(text: str) -> dict[str, str]:
    """Parse a NAS-Bench-201 arch string into :class:`NB201Space` choices.

    Args:
        text: A string as written by :func:`arch_string`.

    Returns:
        The choices, ``{"edge_1_0": ..., ..., "edge_3_2": ...}``.

    Raises:
        SpaceError: The string is malformed.
    """
    stages = text.strip().split("+")
    if len(stages) != 3:
        raise SpaceError(f"NAS-Bench-201 arch string must have 3 '+'-separated nodes, but got {text!r}.")
    out: dict[str, str] = {}
    for i, stage in enumerate(stages, start=1):
        items = [s for s in stage.strip("|").split("|") if s]
        if len(items) != i:
            raise SpaceError(f"NAS-Bench-201 arch string node {i} must list {i} edges, but got {stage!r}.")
        for j, item in enumerate(items):
            op, _, src = item.partition("~")
            if op not in NB201_OPS or src != str(j):
                raise SpaceError(f"NAS-Bench-201 arch string has a bad edge {item!r} (expected 'op~{j}').")
            out[_edge_name(i, j)] = op
    return out


@register_space("nb201")
class NB201Space(SearchSpace):
    """NAS-Bench-201: one cell of 6 edges, repeated in a fixed ResNet-like skeleton.

    The cell is a DAG of 4 nodes; node 0 is the cell input and node ``i``
    (1..3) sums its incoming edges ``i <- j`` (``j < i``). Each edge picks one
    of ``none``, ``skip_connect``, ``nor_conv_1x1``, ``nor_conv_3x3`` and
    ``avg_pool_3x3``: 5^6 = 15,625 cells. ``none`` drops the edge; a node with
    no incoming edge left is zero and is dropped from its readers; when the
    cell output is cut from the cell input, the cell emits a ``zero`` op on
    its input, as NAS-Bench-201's ``none`` does.

    Skeleton: stem (3x3 conv to ``C`` channels, batch norm); three stages of
    ``N`` cells with ``C``, ``2C`` and ``4C`` channels separated by residual
    reduction blocks; head (batch norm, ReLU, global pooling, linear).

    Reference:
        Xuanyi Dong and Yi Yang. "NAS-Bench-201: Extending the Scope of
        Reproducible Neural Architecture Search." ICLR 2020.

    Args:
        input_shape: Shape ``(C, H, W)`` of one input example.
        num_classes: Number of classes.
        C: Channels of the first stage (NAS-Bench-201 uses 16).
        N: Cells per stage (NAS-Bench-201 uses 5).

    Raises:
        ValueError: ``C`` or ``N`` is not a positive int.

    Example:
        >>> space = NB201Space(input_shape=(1, 8, 8))
        >>> arch_string(space.sample(seed=0)).count("~")
        6
    """

    name = "nb201"

    def __init__(
        self,
        *,
        input_shape: tuple[int, int, int] = (1, 28, 28),
        num_classes: int = 10,
        C: int = 8,
        N: int = 1,
    ) -> None:
        for arg, value in (("C", C), ("N", N)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"`{arg}` must be a positive int, but got {value!r}.")
        super().__init__(input_shape=input_shape, num_classes=num_classes, C=C, N=N)
        self.C = C
        self.N = N

    def size(self) -> int:
        """5^6 = 15,625 cells (NAS-Bench-201 counts 6,466 up to isomorphism)."""
        return len(NB201_OPS) ** len(NB201_EDGES)

    @staticmethod
    def arch_string(params: Mapping[str, Any] | Candidate) -> str:
        """See :func:`arch_string`."""
        return arch_string(params)

    def params_from_encoding(self, text: str) -> dict[str, Any]:
        """The choices of a NAS-Bench-201 arch string (:func:`params_from_arch_string`)."""
        return params_from_arch_string(text)

    def build(self, trial: Any) -> ArchGraph:
        """Ask ``trial`` for the 6 edge ops and return the network graph."""
        ops = {
            (i, j): trial.suggest_categorical(_edge_name(i, j), NB201_OPS) for i, j in NB201_EDGES
        }
        b = GraphBuilder(self.input_shape)
        x = b.add("conv", b.input, out_channels=self.C, kernel=3)
        x = b.add("bn", x)
        for stage in range(3):
            channels = self.C * 2**stage
            if stage > 0:
                x = _reduction_block(b, x, channels)
            for _ in range(self.N):
                x = _cell(b, x, ops, channels)
        x = b.add("bn", x)
        x = b.add("relu", x)
        x = b.add("global_avg_pool", x)
        return b.build(b.add("linear", x, out_features=self.num_classes))


def _edge(b: GraphBuilder, op: str, x: int, channels: int) -> int:
    if op == "skip_connect":
        return b.add("identity", x)
    if op == "nor_conv_1x1":
        return b.add("relu_conv_bn", x, out_channels=channels, kernel=1)
    if op == "nor_conv_3x3":
        return b.add("relu_conv_bn", x, out_channels=channels, kernel=3)
    if op == "avg_pool_3x3":
        return b.add("avg_pool", x, kernel=3, stride=1)
    raise SpaceError(f"NAS-Bench-201 edge op must be one of {NB201_OPS[1:]}, but got {op!r}.")


def _cell(b: GraphBuilder, x: int, ops: Mapping[tuple[int, int], str], channels: int) -> int:
    """One cell on node ``x``; returns the cell output node."""
    value: list[int | None] = [x, None, None, None]  # None: the node is identically zero
    for i in range(1, 4):
        terms = [
            _edge(b, ops[i, j], value[j], channels)  # type: ignore[arg-type]
            for j in range(i)
            if ops[i, j] != "none" and value[j] is not None
        ]
        if len(terms) == 1:
            value[i] = terms[0]
        elif terms:
            value[i] = b.add("sum", *terms)
    out = value[3]
    return out if out is not None else b.add("zero", x)


def _reduction_block(b: GraphBuilder, x: int, channels: int) -> int:
    """NAS-Bench-201's residual reduction block (``ResNetBasicblock`` with stride 2)."""
    y = b.add("relu_conv_bn", x, out_channels=channels, kernel=3, stride=2)
    y = b.add("relu_conv_bn", y, out_channels=channels, kernel=3)
    _, h, w = b.shape(x)
    # A 2x2 pool halves even sizes exactly as the strided 3x3 conv does; odd
    # sizes need the padded 3x3 pool to round up the same way.
    kernel = 2 if h % 2 == 0 and w % 2 == 0 else 3
    s = b.add("avg_pool", x, kernel=kernel, stride=2)
    s = b.add("conv", s, out_channels=channels, kernel=1)
    return b.add("sum", y, s)
