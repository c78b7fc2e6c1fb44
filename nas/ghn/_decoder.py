"""Weight decoder: from a node's state to the parameter tensors the node owns.

Every node state goes through a shared MLP; a head per parameter kind (see
:data:`nas.ops.PARAM_KINDS`) then produces the tensor. Heads are factorised so
that one set of weights serves every shape a search space produces:

* ``conv`` ``(O, I, kh, kw)``: a Tucker factorisation
  ``W[o, i] = sum_ab U[o, a] C[a, b] V[i, b] / r``, where the out factor
  ``U [M, r]``, in factor ``V [M, r]`` and core ``C [r, r, K, K]`` come from
  the node state (``M = max_channels``, ``K = max_kernel``, ``r = rank``). The
  core is cropped to the centre ``kh x kw`` window, and channel ``o`` uses row
  ``o mod M`` of ``U`` (likewise for ``V``): targets up to ``M`` channels are
  slices of the max-size tensor, larger ones tile it, as in GHN-2.
* ``linear`` ``(O, I)``: the same without the spatial part.
* ``bias``, ``norm_weight``, ``norm_bias`` ``(C,)``: a vector of ``M``
  entries, sliced or tiled to ``C``.

Only the slice a target needs is ever computed: decoding is batched per
``(kind, shape)`` group, one einsum over all tensors of the group.

The raw output is normalised per operation as in GHN-2 (Knyazev et al.,
NeurIPS 2021, "operation-dependent normalisation"): ``conv`` weights are
scaled by ``sqrt(2 / fan_in)`` (He/Kaiming), ``linear`` weights by
``sqrt(1 / fan_in)``, norm weights are squashed to ``1 + tanh(raw)`` (near 1)
and biases to ``tanh(raw)`` (near 0). The decoder is initialised so that the
raw tensors have about unit variance, which makes freshly initialised
predictions look like a standard initialisation.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nas.exceptions import CheckpointError
from nas.ops import PARAM_KINDS

__all__ = ["WeightDecoder", "fan_in_scale", "normalise"]

VECTOR_KINDS = ("bias", "norm_weight", "norm_bias")


def fan_in_scale(kind: str, shape: Sequence[int]) -> float:
    """He/Kaiming scale of a ``conv`` (``sqrt(2 / fan_in)``) or ``linear`` (``sqrt(1 / fan_in)``) weight."""
    if kind == "conv":
        return math.sqrt(2.0 / math.prod(shape[1:]))
    if kind == "linear":
        return math.sqrt(1.0 / shape[1])
    raise ValueError(f"`kind` must be 'conv' or 'linear', but got {kind!r}.")


def normalise(kind: str, raw: Tensor, shape: Sequence[int]) -> Tensor:
    """GHN-2 operation-dependent normalisation of a raw decoded tensor.

    (The decoder folds the ``conv``/``linear`` scale into a small factor
    instead of scaling the large output; the result is the same.)

    Args:
        kind: Parameter kind.
        raw: Raw tensors ``[P, *shape]`` of about unit variance.
        shape: Target shape of one tensor.

    Returns:
        The normalised tensors, same shape.
    """
    if kind in ("conv", "linear"):
        return raw * fan_in_scale(kind, shape)
    if kind == "norm_weight":
        return 1.0 + torch.tanh(raw)
    if kind in ("bias", "norm_bias"):
        return torch.tanh(raw)
    raise ValueError(f"`kind` must be one of {PARAM_KINDS}, but got {kind!r}.")


def _tile(n: int, m: int, device: torch.device) -> Tensor:
    """Row indices ``0..n-1 mod m``: slices when ``n <= m``, tiles beyond."""
    return torch.arange(n, device=device) % m


class WeightDecoder(nn.Module):
    """Decodes parameter tensors of any shape from node states.

    Args:
        hidden: Width of node states.
        max_channels: ``M``: channels decoded before tiling starts.
        max_kernel: ``K``: largest kernel size a ``conv`` tensor may have.
        rank: ``r``: rank of the channel factors.

    ``forward(h, kind, shape, slot)`` decodes the ``P`` tensors of one group
    (``decode(embed(h), ...)``: the shared MLP can run once per node and its
    codes be reused for every tensor the node owns); ``slot`` tells apart
    several tensors of the same kind owned by one node.

    Shapes:
        - input: ``h [P, hidden]`` states of the nodes owning the ``P`` tensors
          of one ``(kind, shape)`` group
        - output: ``[P, *shape]``
    """

    def __init__(self, hidden: int, *, max_channels: int, max_kernel: int, rank: int) -> None:
        super().__init__()
        self.hidden, self.max_channels, self.max_kernel, self.rank = hidden, max_channels, max_kernel, rank
        M, K, r = max_channels, max_kernel, rank
        self.mlp = nn.Sequential(
            nn.Linear(hidden, 2 * hidden), nn.ReLU(), nn.Linear(2 * hidden, hidden), nn.LayerNorm(hidden)
        )
        self.conv_out = nn.Linear(hidden, M * r)
        self.conv_in = nn.Linear(hidden, M * r)
        self.conv_core = nn.Linear(hidden, r * r * K * K)
        self.linear_out = nn.Linear(hidden, M * r)
        self.linear_in = nn.Linear(hidden, M * r)
        self.linear_core = nn.Linear(hidden, r * r)
        self.vector = nn.ModuleDict({kind: nn.Linear(hidden, M) for kind in VECTOR_KINDS})
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for layer in self.mlp:
            if hasattr(layer, "reset_parameters"):
                layer.reset_parameters()
        std = 1.0 / math.sqrt(self.hidden)  # unit-variance outputs from layer-normed inputs
        for head in (self.conv_out, self.conv_in, self.conv_core, self.linear_out, self.linear_in, self.linear_core):
            nn.init.normal_(head.weight, std=std)
            nn.init.zeros_(head.bias)
        for head in self.vector.values():
            nn.init.normal_(head.weight, std=0.1 * std)  # norms start near 1, biases near 0
            nn.init.zeros_(head.bias)

    def embed(self, h: Tensor) -> Tensor:
        """Codes ``z [P, hidden]`` of node states (the shared MLP), for :meth:`decode`."""
        return self.mlp(h)

    def forward(self, h: Tensor, kind: str, shape: Sequence[int], slot: int = 0) -> Tensor:
        return self.decode(self.embed(h), kind, shape, slot)

    def decode(self, z: Tensor, kind: str, shape: Sequence[int], slot: int = 0) -> Tensor:
        """Decode tensors of one ``(kind, shape)`` group from codes of :meth:`embed`."""
        if slot:  # a second tensor of one kind on one node (no op owns one today): a shifted code
            z = torch.roll(z, shifts=slot, dims=1)
        if kind == "conv":
            return self._conv(z, shape)  # normalised inside
        if kind == "linear":
            return self._linear(z, shape)  # normalised inside
        if kind in VECTOR_KINDS:
            (C,) = shape
            return normalise(kind, self.vector[kind](z)[:, _tile(C, self.max_channels, z.device)], shape)
        raise ValueError(f"`kind` must be one of {PARAM_KINDS}, but got {kind!r}.")

    def _factor(self, z: Tensor, head: nn.Linear, n: int) -> Tensor:
        """Rows ``0..n-1`` (mod ``M``) of a channel factor ``[P, M, r]``, computing only the rows needed."""
        P, M, r = z.size(0), self.max_channels, self.rank  # tensors, max channels, rank
        if n <= M:
            return F.linear(z, head.weight[: n * r], head.bias[: n * r]).view(P, n, r)
        return head(z).view(P, M, r)[:, _tile(n, M, z.device)]

    def _factors(self, z: Tensor, out_head: nn.Linear, in_head: nn.Linear, O: int, I: int) -> tuple[Tensor, Tensor]:
        return self._factor(z, out_head, O), self._factor(z, in_head, I)  # [P, O, r], [P, I, r]

    def _conv(self, z: Tensor, shape: Sequence[int]) -> Tensor:
        O, I, kh, kw = shape  # out channels, in channels per group, kernel
        K, r = self.max_kernel, self.rank
        if kh > K or kw > K:
            raise CheckpointError(f"the GHN decodes kernels up to {K}x{K}, but a tensor needs {kh}x{kw}.")
        U, V = self._factors(z, self.conv_out, self.conv_in, O, I)
        P, S = z.size(0), kh * kw  # tensors, kernel positions
        # rows of the core head for the centre kh x kw window of the K x K kernel
        rows = torch.arange(r * r * K * K, device=z.device).view(r * r, K, K)
        h0, w0 = (K - kh) // 2, (K - kw) // 2
        rows = rows[:, h0 : h0 + kh, w0 : w0 + kw].reshape(-1)
        core = F.linear(z, self.conv_core.weight[rows], self.conv_core.bias[rows])
        core = core.view(P, r, r, S) * (fan_in_scale("conv", shape) / r)  # [P, a, b, S], normalisation folded in
        X = torch.einsum("pib,pabs->pais", V, core)  # [P, r, I, S]: small
        W = torch.bmm(U, X.reshape(P, r, I * S))  # [P, O, I * S]: the only large product, in final layout
        return W.view(P, O, I, kh, kw)

    def _linear(self, z: Tensor, shape: Sequence[int]) -> Tensor:
        O, I = shape  # out features, in features
        r = self.rank
        U, V = self._factors(z, self.linear_out, self.linear_in, O, I)
        core = self.linear_core(z).view(-1, r, r) * (fan_in_scale("linear", shape) / r)
        return torch.bmm(U, torch.bmm(core, V.transpose(1, 2)))  # [P, O, I]

    def extra_repr(self) -> str:
        return (
            f"hidden={self.hidden}, max_channels={self.max_channels}, max_kernel={self.max_kernel}, "
            f"rank={self.rank}"
        )
