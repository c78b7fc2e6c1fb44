"""Architecture graphs: validation errors, canonical keys, JSON, parameter and FLOP counts, deprecated PyG wrappers."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
import torch

from conftest import make_branchy, make_chain
from nas.exceptions import GraphError
from nas.graph import FORMAT_VERSION, ArchGraph, GraphBuilder, Node
from nas.network import Network
from nas.ops import op_names

SHAPE = (1, 8, 8)


def _head(start: int) -> list[Node]:
    """global pool -> linear -> output, reading node ``start - 1``."""
    return [
        Node("global_avg_pool", (start - 1,)),
        Node("linear", (start,), {"out_features": 10}),
        Node("output", (start + 1,)),
    ]


def _graph(nodes: list[Node], shape: tuple[int, ...] = SHAPE) -> ArchGraph:
    return ArchGraph(nodes, input_shape=shape)


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("nodes", "message"),
    [
        pytest.param([], "graph is empty", id="empty"),
        pytest.param(
            [Node("input"), Node("relu", (2,)), Node("relu", (1,)), *_head(3)],
            "graph has a cycle through nodes",
            id="cycle",
        ),
        pytest.param(
            [Node("input"), Node("swish", (0,)), *_head(2)],
            "node 1: unknown op 'swish'; valid ops: input, output",
            id="unknown-op",
        ),
        pytest.param(
            [Node("input"), Node("relu", (0,)), Node("bn", (0,)), *_head(3)],
            "node 1 (relu) has no path to the output",
            id="dead-end",
        ),
        pytest.param(
            [
                Node("input"),
                Node("conv", (0,), {"out_channels": 4}),
                Node("conv", (0,), {"out_channels": 8}),
                Node("sum", (1, 2)),
                *_head(4),
            ],
            "node 3 (sum): op 'sum' inputs disagree: input 0 has shape (4, 8, 8), input 1 has (8, 8, 8)",
            id="sum-shapes",
        ),
        pytest.param(
            [
                Node("input"),
                Node("conv", (0,), {"out_channels": 4}),
                Node("conv", (0,), {"out_channels": 4, "stride": 2}),
                Node("concat", (1, 2)),
                *_head(4),
            ],
            "node 3 (concat): op 'concat' inputs disagree spatially: input 0 is (8, 8), input 1 is (4, 4)",
            id="concat-spatial",
        ),
        pytest.param(
            [Node("input"), Node("conv", (0,), {"out_channels": 4}), Node("sum", (1,)), *_head(3)],
            "node 2 (sum): op 'sum' takes 2..n inputs, but got 1",
            id="arity-sum",
        ),
        pytest.param(
            [Node("input"), Node("relu", (0, 0)), *_head(2)],
            "node 1 (relu): op 'relu' takes 1 inputs, but got 2",
            id="arity-relu",
        ),
        pytest.param(
            [Node("input"), Node("input"), Node("sum", (0, 1)), *_head(3)],
            "graph needs exactly one 'input' node, but has 2",
            id="two-inputs",
        ),
        pytest.param(
            [Node("input"), Node("relu", (0,)), *_head(2)[:2]],
            "graph needs exactly one 'output' node, but has 0",
            id="no-output",
        ),
        pytest.param(
            [Node("input"), Node("relu", (7,)), *_head(2)],
            "node 1 (relu): input 7 is not a node index in 0..4",
            id="input-out-of-range",
        ),
        pytest.param(
            [Node("input"), Node("relu", (-1,)), *_head(2)],
            "node 1 (relu): input -1 is not a node index",
            id="input-negative",
        ),
        pytest.param(
            [Node("input"), Node("conv", (0,), {"out_channels": 4, "padding": 1}), *_head(2)],
            "node 1 (conv): op 'conv' has no attribute 'padding'",
            id="unknown-attribute",
        ),
        pytest.param(
            [Node("input"), Node("conv", (0,), {"out_channels": 4, "kernel": 2}), *_head(2)],
            "node 1 (conv): op 'conv' kernel must be 1, 3, 5 or 7, but got 2",
            id="bad-attribute-value",
        ),
        pytest.param(
            [Node("input"), Node("conv", (0,), {"out_channels": "8"}), *_head(2)],
            "'out_channels' must be a positive int, but got '8'",
            id="bad-attribute-type",
        ),
        pytest.param(
            [Node("input"), Node("conv", (0,), {"out_channels": 4}), Node("output", (1,))],
            "node 2 (output) must receive logits (F,), but gets (4, 8, 8)",
            id="output-not-logits",
        ),
        pytest.param(
            [Node("input", (0,)), Node("relu", (0,)), *_head(2)],
            "graph has a cycle through nodes 0 -> 0",
            id="input-with-inputs",
        ),
    ],
)
def test_validation_errors(nodes: list[Node], message: str) -> None:
    with pytest.raises(GraphError, match=re.escape(message)):
        _graph(nodes)


def test_bad_input_shape() -> None:
    with pytest.raises(GraphError, match=re.escape("`input_shape` must be (C, H, W) of positive ints")):
        ArchGraph(make_chain().nodes, input_shape=(8, 8))


def test_builder_checks_shapes_when_adding() -> None:
    b = GraphBuilder((1, 8, 8))
    a = b.add("conv", b.input, out_channels=4)
    c = b.add("conv", b.input, out_channels=8)
    with pytest.raises(GraphError, match=re.escape("node 3 (sum): op 'sum' inputs disagree")):
        b.add("sum", a, c)
    with pytest.raises(GraphError, match="input 9 does not exist yet"):
        b.add("relu", 9)


def test_builder_drops_nodes_that_do_not_reach_the_output() -> None:
    b = GraphBuilder((1, 8, 8))
    b.add("conv", b.input, out_channels=4)  # a branch nobody reads
    x = b.add("global_avg_pool", b.input)
    g = b.build(b.add("linear", x, out_features=3))
    assert [n.op for n in g.nodes] == ["input", "global_avg_pool", "linear", "output"]
    assert g.num_classes == 3


# --------------------------------------------------------------------------- canonical key


def _permuted(g: ArchGraph, seed: int) -> ArchGraph:
    perm = np.random.default_rng(seed).permutation(len(g))  # old index -> new index
    nodes: list[Node | None] = [None] * len(g)
    for old, node in enumerate(g.nodes):
        nodes[perm[old]] = Node(node.op, tuple(int(perm[j]) for j in node.inputs), dict(node.attrs))
    return ArchGraph(nodes, input_shape=g.input_shape)  # type: ignore[arg-type]


@pytest.mark.parametrize("seed", range(5))
def test_key_is_invariant_to_node_numbering(seed: int) -> None:
    g = make_branchy()
    p = _permuted(g, seed)
    assert p.to_dict() != g.to_dict()  # really renumbered
    assert p.key == g.key
    assert p == g and hash(p) == hash(g)
    assert p.canonical().to_dict() == g.canonical().to_dict()
    assert g.canonical().key == g.key


def test_key_differs_for_different_graphs() -> None:
    keys = {
        make_chain().key,
        make_chain(kernel=5).key,
        make_chain(channels=8).key,
        make_chain((1, 8, 9)).key,
        make_branchy().key,
    }
    assert len(keys) == 5


def _merge(op: str, swap: bool) -> ArchGraph:
    b = GraphBuilder((1, 8, 8))
    a = b.add("conv", b.input, out_channels=4, kernel=3)
    c = b.add("conv", b.input, out_channels=4, kernel=5)
    x = b.add(op, *((c, a) if swap else (a, c)))
    x = b.add("global_avg_pool", x)
    return b.build(b.add("linear", x, out_features=10))


def test_sum_input_order_does_not_change_the_key() -> None:
    assert _merge("sum", False).key == _merge("sum", True).key


def test_concat_input_order_changes_the_key() -> None:
    assert _merge("concat", False).key != _merge("concat", True).key


# --------------------------------------------------------------------------- JSON


def test_json_round_trip(branchy_graph: ArchGraph) -> None:
    text = branchy_graph.to_json()
    data = json.loads(text)
    assert data["format_version"] == FORMAT_VERSION
    assert data["input_shape"] == [3, 8, 8]
    back = ArchGraph.from_json(text)
    assert back.key == branchy_graph.key
    assert back.to_dict() == branchy_graph.to_dict()
    assert back.nodes == branchy_graph.nodes


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{not json", "graph JSON does not parse"),
        ("[1, 2]", "graph JSON must be an object, but got list"),
        ('{"input_shape": [1, 8, 8], "nodes": []}', "needs an integer 'format_version', but got None"),
        ('{"format_version": 0, "input_shape": [1, 8, 8], "nodes": []}', "must be >= 1, but got 0"),
        ('{"format_version": 1, "input_shape": "1x8x8", "nodes": []}', "'input_shape' must be a list of ints"),
        ('{"format_version": 1, "input_shape": [1, 8, 8], "nodes": {}}', "'nodes' must be a list, but got dict"),
        ('{"format_version": 1, "input_shape": [1, 8, 8], "nodes": [{"inputs": []}]}', "node 0: expected an object"),
        (
            '{"format_version": 1, "input_shape": [1, 8, 8], "nodes": [{"op": "input", "inputs": 3}]}',
            "node 0: 'inputs' must be a list",
        ),
    ],
)
def test_malformed_json(text: str, message: str) -> None:
    with pytest.raises(GraphError, match=re.escape(message)):
        ArchGraph.from_json(text)


def test_newer_format_version_is_refused(chain_graph: ArchGraph) -> None:
    data = chain_graph.to_dict()
    data["format_version"] = FORMAT_VERSION + 1
    with pytest.raises(GraphError, match=f"format version {FORMAT_VERSION + 1}, newer than this ghn-nas reads"):
        ArchGraph.from_json(json.dumps(data))


def test_json_of_an_invalid_graph_is_refused(chain_graph: ArchGraph) -> None:
    data = chain_graph.to_dict()
    data["nodes"][1]["op"] = "conv2"
    with pytest.raises(GraphError, match="unknown op 'conv2'"):
        ArchGraph.from_dict(data)


# --------------------------------------------------------------------------- PyG (deprecated wrappers)


def test_deprecated_to_pyg_warns_and_equals_nas_ghn_to_pyg(branchy_graph: ArchGraph) -> None:
    from nas.ghn import to_pyg

    with pytest.warns(DeprecationWarning, match=r"nas\.ghn\.to_pyg"):
        old = branchy_graph.to_pyg()
    new = to_pyg(branchy_graph)
    assert set(old.keys()) == set(new.keys()) and old.num_nodes == new.num_nodes
    for key, value in new.items():
        if key != "num_nodes":
            assert torch.equal(old[key], value), key


def test_deprecated_node_features_warns() -> None:
    import nas.graph
    from nas.ghn import NODE_FEATURES

    with pytest.warns(DeprecationWarning, match=r"nas\.ghn\.NODE_FEATURES"):
        assert nas.graph.NODE_FEATURES == NODE_FEATURES
    with pytest.raises(AttributeError, match="NODE_FEATUREZ"):
        nas.graph.NODE_FEATUREZ  # noqa: B018


# --------------------------------------------------------------------------- counts


@pytest.mark.parametrize("factory", [make_chain, make_branchy])
def test_num_params_equals_network_count(factory) -> None:  # noqa: ANN001
    g = factory()
    net = Network(g)
    assert g.num_params() == sum(p.numel() for p in net.parameters())
    assert g.num_params() == sum(math.prod(spec.shape) for _, spec in g.param_specs.values())


def test_num_params_of_the_chain_by_hand() -> None:
    g = make_chain((1, 8, 8), channels=4, kernel=3)
    conv, bn, linear = 4 * 1 * 3 * 3, 2 * 4, 4 * 10 + 10
    assert g.num_params() == conv + bn + linear


@pytest.mark.parametrize(("c_in", "c_out", "k", "stride", "size"), [(3, 4, 3, 1, 8), (2, 6, 5, 2, 9), (1, 3, 1, 1, 5)])
def test_flops_of_a_single_conv(c_in: int, c_out: int, k: int, stride: int, size: int) -> None:
    b = GraphBuilder((c_in, size, size))
    x = b.add("conv", b.input, out_channels=c_out, kernel=k, stride=stride)
    x = b.add("global_avg_pool", x)
    classes = 10
    g = b.build(b.add("linear", x, out_features=classes))
    out = (size + 2 * ((k - 1) // 2) - k) // stride + 1  # output height = width
    conv_flops = 2 * c_out * c_in * k * k * out * out  # one multiply-add per weight per output pixel
    linear_flops = 2 * c_out * classes
    assert g.flops() == conv_flops + linear_flops


def test_forget_flops_makes_the_next_call_count_again(branchy_graph: ArchGraph) -> None:
    first = branchy_graph.flops()
    assert branchy_graph.__dict__["_flops"] == first  # cached on the graph
    branchy_graph.forget_flops()
    assert "_flops" not in branchy_graph.__dict__
    assert branchy_graph.flops() == first  # counted again (from the per-node memo), same result


def _whole_network_flops(graph: ArchGraph) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        Network(graph).eval()(torch.zeros(1, *graph.input_shape))
    return int(counter.get_total_flops())


@pytest.mark.parametrize(("space_name", "shape"), [("nb201", (1, 28, 28)), ("darts", (3, 8, 8)), ("macro", (1, 8, 8))])
def test_flops_summed_per_node_equal_counting_the_whole_network(space_name: str, shape: tuple[int, ...]) -> None:
    from nas.space import load_space

    space = load_space(space_name, input_shape=shape, num_classes=10)
    graphs = [c.graph for c in space.sample_many(12, seed=5, unique=True)]
    assert [g.flops() for g in graphs] == [_whole_network_flops(g) for g in graphs]
    assert len({g.flops() for g in graphs}) > 1  # the candidates differ, so the check is not vacuous


def test_node_flops_is_memoised_per_op_attrs_and_shapes(monkeypatch) -> None:  # noqa: ANN001
    import torch.utils.flop_counter as fc

    from nas.graph import node_flops

    node_flops.cache_clear()
    calls = []
    real = fc.FlopCounterMode

    def counting(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(fc, "FlopCounterMode", counting)
    a = make_chain((1, 8, 8), channels=4, kernel=3)
    b = make_chain((1, 8, 8), channels=4, kernel=3)
    a.flops()
    counted = len(calls)
    assert counted > 0
    b.flops()
    assert len(calls) == counted  # same ops, attributes and shapes: nothing counted again
    make_chain((1, 8, 8), channels=6, kernel=3).flops()
    assert len(calls) > counted  # a new width is counted


def test_op_counts(branchy_graph: ArchGraph) -> None:
    counts = branchy_graph.op_counts()
    assert set(counts) == set(op_names())
    assert counts["conv"] == 1 and counts["relu_conv_bn"] == 1 and counts["sum"] == 1
    assert counts["bn"] == 0
    assert sum(counts.values()) == len(branchy_graph)
