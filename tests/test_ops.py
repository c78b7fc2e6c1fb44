"""Each op's declared output shape and parameters against the module it builds."""

from __future__ import annotations

import re

import pytest
import torch

from nas.exceptions import GraphError
from nas.ops import OPS, PARAM_KINDS, get_op, op_names

# (op, input shapes, attrs): at least one case per op that has a module to run.
CASES = [
    ("conv", [(3, 8, 8)], {"out_channels": 4, "kernel": 3}),
    ("conv", [(4, 9, 9)], {"out_channels": 8, "kernel": 5, "stride": 2}),
    ("conv", [(4, 8, 8)], {"out_channels": 4, "kernel": 3, "dilation": 2, "groups": 4}),
    ("conv", [(2, 7, 7)], {"out_channels": 6, "kernel": 7, "bias": True}),
    ("conv", [(4, 8, 8)], {"out_channels": 4, "kernel": 1, "stride": 2}),
    ("relu_conv_bn", [(3, 8, 8)], {"out_channels": 5, "kernel": 3}),
    ("relu_conv_bn", [(4, 7, 7)], {"out_channels": 8, "kernel": 3, "stride": 2, "groups": 2}),
    ("bn", [(6, 5, 5)], {}),
    ("relu", [(3, 4, 4)], {}),
    ("gelu", [(3, 4, 4)], {}),
    ("max_pool", [(3, 8, 8)], {"kernel": 3, "stride": 2}),
    ("max_pool", [(3, 7, 7)], {"kernel": 3, "stride": 1}),
    ("avg_pool", [(3, 8, 8)], {"kernel": 2, "stride": 2}),
    ("avg_pool", [(3, 7, 7)], {"kernel": 3, "stride": 2}),
    ("global_avg_pool", [(5, 4, 4)], {}),
    ("sum", [(3, 4, 4), (3, 4, 4), (3, 4, 4)], {}),
    ("concat", [(3, 4, 4), (5, 4, 4)], {}),
    ("identity", [(3, 4, 4)], {}),
    ("zero", [(3, 4, 4)], {}),
    ("zero", [(3, 5, 5)], {"stride": 2}),
    ("linear", [(12,)], {"out_features": 7}),
    ("output", [(10,)], {}),
]


def _ids(case: tuple) -> str:
    op, shapes, attrs = case
    return f"{op}-{shapes}-{attrs}"


def test_every_op_has_a_case() -> None:
    covered = {op for op, _, _ in CASES} | {"input"}
    assert covered == set(op_names())


@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_out_shape_matches_module(case: tuple) -> None:
    op, shapes, attrs = case
    spec = get_op(op)
    module = spec.module(shapes, attrs)
    torch.manual_seed(0)
    xs = [torch.randn(2, *s) for s in shapes]
    y = module(*xs)
    assert tuple(y.shape) == (2, *spec.out_shape(shapes, attrs))


@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_param_specs_match_module(case: tuple) -> None:
    op, shapes, attrs = case
    spec = get_op(op)
    module = spec.module(shapes, attrs)
    declared = {p.name: tuple(p.shape) for p in spec.param_specs(shapes, attrs)}
    actual = {name: tuple(p.shape) for name, p in module.named_parameters()}
    assert declared == actual
    assert all(p.kind in PARAM_KINDS for p in spec.param_specs(shapes, attrs))


def test_param_kinds_of_relu_conv_bn() -> None:
    specs = get_op("relu_conv_bn").param_specs([(3, 8, 8)], {"out_channels": 4})
    assert [(p.name, p.kind) for p in specs] == [
        ("conv.weight", "conv"),
        ("bn.weight", "norm_weight"),
        ("bn.bias", "norm_bias"),
    ]


def test_zero_outputs_zeros() -> None:
    y = get_op("zero").module([(3, 5, 5)], {"stride": 2})(torch.ones(2, 3, 5, 5))
    assert tuple(y.shape) == (2, 3, 3, 3)
    assert not y.any()


def test_sum_and_concat_values() -> None:
    a, b = torch.randn(2, 3, 4, 4), torch.randn(2, 2, 4, 4)
    assert torch.allclose(get_op("sum").module([(3, 4, 4)] * 2, {})(a, a), 2 * a)
    cat = get_op("concat").module([(3, 4, 4), (2, 4, 4)], {})(a, b)
    assert torch.equal(cat[:, :3], a) and torch.equal(cat[:, 3:], b)


@pytest.mark.parametrize(
    ("op", "shapes", "attrs", "message"),
    [
        ("conv", [(3, 8, 8)], {"out_channels": 4, "kernel": 4}, "kernel must be 1, 3, 5 or 7"),
        ("conv", [(3, 8, 8)], {"out_channels": 4, "groups": 2}, "groups=2 must divide"),
        ("conv", [(3, 8, 8)], {"out_channels": 0}, "'out_channels' must be a positive int"),
        ("conv", [(3, 8, 8)], {"out_channels": 4, "padding": 1}, "has no attribute 'padding'"),
        ("conv", [(12,)], {"out_channels": 4}, "needs a (C, H, W) feature map"),
        ("linear", [(3, 4, 4)], {"out_features": 2}, "needs a flat (F,) vector"),
        ("max_pool", [(3, 1, 1)], {"kernel": 2, "stride": 2}, "would shrink a 1x1 map to 0x0"),
        ("sum", [(3, 4, 4)], {}, "takes 2..n inputs, but got 1"),
        ("sum", [(3, 4, 4), (4, 4, 4)], {}, "inputs disagree"),
        ("concat", [(3, 4, 4), (3, 2, 2)], {}, "disagree spatially"),
        ("relu", [(3, 4, 4), (3, 4, 4)], {}, "takes 1 inputs, but got 2"),
    ],
)
def test_out_shape_errors(op: str, shapes: list, attrs: dict, message: str) -> None:
    with pytest.raises(GraphError, match=re.escape(message)):
        get_op(op).out_shape(shapes, attrs)


def test_unknown_op_lists_valid_names() -> None:
    with pytest.raises(GraphError, match="unknown op 'conv9'; valid ops: input, output, conv"):
        get_op("conv9")


def test_op_names_are_the_vocabulary_in_order() -> None:
    assert op_names() == list(OPS)
    assert op_names()[:2] == ["input", "output"]
