"""Tests of the graph hypernetwork (nas.ghn): prediction, checkpoints, evaluation, meta-training."""

from __future__ import annotations

import dataclasses
import errno
import math
import os
import re
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path

import pytest
import torch
from torch.func import functional_call

from nas.data import Dataset, load_dataset
from nas.exceptions import CheckpointError
from nas.ghn import (
    GHN,
    GatedDAGConv,
    GHNConfig,
    NODE_FEATURES,
    MetaTrainConfig,
    default_ghn_path,
    ensure_ghn,
    meta_train,
    snapshot_path,
    to_pyg,
)
from nas.ghn._graphs import graph_entry, virtual_edges
from nas.ghn._predicted import bn_sample, rescale_to_init, scale_invariant_params
from nas.ghn._message_passing import NUM_EDGE_TYPES, message_adjacency
from nas.graph import ArchGraph, GraphBuilder
from nas.network import Network
from nas.ops import op_names
from nas.space import SearchSpace, load_space
from nas.training import evaluate as train_evaluate
from search_spaces import BUILTIN_SPACES
from tests.conftest import assert_only_files, make_branchy, make_chain

SMALL = GHNConfig(hidden=16, layers=2, s_max=3, rank=4, max_channels=16)


def small_ghn(config: GHNConfig = SMALL, **info: object) -> GHN:
    torch.manual_seed(0)
    return GHN(config, space_info=dict(info))


@pytest.fixture(scope="module")
def digits() -> Dataset:
    return load_dataset("digits", seed=0)


@pytest.fixture(scope="module")
def space() -> SearchSpace:
    return load_space("nb201", input_shape=(1, 8, 8), num_classes=10, C=4)


def _tiny_config(**kw: object) -> MetaTrainConfig:
    base = dict(
        steps=4, meta_batch=2, batch_size=16, lr=3e-3, warmup_steps=0, eval_every=2, num_held_out=2,
        bn_images=32, schedule="constant",
    )
    base.update(kw)
    return MetaTrainConfig(**base)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- shapes


def _check_prediction(ghn: GHN, graph: ArchGraph, params: dict[str, torch.Tensor]) -> None:
    net = Network(graph)
    expected = dict(net.named_parameters())
    assert list(params) == list(graph.param_specs) == list(expected)
    for name, tensor in params.items():
        assert tensor.shape == expected[name].shape, name
        assert tensor.dtype == torch.float32
        assert torch.isfinite(tensor).all(), name
    out = functional_call(net.train(), params, (torch.randn(3, *graph.input_shape),))
    assert out.shape == (3, graph.num_classes)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", sorted(BUILTIN_SPACES))
def test_predicted_shapes_match_every_builtin_space(name: str) -> None:
    space = load_space(name, input_shape=(1, 8, 8), num_classes=10)
    graphs = [c.graph for c in space.sample_many(3, seed=1)]
    ghn = small_ghn()
    for graph, params in zip(graphs, ghn.predict(graphs)):
        _check_prediction(ghn, graph, params)


def test_predicted_shapes_hand_built_graphs() -> None:
    graphs = [make_chain(), make_chain(channels=24, kernel=7), make_branchy()]
    ghn = small_ghn()
    for graph, params in zip(graphs, ghn.predict(graphs)):
        _check_prediction(ghn, graph, params)
    assert ghn.predict([]) == []
    b = GraphBuilder((1, 8, 8))
    no_params = b.build(b.add("global_avg_pool", b.add("max_pool", b.input, kernel=3)))
    assert ghn.predict([no_params]) == [{}]
    assert [list(p) for p in ghn.predict([no_params, graphs[0]])] == [[], list(graphs[0].param_specs)]


def test_batched_and_one_by_one_predictions_agree(space: SearchSpace) -> None:
    graphs = [c.graph for c in space.sample_many(4, seed=2)] + [make_branchy(input_shape=(1, 8, 8))]
    ghn = small_ghn()
    with torch.no_grad():
        batched = ghn.predict(graphs)
        for graph, together in zip(graphs, batched):
            alone = ghn.predict([graph])[0]
            for name in alone:
                torch.testing.assert_close(together[name], alone[name], rtol=1e-4, atol=1e-5)


