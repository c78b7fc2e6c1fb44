"""Running networks with predicted weights, and their batch-norm statistics.

Batch normalisation with predicted weights
------------------------------------------
A GHN predicts the *parameters* of a network (conv/linear weights, biases,
batch-norm scales and shifts) but not the batch-norm *running statistics*,
which are properties of the data flowing through those weights. They are
handled as follows:

* **Meta-training** runs every sampled network in train mode, so batch norm
  normalises with the statistics of the current training batch, as GHN-2 does.
* **Evaluation** (:meth:`GHN.evaluate <nas.ghn.GHN.evaluate>`) and
  :meth:`GHN.materialize <nas.ghn.GHN.materialize>` first run the network in
  train mode, with ``momentum=None`` (an exact average) and no gradients,
  over ``bn_images`` *training* images; this sets the running mean and
  variance. The images are a fixed sample (seeded, the same for every call
  and every graph, see :func:`bn_sample`), not literally the first ones: a
  training split may be ordered by class, and statistics of one class would
  be wrong for all others. The network is then switched to eval mode and scored with
  those statistics. The images being scored (validation or test) never
  influence the statistics, so a validation image gets the same score alone as
  inside a batch, and scores do not depend on the evaluation batch size.

Fine-tuning from predicted weights
----------------------------------
A weight tensor whose every output feeds a batch norm (the conv inside
``relu_conv_bn``, a ``conv`` read only by ``bn`` nodes) is scale-invariant:
the network computes the same function at any scale of it. Meta-training puts
no pressure on that scale and predicted tensors drift to about 10x the norm
of a fresh initialisation, which divides SGD's effective step on them by
about 100. :meth:`GHN.materialize <nas.ghn.GHN.materialize>` therefore
rescales them (``rescale=True``) to the norm a fresh
:class:`~nas.network.Network` gives them; the predicted-weight accuracy is
unchanged and fine-tuning takes the step sizes the trainer was tuned for.

Many candidates are scored without copying weights: each graph's compiled
:class:`~nas.network.Network` is cached by the GHN and run with
:func:`torch.func.functional_call` on the predicted tensors; only its
batch-norm buffers are rewritten per evaluation.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from nas.graph import ArchGraph
from nas.network import Network

if TYPE_CHECKING:
    from nas.data import Dataset


class WeightPredictor(Protocol):
    """What running predicted weights needs from a GHN (:class:`nas.ghn.GHN` implements it).

    This module depends on this protocol, not on the GHN's module, which imports this one.
    """

    @property
    def device(self) -> torch.device:
        """Where the predictions are."""
        ...

    def predict(self, graphs: Sequence[ArchGraph]) -> list[dict[str, Tensor]]:
        """Every parameter of every graph, by parameter name."""
        ...

    def network(self, graph: ArchGraph, device: str | torch.device | None = None) -> Network:
        """A compiled network of ``graph`` on ``device``."""
        ...

__all__ = [
    "bn_sample",
    "calibrate_batch_norm",
    "evaluate_predicted",
    "materialize_predicted",
    "rescale_to_init",
    "scale_invariant_params",
    "score",
]

#: Parameters of an op that always feed its own batch norm (so their scale is irrelevant).
_NORMALISED_INSIDE: dict[str, tuple[str, ...]] = {"relu_conv_bn": ("conv.weight",)}

#: Graphs whose weights are predicted in one forward pass during evaluation.
PREDICT_CHUNK = 256
#: Training images per forward pass when batch-norm statistics are set (independent of
#: the scoring batch size, so that scores do not depend on it).
BN_CHUNK = 512


#: Seed of the fixed sample of training images used for batch-norm statistics.
BN_SEED = 0


def bn_sample(x_train: Tensor, bn_images: int) -> Tensor:
    """The ``bn_images`` training images used for batch-norm statistics.

    A seeded random sample of the training split (all of it when smaller), the
    same for every call, so that every candidate is scored with statistics of
    the same images, drawn from all classes even when the split is sorted.

    Args:
        x_train: Training images ``[N, C, H, W]``.
        bn_images: How many.

    Returns:
        ``[min(bn_images, N), C, H, W]`` images.
    """
    N = x_train.shape[0]  # training images
    if bn_images >= N:
        return x_train
    idx = torch.randperm(N, generator=torch.Generator().manual_seed(BN_SEED))[:bn_images]
    return x_train[idx.sort().values]


def _batch_norms(net: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def _run(net: nn.Module, params: dict[str, Tensor] | None, x: Tensor) -> Tensor:
    return net(x) if params is None else functional_call(net, params, (x,))


@torch.no_grad()
def calibrate_batch_norm(
    net: nn.Module, params: dict[str, Tensor] | None, x: Tensor, *, batch_size: int = BN_CHUNK
) -> None:
    """Set batch-norm running statistics from images ``x``, then switch to eval mode.

    Runs ``net`` (with ``params`` through ``functional_call`` when given) in
    train mode with ``momentum=None`` over ``x``, so the running mean and
    variance become the average of the batch statistics of ``x`` (exactly the
    statistics of ``x`` when it fits one batch). Momenta are restored afterwards.

    Args:
        net: The network.
        params: Predicted parameters, or ``None`` to use the network's own.
        x: Training images ``[B, C, H, W]``.
        batch_size: Images per forward pass.
    """
    norms = _batch_norms(net)
    if norms and x.shape[0] > 0:
        momenta = [m.momentum for m in norms]
        for m in norms:
            m.reset_running_stats()
            m.momentum = None
        net.train()
        try:
            for start in range(0, x.shape[0], batch_size):
                _run(net, params, x[start : start + batch_size])
        finally:
            for m, momentum in zip(norms, momenta):
                m.momentum = momentum
    net.eval()


@torch.no_grad()
def score(
    net: nn.Module, params: dict[str, Tensor] | None, x: Tensor, y: Tensor, *, batch_size: int = 512
) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of ``net`` in eval mode.

    Args:
        net: The network (already calibrated, see :func:`calibrate_batch_norm`).
        params: Predicted parameters, or ``None`` to use the network's own.
        x: Images ``[N, C, H, W]``.
        y: Labels ``[N]``.
        batch_size: Images per forward pass.

    Returns:
        ``(loss, accuracy)``; both ``nan`` for an empty split.
    """
    N = x.shape[0]  # images
    if N == 0:
        return math.nan, math.nan
    net.eval()
    total = torch.zeros((), dtype=torch.float64, device=x.device)
    correct = torch.zeros((), dtype=torch.int64, device=x.device)
    for start in range(0, N, batch_size):
        logits = _run(net, params, x[start : start + batch_size]).float()
        yb = y[start : start + batch_size]
        total += F.cross_entropy(logits, yb, reduction="sum").double()
        correct += (logits.argmax(dim=1) == yb).sum()
    return total.item() / N, correct.item() / N


