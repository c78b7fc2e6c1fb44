"""Candidate architectures as directed acyclic graphs of operations.

An :class:`ArchGraph` has one ``input`` node, operation nodes and one ``output``
node. Each node names an op of :mod:`nas.ops`, its attributes, and the nodes it
reads (its inputs, in order). A graph is validated when it is built: every
node's output shape is inferred from the input shape, so a graph that exists is
a graph that runs.

Examples:
    >>> from nas.graph import GraphBuilder
    >>> b = GraphBuilder(input_shape=(1, 8, 8))
    >>> x = b.add("relu_conv_bn", b.input, out_channels=4, kernel=3)
    >>> x = b.add("global_avg_pool", x)
    >>> g = b.build(b.add("linear", x, out_features=10))
    >>> g.num_params()
    94
"""

from __future__ import annotations

import dataclasses
import functools
import graphlib
import hashlib
import json
import math
import warnings
from collections.abc import Iterable, Mapping, Sequence
from functools import cached_property
from typing import Any

import torch

from nas.exceptions import GraphError
from nas.ops import OPS, ParamSpec, get_op, op_names

__all__ = ["Node", "ArchGraph", "GraphBuilder", "FORMAT_VERSION", "MAX_ACTIVATIONS", "MAX_NODES", "MAX_PARAMS"]

#: Version of the JSON format written by :meth:`ArchGraph.to_dict`.
FORMAT_VERSION = 1

#: Most nodes of a candidate (the GHN passes messages one depth level at a time; NAS cells have tens to hundreds).
MAX_NODES = 4096
#: Most parameters of a network that is compiled or given predicted weights (4 GiB as float32).
MAX_PARAMS = 2**30
#: Most values all nodes of a network output for one example (128 MiB as float32, 8 GiB for a batch of 64).
MAX_ACTIVATIONS = 2**25

#: Ops whose output does not depend on the order of their inputs.
_COMMUTATIVE = frozenset({"sum"})

Shape = tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class Node:
    """One node of an architecture graph.

    Attributes:
        op: Op name from :mod:`nas.ops`.
        inputs: Indices of the nodes this node reads, in order.
        attrs: Op attributes (``out_channels``, ``kernel``, ``stride``, ...).
    """

    op: str
    inputs: tuple[int, ...] = ()
    attrs: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"op": self.op, "inputs": list(self.inputs)}
        if self.attrs:
            out["attrs"] = dict(sorted(self.attrs.items()))
        return out