def test_renumbered_graph_gets_its_own_parameter_names() -> None:
    graph = make_branchy()
    renumbered = graph.canonical()
    assert renumbered.key == graph.key
    ghn = small_ghn()
    a, b = ghn.predict([graph, renumbered])
    assert list(a) == list(graph.param_specs)
    assert list(b) == list(renumbered.param_specs)


def test_normalisation_per_operation() -> None:
    ghn = small_ghn()
    graph = make_chain(channels=16)
    with torch.no_grad():
        params = ghn.predict([graph])[0]
    kinds = {name: spec.kind for name, (_, spec) in graph.param_specs.items()}
    for name, tensor in params.items():
        if kinds[name] == "norm_weight":
            assert ((tensor > 0) & (tensor < 2)).all() and abs(tensor.mean().item() - 1) < 0.2
        elif kinds[name] in ("bias", "norm_bias"):
            assert (tensor.abs() < 1).all()
        elif kinds[name] == "conv":
            fan_in = math.prod(tensor.shape[1:])
            ratio = tensor.std().item() / math.sqrt(2 / fan_in)
            assert 0.3 < ratio < 3, ratio  # He scale at initialisation


def test_channels_beyond_max_are_tiled() -> None:
    ghn = small_ghn(dataclasses.replace(SMALL, max_channels=4))
    b = GraphBuilder((1, 8, 8))
    x = b.add("conv", b.input, out_channels=6, kernel=3, bias=True)
    graph = b.build(b.add("linear", b.add("global_avg_pool", x), out_features=10))
    with torch.no_grad():
        params = ghn.predict([graph])[0]
    w = params["ops.n1.weight"]
    assert w.shape == (6, 1, 3, 3)
    torch.testing.assert_close(w[4:], w[:2])
    assert not torch.allclose(w[0], w[1])
    lin = params["ops.n3.weight"]
    assert lin.shape == (10, 6)
    torch.testing.assert_close(lin[:, 4:], lin[:, :2])


def test_kernel_larger_than_max_is_refused() -> None:
    ghn = small_ghn(dataclasses.replace(SMALL, max_kernel=3))
    with pytest.raises(CheckpointError, match="kernel"):
        ghn.predict([make_chain(kernel=5)])


# --------------------------------------------------------------------------- PyG conversion (nas.ghn.pyg)


def test_pyg_fields_match_the_graph(branchy_graph: ArchGraph) -> None:
    g = branchy_graph
    data = to_pyg(g)
    n = len(g)
    names = op_names()
    assert data.num_nodes == n
    assert tuple(data.x.shape) == (n, NODE_FEATURES)
    assert sorted(data.node_index.tolist()) == list(range(n))
    assert data.node_index.tolist() == list(g.order)
    for new, old in enumerate(data.node_index.tolist()):
        assert names[int(data.op[new])] == g.nodes[old].op
        assert data.x[new, : len(names)].argmax().item() == data.op[new].item()
        params = g.node_params(old)
        want = (tuple(params[0].shape) + (1, 1, 1))[:4] if params else (0, 0, 0, 0)
        assert tuple(data.param_shape[new].tolist()) == want
    assert data.edge_index.shape[1] == sum(len(nd.inputs) for nd in g.nodes)
    assert data.edge_attr.tolist() == [[float(p)] for p in data.edge_pos.tolist()]
    for (src, dst), pos in zip(data.edge_index.t().tolist(), data.edge_pos.tolist()):
        assert src < dst  # nodes are in topological order
        old_dst = int(data.node_index[dst])
        assert g.nodes[old_dst].inputs[pos] == int(data.node_index[src])


def test_pyg_batch_of_graphs() -> None:
    from torch_geometric.data import Batch

    graphs = [make_chain(), make_branchy(), make_chain(kernel=5)]
    datas = [to_pyg(g) for g in graphs]
    batch = Batch.from_data_list(datas)
    assert batch.num_graphs == 3
    assert batch.num_nodes == sum(len(g) for g in graphs)
    assert torch.bincount(batch.batch).tolist() == [len(g) for g in graphs]
    assert batch.edge_index.shape[1] == sum(d.edge_index.shape[1] for d in datas)
    for k, d in enumerate(datas):
        back = batch.get_example(k)
        assert torch.equal(back.edge_index, d.edge_index)


