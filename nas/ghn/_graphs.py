"""Architecture graphs as the hypernetwork reads them, cached per graph.

:func:`graph_entry` turns an :class:`~nas.graph.ArchGraph` into a
:class:`GraphEntry`: a PyG :class:`~torch_geometric.data.Data` (op indices into
the GHN's vocabulary, numeric node features from :func:`nas.ghn.pyg.graph_tensors`,
data-flow edges, and the message edges of every type, GHN-2's *virtual
edges* between nodes up to ``s_max`` hops apart included; shortest-path
distances come from :func:`scipy.sparse.csgraph.shortest_path`) and the list of parameter tensors the graph's
compiled :class:`~nas.network.Network` needs, each tied to the node that owns
it. Converting a graph costs about a millisecond (shortest paths included), so
entries are kept in a bounded LRU :class:`GraphCache`.

The cache key is the graph's canonical :attr:`~nas.graph.ArchGraph.key` *plus*
its node numbering: two numberings of one architecture name their parameters
differently (``ops.n3.conv.weight`` vs ``ops.n5.conv.weight``), and predicted
dicts must use the caller's names.
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from typing import Any, Generic, TypeVar

import numpy as np
import torch
from scipy.sparse import coo_array
from scipy.sparse.csgraph import shortest_path
from torch import Tensor
from torch_geometric.data import Data

from nas.ghn._message_passing import BACKWARD, FORWARD, NUM_EDGE_TYPES, VIRTUAL_BACKWARD, VIRTUAL_FORWARD
from nas.ghn.pyg import NUM_SHAPE_FEATURES, graph_tensors
from nas.graph import ArchGraph

__all__ = [
    "GHNData",
    "GraphCache",
    "GraphEntry",
    "NUM_SHAPE_FEATURES",
    "ParamSlot",
    "graph_entry",
    "graph_id",
    "virtual_edges",
]

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


@dataclasses.dataclass(frozen=True)
class ParamSlot:
    """One parameter tensor of a graph and the node that owns it.

    Attributes:
        name: Full parameter name, e.g. ``"ops.n3.conv.weight"``.
        pos: Position of the owning node in :attr:`GraphEntry.data` (topological order).
        kind: The :data:`~nas.ops.PARAM_KINDS` kind.
        shape: Tensor shape.
        slot: Index of this tensor among the node's tensors of the same kind
            (0 for every op of the vocabulary today).
    """

    name: str
    pos: int
    kind: str
    shape: tuple[int, ...]
    slot: int


class GHNData(Data):
    """PyG ``Data`` of one graph as the GHN reads it.

    Besides the node tensors and data-flow edges of
    :func:`~nas.ghn.pyg.graph_tensors`, it holds the *message edges* of
    :mod:`nas.ghn._message_passing`, already in the order a sparse CSR
    adjacency needs (sorted by receiver, then sender column), so that a
    batch's adjacency is assembled without sorting:

    * ``msg_row [M]``: receiving node;
    * ``msg_col [M]``: ``sender * NUM_EDGE_TYPES + edge_type`` (a row of the
      per-node, per-type message matrix);
    * ``msg_weight [M]``: 1 for data-flow edges, ``1 / distance`` for virtual ones;
    * ``position_counts [N, NUM_EDGE_TYPES * max_positions]``: how many
      messages of each (type, input position) a node receives.

    ``msg_col`` is shifted by ``num_nodes * NUM_EDGE_TYPES`` when graphs are
    batched (:meth:`__inc__`).
    """

    def __inc__(self, key: str, value: Any, *args: Any, **kwargs: Any) -> Any:
        if key == "msg_row":
            return self.num_nodes
        if key == "msg_col":
            return self.num_nodes * NUM_EDGE_TYPES
        return super().__inc__(key, value, *args, **kwargs)


@dataclasses.dataclass(frozen=True)
class GraphEntry:
    """A graph prepared for the hypernetwork.

    Attributes:
        data: The graph's :class:`GHNData`: ``x [N, F]`` (the numeric
            features, ``F = NUM_SHAPE_FEATURES``), ``op [N]`` (indices into the
            ``ops`` it was built with), ``param_shape [N, 4]``,
            ``edge_index [2, E]``, ``edge_pos [E]`` and the message edges.
        params: Every parameter tensor, in ``graph.param_specs`` order.
        groups: ``(kind, shape, slot) -> (positions [P], names)``, the params
            grouped the way the decoder batches them.
        layout: ``(name, group, j)`` per param in ``graph.param_specs`` order:
            the param is the ``j``-th of its group in this graph.
    """

    data: GHNData
    params: tuple[ParamSlot, ...]
    groups: dict[tuple[str, tuple[int, ...], int], tuple[np.ndarray, tuple[str, ...]]]
    layout: tuple[tuple[str, tuple[str, tuple[int, ...], int], int], ...]


def graph_id(graph: ArchGraph) -> tuple[str, tuple[tuple[object, ...], ...]]:
    """Cache key of a graph: canonical key plus node numbering and attributes.

    (Attributes are taken in their stored order: the same attributes stored in
    another order only cost a second cache entry.)
    """
    return graph.key, tuple((n.op, n.inputs, tuple(n.attrs.items())) for n in graph.nodes)


def virtual_edges(edge_index: Tensor, num_nodes: int, s_max: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs ``(i, j)`` joined by a directed shortest path ``i -> j`` of 2..``s_max`` edges.

    Args:
        edge_index: Data-flow edges ``[2, E]``.
        num_nodes: Number of nodes.
        s_max: Longest distance kept.

    Returns:
        ``(i, j, distance)`` arrays.
    """
    empty = np.zeros(0, dtype=np.int64)
    if s_max < 2 or edge_index.numel() == 0:
        return empty, empty, empty
    src, dst = edge_index.numpy()
    adj = coo_array((np.ones(len(src)), (src, dst)), shape=(num_nodes, num_nodes))
    dist = shortest_path(adj, method="D", directed=True, unweighted=True)  # [N, N], inf when unreachable
    i, j = np.nonzero((dist >= 2) & (dist <= s_max))
    return i.astype(np.int64), j.astype(np.int64), dist[i, j].astype(np.int64)


