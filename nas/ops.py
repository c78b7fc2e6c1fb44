"""The operation vocabulary of architecture graphs.

Every node of an :class:`~nas.graph.ArchGraph` names one operation of this
module. An operation declares, from the shapes of its inputs and its
attributes:

* the shape of its output (so a graph can be checked before it is built),
* the parameter tensors it owns and their shapes (so the hypernetwork can be
  told exactly what to predict),
* the :class:`torch.nn.Module` that executes it.

Feature-map shapes are ``(C, H, W)`` (no batch dimension); vectors after global
pooling are ``(F,)``.

Examples:
    >>> from nas.ops import get_op
    >>> conv = get_op("conv")
    >>> conv.out_shape([(8, 16, 16)], {"out_channels": 16, "kernel": 3, "stride": 2})
    (16, 8, 8)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from nas.exceptions import GraphError

__all__ = [
    "OpSpec",
    "ParamSpec",
    "OPS",
    "PARAM_KINDS",
    "get_op",
    "op_names",
]

Shape = tuple[int, ...]

#: Kinds of parameter tensors. The hypernetwork decodes and normalises each kind
#: differently (fan-in scaling for ``conv``/``linear``, squashing for norms).
PARAM_KINDS = ("conv", "linear", "bias", "norm_weight", "norm_bias")


@dataclasses.dataclass(frozen=True)
class ParamSpec:
    """One parameter tensor of an operation.

    Attributes:
        name: Name relative to the op's module, e.g. ``"weight"`` or ``"bn.bias"``.
        kind: One of :data:`PARAM_KINDS`.
        shape: Full tensor shape.
    """

    name: str
    kind: str
    shape: Shape


@dataclasses.dataclass(frozen=True)
class OpSpec:
    """Declaration of one operation.

    Attributes:
        name: The op name used in graphs and JSON.
        min_inputs: Fewest inputs the op accepts.
        max_inputs: Most inputs the op accepts (``None``: unbounded).
        attrs: Allowed attributes and their defaults.
        infer: ``(in_shapes, attrs) -> out_shape``; raises ``GraphError`` on a mismatch.
        params: ``(in_shapes, attrs) -> list[ParamSpec]``.
        build: ``(in_shapes, attrs) -> nn.Module``; the module's ``forward`` takes
            the inputs positionally.
        description: One line for listings.
    """

    name: str
    min_inputs: int
    max_inputs: int | None
    attrs: Mapping[str, Any]
    infer: Callable[[Sequence[Shape], Mapping[str, Any]], Shape]
    params: Callable[[Sequence[Shape], Mapping[str, Any]], list[ParamSpec]]
    build: Callable[[Sequence[Shape], Mapping[str, Any]], nn.Module]
    description: str = ""

    def resolve_attrs(self, attrs: Mapping[str, Any]) -> dict[str, Any]:
        """Return ``attrs`` completed with defaults; reject unknown attributes."""
        unknown = sorted(set(attrs) - set(self.attrs))
        if unknown:
            raise GraphError(
                f"op {self.name!r} has no attribute {unknown[0]!r}; "
                f"valid attributes: {sorted(self.attrs)}."
            )
        out = dict(self.attrs)
        out.update(attrs)
        return out

    def out_shape(self, in_shapes: Sequence[Shape], attrs: Mapping[str, Any]) -> Shape:
        """Infer the output shape, checking arity and attributes."""
        n = len(in_shapes)
        if n < self.min_inputs or (self.max_inputs is not None and n > self.max_inputs):
            want = (
                f"{self.min_inputs}"
                if self.max_inputs == self.min_inputs
                else f"{self.min_inputs}..{self.max_inputs if self.max_inputs is not None else 'n'}"
            )
            raise GraphError(f"op {self.name!r} takes {want} inputs, but got {n}.")
        return tuple(self.infer(in_shapes, self.resolve_attrs(attrs)))

    def param_specs(self, in_shapes: Sequence[Shape], attrs: Mapping[str, Any]) -> list[ParamSpec]:
        """Parameter tensors the op owns for these input shapes."""
        return self.params(in_shapes, self.resolve_attrs(attrs))

    def module(self, in_shapes: Sequence[Shape], attrs: Mapping[str, Any]) -> nn.Module:
        """Build the executing module."""
        return self.build(in_shapes, self.resolve_attrs(attrs))


# --------------------------------------------------------------------------- helpers


def _need_map(op: str, shape: Shape) -> None:
    if len(shape) != 3:
        raise GraphError(f"op {op!r} needs a (C, H, W) feature map, but got shape {shape}.")


def _need_vec(op: str, shape: Shape) -> None:
    if len(shape) != 1:
        raise GraphError(f"op {op!r} needs a flat (F,) vector, but got shape {shape}.")


def _spatial(size: int, k: int, s: int, d: int, p: int) -> int:
    return (size + 2 * p - d * (k - 1) - 1) // s + 1


def _positive(op: str, attrs: Mapping[str, Any], *names: str) -> None:
    for name in names:
        value = attrs[name]
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise GraphError(f"op {op!r} attribute {name!r} must be a positive int, but got {value!r}.")


def _conv_shape(op: str, in_shapes: Sequence[Shape], a: Mapping[str, Any]) -> Shape:
    (shape,) = in_shapes
    _need_map(op, shape)
    _positive(op, a, "out_channels", "kernel", "stride", "dilation", "groups")
    if a["kernel"] not in (1, 3, 5, 7):
        raise GraphError(f"op {op!r} kernel must be 1, 3, 5 or 7, but got {a['kernel']}.")
    c, h, w = shape
    g = a["groups"]
    if c % g or a["out_channels"] % g:
        raise GraphError(
            f"op {op!r} groups={g} must divide in channels {c} and out channels {a['out_channels']}."
        )
    p = a["dilation"] * (a["kernel"] - 1) // 2
    ho = _spatial(h, a["kernel"], a["stride"], a["dilation"], p)
    wo = _spatial(w, a["kernel"], a["stride"], a["dilation"], p)
    if ho < 1 or wo < 1:
        raise GraphError(f"op {op!r} would shrink a {h}x{w} map to {ho}x{wo}.")
    return (a["out_channels"], ho, wo)


def _conv_weight(in_shapes: Sequence[Shape], a: Mapping[str, Any]) -> Shape:
    c = in_shapes[0][0]
    return (a["out_channels"], c // a["groups"], a["kernel"], a["kernel"])


def _conv2d(in_shapes: Sequence[Shape], a: Mapping[str, Any], bias: bool) -> nn.Conv2d:
    return nn.Conv2d(
        in_shapes[0][0],
        a["out_channels"],
        a["kernel"],
        stride=a["stride"],
        padding=a["dilation"] * (a["kernel"] - 1) // 2,
        dilation=a["dilation"],
        groups=a["groups"],
        bias=bias,
    )


def _same(op: str) -> Callable[[Sequence[Shape], Mapping[str, Any]], Shape]:
    def infer(in_shapes: Sequence[Shape], a: Mapping[str, Any]) -> Shape:
        return tuple(in_shapes[0])

    return infer


def _no_params(in_shapes: Sequence[Shape], a: Mapping[str, Any]) -> list[ParamSpec]:
    return []


class _Lambda(nn.Module):
    """A parameter-free module from a function (for readable ``repr``)."""

    def __init__(self, name: str, fn: Callable[..., torch.Tensor]) -> None:
        super().__init__()
        self.name = name
        self.fn = fn

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        return self.fn(*xs)

    def extra_repr(self) -> str:
        return self.name


class ReLUConvBN(nn.Module):
    """ReLU -> Conv2d (no bias) -> BatchNorm2d, as one op (NAS-Bench-201's ``nor_conv``)."""

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        self.conv = conv
        self.bn = nn.BatchNorm2d(conv.out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(torch.relu(x)))


class AvgPool(nn.Module):
    """Average pooling that ignores padding (``count_include_pad=False``).

    Computed as a depthwise convolution with a box kernel divided by the
    number of in-bounds pixels: the same values as
    ``nn.AvgPool2d(..., count_include_pad=False)``, several times faster on
    CPU for the small maps of NAS candidates.
    """

    def __init__(self, channels: int, kernel: int, stride: int) -> None:
        super().__init__()
        self.channels, self.kernel, self.stride = channels, kernel, stride
        self.padding = (kernel - 1) // 2
        self.register_buffer("box", torch.ones(channels, 1, kernel, kernel), persistent=False)
        self._count: dict[tuple[int, int, torch.device, torch.dtype], torch.Tensor] = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        H, W = x.shape[-2:]  # height, width
        key = (H, W, x.device, x.dtype)
        count = self._count.get(key)
        if count is None:
            ones = torch.ones(1, 1, H, W, device=x.device, dtype=x.dtype)
            count = nn.functional.conv2d(ones, self.box[:1].to(x.dtype), stride=self.stride, padding=self.padding)
            self._count[key] = count
        box = self.box.to(x.dtype)
        return nn.functional.conv2d(x, box, stride=self.stride, padding=self.padding, groups=self.channels) / count

    def extra_repr(self) -> str:
        return f"kernel={self.kernel}, stride={self.stride}"


class Zero(nn.Module):
    """The ``none`` op: zeros of the (possibly strided) input shape."""

    def __init__(self, stride: int) -> None:
        super().__init__()
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 4 and self.stride > 1:
            x = x[:, :, :: self.stride, :: self.stride]
        return torch.zeros_like(x)

    def extra_repr(self) -> str:
        return f"stride={self.stride}"


# --------------------------------------------------------------------------- ops


def _conv() -> OpSpec:
    attrs = {"out_channels": 1, "kernel": 3, "stride": 1, "dilation": 1, "groups": 1, "bias": False}

    def params(s: Sequence[Shape], a: Mapping[str, Any]) -> list[ParamSpec]:
        out = [ParamSpec("weight", "conv", _conv_weight(s, a))]
        if a["bias"]:
            out.append(ParamSpec("bias", "bias", (a["out_channels"],)))
        return out

    return OpSpec(
        "conv", 1, 1, attrs,
        infer=lambda s, a: _conv_shape("conv", s, a),
        params=params,
        build=lambda s, a: _conv2d(s, a, bool(a["bias"])),
        description="2-d convolution (kernel 1/3/5/7, stride, dilation, groups)",
    )


def _relu_conv_bn() -> OpSpec:
    attrs = {"out_channels": 1, "kernel": 3, "stride": 1, "dilation": 1, "groups": 1}

    def params(s: Sequence[Shape], a: Mapping[str, Any]) -> list[ParamSpec]:
        c = a["out_channels"]
        return [
            ParamSpec("conv.weight", "conv", _conv_weight(s, a)),
            ParamSpec("bn.weight", "norm_weight", (c,)),
            ParamSpec("bn.bias", "norm_bias", (c,)),
        ]

    return OpSpec(
        "relu_conv_bn", 1, 1, attrs,
        infer=lambda s, a: _conv_shape("relu_conv_bn", s, a),
        params=params,
        build=lambda s, a: ReLUConvBN(_conv2d(s, a, False)),
        description="ReLU -> conv -> batch norm (NAS-Bench-201 nor_conv)",
    )


def _bn() -> OpSpec:
    def infer(s: Sequence[Shape], a: Mapping[str, Any]) -> Shape:
        _need_map("bn", s[0])
        return tuple(s[0])

    def params(s: Sequence[Shape], a: Mapping[str, Any]) -> list[ParamSpec]:
        c = s[0][0]
        return [ParamSpec("weight", "norm_weight", (c,)), ParamSpec("bias", "norm_bias", (c,))]

    return OpSpec(
        "bn", 1, 1, {}, infer=infer, params=params,
        build=lambda s, a: nn.BatchNorm2d(s[0][0]),
        description="2-d batch normalisation",
    )


def _activation(name: str, fn: Callable[[torch.Tensor], torch.Tensor]) -> OpSpec:
    return OpSpec(
        name, 1, 1, {}, infer=_same(name), params=_no_params,
        build=lambda s, a: _Lambda(name, fn),
        description=f"{name} activation",
    )


def _pool(name: str) -> OpSpec:
    attrs = {"kernel": 3, "stride": 1}

    def infer(s: Sequence[Shape], a: Mapping[str, Any]) -> Shape:
        _need_map(name, s[0])
        _positive(name, a, "kernel", "stride")
        c, h, w = s[0]
        p = (a["kernel"] - 1) // 2
        ho, wo = _spatial(h, a["kernel"], a["stride"], 1, p), _spatial(w, a["kernel"], a["stride"], 1, p)
        if ho < 1 or wo < 1:
            raise GraphError(f"op {name!r} would shrink a {h}x{w} map to {ho}x{wo}.")
        return (c, ho, wo)

    def build(s: Sequence[Shape], a: Mapping[str, Any]) -> nn.Module:
        p = (a["kernel"] - 1) // 2
        if name == "max_pool":
            return nn.MaxPool2d(a["kernel"], a["stride"], p)
        return AvgPool(s[0][0], a["kernel"], a["stride"])

    return OpSpec(name, 1, 1, attrs, infer=infer, params=_no_params, build=build,
                  description=f"{name.replace('_', ' ')}ing (kernel, stride)")


def _global_avg_pool() -> OpSpec:
    def infer(s: Sequence[Shape], a: Mapping[str, Any]) -> Shape:
        _need_map("global_avg_pool", s[0])
        return (s[0][0],)

    return OpSpec(
        "global_avg_pool", 1, 1, {}, infer=infer, params=_no_params,
        build=lambda s, a: _Lambda("global_avg_pool", lambda x: x.mean(dim=(2, 3))),
        description="global average pooling to a (C,) vector",
    )


def _sum() -> OpSpec:
    def infer(s: Sequence[Shape], a: Mapping[str, Any]) -> Shape:
        first = tuple(s[0])
        for i, shape in enumerate(s[1:], start=1):
            if tuple(shape) != first:
                raise GraphError(f"op 'sum' inputs disagree: input 0 has shape {first}, input {i} has {tuple(shape)}.")
        return first

    return OpSpec(
        "sum", 2, None, {}, infer=infer, params=_no_params,
        build=lambda s, a: _Lambda("sum", lambda *xs: torch.stack(xs).sum(0)),
        description="element-wise sum of 2+ inputs of one shape",
    )


def _concat() -> OpSpec:
    def infer(s: Sequence[Shape], a: Mapping[str, Any]) -> Shape:
        for shape in s:
            _need_map("concat", shape)
        hw = tuple(s[0][1:])
        for i, shape in enumerate(s[1:], start=1):
            if tuple(shape[1:]) != hw:
                raise GraphError(
                    f"op 'concat' inputs disagree spatially: input 0 is {hw}, input {i} is {tuple(shape[1:])}."
                )
        return (sum(shape[0] for shape in s), *hw)

    return OpSpec(
        "concat", 2, None, {}, infer=infer, params=_no_params,
        build=lambda s, a: _Lambda("concat", lambda *xs: torch.cat(xs, dim=1)),
        description="channel concatenation of 2+ maps of one spatial size",
    )


def _identity() -> OpSpec:
    return OpSpec("identity", 1, 1, {}, infer=_same("identity"), params=_no_params,
                  build=lambda s, a: nn.Identity(), description="skip connection")


def _zero() -> OpSpec:
    def infer(s: Sequence[Shape], a: Mapping[str, Any]) -> Shape:
        _positive("zero", a, "stride")
        if len(s[0]) == 3 and a["stride"] > 1:
            c, h, w = s[0]
            st = a["stride"]
            return (c, (h + st - 1) // st, (w + st - 1) // st)
        return tuple(s[0])

    return OpSpec("zero", 1, 1, {"stride": 1}, infer=infer, params=_no_params,
                  build=lambda s, a: Zero(a["stride"]), description="zeros (the 'none' op)")


def _linear() -> OpSpec:
    def infer(s: Sequence[Shape], a: Mapping[str, Any]) -> Shape:
        _need_vec("linear", s[0])
        _positive("linear", a, "out_features")
        return (a["out_features"],)

    def params(s: Sequence[Shape], a: Mapping[str, Any]) -> list[ParamSpec]:
        return [
            ParamSpec("weight", "linear", (a["out_features"], s[0][0])),
            ParamSpec("bias", "bias", (a["out_features"],)),
        ]

    return OpSpec("linear", 1, 1, {"out_features": 10}, infer=infer, params=params,
                  build=lambda s, a: nn.Linear(s[0][0], a["out_features"]),
                  description="linear classifier on a (F,) vector")


def _input() -> OpSpec:
    def infer(s: Sequence[Shape], a: Mapping[str, Any]) -> Shape:
        raise GraphError("the 'input' node's shape comes from the graph's input_shape.")

    return OpSpec("input", 0, 0, {}, infer=infer, params=_no_params,
                  build=lambda s, a: nn.Identity(), description="the graph's input")


def _output() -> OpSpec:
    return OpSpec("output", 1, 1, {}, infer=_same("output"), params=_no_params,
                  build=lambda s, a: nn.Identity(), description="the graph's output (logits)")


OPS: dict[str, OpSpec] = {
    op.name: op
    for op in (
        _input(),
        _output(),
        _conv(),
        _relu_conv_bn(),
        _bn(),
        _activation("relu", torch.relu),
        _activation("gelu", torch.nn.functional.gelu),
        _pool("max_pool"),
        _pool("avg_pool"),
        _global_avg_pool(),
        _sum(),
        _concat(),
        _identity(),
        _zero(),
        _linear(),
    )
}


def op_names() -> list[str]:
    """Names of every op in the vocabulary, in a fixed order (used as feature index)."""
    return list(OPS)


def get_op(name: str) -> OpSpec:
    """Look up an op by name.

    Raises:
        GraphError: If ``name`` is not in the vocabulary; the message lists the valid names.
    """
    try:
        return OPS[name]
    except (KeyError, TypeError):
        raise GraphError(f"unknown op {name!r}; valid ops: {', '.join(OPS)}.") from None