def test_pyg_one_hot_follows_the_given_vocabulary(branchy_graph: ArchGraph) -> None:
    ops = tuple(reversed(op_names()))
    data = to_pyg(branchy_graph, ops=ops)
    assert tuple(data.x.shape) == (len(branchy_graph), NODE_FEATURES)
    assert [ops[i] for i in data.op.tolist()] == [branchy_graph.nodes[i].op for i in branchy_graph.order]
    assert data.x[:, : len(ops)].argmax(dim=1).tolist() == data.op.tolist()
    with pytest.raises(ValueError, match="'relu_conv_bn' is missing"):
        to_pyg(branchy_graph, ops=("input", "output"))


def _ghn_graphs() -> list[ArchGraph]:
    nb201 = load_space("nb201", input_shape=(1, 8, 8), num_classes=10, C=4)
    darts = load_space("darts", input_shape=(1, 8, 8), num_classes=10)
    return [c.graph for c in nb201.sample_many(2, seed=1)] + [c.graph for c in darts.sample_many(2, seed=1)]


@pytest.mark.parametrize("reverse", [False, True], ids=["default_vocabulary", "reversed_vocabulary"])
def test_ghn_entry_is_to_pyg_without_the_one_hot_block(reverse: bool) -> None:
    # Two paths agree: the GHN's own conversion and the public one, op indices into the GHN's vocabulary.
    ops = tuple(reversed(op_names())) if reverse else tuple(op_names())
    ghn = small_ghn(dataclasses.replace(SMALL, ops=ops))
    for graph in _ghn_graphs():
        data, pyg = ghn.entry(graph).data, to_pyg(graph, ops=ops)
        assert torch.equal(data.op, pyg.op)
        assert torch.equal(data.x, pyg.x[:, len(ops):])
        for key in ("param_shape", "edge_index", "edge_pos"):
            assert torch.equal(data[key], pyg[key]), key


#: Sum of every predicted tensor per graph of :func:`_ghn_graphs` (2 nb201, 2 darts) by ``small_ghn``, computed
#: before the GHN built its graphs with its own op indices (when ``forward`` remapped ``op_names()`` indices).
_PREDICTED_SUMS = {
    "default_vocabulary": [66.046363, 97.460972, 236.065805, 227.264438],
    "reversed_vocabulary": [57.744486, 90.427206, 401.058988, 336.434178],
}


@pytest.mark.parametrize("vocabulary", sorted(_PREDICTED_SUMS))
def test_predictions_equal_those_before_the_conversion_moved(vocabulary: str) -> None:
    ops = tuple(reversed(op_names())) if vocabulary == "reversed_vocabulary" else tuple(op_names())
    ghn = small_ghn(dataclasses.replace(SMALL, ops=ops))
    with torch.no_grad():
        predicted = ghn.predict(_ghn_graphs())
    sums = [sum(float(t.double().sum()) for t in params.values()) for params in predicted]
    assert sums == pytest.approx(_PREDICTED_SUMS[vocabulary], rel=1e-4)


# --------------------------------------------------------------------------- graph encoding and message passing


def test_virtual_edges_join_nodes_up_to_s_max_hops() -> None:
    chain = torch.tensor([[0, 1, 2, 3], [1, 2, 3, 4]])  # 0 -> 1 -> 2 -> 3 -> 4
    i, j, d = virtual_edges(chain, 5, 3)
    found = sorted(zip(i.tolist(), j.tolist(), d.tolist()))
    assert found == [(0, 2, 2), (0, 3, 3), (1, 3, 2), (1, 4, 3), (2, 4, 2)]
    assert virtual_edges(chain, 5, 1)[0].size == 0


def test_message_matrix_holds_every_edge_type(chain_graph: ArchGraph) -> None:
    entry = graph_entry(chain_graph, s_max=2, max_positions=4)
    N = entry.data.num_nodes
    dense = message_adjacency(entry.data).to_dense().view(N, N, NUM_EDGE_TYPES)  # [receiver, sender, type]
    # the chain input -> conv -> bn -> ...: conv (1) reads input (0); input is 2 hops before bn (2)
    assert dense[1, 0, 0] == 1 and dense[0, 1, 1] == 1
    assert dense[2, 0, 2] == 0.5 and dense[0, 2, 3] == 0.5
    assert dense[3, 0, 2] == 0  # 3 hops > s_max
    assert entry.data.position_counts.sum() == entry.data.msg_row.numel()