def _message_edges(
    edge_index: Tensor, edge_pos: Tensor, num_nodes: int, *, s_max: int, max_positions: int
) -> dict[str, Tensor]:
    T, P = NUM_EDGE_TYPES, max_positions
    src, dst = edge_index.numpy()
    pos = np.minimum(edge_pos.numpy(), P - 1)
    vi, vj, vd = virtual_edges(edge_index, num_nodes, s_max)
    ones, zeros, inv = np.ones(len(src)), np.zeros(len(vi), dtype=np.int64), 1.0 / np.maximum(vd, 1)
    # (receiver, sender, type, weight, input position) of every message
    row = np.concatenate([dst, src, vj, vi])
    sender = np.concatenate([src, dst, vi, vj])
    kind = np.repeat([FORWARD, BACKWARD, VIRTUAL_FORWARD, VIRTUAL_BACKWARD], [len(src), len(src), len(vi), len(vi)])
    weight = np.concatenate([ones, ones, inv, inv])
    position = np.concatenate([pos, pos, zeros, zeros])
    col = sender * T + kind
    counts = np.zeros((num_nodes, T * P), dtype=np.float32)
    np.add.at(counts, (row, kind * P + position), 1.0)
    order = np.lexsort((col, row))
    row, col, weight = row[order], col[order], weight[order]
    # merge repeated (receiver, sender, type) messages, e.g. sum(x, x), into one weighted entry
    first = np.ones(len(row), dtype=bool)
    first[1:] = (row[1:] != row[:-1]) | (col[1:] != col[:-1])
    starts = np.flatnonzero(first)
    weight = np.add.reduceat(weight, starts) if len(starts) else weight
    return {
        "msg_row": torch.from_numpy(row[starts].astype(np.int64)),
        "msg_col": torch.from_numpy(col[starts].astype(np.int64)),
        "msg_weight": torch.from_numpy(weight.astype(np.float32)),
        "position_counts": torch.from_numpy(counts),
    }


def graph_entry(
    graph: ArchGraph, *, s_max: int, max_positions: int, ops: Sequence[str] | None = None
) -> GraphEntry:
    """Convert one graph (uncached; see :class:`GraphCache`).

    Args:
        graph: The architecture.
        s_max: Longest shortest-path distance that gets a virtual edge; 1 or
            less disables virtual edges.
        max_positions: Input positions told apart (later ones share the last).
        ops: The GHN's op vocabulary (``config.ops``), which ``data.op``
            indexes; defaults to :func:`nas.ops.op_names`.

    Returns:
        The entry.

    Raises:
        ValueError: A node's op is not in ``ops``.
    """
    t = graph_tensors(graph, ops=ops)
    N = len(t.op)  # nodes
    data = GHNData(
        x=t.features,
        op=t.op,
        param_shape=t.param_shape,
        edge_index=t.edge_index,
        edge_pos=t.edge_pos,
        num_nodes=N,
        **_message_edges(t.edge_index, t.edge_pos, N, s_max=s_max, max_positions=max_positions),
    )
    pos = {int(old): new for new, old in enumerate(t.node_index.tolist())}
    params: list[ParamSlot] = []
    seen: dict[tuple[int, str], int] = {}
    for name, (node, spec) in graph.param_specs.items():
        slot = seen.get((node, spec.kind), 0)
        seen[(node, spec.kind)] = slot + 1
        params.append(ParamSlot(name, pos[node], spec.kind, tuple(spec.shape), slot))
    grouped: dict[tuple[str, tuple[int, ...], int], list[ParamSlot]] = {}
    layout = []
    for p in params:
        key = (p.kind, p.shape, p.slot)
        members = grouped.setdefault(key, [])
        layout.append((p.name, key, len(members)))
        members.append(p)
    groups = {
        key: (np.array([p.pos for p in ps], dtype=np.int64), tuple(p.name for p in ps)) for key, ps in grouped.items()
    }
    return GraphEntry(data=data, params=tuple(params), groups=groups, layout=tuple(layout))


class GraphCache(Generic[K, V]):
    """A bounded least-recently-used cache.

    Args:
        maxsize: Most entries kept; the least recently used is dropped first.
    """

    def __init__(self, maxsize: int) -> None:
        if maxsize < 1:
            raise ValueError(f"`maxsize` must be positive, but got {maxsize}.")
        self.maxsize = maxsize
        self._items: OrderedDict[K, V] = OrderedDict()

    def get(self, key: K, make: Callable[[], V]) -> V:
        """Return the entry for ``key``, creating it with ``make()`` when absent."""
        try:
            value = self._items[key]
        except KeyError:
            value = make()
            self._items[key] = value
            if len(self._items) > self.maxsize:
                self._items.popitem(last=False)
            return value
        self._items.move_to_end(key)
        return value

    def clear(self) -> None:
        """Drop every entry."""
        self._items.clear()

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"GraphCache(size={len(self._items)}, maxsize={self.maxsize})"
