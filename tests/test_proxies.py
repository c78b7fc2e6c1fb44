"""Zero-cost proxies against values computed independently on explicit modules."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from nas.data import Dataset
from nas.evaluation import PROXIES, ProxyScorer, get_scorer, grad_norm, jacob_cov, naswot, snip, synflow
from nas.graph import ArchGraph, GraphBuilder
from nas.network import Network

SHAPE = (1, 4, 4)
B = 8  # batch


def _conv_relu_graph() -> ArchGraph:
    """input -> conv(2, k3, bias) -> relu -> global pool -> linear(3)."""
    b = GraphBuilder(SHAPE)
    x = b.add("conv", b.input, out_channels=2, kernel=3, bias=True)
    x = b.add("relu", x)
    x = b.add("global_avg_pool", x)
    return b.build(b.add("linear", x, out_features=3))


class _GlobalPool(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3))


def _sequential_copy(net: Network) -> nn.Sequential:
    """An explicit nn.Sequential with the weights of the conv-relu network."""
    conv = next(m for m in net.modules() if isinstance(m, nn.Conv2d))
    lin = next(m for m in net.modules() if isinstance(m, nn.Linear))
    seq = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1, bias=True), nn.ReLU(), _GlobalPool(), nn.Linear(2, 3))
    with torch.no_grad():
        seq[0].weight.copy_(conv.weight)
        seq[0].bias.copy_(conv.bias)
        seq[3].weight.copy_(lin.weight)
        seq[3].bias.copy_(lin.bias)
    return seq


@pytest.fixture
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(B, *SHAPE, generator=g), torch.randint(0, 3, (B,), generator=g)


@pytest.fixture
def net() -> Network:
    torch.manual_seed(0)
    return Network(_conv_relu_graph())


# --------------------------------------------------------------------------- synflow


def test_synflow_linear_model_is_sum_of_abs_weights(batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    # input -> global pool -> linear: with ones in and R = sum(|W| 1 + |b|), dR/dW = 1,
    # so synflow = sum |W| (biases are not counted).
    b = GraphBuilder((1, 3, 3))
    x = b.add("global_avg_pool", b.input)
    torch.manual_seed(0)
    net = Network(b.build(b.add("linear", x, out_features=4)))
    weight = net.ops[f"n{2}"].weight.detach().clone()
    x_batch = torch.randn(B, 1, 3, 3)
    assert synflow(net, x_batch) == pytest.approx(weight.abs().sum().item(), rel=1e-12)


def test_synflow_uses_eval_mode_batch_norm() -> None:
    # input -> bn -> global pool -> linear: at init eval-mode BN maps 1 to 1/sqrt(1+eps).
    b = GraphBuilder((2, 3, 3))
    x = b.add("bn", b.input)
    x = b.add("global_avg_pool", x)
    torch.manual_seed(0)
    net = Network(b.build(b.add("linear", x, out_features=4)))
    lin = next(m for m in net.modules() if isinstance(m, nn.Linear))
    expected = lin.weight.detach().double().abs().sum().item() / math.sqrt(1 + 1e-5)
    assert synflow(net, torch.zeros(B, 2, 3, 3)) == pytest.approx(expected, rel=1e-12)


def test_synflow_matches_explicit_sequential(net: Network, batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    seq = _sequential_copy(net).double()
    with torch.no_grad():
        for p in seq.parameters():
            p.abs_()
    out = seq(torch.ones(1, *SHAPE, dtype=torch.float64)).sum()
    gw_conv, gw_lin = torch.autograd.grad(out, [seq[0].weight, seq[3].weight])
    expected = (seq[0].weight * gw_conv).abs().sum() + (seq[3].weight * gw_lin).abs().sum()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    assert synflow(net, batch[0]) == pytest.approx(expected.item(), rel=1e-10)
    for k, v in net.state_dict().items():  # the model is not modified
        assert torch.equal(v, before[k]) and v.dtype == torch.float32


# --------------------------------------------------------------------------- snip / grad_norm


def test_snip_equals_mask_sensitivity(net: Network, batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    # Lee et al.'s definition: |dL/dc| for multiplicative masks c = 1 on the weights.
    x, y = batch
    seq = _sequential_copy(net)
    c_conv = torch.ones_like(seq[0].weight, requires_grad=True)
    c_lin = torch.ones_like(seq[3].weight, requires_grad=True)
    h = F.conv2d(x, seq[0].weight.detach() * c_conv, seq[0].bias.detach(), padding=1)
    h = torch.relu(h).mean(dim=(2, 3))
    logits = F.linear(h, seq[3].weight.detach() * c_lin, seq[3].bias.detach())
    g_conv, g_lin = torch.autograd.grad(F.cross_entropy(logits, y), [c_conv, c_lin])
    expected = g_conv.abs().sum() + g_lin.abs().sum()
    assert snip(net, x, y) == pytest.approx(expected.item(), rel=1e-5)


def test_grad_norm_sums_per_tensor_norms(net: Network, batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, y = batch
    seq = _sequential_copy(net)
    loss = F.cross_entropy(seq(x), y)
    g_conv, g_lin = torch.autograd.grad(loss, [seq[0].weight, seq[3].weight])
    expected = math.sqrt((g_conv**2).sum().item()) + math.sqrt((g_lin**2).sum().item())
    whole = math.sqrt((g_conv**2).sum().item() + (g_lin**2).sum().item())
    value = grad_norm(net, x, y)
    assert value == pytest.approx(expected, rel=1e-5)
    assert value > whole * (1 + 1e-3)  # per-tensor sum, not the norm of the whole gradient


# --------------------------------------------------------------------------- jacob_cov


def test_jacob_cov_matches_per_example_jacobians(net: Network, batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, _ = batch
    seq = _sequential_copy(net)
    rows = []
    for i in range(B):  # one example at a time: no batch coupling in this BN-free net
        xi = x[i : i + 1].clone().requires_grad_(True)
        (g,) = torch.autograd.grad(seq(xi).sum(), xi)
        rows.append(g.reshape(-1).double().numpy())
    jac = np.stack(rows)
    centred = jac - jac.mean(axis=1, keepdims=True)
    cov = centred @ centred.T
    corr = cov / np.sqrt(np.outer(np.diag(cov), np.diag(cov)))
    eig = np.linalg.eigvalsh(corr)
    expected = -np.sum(np.log(eig + 1e-5) + 1.0 / (eig + 1e-5))
    assert jacob_cov(net, x) == pytest.approx(expected, rel=1e-6)


def test_jacob_cov_is_nan_for_constant_jacobian() -> None:
    b = GraphBuilder(SHAPE)
    x = b.add("zero", b.input)
    x = b.add("global_avg_pool", x)
    net = Network(b.build(b.add("linear", x, out_features=3)))
    assert math.isnan(jacob_cov(net, torch.randn(B, *SHAPE)))


# --------------------------------------------------------------------------- naswot


def _hamming_kernel(codes: np.ndarray) -> np.ndarray:
    """K[i, j] = number of units on which examples i and j agree."""
    return (codes[:, None, :] == codes[None, :, :]).sum(axis=-1).astype(np.float64)


def test_naswot_counts_both_relu_kinds(batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    # input -> relu_conv_bn -> relu -> global pool -> linear: two ReLUs, found
    # once inside ReLUConvBN (its conv's input) and once as a 'relu' op.
    b = GraphBuilder(SHAPE)
    h = b.add("relu_conv_bn", b.input, out_channels=3, kernel=3)
    h = b.add("relu", h)
    h = b.add("global_avg_pool", h)
    torch.manual_seed(0)
    net = Network(b.build(b.add("linear", h, out_features=3)))
    x, _ = batch
    rcb = next(m for m in net.modules() if isinstance(m, nn.Conv2d))
    bn = next(m for m in net.modules() if isinstance(m, nn.BatchNorm2d))
    conv = nn.Conv2d(1, 3, 3, padding=1, bias=False)
    with torch.no_grad():
        conv.weight.copy_(rcb.weight)
        pre = F.batch_norm(conv(torch.relu(x)), None, None, bn.weight, bn.bias, training=True)
    codes = np.concatenate(
        [(x.reshape(B, -1) > 0).numpy(), (pre.reshape(B, -1) > 0).numpy()], axis=1
    )
    sign, expected = np.linalg.slogdet(_hamming_kernel(codes))
    assert sign > 0
    assert naswot(net, x) == pytest.approx(expected, rel=1e-9)
    # Only the first ReLU would give another value: both kinds are counted.
    _, first_only = np.linalg.slogdet(_hamming_kernel(codes[:, : SHAPE[1] * SHAPE[2]]))
    assert abs(first_only - expected) > 1e-3


def test_naswot_without_relus_is_minus_inf() -> None:
    b = GraphBuilder(SHAPE)
    x = b.add("conv", b.input, out_channels=2, kernel=3)
    x = b.add("global_avg_pool", x)
    net = Network(b.build(b.add("linear", x, out_features=3)))
    assert naswot(net, torch.randn(B, *SHAPE)) == -math.inf


def test_naswot_hooks_nn_relu_and_removes_hooks(batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, _ = batch
    torch.manual_seed(0)
    seq = nn.Sequential(nn.Flatten(), nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 3))
    with torch.no_grad():
        codes = (seq[1](x.reshape(B, -1)) > 0).numpy()
    _, expected = np.linalg.slogdet(_hamming_kernel(codes))
    assert naswot(seq, x) == pytest.approx(expected, rel=1e-9)
    assert not seq[2]._forward_hooks


# --------------------------------------------------------------------------- scorer


def _toy_data() -> Dataset:
    g = torch.Generator().manual_seed(0)
    split = lambda n: (torch.randn(n, *SHAPE, generator=g), torch.randint(0, 3, (n,), generator=g))  # noqa: E731
    (xt, yt), (xv, yv), (xs, ys) = split(40), split(10), split(10)
    return Dataset("toy", SHAPE, 3, xt, yt, xv, yv, xs, ys)


@pytest.mark.parametrize("name", sorted(PROXIES))
def test_proxy_scorer_is_seeded_and_finite(name: str) -> None:
    data = _toy_data()
    graphs = [_conv_relu_graph()]
    b = GraphBuilder(SHAPE)
    x = b.add("relu_conv_bn", b.input, out_channels=4, kernel=3)
    x = b.add("global_avg_pool", x)
    graphs.append(b.build(b.add("linear", x, out_features=3)))
    scorer = get_scorer(name, batch_size=16, seed=3)
    assert isinstance(scorer, ProxyScorer) and scorer.name == name
    first = scorer.score(graphs, data)
    assert len(first) == 2 and all(math.isfinite(v) for v in first)
    assert scorer.score(graphs, data) == first
    # The scorer computes the proxy on the seeded initialisation and minibatch.
    xb, yb = scorer.batch(data)
    assert xb.shape == (16, *SHAPE)
    torch.manual_seed(3)
    assert PROXIES[name](Network(graphs[0]), xb, yb) == pytest.approx(first[0], rel=1e-6)
    assert get_scorer(name, batch_size=16, seed=4).score(graphs, data) != first


def test_unknown_scorer_lists_valid_names() -> None:
    with pytest.raises(ValueError, match="valid scorers:.*naswot.*synflow"):
        get_scorer("synflw")
    with pytest.raises(ValueError, match="batch_size"):
        ProxyScorer("snip", batch_size=0)
