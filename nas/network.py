"""Compile an architecture graph into a runnable :class:`torch.nn.Module`."""

from __future__ import annotations

import torch
from torch import nn

from nas.graph import ArchGraph
from nas.ops import get_op

__all__ = ["Network"]


class Network(nn.Module):
    """Executes an :class:`~nas.graph.ArchGraph` in topological order.

    Each op node becomes the module ``ops.n<i>`` (``i`` its index in
    ``graph.nodes``), so parameter names are ``ops.n<i>.<param>`` exactly as
    :attr:`ArchGraph.param_specs` lists them. A dict of predicted tensors with
    those keys can be loaded with ``load_state_dict(..., strict=False)`` or run
    through :func:`torch.func.functional_call`, with gradients flowing back to
    whatever produced the tensors.

    Args:
        graph: The architecture to compile.

    Raises:
        GraphError: The network is too large to allocate (:meth:`ArchGraph.check_size`).

    Shapes:
        - input: ``(B, C, H, W)`` with ``(C, H, W) == graph.input_shape``
        - output: ``(B, num_classes)`` logits
    """

    def __init__(self, graph: ArchGraph) -> None:
        super().__init__()
        graph.check_size()  # a network too large to allocate is refused in one line, not by the allocator
        self.graph = graph
        self.ops = nn.ModuleDict()
        for i in graph.order:
            node = graph.nodes[i]
            if node.op in ("input", "output"):
                continue
            self.ops[graph.module_name(i)] = get_op(node.op).module(graph.in_shapes(i), node.attrs)
        # Drop each intermediate value once its last reader has run.
        last_use: dict[int, int] = {}
        for step, i in enumerate(graph.order):
            for j in graph.nodes[i].inputs:
                last_use[j] = step
        self._plan = [
            (i, graph.nodes[i].op, graph.nodes[i].inputs, sorted({j for j in graph.nodes[i].inputs if last_use[j] == step}))
            for step, i in enumerate(graph.order)
        ]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        values: dict[int, torch.Tensor] = {}
        out = x
        for i, op, inputs, free in self._plan:
            if op == "input":
                out = x
            elif op == "output":
                out = values[inputs[0]]
            else:
                out = self.ops[f"n{i}"](*(values[j] for j in inputs))
            for j in free:
                del values[j]
            values[i] = out
        return out

    def extra_repr(self) -> str:
        return f"graph={self.graph.key[:12]}, nodes={len(self.graph)}"
