"""Compiled networks: parameter names, external (predicted) parameters, state dicts."""

from __future__ import annotations

import pytest
import torch
from torch.func import functional_call

from conftest import make_branchy, make_chain
from nas.graph import ArchGraph, GraphBuilder
from nas.network import Network


def _external(graph: ArchGraph, seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {
        name: (0.5 * torch.randn(*spec.shape, generator=gen)).requires_grad_()
        for name, (_, spec) in graph.param_specs.items()
    }


@pytest.mark.parametrize("factory", [make_chain, make_branchy])
def test_parameter_names_and_shapes_follow_the_graph(factory) -> None:  # noqa: ANN001
    g = factory()
    net = Network(g)
    assert {n: tuple(p.shape) for n, p in net.named_parameters()} == {
        n: tuple(s.shape) for n, (_, s) in g.param_specs.items()
    }
    for name, (i, _) in g.param_specs.items():
        assert name.startswith(f"ops.{g.module_name(i)}.")


def test_forward_shape(branchy_graph: ArchGraph) -> None:
    y = Network(branchy_graph)(torch.randn(3, *branchy_graph.input_shape))
    assert tuple(y.shape) == (3, branchy_graph.num_classes)


def test_functional_call_uses_external_tensors_and_gradients_reach_them(branchy_graph: ArchGraph) -> None:
    torch.manual_seed(0)
    net = Network(branchy_graph).eval()
    x = torch.randn(4, *branchy_graph.input_shape)
    own = net(x)
    params = _external(branchy_graph)
    out = functional_call(net, params, (x,))
    assert out.shape == own.shape
    assert not torch.allclose(out, own)
    out.square().sum().backward()
    for name, tensor in params.items():
        assert tensor.grad is not None, name
        assert tensor.grad.abs().sum() > 0, name
    assert all(p.grad is None for p in net.parameters())  # the module's own weights were not used


def test_load_state_dict_by_names_equals_functional_call(branchy_graph: ArchGraph) -> None:
    net = Network(branchy_graph).eval()
    params = {k: v.detach() for k, v in _external(branchy_graph, seed=1).items()}
    missing, unexpected = net.load_state_dict(params, strict=False)
    assert unexpected == []
    assert all("running_" in k or "num_batches" in k for k in missing)  # only BN buffers are left out
    x = torch.randn(2, *branchy_graph.input_shape)
    assert torch.allclose(net(x), functional_call(Network(branchy_graph).eval(), params, (x,)))
    assert torch.equal(net.state_dict()["ops.n1.conv.weight"], params["ops.n1.conv.weight"])


def test_shared_input_and_reuse() -> None:
    """One node read twice (by a sum with itself) runs and doubles the value."""
    b = GraphBuilder((1, 4, 4))
    x = b.add("global_avg_pool", b.input)
    x = b.add("sum", x, x)
    g = b.build(b.add("linear", x, out_features=2))
    net = Network(g)
    with torch.no_grad():
        net.ops["n3"].weight.fill_(1.0)
        net.ops["n3"].bias.zero_()
    inp = torch.ones(1, 1, 4, 4)
    assert torch.allclose(net(inp), torch.full((1, 2), 2.0))


def test_network_matches_hand_written_module() -> None:
    g = make_chain((1, 8, 8), channels=4, kernel=3)
    torch.manual_seed(0)
    net = Network(g).eval()
    conv, bn, lin = net.ops["n1"], net.ops["n2"], net.ops["n5"]
    x = torch.randn(2, 1, 8, 8)
    want = lin(torch.relu(bn(conv(x))).mean(dim=(2, 3)))
    assert torch.allclose(net(x), want)
