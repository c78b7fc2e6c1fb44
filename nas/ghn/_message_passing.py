"""Message passing that respects the direction of a computational graph.

GHN-2 (Knyazev et al., NeurIPS 2021) updates node states with a gated graph
network that sweeps the DAG forward (inputs to outputs, along data-flow edges)
and backward (along reversed edges), and adds *virtual edges* between nodes
up to ``s_max`` hops apart, whose messages are weighted by ``1 / distance``,
so that information crosses a deep network in a few steps. The reference
implementation visits the nodes one by one in topological order; here every
round updates all nodes of a whole PyG ``Batch`` at once: a round sends
messages along the four edge types below in parallel and updates each node
with a GRU cell. Stacking ``layers`` rounds lets information travel
``layers * s_max`` hops each way.

Edge types (:data:`FORWARD` ... :data:`VIRTUAL_BACKWARD`):

* ``FORWARD``: data-flow edge ``u -> v`` (``v`` reads ``u``),
* ``BACKWARD``: the same edge reversed, ``v -> u``,
* ``VIRTUAL_FORWARD``: ancestor ``u`` to descendant ``v`` at distance ``2..s_max``,
* ``VIRTUAL_BACKWARD``: the same pair reversed.

All messages of a batch form one sparse matrix ``A [N, N * T]``: entry
``(v, u * T + t)`` is the weight of the type-``t`` message from ``u`` to
``v``. A round computes every node's message of every type once
(``M [N * T, hidden]``) and aggregates with a single sparse-dense product
``A @ M`` (PyG's fused ``message_and_aggregate``), instead of materialising
one message per edge.
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor, nn
from torch_geometric.data import Batch
from torch_geometric.nn import MessagePassing

__all__ = [
    "BACKWARD",
    "FORWARD",
    "GatedDAGConv",
    "NUM_EDGE_TYPES",
    "VIRTUAL_BACKWARD",
    "VIRTUAL_FORWARD",
    "message_adjacency",
]

FORWARD, BACKWARD, VIRTUAL_FORWARD, VIRTUAL_BACKWARD = range(4)
NUM_EDGE_TYPES = 4


def message_adjacency(batch: Batch) -> Tensor:
    """The batch's message matrix ``A [N, N * NUM_EDGE_TYPES]`` as a sparse CSR tensor.

    Args:
        batch: A batch of :class:`~nas.ghn._graphs.GHNData`, whose message
            edges are sorted by receiver within each graph (so the batch's are too).

    Returns:
        ``A`` with ``A[v, u * T + t]`` the weight of the type-``t`` message ``u -> v``.
    """
    N = batch.num_nodes  # nodes in the batch
    row, col = batch.msg_row, batch.msg_col
    crow = torch.zeros(N + 1, dtype=torch.long, device=row.device)
    crow[1:] = torch.bincount(row, minlength=N).cumsum(0)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*[Ss]parse CSR tensor support is in beta.*")
        return torch.sparse_csr_tensor(
            crow, col, batch.msg_weight, size=(N, N * NUM_EDGE_TYPES), check_invariants=False
        )


class GatedDAGConv(MessagePassing):
    """One round of direction-aware gated message passing over all nodes at once.

    The message a node ``u`` sends along an edge of type ``t`` (see the module
    docstring) is ``MLP_t(h_u) * w + P[t, pos]``: a two-layer MLP of the
    sender's state with a shared first layer and a per-type second layer
    (GHN-2's separate forward, backward and virtual-edge MLPs), scaled by
    the edge weight ``w`` (``1 / distance`` on virtual edges), plus a learned
    embedding of the edge's input position at the node that reads it (so the
    inputs of ``concat`` are told apart). Messages are summed at the
    receiver; a GRU cell and a layer norm update its state.

    The forward pass accepts the sparse message matrix of
    :func:`message_adjacency` (fused ``message_and_aggregate``, the fast path)
    or the same messages as an edge list ``[2, E]`` of ``(u * T + t, v)``
    pairs with ``edge_weight`` (``message`` + scatter); both give the same result.

    Args:
        hidden: Width of node states.
        max_positions: Distinct input positions (later positions share the last).

    Shapes:
        - input: ``h [N, hidden]``; ``adj`` sparse ``[N, N * T]`` or edge list
          ``[2, E]``; ``position_counts [N, T * max_positions]`` (messages
          received per type and position); ``edge_weight [E]`` with an edge list
        - output: ``[N, hidden]``
    """

    def __init__(self, hidden: int, *, max_positions: int = 8) -> None:
        super().__init__(aggr="sum")
        self.hidden = hidden
        self.max_positions = max_positions
        T = NUM_EDGE_TYPES
        self.lin1 = nn.Linear(hidden, hidden)
        self.lin2 = nn.Linear(hidden, T * hidden)
        self.position = nn.Linear(T * max_positions, hidden, bias=False)
        self.gru = nn.GRUCell(hidden, hidden)
        self.norm = nn.LayerNorm(hidden)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        super().reset_parameters()
        self.lin1.reset_parameters()
        self.lin2.reset_parameters()
        nn.init.normal_(self.position.weight, std=0.1)
        self.gru.reset_parameters()
        self.norm.reset_parameters()

    def messages(self, h: Tensor) -> Tensor:
        """Every node's message of every type, ``[N * T, hidden]`` (row ``u * T + t``)."""
        N, H = h.shape  # nodes, hidden
        m = self.lin2(torch.relu(self.lin1(h)))  # [N, T * H]: column block t is type t's message
        return m.view(N * NUM_EDGE_TYPES, H)

    def forward(
        self, h: Tensor, adj: Tensor, position_counts: Tensor, edge_weight: Tensor | None = None
    ) -> Tensor:
        N = h.size(0)  # nodes
        m = self.messages(h)
        size = (N * NUM_EDGE_TYPES, N)
        agg = self.propagate(adj, size=None if adj.is_sparse_csr else size, x=m, edge_weight=edge_weight)
        agg = agg + self.position(position_counts.to(agg.dtype))
        return self.norm(self.gru(agg.to(h.dtype), h))

    def message(self, x_j: Tensor, edge_weight: Tensor) -> Tensor:
        return x_j * edge_weight.unsqueeze(-1).to(x_j.dtype)

    def message_and_aggregate(self, adj_t: Tensor, x: Tensor) -> Tensor:
        # sparse kernels lack reduced-precision variants: aggregate in float32
        with torch.autocast(device_type=x.device.type, enabled=False):
            return torch.sparse.mm(adj_t, x.float())

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(hidden={self.hidden}, edge_types={NUM_EDGE_TYPES}, "
            f"max_positions={self.max_positions}, aggr='sum', update='gru')"
        )