def _check(split: str, bn_images: int, batch_size: int) -> None:
    if split not in ("val", "test"):
        raise ValueError(f"`split` must be 'val' or 'test', but got {split!r}.")
    if isinstance(bn_images, bool) or not isinstance(bn_images, int) or bn_images < 1:
        raise ValueError(f"`bn_images` must be a positive int, but got {bn_images!r}.")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"`batch_size` must be a positive int, but got {batch_size!r}.")


@torch.no_grad()
def evaluate_predicted(
    ghn: WeightPredictor,
    graphs: Sequence[ArchGraph],
    data: Dataset,
    *,
    split: str = "val",
    bn_images: int = 256,
    batch_size: int = 512,
    device: str | torch.device | None = None,
) -> list[dict[str, float]]:
    """Implementation of :meth:`GHN.evaluate <nas.ghn.GHN.evaluate>` (see there)."""
    _check(split, bn_images, batch_size)
    dev = torch.device(device) if device is not None else ghn.device
    x_bn = bn_sample(data.x_train, bn_images).to(dev)
    x, y = getattr(data, f"x_{split}").to(dev), getattr(data, f"y_{split}").to(dev)
    graphs = list(graphs)
    results: list[dict[str, float]] = []
    for start in range(0, len(graphs), PREDICT_CHUNK):
        chunk = graphs[start : start + PREDICT_CHUNK]
        for graph, params in zip(chunk, ghn.predict(chunk)):
            params = {k: v.to(dev) for k, v in params.items()}
            net = ghn.network(graph, dev)
            calibrate_batch_norm(net, params, x_bn)
            loss, acc = score(net, params, x, y, batch_size=batch_size)
            results.append({"loss": loss, "acc": acc})
    return results


def scale_invariant_params(graph: ArchGraph) -> list[str]:
    """Names of the weight tensors whose scale batch norm removes.

    The conv weight inside every ``relu_conv_bn`` node, and the weight and
    bias of every ``conv`` node whose consumers are all ``bn`` nodes.

    Args:
        graph: The architecture.

    Returns:
        Parameter names as :meth:`nas.network.Network.named_parameters` gives them.
    """
    consumers = graph.consumers
    names = []
    for i, node in enumerate(graph.nodes):
        prefix = f"ops.{graph.module_name(i)}."
        names += [prefix + name for name in _NORMALISED_INSIDE.get(node.op, ())]
        if node.op == "conv" and consumers[i] and all(graph.nodes[j].op == "bn" for j in consumers[i]):
            names += [prefix + spec.name for spec in graph.node_params(i)]
    return names


@torch.no_grad()
def rescale_to_init(net: Network, graph: ArchGraph) -> None:
    """Rescale the scale-invariant tensors of ``net`` to the norms of a fresh initialisation.

    The function the network computes is unchanged (batch norm removes the
    scale, see :func:`scale_invariant_params`); only the norms, and with them
    SGD's effective step size, return to those training from scratch starts
    with. A conv's bias is scaled with its weight. The global RNG is left as it was.

    Args:
        net: The network holding predicted weights (modified in place).
        graph: Its architecture.
    """
    params = dict(net.named_parameters())
    names = [n for n in scale_invariant_params(graph) if n in params]
    if not names:
        return
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        fresh = dict(Network(graph).named_parameters())
    for name in names:
        if not name.endswith("weight"):
            continue
        weight = params[name]
        factor = fresh[name].norm().to(weight.device) / weight.norm().clamp_min(1e-12)
        weight.mul_(factor)
        bias = params.get(name[: -len("weight")] + "bias")
        if bias is not None and name[: -len("weight")] + "bias" in names:
            bias.mul_(factor)


@torch.no_grad()
def materialize_predicted(
    ghn: WeightPredictor, graph: ArchGraph, data: Dataset | None, *, bn_images: int = 256, rescale: bool = True
) -> Network:
    """Implementation of :meth:`GHN.materialize <nas.ghn.GHN.materialize>` (see there)."""
    if isinstance(bn_images, bool) or not isinstance(bn_images, int) or bn_images < 1:
        raise ValueError(f"`bn_images` must be a positive int, but got {bn_images!r}.")
    (params,) = ghn.predict([graph])
    net = Network(graph).to(ghn.device)
    missing, unexpected = net.load_state_dict({k: v.detach().clone() for k, v in params.items()}, strict=False)
    assert not unexpected and not [k for k in missing if k in dict(net.named_parameters())], (missing, unexpected)
    if rescale:
        rescale_to_init(net, graph)
    if data is not None:
        calibrate_batch_norm(net, None, bn_sample(data.x_train, bn_images).to(ghn.device))
    return net.eval()