def test_sparse_and_edge_list_message_passing_agree(space: SearchSpace) -> None:
    from torch_geometric.data import Batch

    torch.manual_seed(0)
    graphs = [c.graph for c in space.sample_many(3, seed=3)]
    batch = Batch.from_data_list([graph_entry(g, s_max=3, max_positions=8).data for g in graphs])
    conv = GatedDAGConv(8, max_positions=8)
    h = torch.randn(batch.num_nodes, 8)
    sparse = conv(h, message_adjacency(batch), batch.position_counts)
    edge_list = torch.stack([batch.msg_col, batch.msg_row])
    dense = conv(h, edge_list, batch.position_counts, edge_weight=batch.msg_weight)
    torch.testing.assert_close(sparse, dense, rtol=1e-4, atol=1e-5)
    assert "GatedDAGConv(hidden=8" in repr(conv)
    before = conv.lin1.weight.clone()
    conv.reset_parameters()
    assert not torch.equal(before, conv.lin1.weight)


def test_gradients_reach_every_ghn_parameter(space: SearchSpace) -> None:
    ghn = small_ghn()
    graphs = [c.graph for c in space.sample_many(3, seed=4)] + [make_chain(input_shape=(1, 8, 8))]
    x = torch.randn(4, 1, 8, 8)
    loss = sum(
        functional_call(Network(g).train(), p, (x,)).logsumexp(1).mean() for g, p in zip(graphs, ghn.predict(graphs))
    )
    loss.backward()
    missing = [n for n, p in ghn.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []


def test_predict_under_bf16_autocast_returns_float32(space: SearchSpace) -> None:
    ghn = small_ghn()
    graphs = [c.graph for c in space.sample_many(2, seed=5)]
    with torch.no_grad():
        full = ghn.predict(graphs)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = ghn.predict(graphs)
    for a, b in zip(full, low):
        for name in a:
            assert b[name].dtype == torch.float32 and b[name].shape == a[name].shape
            assert torch.isfinite(b[name]).all()
            assert (b[name] - a[name]).abs().max() < 0.1 * a[name].abs().max() + 0.05


# --------------------------------------------------------------------------- checkpoints


def test_save_load_round_trip(tmp_path: Path, space: SearchSpace) -> None:
    ghn = small_ghn(**space.describe(), dataset="digits")
    path = tmp_path / "sub" / "ghn.pt"
    ghn.save(path)
    loaded = GHN.load(path)
    assert loaded.config == ghn.config
    assert loaded.space_info == ghn.space_info
    graphs = [c.graph for c in space.sample_many(2, seed=6)]
    with torch.no_grad():
        for a, b in zip(ghn.predict(graphs), loaded.predict(graphs)):
            for name in a:
                torch.testing.assert_close(a[name], b[name])
    assert not list(tmp_path.joinpath("sub").glob("*.tmp"))  # atomic write leaves no temporary file


def test_full_disk_keeps_the_old_checkpoint_and_leaves_no_temporary_file(
    tmp_path: Path, full_disk: Callable[[], AbstractContextManager[None]]
) -> None:
    path = tmp_path / "ghn.pt"
    small_ghn().save(path)
    before = path.read_bytes()
    bigger = small_ghn(dataclasses.replace(SMALL, hidden=32))
    with full_disk(), pytest.raises(CheckpointError) as err:
        bigger.save(path)
    message = str(err.value)
    assert str(path) in message and "\n" not in message
    assert os.strerror(errno.ENOSPC) in message or os.strerror(errno.EFBIG) in message
    assert path.read_bytes() == before
    assert_only_files(tmp_path, {"ghn.pt"})
    assert GHN.load(path).config == SMALL

    fresh = tmp_path / "new" / "ghn.pt"  # no previous checkpoint: nothing at all is left
    with full_disk(), pytest.raises(CheckpointError, match="new/ghn.pt"):
        bigger.save(fresh)
    assert not fresh.parent.exists() or not any(fresh.parent.iterdir())


class _Evil:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (print, ("pwned",))


@pytest.mark.parametrize("kind", ["corrupt", "truncated", "foreign", "pickled_code", "missing", "bad_weights"])
def test_load_refuses_bad_files(tmp_path: Path, kind: str) -> None:
    good = tmp_path / "good.pt"
    ghn = small_ghn()
    ghn.save(good)
    path = tmp_path / f"{kind}.pt"
    if kind == "corrupt":
        path.write_bytes(b"this is not a checkpoint\n" * 20)
    elif kind == "truncated":
        path.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    elif kind == "foreign":
        torch.save(ghn.state_dict(), path)
    elif kind == "pickled_code":
        torch.save({"format": "ghn-nas/ghn", "version": 1, "payload": _Evil()}, path)
    elif kind == "bad_weights":
        payload = ghn.checkpoint_payload()
        payload["config"]["hidden"] = 32
        torch.save(payload, path)
    with pytest.raises(CheckpointError) as err:
        GHN.load(path)
    message = str(err.value)
    assert str(path) in message and "\n" not in message


def test_check_compatible(space: SearchSpace) -> None:
    ghn = small_ghn(**space.describe(), dataset="digits")
    ghn.check_compatible(space)
    with pytest.raises(CheckpointError, match="num_classes"):
        ghn.check_compatible(load_space("nb201", input_shape=(1, 8, 8), num_classes=5, C=4))
    with pytest.raises(CheckpointError, match="input_shape"):
        ghn.check_compatible(load_space("nb201", input_shape=(1, 28, 28), num_classes=10, C=4))
    no_pool = small_ghn(dataclasses.replace(SMALL, ops=tuple(o for o in SMALL.ops if o != "avg_pool")))
    with pytest.raises(CheckpointError, match="avg_pool"):
        no_pool.check_compatible(space)
    small_kernel = small_ghn(dataclasses.replace(SMALL, max_kernel=3))
    small_kernel.check_compatible(space)  # nb201 needs 3x3 at most
    with pytest.raises(CheckpointError, match="kernel"):
        small_kernel.check_compatible(load_space("macro", input_shape=(1, 8, 8), num_classes=10))


# --------------------------------------------------------------------------- evaluation with predicted weights


def _with_val(data: Dataset, x_val: torch.Tensor, y_val: torch.Tensor) -> Dataset:
    return dataclasses.replace(data, x_val=x_val, y_val=y_val)


def test_batch_norm_statistics_come_from_training_images(digits: Dataset, space: SearchSpace) -> None:
    ghn = small_ghn()
    graphs = [c.graph for c in space.sample_many(2, seed=7)]
    few = _with_val(digits, digits.x_val[:40], digits.y_val[:40])
    whole = ghn.evaluate(graphs, few, bn_images=64)
    one_by_one = ghn.evaluate(graphs, few, bn_images=64, batch_size=1)
    for a, b in zip(whole, one_by_one):
        assert a["acc"] == b["acc"]
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4)
    # one validation image scores the same alone as among very different images
    odd = _with_val(digits, torch.cat([digits.x_val[:1], 50 * torch.randn(7, 1, 8, 8)]), digits.y_val[:8])
    alone = _with_val(digits, digits.x_val[:1], digits.y_val[:1])
    net = ghn.materialize(graphs[0], odd, bn_images=64)
    logits_batch = net(odd.x_val)[0]
    net_alone = ghn.materialize(graphs[0], alone, bn_images=64)
    torch.testing.assert_close(net_alone(alone.x_val)[0], logits_batch, rtol=1e-4, atol=1e-5)
    # running statistics do not depend on the validation images at all
    stats = {k: v for k, v in net.state_dict().items() if "running" in k}
    assert stats and all(torch.equal(v, net_alone.state_dict()[k]) for k, v in stats.items())
    # ...but they do depend on the training images
    shifted = dataclasses.replace(digits, x_train=digits.x_train + 1.0)
    net_shifted = ghn.materialize(graphs[0], shifted, bn_images=64)
    assert any(not torch.equal(v, net_shifted.state_dict()[k]) for k, v in stats.items())


