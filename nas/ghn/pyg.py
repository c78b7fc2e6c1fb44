"""Architecture graphs as PyTorch Geometric ``Data``.

:func:`to_pyg` converts an :class:`~nas.graph.ArchGraph` into a PyG
:class:`~torch_geometric.data.Data` (``x``, ``edge_index``, ``edge_attr``, ...)
for users who want to feed candidates to their own PyG model.
:func:`graph_tensors` computes the per-node and per-edge tensors both of them
read: :func:`to_pyg` adds the one-hot op block, and the GHN
(:mod:`nas.ghn._graphs`) takes them as they are, with op indices into its own
vocabulary, so that no feature is built and then thrown away.

Examples:
    >>> from nas.graph import GraphBuilder
    >>> from nas.ghn import to_pyg
    >>> b = GraphBuilder(input_shape=(1, 8, 8))
    >>> x = b.add("relu_conv_bn", b.input, out_channels=4, kernel=3)
    >>> g = b.build(b.add("linear", b.add("global_avg_pool", x), out_features=10))
    >>> data = to_pyg(g)
    >>> data.num_nodes, tuple(data.edge_index.shape), tuple(data.x.shape) == (5, NODE_FEATURES)
    (5, (2, 4), True)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor
from torch_geometric.data import Data

from nas.graph import ArchGraph
from nas.ops import OPS, op_names

__all__ = ["NODE_FEATURES", "NUM_SHAPE_FEATURES", "GraphTensors", "graph_tensors", "to_pyg"]

#: Width of the numeric node features: the log2-scaled main parameter shape
#: ``(out, in, kh, kw)``, stride, dilation, groups and output size ``(C, H*W)``.
NUM_SHAPE_FEATURES = 4 + 5

#: Width of ``to_pyg(graph).x``: one-hot op over :func:`nas.ops.op_names`, then
#: the :data:`NUM_SHAPE_FEATURES` numeric features.
NODE_FEATURES = len(OPS) + NUM_SHAPE_FEATURES


class GraphTensors(NamedTuple):
    """The tensors of one graph, nodes in topological order.

    Attributes:
        op: ``[N]`` long index of each node's op into the ``ops`` it was built with.
        param_shape: ``[N, 4]`` long ``(out, in, kh, kw)`` of the node's main
            parameter (zeros for parameter-free nodes; ``(C, 1, 1, 1)`` for norms).
        features: ``[N, NUM_SHAPE_FEATURES]`` float: ``log2(param_shape + 1)``,
            then ``log2(v + 1)`` of stride, dilation, groups, output channels
            and output size ``H*W``.
        edge_index: ``[2, E]`` long data-flow edges ``input -> node``.
        edge_pos: ``[E]`` long position of the edge among the node's inputs.
        node_index: ``[N]`` long index of the node in ``graph.nodes``.
    """

    op: Tensor
    param_shape: Tensor
    features: Tensor
    edge_index: Tensor
    edge_pos: Tensor
    node_index: Tensor


def graph_tensors(graph: ArchGraph, *, ops: Sequence[str] | None = None) -> GraphTensors:
    """Node and edge tensors of ``graph``, op indices into ``ops``.

    Args:
        graph: The architecture.
        ops: Op vocabulary that ``op`` indexes (a GHN's ``config.ops``);
            defaults to :func:`nas.ops.op_names`.

    Returns:
        The tensors.

    Raises:
        ValueError: A node's op is not in ``ops``.
    """
    vocab = {name: i for i, name in enumerate(op_names() if ops is None else ops)}
    order = list(graph.order)
    pos = {old: new for new, old in enumerate(order)}
    N = len(order)  # nodes
    op = []
    shape = torch.zeros(N, 4, dtype=torch.long)
    extra = torch.zeros(N, 5)
    for new, i in enumerate(order):
        node = graph.nodes[i]
        if node.op not in vocab:
            raise ValueError(f"`ops` must hold every op of the graph, but {node.op!r} is missing from {list(vocab)}.")
        op.append(vocab[node.op])
        params = graph.node_params(i)
        if params:
            main = params[0].shape
            shape[new] = torch.tensor((tuple(main) + (1, 1, 1))[:4])
        out = graph.shapes[i]
        extra[new] = torch.tensor([
            float(node.attrs.get("stride", 1)),
            float(node.attrs.get("dilation", 1)),
            float(node.attrs.get("groups", 1)),
            float(out[0]),
            float(math.prod(out[1:])) if len(out) > 1 else 1.0,
        ])
    src, dst, epos = [], [], []
    for new, i in enumerate(order):
        for k, j in enumerate(graph.nodes[i].inputs):
            src.append(pos[j])
            dst.append(new)
            epos.append(k)
    return GraphTensors(
        op=torch.tensor(op, dtype=torch.long),
        param_shape=shape,
        features=torch.cat([torch.log2(shape.float() + 1), torch.log2(extra + 1)], dim=1),
        edge_index=torch.tensor([src, dst], dtype=torch.long).reshape(2, -1),
        edge_pos=torch.tensor(epos, dtype=torch.long),
        node_index=torch.tensor(order, dtype=torch.long),
    )


def to_pyg(graph: ArchGraph, *, ops: Sequence[str] | None = None) -> Data:
    """Convert ``graph`` to a PyG :class:`~torch_geometric.data.Data`, nodes in topological order.

    Args:
        graph: The architecture.
        ops: Op vocabulary of the one-hot block and of ``op``; defaults to
            :func:`nas.ops.op_names` (then ``x`` is ``[N, NODE_FEATURES]``).

    Returns:
        ``Data`` with the fields

        * ``x [N, len(ops) + NUM_SHAPE_FEATURES]``: one-hot op, then
          :attr:`GraphTensors.features`;
        * ``edge_index [2, E]``: data-flow edges ``input -> node``;
        * ``edge_attr [E, 1]``: float position of the edge among the node's inputs;
        * ``op [N]``, ``param_shape [N, 4]``, ``edge_pos [E]``, ``node_index [N]``:
          as in :class:`GraphTensors`.

    Raises:
        ValueError: A node's op is not in ``ops``.
    """
    names = op_names() if ops is None else list(ops)
    t = graph_tensors(graph, ops=names)
    onehot = torch.nn.functional.one_hot(t.op, len(names)).float()  # [N, len(ops)]
    return Data(
        x=torch.cat([onehot, t.features], dim=1),
        edge_index=t.edge_index,
        edge_attr=t.edge_pos.float().unsqueeze(1),
        op=t.op,
        param_shape=t.param_shape,
        edge_pos=t.edge_pos,
        node_index=t.node_index,
        num_nodes=len(t.op),
    )
