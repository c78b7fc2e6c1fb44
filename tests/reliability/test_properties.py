"""Property-based tests: any graph JSON either loads as a valid graph or raises GraphError.

Hypothesis generates JSON that is near the format (real op names and
attribute names with wild values, indices in and out of range, cycles, missing
fields) and JSON that is anything at all. :meth:`ArchGraph.from_json` must
either return a graph that is really valid (its JSON round-trips to the same
graph and, when small, its network runs and yields one logit vector) or raise
:class:`~nas.exceptions.GraphError` with a one-line message; never another
exception. The examples are derandomized, so CI runs the same ones each time.
"""

from __future__ import annotations

import json
from typing import Any

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nas.exceptions import GraphError
from nas.graph import ArchGraph
from nas.network import Network
from nas.ops import OPS

PROPERTY_SETTINGS = settings(
    max_examples=300,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

ATTR_NAMES = sorted({name for spec in OPS.values() for name in spec.attrs} | {"colour"})
OP_NAMES = sorted(OPS) + ["teleport", ""]

json_scalars = st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.floats(allow_nan=False) | st.text(max_size=5)
any_json = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4),
    max_leaves=20,
)
# Mostly sensible values, sometimes wild ones.
attr_value = st.one_of(
    st.sampled_from([1, 2, 3, 4, 5, 7, 8, 10]), st.integers(-3, 2**31), st.booleans(), st.none(),
    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=3), st.lists(st.integers(0, 3), max_size=2),
)


_SHAPE_KEEPING = ["relu", "bn", "gelu", "identity", "conv", "relu_conv_bn", "max_pool", "avg_pool", "zero"]
_MERGING = ["sum", "concat"]


@st.composite
def near_graph_json(draw: st.DrawFn) -> Any:
    """A graph JSON document that is valid about half of the time, and otherwise wrong in one or two ways."""
    channels = draw(st.sampled_from([1, 3]))
    nodes: list[Any] = [{"op": "input", "inputs": []}]
    for _ in range(draw(st.integers(0, 5))):
        prev = len(nodes) - 1
        op = draw(st.sampled_from(_SHAPE_KEEPING + _MERGING))
        node: dict[str, Any] = {"op": op, "inputs": [prev]}
        if op in _MERGING:
            node["inputs"] = [prev, draw(st.integers(0, prev))]
        elif op in ("conv", "relu_conv_bn"):
            node["attrs"] = {"out_channels": channels, "kernel": draw(st.sampled_from([1, 3, 5]))}
        elif op in ("max_pool", "avg_pool"):
            node["attrs"] = {"kernel": 3, "stride": 1}
        nodes.append(node)
    if draw(st.integers(0, 9)):
        nodes.append({"op": "global_avg_pool", "inputs": [len(nodes) - 1]})
        nodes.append({"op": "linear", "inputs": [len(nodes) - 1], "attrs": {"out_features": draw(st.integers(1, 10))}})
        nodes.append({"op": "output", "inputs": [len(nodes) - 1]})
    doc: dict[str, Any] = {"format_version": 1, "input_shape": [channels, 8, 8], "nodes": nodes}

    for _ in range(draw(st.sampled_from([0, 0, 1, 2]))):
        where = draw(st.integers(0, len(nodes) - 1))
        mutation = draw(st.sampled_from(
            ["op", "inputs", "attr", "drop", "junk-node", "version", "shape", "missing-key", "drop-key"]
        ))
        is_node = isinstance(nodes[where], dict)
        if mutation == "op" and is_node:
            nodes[where]["op"] = draw(st.sampled_from(OP_NAMES))
        elif mutation == "inputs" and is_node:
            nodes[where]["inputs"] = draw(st.lists(st.integers(-1, len(nodes)), max_size=3))
        elif mutation == "attr" and is_node:
            attrs = nodes[where].setdefault("attrs", {})
            if isinstance(attrs, dict):
                attrs[draw(st.sampled_from(ATTR_NAMES))] = draw(attr_value)
        elif mutation == "drop" and len(nodes) > 1:
            del nodes[where]
        elif mutation == "junk-node":
            nodes.insert(where, draw(any_json))
        elif mutation == "version":
            doc["format_version"] = draw(st.sampled_from([0, 2, -1, "1", None, True, 1.0]))
        elif mutation == "shape":
            doc["input_shape"] = draw(st.sampled_from([[0, 8, 8], [1, 8], [-1, 2, 2], "1x8x8", [1.5, 8, 8], [1, 1, 1]]))
        elif mutation == "missing-key":
            del doc[draw(st.sampled_from(sorted(doc)))]
        elif mutation == "drop-key" and is_node:
            nodes[where].pop(draw(st.sampled_from(["op", "inputs", "attrs"])), None)
    return doc


def _check(text: str) -> None:
    try:
        graph = ArchGraph.from_json(text)
    except GraphError as err:
        assert str(err).strip() and "\n" not in str(err), repr(str(err))
        return
    # It loaded, so it must be a real, usable graph.
    again = ArchGraph.from_json(graph.to_json())
    assert again.key == graph.key and again.shapes == graph.shapes
    assert len(graph.shapes[graph.output_index]) == 1
    if graph.num_params() <= 200_000 and max(graph.input_shape) <= 16:
        with torch.no_grad():
            logits = Network(graph).eval()(torch.zeros(1, *graph.input_shape))
        assert tuple(logits.shape) == (1, *graph.shapes[graph.output_index])


@PROPERTY_SETTINGS
@given(near_graph_json())
def test_near_valid_graph_json_loads_or_raises_graph_error(doc: Any) -> None:
    _check(json.dumps(doc))


@PROPERTY_SETTINGS
@given(any_json)
def test_arbitrary_json_loads_or_raises_graph_error(doc: Any) -> None:
    _check(json.dumps(doc))


@PROPERTY_SETTINGS
@given(st.text(max_size=40))
def test_arbitrary_text_loads_or_raises_graph_error(text: str) -> None:
    _check(text)


@settings(max_examples=150, deadline=None, derandomize=True, database=None)
@given(st.integers(0, 10_000), st.data())
def test_mutated_real_candidates_load_or_raise_graph_error(seed: int, data: st.DataObject) -> None:
    """Take a real nb201 candidate, damage one thing, and load it."""
    from nas.space import load_space

    graph = load_space("nb201", input_shape=(1, 8, 8)).sample(seed).graph
    doc = graph.to_dict()
    nodes = doc["nodes"]
    i = data.draw(st.integers(0, len(nodes) - 1))
    mutation = data.draw(st.sampled_from(["drop", "op", "input", "attr", "swap", "dup"]))
    if mutation == "drop":
        del nodes[i]
    elif mutation == "op":
        nodes[i]["op"] = data.draw(st.sampled_from(OP_NAMES))
    elif mutation == "input":
        nodes[i]["inputs"] = data.draw(st.lists(st.integers(-1, len(nodes)), max_size=3))
    elif mutation == "attr":
        nodes[i].setdefault("attrs", {})[data.draw(st.sampled_from(ATTR_NAMES))] = data.draw(attr_value)
    elif mutation == "swap":
        j = data.draw(st.integers(0, len(nodes) - 1))
        nodes[i], nodes[j] = nodes[j], nodes[i]
    else:
        nodes.append(dict(nodes[i]))
    _check(json.dumps(doc))