def test_batch_norm_images_are_drawn_from_every_class(digits: Dataset) -> None:
    order = digits.y_train.argsort(stable=True)  # a training split sorted by class
    labels = digits.y_train[order].float().view(-1, 1, 1, 1)
    sampled = bn_sample(labels, 64).view(-1).long()  # the labels of the images bn_sample picks
    assert len(sampled) == 64 and len(sampled.unique()) >= 8
    torch.testing.assert_close(bn_sample(labels, 64), bn_sample(labels, 64))  # the same sample every call
    assert torch.equal(bn_sample(labels, 10**6), labels)


def test_evaluate_matches_materialized_network(digits: Dataset, space: SearchSpace) -> None:
    ghn = small_ghn()
    graph = space.sample(seed=8).graph
    (scored,) = ghn.evaluate([graph], digits, bn_images=100)
    net = ghn.materialize(graph, digits, bn_images=100)
    assert not net.training
    assert all(not p.requires_grad or p.grad is None for p in net.parameters())
    loss, acc = train_evaluate(net, digits.x_val, digits.y_val)
    assert scored["acc"] == pytest.approx(acc)
    assert scored["loss"] == pytest.approx(loss, rel=1e-4)
    assert 0.0 <= acc <= 1.0
    (test,) = ghn.evaluate([graph], digits, split="test", bn_images=100)
    assert test["loss"] == pytest.approx(train_evaluate(net, digits.x_test, digits.y_test)[0], rel=1e-4)
    with pytest.raises(ValueError, match="split"):
        ghn.evaluate([graph], digits, split="train")


