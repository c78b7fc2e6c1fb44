"""The graph hypernetwork: settings, model, prediction and checkpoints."""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor, nn
from torch_geometric.data import Batch

from nas.exceptions import CheckpointError
from nas.ghn._checkpoint import FORMAT, VERSION, read_checkpoint, write_checkpoint
from nas.ghn._decoder import WeightDecoder
from nas.ghn._encoder import NodeEncoder
from nas.ghn._graphs import NUM_SHAPE_FEATURES, GraphCache, GraphEntry, graph_entry, graph_id
from nas.ghn._message_passing import GatedDAGConv, message_adjacency
from nas.ghn._predicted import evaluate_predicted, materialize_predicted
from nas.graph import ArchGraph
from nas.network import Network
from nas.ops import op_names

if TYPE_CHECKING:
    from nas.data import Dataset
    from nas.space import SearchSpace

__all__ = ["GHN", "GHNConfig"]

#: ``(kind, shape, slot)``: tensors decoded together.
GroupKey = tuple[str, tuple[int, ...], int]

logger = logging.getLogger(__name__)


@dataclasses.dataclass(kw_only=True)
class GHNConfig:
    """Settings of a :class:`GHN`; saved in every checkpoint.

    Args:
        hidden: Width of node embeddings.
        layers: Rounds of message passing (each round sends messages along
            data-flow, reversed and virtual edges at once).
        s_max: Longest shortest-path distance joined by a virtual edge
            (GHN-2's ``s_max``); 1 disables virtual edges.
        rank: Rank of the decoder's channel factors.
        max_channels: Channels decoded before tiling starts; also the last
            distinct channel bucket of the shape encoder.
        max_kernel: Largest kernel size the GHN can produce.
        max_positions: Distinct input positions (of ``concat`` inputs) told apart.
        ops: Op vocabulary the GHN embeds (defaults to every op of :mod:`nas.ops`).
        num_features: Width of the numeric node features it reads.

    Raises:
        ValueError: A setting is out of range.
    """

    hidden: int = 64
    layers: int = 4
    s_max: int = 5
    rank: int = 8
    max_channels: int = 64
    max_kernel: int = 7
    max_positions: int = 8
    ops: tuple[str, ...] = dataclasses.field(default_factory=lambda: tuple(op_names()))
    num_features: int = NUM_SHAPE_FEATURES

    def __post_init__(self) -> None:
        self.ops = tuple(self.ops)
        ints = ("hidden", "layers", "s_max", "rank", "max_channels", "max_kernel", "max_positions", "num_features")
        for name in ints:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < (0 if name == "layers" else 1):
                raise ValueError(f"`{name}` must be a positive int, but got {value!r}.")
        if not self.ops or len(set(self.ops)) != len(self.ops) or not all(isinstance(o, str) for o in self.ops):
            raise ValueError(f"`ops` must be distinct op names, but got {self.ops!r}.")


