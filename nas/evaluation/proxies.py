"""Zero-cost proxies: score an untrained network from one minibatch.

Each proxy is a function ``proxy(model, x, y) -> float`` (higher = predicted
better) on a network at its random initialisation, and a registered scorer of
the same name (:class:`ProxyScorer`) that builds every candidate with a fixed
seed and scores it on the same minibatch of training images.

Choices shared by the gradient-based proxies (``synflow``, ``snip``,
``grad_norm``): the sum runs over the weight tensors of the convolution and
linear layers (``nn.Conv2d`` / ``nn.Linear`` ``.weight``), the prunable
weights of the pruning papers and the tensors that the zero-cost reference
implementation sums over; biases and normalisation parameters are left out.
A weight that receives no gradient (it feeds only a ``zero`` op) counts as a
zero gradient. All proxies but ``synflow`` run the network in training mode,
as the reference implementations score a freshly built network: batch norm
normalises with the minibatch's statistics.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from nas.data import Dataset
from nas.evaluation.scorers import Scorer, register_scorer
from nas.graph import ArchGraph
from nas.network import Network
from nas.ops import ReLUConvBN, _Lambda

__all__ = [
    "PROXIES",
    "ProxyScorer",
    "grad_norm",
    "jacob_cov",
    "naswot",
    "prunable_weights",
    "snip",
    "synflow",
]

Proxy = Callable[[nn.Module, Tensor, Tensor], float]


def prunable_weights(model: nn.Module) -> list[nn.Parameter]:
    """The ``.weight`` of every ``nn.Conv2d`` and ``nn.Linear`` module, in module order."""
    return [m.weight for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def _grads(output: Tensor, weights: Sequence[Tensor]) -> list[Tensor]:
    if not output.requires_grad:  # nothing trainable reaches the output
        return [torch.zeros_like(w) for w in weights]
    grads = torch.autograd.grad(output, list(weights), allow_unused=True)
    return [torch.zeros_like(w) if g is None else g for w, g in zip(weights, grads)]


def synflow(model: nn.Module, x: Tensor, y: Tensor | None = None) -> float:
    """Synaptic flow: ``sum_w |w * dR/dw|`` with ``R`` the summed output of the all-positive network.

    All parameters and buffers of a copy of ``model`` are replaced by their
    absolute values and cast to float64; an all-ones input of one example
    (shape ``x.shape[1:]``) is fed through; ``R = sum(output)``; the score sums
    ``|w * dR/dw|`` over the prunable weights. The data (values of ``x`` and
    ``y``) is not used.

    Batch norm runs in eval mode: at initialisation its running statistics are
    mean 0 and variance 1, so each BN layer is the affine map
    ``|gamma| x / sqrt(1 + eps) + |beta|`` (``x / sqrt(1 + eps)`` at init), that
    is the zero-cost paper's choice of scoring synflow with BN disabled, up to
    the ``sqrt(1 + eps)`` factor. (Training-mode BN would instead normalise
    with the statistics of the single all-ones example.)

    References:
        Hidenori Tanaka, Daniel Kunin, Daniel L. K. Yamins and Surya Ganguli.
        "Pruning Neural Networks without Any Data by Iteratively Conserving
        Synaptic Flow." NeurIPS 2020.
        Mohamed S. Abdelfattah, Abhinav Mehrotra, Lukasz Dudziak and Nicholas
        D. Lane. "Zero-Cost Proxies for Lightweight NAS." ICLR 2021.

    Args:
        model: The network (not modified).
        x: A batch ``(B, C, H, W)``; only its shape is used.
        y: Unused.

    Returns:
        The score (can be ``inf`` when the all-positive network overflows).
    """
    net = copy.deepcopy(model).double().eval()
    with torch.no_grad():
        for tensor in net.state_dict().values():
            if tensor.is_floating_point():
                tensor.abs_()
    ones = torch.ones(1, *x.shape[1:], dtype=torch.float64, device=x.device)
    weights = prunable_weights(net)
    R = net(ones).sum()
    grads = _grads(R, weights)
    return float(sum((w.detach() * g).abs().sum() for w, g in zip(weights, grads)))


def snip(model: nn.Module, x: Tensor, y: Tensor) -> float:
    """SNIP connection sensitivity: ``sum_w |w * dL/dw|`` for the cross-entropy ``L`` on the batch.

    Reference:
        Namhoon Lee, Thalaiyasingam Ajanthan and Philip H. S. Torr. "SNIP:
        Single-shot Network Pruning based on Connection Sensitivity." ICLR 2019.
        (As a NAS proxy: Abdelfattah et al., ICLR 2021.)

    Args:
        model: The network, put in training mode.
        x: Images ``(B, C, H, W)``.
        y: Labels ``(B,)``.

    Returns:
        The score.
    """
    model.train()
    weights = prunable_weights(model)
    loss = F.cross_entropy(model(x), y)
    grads = _grads(loss, weights)
    return float(sum((w.detach() * g).abs().sum() for w, g in zip(weights, grads)))


def grad_norm(model: nn.Module, x: Tensor, y: Tensor) -> float:
    """Sum over the prunable weight tensors of the L2 norm of the cross-entropy gradient.

    ``sum_w ||dL/dw||_2``, one norm per tensor (not the norm of the whole
    gradient), as the zero-cost paper computes it.

    Reference:
        Mohamed S. Abdelfattah, Abhinav Mehrotra, Lukasz Dudziak and Nicholas
        D. Lane. "Zero-Cost Proxies for Lightweight NAS." ICLR 2021.

    Args:
        model: The network, put in training mode.
        x: Images ``(B, C, H, W)``.
        y: Labels ``(B,)``.

    Returns:
        The score.
    """
    model.train()
    weights = prunable_weights(model)
    loss = F.cross_entropy(model(x), y)
    return float(sum(g.norm(2) for g in _grads(loss, weights)))


def jacob_cov(model: nn.Module, x: Tensor, y: Tensor | None = None, *, k: float = 1e-5) -> float:
    """Jacobian covariance: how decorrelated the input Jacobians of the batch are.

    ``J_i = d(sum_c f(x)_{i,c}) / d x_i`` flattened per example (``(B, C*H*W)``),
    ``Sigma = corrcoef(J)`` the ``B x B`` correlation matrix between examples,
    ``lambda`` its eigenvalues (:func:`torch.linalg.eigvalsh`, float64) and
    the score ``-sum(log(lambda + k) + 1 / (lambda + k))``. ``nan`` when an
    example's Jacobian is constant (its correlation is undefined).

    Reference:
        Joseph Mellor, Jack Turner, Amos Storkey and Elliot J. Crowley.
        "Neural Architecture Search without Training." arXiv:2006.04647v1, 2020.

    Args:
        model: The network, put in training mode.
        x: Images ``(B, C, H, W)``.
        y: Unused.
        k: Small constant added to the eigenvalues.

    Returns:
        The score.
    """
    model.train()
    B = x.shape[0]  # batch
    inputs = x.detach().clone().requires_grad_(True)
    out = model(inputs)
    (jac,) = torch.autograd.grad(out.sum(), inputs, allow_unused=True) if out.requires_grad else (None,)
    if jac is None:  # the output does not depend on the input (e.g. a `zero` op cuts it)
        jac = torch.zeros_like(inputs)
    jac = jac.reshape(B, -1).double()  # (B, C*H*W)
    corr = torch.corrcoef(jac)  # (B, B)
    if not torch.isfinite(corr).all():
        return float("nan")
    eig = torch.linalg.eigvalsh(corr)
    return float(-torch.sum(torch.log(eig + k) + 1.0 / (eig + k)))


def naswot(model: nn.Module, x: Tensor, y: Tensor | None = None) -> float:
    """NASWOT: log-determinant of the Hamming-similarity kernel of ReLU activation codes.

    Every ReLU of the network gives each example a binary code (1 where the
    ReLU's input is positive); with ``c`` the ``(B, N_units)`` codes over all
    ReLUs, ``K = c c^T + (1 - c)(1 - c)^T`` (``K[i, j]`` = number of units on
    which examples ``i`` and ``j`` agree) and the score is ``log|det K|``
    (:func:`torch.linalg.slogdet`, float64; ``-inf`` when ``K`` is singular,
    e.g. a network without ReLUs).

    ReLUs are found at module level: ``nn.ReLU`` modules (code: input > 0),
    ``relu`` op modules of :mod:`nas.ops` (code: output > 0, equivalently) and
    the ReLU inside each ``ReLUConvBN`` (code: the input of its ``conv``,
    which is ``relu(x)``, > 0). GELU and other activations are not counted.

    Reference:
        Joseph Mellor, Jack Turner, Amos Storkey and Elliot J. Crowley.
        "Neural Architecture Search without Training." ICML 2021.

    Args:
        model: The network, put in training mode.
        x: Images ``(B, C, H, W)``.
        y: Unused.

    Returns:
        The score.
    """
    model.train()
    B = x.shape[0]  # batch
    K = torch.zeros(B, B, dtype=torch.float64, device=x.device)

    def add(active: Tensor) -> None:
        nonlocal K
        c = (active.reshape(B, -1) > 0).double()  # (B, units)
        K = K + c @ c.T + (1.0 - c) @ (1.0 - c).T

    handles = []
    for module in model.modules():
        if isinstance(module, nn.ReLU):
            handles.append(module.register_forward_hook(lambda m, inp, out: add(inp[0])))
        elif isinstance(module, _Lambda) and module.name == "relu":
            handles.append(module.register_forward_hook(lambda m, inp, out: add(out)))
        elif isinstance(module, ReLUConvBN):
            handles.append(module.conv.register_forward_pre_hook(lambda m, inp: add(inp[0])))
    try:
        with torch.no_grad():
            model(x)
    finally:
        for handle in handles:
            handle.remove()
    sign, logabsdet = torch.linalg.slogdet(K)
    return float(logabsdet) if sign != 0 else float("-inf")


#: The zero-cost proxies by name.
PROXIES: dict[str, Proxy] = {
    "synflow": synflow,
    "snip": snip,
    "grad_norm": grad_norm,
    "jacob_cov": jacob_cov,
    "naswot": naswot,
}


class ProxyScorer(Scorer):
    """Score candidates with a zero-cost proxy at a seeded random initialisation.

    Each candidate is compiled (:class:`nas.network.Network`, PyTorch's
    default initialisation) after seeding torch with ``seed``, and scored on
    one minibatch of ``batch_size`` training images, the same for every
    candidate (drawn with ``seed``).

    Args:
        proxy: A name of :data:`PROXIES` or a function ``proxy(model, x, y) -> float``.
        name: Name of the scorer (default: the proxy's name).
        batch_size: Images in the minibatch.
        seed: Seed of the initialisation and of the minibatch.
        device: Device to score on.
        progress: Show a progress bar over candidates.

    Raises:
        ValueError: Unknown proxy name or non-positive ``batch_size``.
    """

    def __init__(
        self,
        proxy: str | Proxy,
        *,
        name: str | None = None,
        batch_size: int = 64,
        seed: int = 0,
        device: str | None = None,
        progress: bool = False,
    ) -> None:
        if isinstance(proxy, str):
            if proxy not in PROXIES:
                raise ValueError(f"unknown proxy {proxy!r}; valid proxies: {', '.join(PROXIES)}.")
            name = name or proxy
            proxy = PROXIES[proxy]
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"`batch_size` must be a positive int, but got {batch_size!r}.")
        self.proxy = proxy
        self.name = name or getattr(proxy, "__name__", "proxy")
        self.batch_size = batch_size
        self.seed = int(seed)
        self.device = torch.device(device or "cpu")
        self.progress = progress

    def batch(self, data: Dataset) -> tuple[Tensor, Tensor]:
        """The seeded minibatch ``(x, y)`` of training images the proxy sees."""
        generator = torch.Generator().manual_seed(self.seed)
        N = data.x_train.shape[0]  # training images
        idx = torch.randperm(N, generator=generator)[: min(self.batch_size, N)]
        return data.x_train[idx].to(self.device), data.y_train[idx].to(self.device)

    def score(self, graphs: Sequence[ArchGraph], data: Dataset) -> list[float]:
        x, y = self.batch(data)
        out = []
        for graph in tqdm(graphs, desc=self.name, leave=False, disable=not self.progress):
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.seed)
                net = Network(graph).to(self.device)
            out.append(self.proxy(net, x, y))
        return out


def _proxy_factory(proxy: str) -> Callable[..., Scorer]:
    def factory(batch_size: int = 64, seed: int = 0, device: str | None = None, progress: bool = False) -> Scorer:
        return ProxyScorer(proxy, batch_size=batch_size, seed=seed, device=device, progress=progress)

    return factory


for _name in PROXIES:
    register_scorer(_name, _proxy_factory(_name))