class ArchGraph:
    """A validated candidate architecture.

    Args:
        nodes: The nodes; node ``i`` is referred to by index ``i`` in ``inputs``.
        input_shape: Shape ``(C, H, W)`` of one input example.

    Raises:
        GraphError: The graph is empty, has an unknown op, a cycle, a node with
            no path to the output, the wrong number of inputs for an op, or
            shapes that do not fit. The message names the node.
    """

    def __init__(self, nodes: Sequence[Node], *, input_shape: Sequence[int]) -> None:
        self.nodes: tuple[Node, ...] = tuple(nodes)
        self.input_shape: Shape = tuple(int(s) for s in input_shape)
        self._validate()

    # ------------------------------------------------------------ validation

    def _validate(self) -> None:
        if not self.nodes:
            raise GraphError("graph is empty: it needs an 'input' node, operations and an 'output' node.")
        if len(self.input_shape) != 3 or min(self.input_shape) < 1:
            raise GraphError(f"`input_shape` must be (C, H, W) of positive ints, but got {self.input_shape}.")
        n = len(self.nodes)
        for i, node in enumerate(self.nodes):
            if not isinstance(node, Node):
                raise GraphError(f"node {i} is not a Node but {type(node).__name__}.")
            if node.op not in OPS:
                raise GraphError(f"node {i}: unknown op {node.op!r}; valid ops: {', '.join(OPS)}.")
            for j in node.inputs:
                if not isinstance(j, int) or isinstance(j, bool) or not 0 <= j < n:
                    raise GraphError(f"node {i} ({node.op}): input {j!r} is not a node index in 0..{n - 1}.")
        inputs = [i for i, nd in enumerate(self.nodes) if nd.op == "input"]
        outputs = [i for i, nd in enumerate(self.nodes) if nd.op == "output"]
        if len(inputs) != 1:
            raise GraphError(f"graph needs exactly one 'input' node, but has {len(inputs)}.")
        if len(outputs) != 1:
            raise GraphError(f"graph needs exactly one 'output' node, but has {len(outputs)}.")
        self.input_index, self.output_index = inputs[0], outputs[0]

        sorter = graphlib.TopologicalSorter({i: set(nd.inputs) for i, nd in enumerate(self.nodes)})
        try:
            order = list(sorter.static_order())
        except graphlib.CycleError as err:
            cycle = err.args[1]
            raise GraphError(f"graph has a cycle through nodes {' -> '.join(map(str, cycle))}.") from None
        self.order: tuple[int, ...] = tuple(order)

        consumers = self.consumers
        reach_out = self._closure([self.output_index], consumers, backward=True)
        for i in range(n):
            if i not in reach_out:
                raise GraphError(f"node {i} ({self.nodes[i].op}) has no path to the output.")
        reach_in = self._closure([self.input_index], consumers, backward=False)
        if self.output_index not in reach_in:
            raise GraphError("the output is unreachable from the input.")

        shapes: dict[int, Shape] = {}
        for i in self.order:
            node = self.nodes[i]
            if node.op == "input":
                if node.inputs:
                    raise GraphError(f"node {i} (input) must have no inputs, but has {len(node.inputs)}.")
                shapes[i] = self.input_shape
                continue
            try:
                shapes[i] = get_op(node.op).out_shape([shapes[j] for j in node.inputs], node.attrs)
            except GraphError as err:
                raise GraphError(f"node {i} ({node.op}): {err}") from None
        self.shapes: tuple[Shape, ...] = tuple(shapes[i] for i in range(n))
        if len(self.shapes[self.output_index]) != 1:
            raise GraphError(
                f"node {self.output_index} (output) must receive logits (F,), but gets {self.shapes[self.output_index]}."
            )

    def _closure(self, start: Iterable[int], consumers: list[list[int]], *, backward: bool) -> set[int]:
        seen, stack = set(start), list(start)
        while stack:
            i = stack.pop()
            nxt = self.nodes[i].inputs if backward else consumers[i]
            for j in nxt:
                if j not in seen:
                    seen.add(j)
                    stack.append(j)
        return seen

    @cached_property
    def consumers(self) -> list[list[int]]:
        """``consumers[i]``: the nodes that read node ``i``."""
        out: list[list[int]] = [[] for _ in self.nodes]
        for i, node in enumerate(self.nodes):
            for j in node.inputs:
                out[j].append(i)
        return out

    # ------------------------------------------------------------ properties

    @property
    def num_classes(self) -> int:
        """Width of the logits the output node receives."""
        return self.shapes[self.output_index][0]

    def __len__(self) -> int:
        return len(self.nodes)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ArchGraph) and self.key == other.key

    def __hash__(self) -> int:
        return hash(self.key)

    def __repr__(self) -> str:
        return (
            f"ArchGraph(nodes={len(self.nodes)}, edges={sum(len(n.inputs) for n in self.nodes)}, "
            f"params={self.num_params()}, key={self.key[:12]})"
        )

    def in_shapes(self, i: int) -> list[Shape]:
        """Input shapes of node ``i``."""
        return [self.shapes[j] for j in self.nodes[i].inputs]

    @staticmethod
    def module_name(i: int) -> str:
        """Name of node ``i``'s module inside :class:`nas.network.Network` (``ops.<name>``)."""
        return f"n{i}"

    def node_params(self, i: int) -> list[ParamSpec]:
        """Parameter tensors owned by node ``i`` (names relative to the node)."""
        node = self.nodes[i]
        if node.op in ("input", "output"):
            return []
        return get_op(node.op).param_specs(self.in_shapes(i), node.attrs)

    @cached_property
    def param_specs(self) -> dict[str, tuple[int, ParamSpec]]:
        """Every parameter of the compiled network: full name -> (node index, spec).

        Names match :meth:`nas.network.Network.named_parameters`, e.g.
        ``"ops.n3.conv.weight"``.
        """
        out: dict[str, tuple[int, ParamSpec]] = {}
        for i in self.order:
            for spec in self.node_params(i):
                out[f"ops.{self.module_name(i)}.{spec.name}"] = (i, spec)
        return out

    def num_params(self) -> int:
        """Number of trainable parameters of the compiled network."""
        return sum(math.prod(spec.shape) for _, spec in self.param_specs.values())

    def check_size(self) -> None:
        """Refuse a network too large to allocate, before anything is allocated.

        Counts nodes, parameters (:meth:`num_params`) and the values every node
        outputs for one example from the shapes alone, and compares them with
        :data:`MAX_NODES`, :data:`MAX_PARAMS` and :data:`MAX_ACTIVATIONS`.

        Raises:
            GraphError: One of the counts is above its limit.
        """
        if len(self.nodes) > MAX_NODES:
            raise GraphError(
                f"candidate {self.key[:10]} has {len(self.nodes):,} nodes, above the limit of {MAX_NODES:,} "
                "(nas.graph.MAX_NODES): the GHN's message passing and training would take hours per candidate."
            )
        params = self.num_params()
        if params > MAX_PARAMS:
            raise GraphError(
                f"candidate {self.key[:10]} has {params:,} parameters ({params * 4 / 2**30:,.1f} GiB as float32), "
                f"above the limit of {MAX_PARAMS:,} (nas.graph.MAX_PARAMS); narrow the search space's widths."
            )
        values = sum(math.prod(shape) for shape in self.shapes)
        if values > MAX_ACTIVATIONS:
            raise GraphError(
                f"candidate {self.key[:10]} outputs {values:,} values per example across its nodes "
                f"({values * 4 / 2**30:,.1f} GiB as float32), above the limit of {MAX_ACTIVATIONS:,} "
                "(nas.graph.MAX_ACTIVATIONS); narrow the search space's widths or its input size."
            )

    def flops(self) -> int:
        """Forward FLOPs for one input example, counted by :mod:`torch.utils.flop_counter`.

        Each node's module is counted once per distinct ``(op, attrs, input
        shapes)`` and the counts are summed over the nodes (:func:`node_flops`),
        which equals counting the whole compiled network: the counter counts
        the matmuls and convolutions inside the modules, and the graph's own
        wiring (``sum``, ``concat`` and the like) adds none. Cached per graph.
        """
        if "_flops" not in self.__dict__:
            total = 0
            for i in self.order:
                node = self.nodes[i]
                if node.op not in ("input", "output"):
                    shapes = tuple(tuple(s) for s in self.in_shapes(i))
                    total += node_flops(node.op, _freeze(node.attrs), shapes)
            self.__dict__["_flops"] = int(total)
        return self.__dict__["_flops"]

    def forget_flops(self) -> None:
        """Drop the cached FLOP count, so that the next :meth:`flops` counts again (used to time scorers)."""
        self.__dict__.pop("_flops", None)

    def op_counts(self) -> dict[str, int]:
        """How often each op occurs (every vocabulary op is a key)."""
        counts = dict.fromkeys(op_names(), 0)
        for node in self.nodes:
            counts[node.op] += 1
        return counts

    # ------------------------------------------------------------ canonical key

    @cached_property
    def key(self) -> str:
        """Canonical hash: equal for graphs that differ only in node numbering.

        Each node gets a label from its op, attributes and both its whole
        ancestry (a Merkle hash over inputs, order-free for commutative ops)
        and its whole descendance; the key hashes the multiset of labelled
        edges. Input order matters for ``concat``, not for ``sum``.
        """
        n = len(self.nodes)
        own = [_digest(nd.op, sorted(nd.attrs.items())) for nd in self.nodes]
        fwd: list[str] = [""] * n
        for i in self.order:
            ins = [fwd[j] for j in self.nodes[i].inputs]
            if self.nodes[i].op in _COMMUTATIVE:
                ins.sort()
            fwd[i] = _digest(own[i], ins)
        bwd: list[str] = [""] * n
        for i in reversed(self.order):
            outs = []
            for c in self.consumers[i]:
                pos = -1 if self.nodes[c].op in _COMMUTATIVE else self.nodes[c].inputs.index(i)
                outs.append((bwd[c], pos))
            bwd[i] = _digest(own[i], sorted(outs))
        label = [_digest(fwd[i], bwd[i]) for i in range(n)]
        edges = []
        for i, nd in enumerate(self.nodes):
            ins = [label[j] for j in nd.inputs]
            if nd.op in _COMMUTATIVE:
                ins.sort()
            edges.append((label[i], ins))
        return _digest(list(self.input_shape), sorted(edges))

    def canonical(self) -> ArchGraph:
        """The same graph renumbered in a canonical topological order."""
        depth = [0] * len(self.nodes)
        for i in self.order:
            depth[i] = 1 + max((depth[j] for j in self.nodes[i].inputs), default=-1)
        fwd = self._subgraph_keys()
        label = {i: (depth[i], fwd[i], i) for i in range(len(self.nodes))}
        new_order = sorted(range(len(self.nodes)), key=lambda i: label[i])
        remap = {old: new for new, old in enumerate(new_order)}
        nodes = [
            Node(self.nodes[old].op, tuple(remap[j] for j in self.nodes[old].inputs), dict(self.nodes[old].attrs))
            for old in new_order
        ]
        return ArchGraph(nodes, input_shape=self.input_shape)

    def _subgraph_keys(self) -> list[str]:
        fwd: list[str] = [""] * len(self.nodes)
        for i in self.order:
            nd = self.nodes[i]
            ins = [fwd[j] for j in nd.inputs]
            if nd.op in _COMMUTATIVE:
                ins.sort()
            fwd[i] = _digest(nd.op, sorted(nd.attrs.items()), ins)
        return fwd

    # ------------------------------------------------------------ JSON

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form, stable across versions (see :data:`FORMAT_VERSION`)."""
        return {
            "format_version": FORMAT_VERSION,
            "input_shape": list(self.input_shape),
            "nodes": [nd.to_dict() for nd in self.nodes],
        }

    def to_json(self, **kwargs: Any) -> str:
        """JSON text of :meth:`to_dict`."""
        return json.dumps(self.to_dict(), **kwargs)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ArchGraph:
        """Rebuild a graph from :meth:`to_dict` output.

        Raises:
            GraphError: The dict is malformed, from a newer format version, or
                describes an invalid graph.
        """
        if not isinstance(data, Mapping):
            raise GraphError(f"graph JSON must be an object, but got {type(data).__name__}.")
        version = data.get("format_version")
        if not isinstance(version, int) or isinstance(version, bool):
            raise GraphError(f"graph JSON needs an integer 'format_version', but got {version!r}.")
        if version > FORMAT_VERSION:
            raise GraphError(
                f"graph JSON has format version {version}, newer than this ghn-nas reads "
                f"({FORMAT_VERSION}); upgrade ghn-nas."
            )
        if version < 1:
            raise GraphError(f"graph JSON 'format_version' must be >= 1, but got {version}.")
        shape = data.get("input_shape")
        if not isinstance(shape, list) or not all(isinstance(s, int) and not isinstance(s, bool) for s in shape):
            raise GraphError(f"graph JSON 'input_shape' must be a list of ints, but got {shape!r}.")
        raw = data.get("nodes")
        if not isinstance(raw, list):
            raise GraphError(f"graph JSON 'nodes' must be a list, but got {type(raw).__name__}.")
        nodes = []
        for i, item in enumerate(raw):
            if not isinstance(item, Mapping) or not isinstance(item.get("op"), str):
                raise GraphError(f"node {i}: expected an object with a string 'op', but got {item!r}.")
            ins = item.get("inputs", [])
            attrs = item.get("attrs", {})
            if not isinstance(ins, list):
                raise GraphError(f"node {i}: 'inputs' must be a list, but got {ins!r}.")
            if not isinstance(attrs, Mapping) or not all(isinstance(k, str) for k in attrs):
                raise GraphError(f"node {i}: 'attrs' must be an object, but got {attrs!r}.")
            nodes.append(Node(item["op"], tuple(ins), dict(attrs)))
        return cls(nodes, input_shape=shape)

    @classmethod
    def from_json(cls, text: str) -> ArchGraph:
        """Rebuild a graph from :meth:`to_json` text."""
        try:
            data = json.loads(text)
        except (json.JSONDecodeError, TypeError) as err:
            raise GraphError(f"graph JSON does not parse: {err}.") from None
        except RecursionError:
            raise GraphError("graph JSON does not parse: it is nested too deeply.") from None
        return cls.from_dict(data)

    # ------------------------------------------------------------ PyG (deprecated)

    def to_pyg(self) -> Any:
        """Deprecated: use :func:`nas.ghn.to_pyg` (``to_pyg(graph)``); removed in the next release.

        Returns:
            The graph's PyG :class:`~torch_geometric.data.Data`, as :func:`nas.ghn.to_pyg` builds it.
        """
        warnings.warn(
            "`ArchGraph.to_pyg()` is deprecated and will be removed in the next release; "
            "use `nas.ghn.to_pyg(graph)`.",
            DeprecationWarning,
            stacklevel=2,
        )
        from nas.ghn import to_pyg  # lazily: this module does not depend on PyG or the GHN

        return to_pyg(self)


def __getattr__(name: str) -> Any:
    if name == "NODE_FEATURES":
        warnings.warn(
            "`nas.graph.NODE_FEATURES` is deprecated and will be removed in the next release; "
            "use `nas.ghn.NODE_FEATURES`.",
            DeprecationWarning,
            stacklevel=2,
        )
        from nas.ghn import NODE_FEATURES  # lazily, as in ArchGraph.to_pyg

        return NODE_FEATURES
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _freeze(value: Any) -> Any:
    """A hashable copy of an attribute value (dicts and lists become sorted tuples / tuples)."""
    if isinstance(value, Mapping):
        return tuple(sorted((k, _freeze(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    return value


@functools.lru_cache(maxsize=65536)
def node_flops(op: str, attrs: tuple[tuple[str, Any], ...], in_shapes: tuple[Shape, ...]) -> int:
    """Forward FLOPs of one op's module for one input example, counted by :mod:`torch.utils.flop_counter`.

    Memoised: a space repeats the same few ``(op, attrs, shapes)`` in every
    candidate, so counting a new graph costs a dictionary lookup per node.

    Args:
        op: The op name.
        attrs: Its attributes as sorted ``(name, value)`` pairs.
        in_shapes: The shape of each input, without the batch dimension.

    Returns:
        The FLOP count.
    """
    from torch.utils.flop_counter import FlopCounterMode

    # On the meta device: shapes only, so a very wide op costs no memory to count.
    with torch.device("meta"):
        module = get_op(op).module(list(in_shapes), dict(attrs)).eval()
        inputs = [torch.empty(1, *shape) for shape in in_shapes]
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        module(*inputs)
    return int(counter.get_total_flops())


def _digest(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


class GraphBuilder:
    """Build an :class:`ArchGraph` node by node, checking shapes as it goes.

    Search spaces use it in their define-by-run ``build`` method.

    Args:
        input_shape: Shape ``(C, H, W)`` of one input example.

    Examples:
        >>> b = GraphBuilder(input_shape=(3, 32, 32))
        >>> x = b.add("conv", b.input, out_channels=16, kernel=3)
        >>> b.shape(x)
        (16, 32, 32)
    """

    def __init__(self, input_shape: Sequence[int]) -> None:
        self.input_shape: Shape = tuple(int(s) for s in input_shape)
        self.nodes: list[Node] = [Node("input")]
        self._shapes: list[Shape] = [self.input_shape]
        self.input = 0

    def shape(self, i: int) -> Shape:
        """Inferred output shape of node ``i``."""
        return self._shapes[i]

    def add(self, op: str, *inputs: int, **attrs: Any) -> int:
        """Append a node reading ``inputs``; returns its index.

        Raises:
            GraphError: Unknown op, bad attributes or shapes that do not fit.
        """
        spec = get_op(op)
        for j in inputs:
            if not 0 <= j < len(self.nodes):
                raise GraphError(f"node {len(self.nodes)} ({op}): input {j} does not exist yet.")
        try:
            shape = spec.out_shape([self._shapes[j] for j in inputs], attrs)
        except GraphError as err:
            raise GraphError(f"node {len(self.nodes)} ({op}): {err}") from None
        self.nodes.append(Node(op, tuple(inputs), dict(attrs)))
        self._shapes.append(shape)
        return len(self.nodes) - 1

    def build(self, logits: int) -> ArchGraph:
        """Close the graph with an output node reading ``logits`` and validate it.

        Nodes that do not reach the output are dropped (a search space may
        create branches that a later choice disconnects).
        """
        self.nodes.append(Node("output", (logits,)))
        keep = {len(self.nodes) - 1}
        stack = [len(self.nodes) - 1]
        while stack:
            for j in self.nodes[stack.pop()].inputs:
                if j not in keep:
                    keep.add(j)
                    stack.append(j)
        remap = {old: new for new, old in enumerate(sorted(keep))}
        nodes = [
            Node(self.nodes[old].op, tuple(remap[j] for j in self.nodes[old].inputs), self.nodes[old].attrs)
            for old in sorted(keep)
        ]
        self.nodes.pop()
        return ArchGraph(nodes, input_shape=self.input_shape)
