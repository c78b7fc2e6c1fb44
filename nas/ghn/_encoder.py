"""Node encoder: what each node is and which parameter shape it needs.

GHN-2 (Knyazev et al., NeurIPS 2021) starts message passing from a learned
embedding of each node's operation plus a *shape encoding* of the parameter
tensor the node must receive (embeddings of its out/in channels and kernel
height/width), so that the decoder knows, for example, that one ``conv`` node
needs a ``16x8x3x3`` tensor and another a ``32x32x1x1`` one.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

__all__ = ["ShapeEncoder", "NodeEncoder", "channel_bucket"]

#: Channel-embedding buckets per octave: channel counts are embedded by
#: ``round(BUCKETS_PER_OCTAVE * log2(c))``, exact for 1, 2, 4, 8, ... and close in between.
BUCKETS_PER_OCTAVE = 4


def channel_bucket(channels: Tensor, num_buckets: int) -> Tensor:
    """Embedding index of channel counts: 0 for "no parameter", log-spaced above.

    Args:
        channels: Long tensor of channel counts (0 where the node has no parameter).
        num_buckets: Size of the embedding table; larger counts share the last bucket.

    Returns:
        Long tensor of indices in ``[0, num_buckets)``.
    """
    c = channels.clamp(min=1).float()
    idx = 1 + torch.round(BUCKETS_PER_OCTAVE * torch.log2(c)).long()
    return torch.where(channels > 0, idx.clamp(max=num_buckets - 1), torch.zeros_like(idx))


class ShapeEncoder(nn.Module):
    """Embeds a parameter shape ``(out, in, kh, kw)`` (GHN-2's shape encoder).

    Out and in channels go through log-bucketed embedding tables (see
    :func:`channel_bucket`), kernel height and width through exact ones
    (0 .. ``max_kernel``). The four embeddings are concatenated and projected.

    Args:
        hidden: Output width.
        max_channels: Channel count of the last distinct bucket (larger counts share it).
        max_kernel: Largest kernel size with its own embedding.

    Shapes:
        - input: ``param_shape [N, 4]`` long
        - output: ``[N, hidden]``
    """

    def __init__(self, hidden: int, *, max_channels: int, max_kernel: int) -> None:
        super().__init__()
        self.hidden = hidden
        self.max_channels = max_channels
        self.max_kernel = max_kernel
        self.num_buckets = 2 + math.ceil(BUCKETS_PER_OCTAVE * math.log2(max(max_channels, 1)))
        self.out_channels = nn.Embedding(self.num_buckets, hidden)
        self.in_channels = nn.Embedding(self.num_buckets, hidden)
        self.kernel_h = nn.Embedding(max_kernel + 1, hidden)
        self.kernel_w = nn.Embedding(max_kernel + 1, hidden)
        self.proj = nn.Linear(4 * hidden, hidden)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for emb in (self.out_channels, self.in_channels, self.kernel_h, self.kernel_w):
            nn.init.normal_(emb.weight, std=1.0)
        self.proj.reset_parameters()

    def forward(self, param_shape: Tensor) -> Tensor:
        out_c, in_c, kh, kw = param_shape.unbind(dim=1)
        parts = [
            self.out_channels(channel_bucket(out_c, self.num_buckets)),
            self.in_channels(channel_bucket(in_c, self.num_buckets)),
            self.kernel_h(kh.clamp(max=self.max_kernel)),
            self.kernel_w(kw.clamp(max=self.max_kernel)),
        ]
        return self.proj(torch.cat(parts, dim=1))

    def extra_repr(self) -> str:
        return f"hidden={self.hidden}, max_channels={self.max_channels}, max_kernel={self.max_kernel}"


class NodeEncoder(nn.Module):
    """Initial node embeddings: op embedding + shape encoding + numeric features.

    Args:
        num_ops: Size of the op vocabulary.
        num_features: Width of the numeric node features (stride, dilation,
            groups, output size, ... of :func:`nas.ghn.pyg.graph_tensors`).
        hidden: Embedding width.
        max_channels: See :class:`ShapeEncoder`.
        max_kernel: See :class:`ShapeEncoder`.

    Shapes:
        - input: ``op [N]`` long, ``param_shape [N, 4]`` long, ``x [N, num_features]``
        - output: ``[N, hidden]`` (layer-normalised)
    """

    def __init__(self, *, num_ops: int, num_features: int, hidden: int, max_channels: int, max_kernel: int) -> None:
        super().__init__()
        self.op = nn.Embedding(num_ops, hidden)
        self.shape = ShapeEncoder(hidden, max_channels=max_channels, max_kernel=max_kernel)
        self.features = nn.Linear(num_features, hidden)
        self.norm = nn.LayerNorm(hidden)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.normal_(self.op.weight, std=1.0)
        self.shape.reset_parameters()
        self.features.reset_parameters()
        self.norm.reset_parameters()

    def forward(self, op: Tensor, param_shape: Tensor, x: Tensor) -> Tensor:
        return self.norm(self.op(op) + self.shape(param_shape) + self.features(x))