def test_scale_invariant_params_are_those_batch_norm_normalises() -> None:
    b = GraphBuilder((1, 8, 8))
    stem = b.add("conv", b.input, out_channels=4, kernel=3)  # read by a bn only: invariant
    x = b.add("bn", stem)
    left = b.add("relu_conv_bn", x, out_channels=4, kernel=3)  # its conv feeds its own bn
    right = b.add("conv", x, out_channels=4, kernel=1)  # read by a sum: its scale matters
    x = b.add("sum", left, right)
    x = b.add("global_avg_pool", x)
    graph = b.build(b.add("linear", x, out_features=10))
    names = scale_invariant_params(graph)
    m = graph.module_name
    assert sorted(names) == sorted([f"ops.{m(stem)}.weight", f"ops.{m(left)}.conv.weight"])
    assert set(names) <= set(dict(Network(graph).named_parameters()))


def test_materialize_rescales_invariant_weights_without_changing_the_function(
    digits: Dataset, space: SearchSpace
) -> None:
    ghn = small_ghn()
    graph = space.sample(seed=8).graph
    raw = ghn.materialize(graph, digits, bn_images=100, rescale=False)
    with torch.no_grad():  # make the predicted scale far from an initialisation's
        for name in scale_invariant_params(graph):
            dict(raw.named_parameters())[name].mul_(10.0)
    raw_params = {k: v.clone() for k, v in raw.state_dict().items()}
    rescaled = Network(graph)
    rescaled.load_state_dict(raw_params)
    rescale_to_init(rescaled, graph)
    torch.manual_seed(0)
    fresh = dict(Network(graph).named_parameters())
    invariant = set(scale_invariant_params(graph))
    assert invariant
    for name, p in rescaled.named_parameters():
        if name in invariant:
            assert p.norm().item() == pytest.approx(fresh[name].norm().item(), rel=1e-5)
            assert p.norm().item() < raw_params[name].norm().item() / 5
        else:
            assert torch.equal(p, raw_params[name])  # everything else as predicted
    x = digits.x_val[:64]
    raw.train(), rescaled.train()  # batch statistics: the scale cancels exactly, up to eps
    with torch.no_grad():
        torch.testing.assert_close(rescaled(x), raw(x), rtol=1e-3, atol=1e-3)
    # materialize() rescales by default: same norms as a fresh network
    net = ghn.materialize(graph, digits, bn_images=100)
    for name in invariant:
        assert dict(net.named_parameters())[name].norm().item() == pytest.approx(fresh[name].norm().item(), rel=1e-5)


# --------------------------------------------------------------------------- meta-training


def _fixed_loss(ghn: GHN, graphs: list[ArchGraph], data: Dataset) -> float:
    x, y = data.x_train[:64], data.y_train[:64]
    with torch.no_grad():
        losses = [
            torch.nn.functional.cross_entropy(functional_call(Network(g).train(), p, (x,)), y)
            for g, p in zip(graphs, ghn.predict(graphs))
        ]
    return float(torch.stack(losses).mean())