class GHN(nn.Module):
    """Graph hypernetwork predicting all parameters of an architecture graph.

    A GHN-2-style model (Knyazev, Drozdzal, Taylor and Romero-Soriano,
    "Parameter Prediction for Unseen Deep Architectures", NeurIPS 2021) on
    PyTorch Geometric:

    1. :class:`~nas.ghn._encoder.NodeEncoder`: op embedding + shape encoding of
       the parameter each node needs + its numeric features;
    2. ``layers`` rounds of :class:`~nas.ghn._message_passing.GatedDAGConv`
       over a PyG ``Batch`` of graphs, along data-flow edges, reversed edges and
       virtual edges (``1 / distance`` weighted, up to ``s_max`` hops);
    3. :class:`~nas.ghn._decoder.WeightDecoder`: every parameter tensor of every
       node, decoded per ``(kind, shape)`` group and normalised per operation.

    Graph conversion (node tensors, virtual edges, parameter lists) is cached per
    graph in a bounded LRU, and so are the compiled :class:`~nas.network.Network`
    objects used by :meth:`evaluate` and meta-training.

    Args:
        config: Model settings.
        space_info: ``space.describe()`` plus ``{"dataset": name}``; stored in
            checkpoints and checked by :meth:`check_compatible`.
        cache_size: Graphs kept in the graph cache.
        network_cache_size: Compiled networks kept (they are larger: a few
            hundred are enough to evaluate a held-out set or a search's batch).

    Shapes:
        - forward input: a PyG ``Batch`` of :class:`~nas.ghn._graphs.GraphEntry` data
        - forward output: node states ``[N, hidden]``
        - :meth:`predict`: one dict per graph, ``name -> tensor`` of the shapes in
          ``graph.param_specs``

    Examples:
        >>> ghn = GHN(GHNConfig(hidden=16, layers=1), space_info={})
        >>> from nas.graph import GraphBuilder
        >>> b = GraphBuilder((1, 8, 8))
        >>> x = b.add("relu_conv_bn", b.input, out_channels=4, kernel=3)
        >>> g = b.build(b.add("linear", b.add("global_avg_pool", x), out_features=10))
        >>> {k: tuple(v.shape) for k, v in ghn.predict([g])[0].items()}["ops.n1.conv.weight"]
        (4, 1, 3, 3)
    """

    def __init__(
        self, config: GHNConfig, *, space_info: dict[str, Any], cache_size: int = 8192, network_cache_size: int = 512
    ) -> None:
        super().__init__()
        self.config = config
        self.space_info: dict[str, Any] = dict(space_info)
        #: Meta-training evaluations (filled by ``meta_train`` and restored by :meth:`load`).
        self.history: list[dict[str, Any]] = []
        #: ``{"step", "steps", "elapsed"}`` of the meta-training run that wrote the checkpoint, if any.
        self.training_state: dict[str, Any] | None = None
        #: Canonical keys of the architectures held out of meta-training (never sampled).
        self.held_out_keys: list[str] = []
        c = config
        self.encoder = NodeEncoder(
            num_ops=len(c.ops), num_features=c.num_features, hidden=c.hidden,
            max_channels=c.max_channels, max_kernel=c.max_kernel,
        )
        self.layers = nn.ModuleList(GatedDAGConv(c.hidden, max_positions=c.max_positions) for _ in range(c.layers))
        self.decoder = WeightDecoder(c.hidden, max_channels=c.max_channels, max_kernel=c.max_kernel, rank=c.rank)
        self._entries: GraphCache[Any, GraphEntry] = GraphCache(cache_size)
        self._networks: GraphCache[Any, Network] = GraphCache(network_cache_size)

    # ------------------------------------------------------------------ basics

    @property
    def device(self) -> torch.device:
        """Device of the GHN's parameters."""
        return self.encoder.op.weight.device

    def extra_repr(self) -> str:
        space = self.space_info.get("space", "?")
        return f"space={space!r}, dataset={self.space_info.get('dataset', '?')!r}"

    def entry(self, graph: ArchGraph) -> GraphEntry:
        """The cached :class:`~nas.ghn._graphs.GraphEntry` of ``graph``."""
        return self._entries.get(graph_id(graph), lambda: self._make_entry(graph))

    def share_graph_cache(self, other: GHN) -> bool:
        """Convert graphs once for this GHN and ``other``: use ``other``'s cache of converted graphs.

        Only when both convert alike (same ``s_max``, ``max_positions``,
        ``max_kernel`` and op vocabulary), since an entry depends on those: its
        op indices index the vocabulary of the GHN that made it, which also
        checked it.

        Returns:
            Whether the cache is shared now.
        """
        def conversion(ghn: GHN) -> tuple[Any, ...]:
            c = ghn.config
            return c.s_max, c.max_positions, c.max_kernel, tuple(c.ops)

        if conversion(self) != conversion(other):
            return False
        self._entries = other._entries
        return True

    def _make_entry(self, graph: ArchGraph) -> GraphEntry:
        self._check_ops(graph)
        c = self.config
        return graph_entry(graph, s_max=c.s_max, max_positions=c.max_positions, ops=c.ops)

    def network(self, graph: ArchGraph, device: str | torch.device | None = None) -> Network:
        """A cached compiled :class:`~nas.network.Network` of ``graph`` on ``device``.

        Its own parameters are never used by the GHN (predicted tensors are
        passed with :func:`torch.func.functional_call`); its batch-norm buffers
        are overwritten by every evaluation.
        """
        dev = torch.device(device) if device is not None else self.device
        return self._networks.get((graph_id(graph), str(dev)), lambda: Network(graph).to(dev))

    def _check_ops(self, graph: ArchGraph) -> None:
        for node in graph.nodes:
            if node.op not in self.config.ops:
                raise CheckpointError(
                    f"the GHN cannot predict op {node.op!r}: its vocabulary is {', '.join(self.config.ops)}."
                )
            kernel = node.attrs.get("kernel", 1) if node.op in ("conv", "relu_conv_bn") else 1
            if kernel > self.config.max_kernel:
                raise CheckpointError(
                    f"the GHN decodes kernels up to {self.config.max_kernel}, "
                    f"but a {node.op!r} node has kernel {kernel}."
                )

    # ------------------------------------------------------------------ model

    def forward(self, batch: Batch) -> Tensor:
        h = self.encoder(batch.op, batch.param_shape, batch.x)  # batch.op indexes config.ops
        adj = message_adjacency(batch)
        for layer in self.layers:
            h = layer(h, adj, batch.position_counts)
        return h

    def predict(self, graphs: Sequence[ArchGraph]) -> list[dict[str, Tensor]]:
        """Predict every parameter of every graph in one batched forward pass.

        Tensors keep their graph to the GHN's parameters when gradients are
        enabled; under ``torch.autocast`` the work runs in reduced precision
        and the tensors are cast back to float32.

        Args:
            graphs: The architectures.

        Returns:
            One dict per graph mapping each name of ``graph.param_specs`` (in
            that order) to a float32 tensor of its shape, on the GHN's device.

        Raises:
            CheckpointError: A graph has an op outside the GHN's vocabulary or a
                kernel larger than ``config.max_kernel``.
            GraphError: A graph is too large to allocate (:meth:`ArchGraph.check_size`).
        """
        graphs = list(graphs)
        if not graphs:
            return []
        for graph in graphs:
            graph.check_size()  # before the decoder allocates its tensors
        entries = [self.entry(graph) for graph in graphs]
        batch = Batch.from_data_list([e.data for e in entries]).to(self.device)
        h = self(batch)
        # Gather the owning nodes of every tensor, grouped by (kind, shape, slot): one decoder call per group.
        positions: dict[GroupKey, list[np.ndarray]] = {}
        offsets: dict[GroupKey, list[int]] = {}
        counts: dict[GroupKey, int] = {}
        base: list[dict[GroupKey, int]] = []  # graph -> group -> first row of its block
        node_offset = 0
        for e in entries:
            first = {}
            for key, (pos, _) in e.groups.items():
                first[key] = counts.get(key, 0)
                counts[key] = first[key] + len(pos)
                positions.setdefault(key, []).append(pos)
                offsets.setdefault(key, []).append(node_offset)
            base.append(first)
            node_offset += e.data.num_nodes
        keys = list(positions)
        if not keys:  # no graph has parameters
            return [{} for _ in entries]
        flat = np.concatenate(
            [np.concatenate(positions[k]) + np.repeat(offsets[k], [len(b) for b in positions[k]]) for k in keys]
        )
        # The decoder's shared MLP runs once per parameter-owning node.
        owner_nodes, row_of = torch.unique(torch.from_numpy(flat), return_inverse=True)
        z = self.decoder.embed(h[owner_nodes.to(self.device)])
        row_of = row_of.to(self.device)
        decoded: dict[GroupKey, tuple[Tensor, ...]] = {}
        start = 0
        for key in keys:
            kind, shape, slot = key
            n = counts[key]
            decoded[key] = self.decoder.decode(z[row_of[start : start + n]], kind, shape, slot).float().unbind(0)
            start += n
        return [
            {name: decoded[key][first[key] + j] for name, key, j in e.layout} for e, first in zip(entries, base)
        ]

    # ------------------------------------------------------------------ predicted weights in use

    def evaluate(
        self,
        graphs: Sequence[ArchGraph],
        data: Dataset,
        *,
        split: str = "val",
        bn_images: int = 256,
        batch_size: int = 512,
        device: str | torch.device | None = None,
    ) -> list[dict[str, float]]:
        """Loss and accuracy of each graph with predicted weights only (no SGD).

        Batch-norm statistics come from ``bn_images`` *training* images (a
        fixed seeded sample, see :func:`~nas.ghn._predicted.bn_sample`), never
        from the split being scored; see :mod:`nas.ghn._predicted`.

        Args:
            graphs: The architectures.
            data: The dataset.
            split: ``"val"`` or ``"test"``.
            bn_images: Training images used for batch-norm statistics.
            batch_size: Images per forward pass.
            device: Where the networks run (default: the GHN's device).

        Returns:
            One ``{"loss": ..., "acc": ...}`` per graph.
        """
        return evaluate_predicted(
            self, graphs, data, split=split, bn_images=bn_images, batch_size=batch_size, device=device
        )

    def materialize(
        self, graph: ArchGraph, data: Dataset | None = None, *, bn_images: int = 256, rescale: bool = True
    ) -> Network:
        """A fresh :class:`~nas.network.Network` holding the predicted weights.

        Args:
            graph: The architecture.
            data: When given, batch-norm running statistics are set from
                ``bn_images`` of its training images (the sample
                :meth:`evaluate` uses); otherwise they keep their defaults
                (mean 0, variance 1) until the network is trained.
            bn_images: Training images used for the statistics.
            rescale: Rescale the tensors whose scale batch norm removes to the
                norms of a fresh initialisation (same function, SGD's usual
                step sizes; see :func:`nas.ghn._predicted.rescale_to_init`).
                ``False`` keeps the raw predictions.

        Returns:
            The network (detached copies of the predictions), in eval mode, on
            the GHN's device, ready for :func:`nas.training.train`.
        """
        return materialize_predicted(self, graph, data, bn_images=bn_images, rescale=rescale)

    # ------------------------------------------------------------------ compatibility

    def check_compatible(self, space: SearchSpace, *, samples: int = 64, seed: int = 0) -> None:
        """Check that this GHN can serve ``space``.

        Compares the input shape and number of classes with those it was
        trained for, then samples ``samples`` candidates (seeded) and checks
        that their ops are in the GHN's vocabulary and their kernels within
        ``config.max_kernel``. A different space name only logs a warning (a
        GHN can transfer across spaces of the same ops).

        Raises:
            CheckpointError: The space needs something the GHN cannot produce or
                differs in input shape or number of classes.
        """
        info = self.space_info
        for key, mine in (("input_shape", list(space.input_shape)), ("num_classes", space.num_classes)):
            theirs = info.get(key)
            if theirs is not None and (list(theirs) if key == "input_shape" else theirs) != mine:
                raise CheckpointError(
                    f"the GHN was trained for {key} {theirs}, but space {space.name!r} has {mine}."
                )
        if info.get("space") not in (None, space.name):
            logger.warning("the GHN was trained on space %r and is used on space %r.", info.get("space"), space.name)
        for cand in space.sample_many(samples, seed=seed, unique=False):
            self._check_ops(cand.graph)

    # ------------------------------------------------------------------ checkpoints

    def checkpoint_payload(self) -> dict[str, Any]:
        """The dict :meth:`save` writes (meta-training adds its own entries)."""
        return {
            "format": FORMAT,
            "version": VERSION,
            "config": dataclasses.asdict(self.config),
            "space_info": self.space_info,
            "state_dict": {k: v.detach().cpu() for k, v in self.state_dict().items()},
            "history": list(self.history),
            "held_out_keys": sorted(self.held_out_keys),
        }

    def save(self, path: str | Path) -> None:
        """Write the GHN to ``path`` atomically (temporary file + ``os.replace``)."""
        payload = self.checkpoint_payload()
        if self.training_state is not None:
            payload["training_state"] = dict(self.training_state)
        write_checkpoint(path, payload)

    @classmethod
    def from_payload(cls, payload: dict[str, Any], *, path: str | Path = "<memory>") -> GHN:
        """Rebuild a GHN from a checked checkpoint payload (see :func:`read_checkpoint`)."""
        try:
            config = GHNConfig(**payload["config"])
        except (TypeError, ValueError) as err:
            raise CheckpointError(f"GHN checkpoint {str(path)!r} has an invalid config: {err}") from None
        ghn = cls(config, space_info=payload["space_info"])
        try:
            ghn.load_state_dict(payload["state_dict"])
        except (RuntimeError, KeyError, TypeError) as err:
            first = " ".join(str(err).split())[:200]
            raise CheckpointError(f"GHN checkpoint {str(path)!r} does not match its config: {first}") from None
        history = payload.get("history", [])
        ghn.history = list(history) if isinstance(history, list) else []
        state = payload.get("training_state")
        ghn.training_state = dict(state) if isinstance(state, dict) else None
        keys = payload.get("held_out_keys", [])
        ghn.held_out_keys = [k for k in keys if isinstance(k, str)] if isinstance(keys, list) else []
        return ghn

    @classmethod
    def load(cls, path: str | Path, *, map_location: str | torch.device = "cpu") -> GHN:
        """Load a GHN saved by :meth:`save` or by meta-training.

        The file is read with ``torch.load(weights_only=True)``.

        Raises:
            CheckpointError: The file is missing, corrupt, truncated, foreign,
                holds pickled code, or its weights do not fit its config (one
                line naming the path).
        """
        payload = read_checkpoint(path, map_location="cpu")
        return cls.from_payload(payload, path=path).to(map_location)

    def num_parameters(self) -> int:
        """Number of trainable parameters of the GHN."""
        return sum(math.prod(p.shape) for p in self.parameters())