def test_meta_training_lowers_the_loss(digits: Dataset, space: SearchSpace) -> None:
    config = _tiny_config(steps=12, meta_batch=3, batch_size=32, lr=1e-2, eval_every=12, num_held_out=3)
    torch.manual_seed(config.seed)
    untrained = GHN(SMALL, space_info={})  # meta_train initialises with config.seed the same way
    ghn = meta_train(space, digits, config, ghn_config=SMALL, progress=False)
    probe = [c.graph for c in space.sample_many(4, seed=99)]
    before, after = _fixed_loss(untrained, probe, digits), _fixed_loss(ghn, probe, digits)
    assert after < before - 0.05, (before, after)
    assert ghn.history and ghn.history[-1]["step"] == 12 and 0 <= ghn.history[-1]["held_out_acc"] <= 1
    assert len(ghn.held_out_keys) == 3 and not ghn.training


def test_held_out_architectures_are_never_sampled(
    digits: Dataset, space: SearchSpace, monkeypatch: pytest.MonkeyPatch
) -> None:
    import nas.ghn._meta_train as mt

    seen: list[str] = []
    original = mt._sample_training

    def spy(*args: object, **kwargs: object) -> ArchGraph:
        graph = original(*args, **kwargs)  # type: ignore[arg-type]
        seen.append(graph.key)
        return graph

    monkeypatch.setattr(mt, "_sample_training", spy)
    extra = space.sample(seed=1234).graph
    ghn = meta_train(space, digits, _tiny_config(steps=3, eval_every=3), held_out=[extra],
                     reference=[(g.graph, float(i)) for i, g in enumerate(space.sample_many(3, seed=77))],
                     ghn_config=SMALL, progress=False)
    assert len(seen) == 3 * 2
    assert not set(seen) & set(ghn.held_out_keys)
    assert extra.key in ghn.held_out_keys
    assert "tau" in ghn.history[-1] and -1 <= ghn.history[-1]["tau"] <= 1


def test_resume_continues_from_the_checkpoint(tmp_path: Path, digits: Dataset, space: SearchSpace) -> None:
    straight = meta_train(space, digits, _tiny_config(steps=4), ghn_config=SMALL, out=tmp_path / "a.pt", progress=False)
    path = tmp_path / "b.pt"
    meta_train(space, digits, _tiny_config(steps=2), ghn_config=SMALL, out=path, progress=False)  # "killed" at step 2
    assert torch.load(path, weights_only=True)["training"]["step"] == 2
    resumed = meta_train(space, digits, _tiny_config(steps=4), ghn_config=SMALL, out=path, progress=False)
    assert resumed.training_state["step"] == 4
    assert [r["step"] for r in resumed.history] == [2, 4]
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b, msg=name)
    loaded = GHN.load(path)
    assert loaded.training_state["step"] == 4 and loaded.held_out_keys == resumed.held_out_keys
    # the same call once finished trains no further
    again = meta_train(space, digits, _tiny_config(steps=4), ghn_config=SMALL, out=path, progress=False)
    assert again.training_state["step"] == 4
    # other settings refuse to resume; resume=False starts over
    with pytest.raises(CheckpointError, match="lr"):
        meta_train(space, digits, _tiny_config(steps=6, lr=1e-2), ghn_config=SMALL, out=path, progress=False)
    fresh = meta_train(space, digits, _tiny_config(steps=2, lr=1e-2), ghn_config=SMALL, out=path, resume=False,
                       progress=False)
    assert fresh.training_state["step"] == 2


def test_snapshots_are_frozen_copies(tmp_path: Path, digits: Dataset, space: SearchSpace) -> None:
    path = tmp_path / "ghn.pt"
    final = meta_train(space, digits, _tiny_config(steps=2, snapshot_every=1, num_held_out=1), ghn_config=SMALL,
                       out=path, progress=False)
    first, second = (GHN.load(snapshot_path(path, s)) for s in (1, 2))
    assert first.training_state["step"] == 1 and second.training_state["step"] == 2
    torch.testing.assert_close(second.state_dict(), final.state_dict())
    assert any(not torch.equal(a, b) for a, b in zip(first.state_dict().values(), final.state_dict().values()))


def test_meta_train_rejects_a_space_for_other_data(digits: Dataset) -> None:
    with pytest.raises(ValueError, match="input"):
        meta_train(load_space("nb201", input_shape=(1, 28, 28)), digits, _tiny_config(), progress=False)
    with pytest.raises(ValueError, match="meta_batch"):
        MetaTrainConfig(meta_batch=0)


def test_ensure_ghn_trains_once_then_reuses(tmp_path: Path, digits: Dataset, space: SearchSpace,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NAS_CACHE_DIR", str(tmp_path))
    path = default_ghn_path(space, "digits")
    assert path.parent == tmp_path and path.suffix == ".pt"
    assert default_ghn_path(load_space("nb201", input_shape=(1, 8, 8), C=8), "digits") != path
    first = ensure_ghn(space, digits, config=_tiny_config(steps=2), ghn_config=SMALL, progress=False)
    assert path.is_file() and first.training_state["step"] == 2

    import nas.ghn._default as default_mod

    def fail(*args: object, **kwargs: object) -> GHN:
        raise AssertionError("meta_train must not run again")

    monkeypatch.setattr(default_mod, "meta_train", fail)
    second = ensure_ghn(space, digits, config=_tiny_config(steps=2), ghn_config=SMALL, progress=False)
    torch.testing.assert_close(second.state_dict(), first.state_dict())


# --------------------------------------------------------------------------- CLI


def test_cli_train_ghn(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from nas.cli import main

    out = tmp_path / "ghn.pt"
    args = ["train-ghn", "--space", "nb201", "--space-arg", "C=4", "--dataset", "digits", "--ghn-steps", "2",
            "--eval-every", "2", "--meta-batch", "2", "--batch-size", "16", "--hidden", "16", "--layers", "1",
            "--num-held-out", "2", "--out", str(out), "--no-progress"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "steps:             2/2" in printed and str(out) in printed and "held-out mean acc: 0." in printed
    ghn = GHN.load(out)
    assert ghn.config.hidden == 16 and ghn.space_info["settings"] == {"C": 4, "N": 1}
    assert main([*args[:-3], "--hidden", "32", "--out", str(out), "--no-progress"]) == 2  # other settings, no resume
    assert "--no-resume" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("flag", "value"),
    [("--meta-batch", "0"), ("--s-max", "0"), ("--eval-every", "0"), ("--num-held-out", "-1"), ("--lr", "0"),
     ("--device", "bogus")],
)
def test_cli_train_ghn_errors_name_the_flag(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flag: str, value: str
) -> None:
    from nas.cli import main

    out = tmp_path / "ghn.pt"
    argv = ["train-ghn", "--space", "nb201", "--dataset", "digits", "--ghn-steps", "1", "--out", str(out), flag, value]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert flag in err and value in err
    assert not re.search(r"`[a-z]+_[a-z_]+`", err), err  # no keyword argument (`meta_batch`) in a CLI error
    assert not out.exists()


def test_cli_train_ghn_on_a_full_disk_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from nas.cli import main

    def no_space(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", no_space)  # the checkpoint's bytes are written, then the disk is full
    out = tmp_path / "ghn.pt"
    argv = ["train-ghn", "--space", "nb201", "--space-arg", "C=4", "--dataset", "digits", "--ghn-steps", "1",
            "--eval-every", "1", "--meta-batch", "1", "--batch-size", "8", "--hidden", "8", "--layers", "1",
            "--num-held-out", "1", "--out", str(out), "--no-progress"]
    assert main(argv) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("nas ")]
    assert err == [f"nas train-ghn: error: cannot write GHN checkpoint {str(out)!r} "
                   f"(OSError: [Errno {errno.ENOSPC}] {os.strerror(errno.ENOSPC)}); any previous file there is unchanged."]
    assert_only_files(tmp_path, set())


def test_checkpoint_is_plain_data(tmp_path: Path) -> None:
    path = tmp_path / "ghn.pt"
    small_ghn().save(path)
    payload = torch.load(path, weights_only=True)
    assert payload["format"] == "ghn-nas/ghn" and payload["version"] == 1
    assert set(payload) >= {"config", "space_info", "state_dict"}
    assert payload["config"]["hidden"] == 16 and payload["history"] == [] and payload["held_out_keys"] == []
