"""Export a trained candidate for deployment: ONNX, ``torch.export``, and a plain PyTorch module file.

Every export is checked before it is kept: the exported model runs on real
images of the dataset and its logits must match the PyTorch network's
(:class:`~nas.network.Network` with the given weights) to within
:data:`TOLERANCE`; otherwise nothing is written and :class:`ExportError` says
by how much they differ. Files are written under a temporary name and renamed
once checked, so an interrupted export leaves no half-written file.

Formats (:data:`EXPORT_FORMATS`):

* ``onnx`` -> ``<stem>.onnx``: :func:`torch.onnx.export` (the dynamo exporter),
  checked with :func:`onnx.checker.check_model` and run with onnxruntime. The
  batch dimension is dynamic.
* ``program`` -> ``<stem>.pt2``: an :class:`torch.export.ExportedProgram`
  (:func:`torch.export.save`); load it with ``torch.export.load(path).module()``.
  The batch dimension is dynamic.
* ``python`` -> ``<stem>.py`` and ``<stem>_weights.pt``: a module file that
  needs only ``torch``: the network traced with :mod:`torch.fx` (so the
  package's operations are inlined into plain ``torch`` calls and standard
  ``torch.nn`` layers), with its weights beside it. ``load()`` in that file
  returns the network in eval mode (weights read with ``weights_only=True``).

Example:
    >>> from nas.export import export_candidate  # doctest: +SKIP
    >>> checks = export_candidate(graph, state, data.x_test[:64], "exported")  # doctest: +SKIP
"""

from __future__ import annotations

import builtins
import contextlib
import copy
import importlib.util
import io
import logging
import operator
import os
import re
import sys
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor

from nas._atomic import one_line, save_torch, temporary_path
from nas.exceptions import ExportError
from nas.graph import ArchGraph
from nas.network import Network

__all__ = [
    "EXPORT_FORMATS",
    "FILE_ENDINGS",
    "TOLERANCE",
    "ExportCheck",
    "export_candidate",
    "load_network",
    "run_export",
]

logger = logging.getLogger(__name__)

#: Export formats, in the order they are written.
EXPORT_FORMATS: tuple[str, ...] = ("onnx", "program", "python")
#: The endings of the files each format writes after the stem (the model first).
FILE_ENDINGS: dict[str, tuple[str, ...]] = {"onnx": (".onnx",), "program": (".pt2",), "python": (".py", "_weights.pt")}
#: Largest absolute logit difference an export may show against the PyTorch network.
TOLERANCE = 1e-4
#: What each format needs beyond torch, to name in the error when it is missing.
_NEEDS = {"onnx": ("onnx", "onnxscript", "onnxruntime")}


@dataclass(frozen=True)
class ExportCheck:
    """One export that was written and checked.

    Attributes:
        format: One of :data:`EXPORT_FORMATS`.
        files: The files written (the model first).
        max_abs_diff: Largest absolute logit difference against the PyTorch
            network over ``images`` images.
        images: How many images the check ran on.
        seconds: Wall time of exporting and checking.
    """

    format: str
    files: tuple[Path, ...]
    max_abs_diff: float
    images: int
    seconds: float


def load_network(graph: ArchGraph, state: Mapping[str, Tensor], *, source: str = "the weights") -> Network:
    """The candidate's network with ``state`` loaded, in eval mode on the CPU.

    Args:
        graph: The architecture.
        state: A state_dict of that architecture's network (``best.pt``, or
            ``nas train --save``).
        source: What ``state`` is, for the error message (a file name).

    Raises:
        ExportError: ``state`` is not a state_dict of this architecture (the
            message names missing, unexpected or misshapen entries).
    """
    net = Network(graph)
    expected = net.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(expected) & set(state) if tuple(state[k].shape) != tuple(expected[k].shape))
    if missing or unexpected or wrong:
        parts = [f"{len(names)} {what} (first {names[0]!r})"
                 for names, what in ((missing, "missing"), (unexpected, "unexpected"), (wrong, "misshapen"))
                 if names]
        raise ExportError(
            f"{source} do not fit architecture {graph.key[:12]}: {', '.join(parts)} entries; pass the weights "
            "trained for this architecture (the campaign's best.pt with its best.json)."
        )
    net.load_state_dict(dict(state))
    return net.eval()


# --------------------------------------------------------------------------- quiet exporters


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence the exporters' progress prints, warnings and log lines (failures still raise)."""
    names = ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript", "onnx_ir")
    loggers = [logging.getLogger(name) for name in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _require(fmt: str) -> None:
    missing = [name for name in _NEEDS.get(fmt, ()) if importlib.util.find_spec(name) is None]
    if missing:
        raise ExportError(
            f"format {fmt!r} needs {', '.join(missing)}, which are not installed: "
            "pip install 'ghn-nas[export]' (or pip install onnx onnxscript onnxruntime)."
        )


def _dynamic_batch() -> dict[str, dict[int, Any]]:
    return {"x": {0: torch.export.Dim("batch", min=1, max=65536)}}


# --------------------------------------------------------------------------- onnx


def _write_onnx(net: Network, example: Tensor, path: Path, final: Path) -> list[Path]:
    _require("onnx")
    import onnx

    with _quiet():
        torch.onnx.export(net, (example,), str(path), dynamo=True, dynamic_shapes=_dynamic_batch(),
                          input_names=["images"], output_names=["logits"], external_data=False)
    onnx.checker.check_model(str(path), full_check=True)
    return [path]


def _run_onnx(files: Sequence[Path], images: Tensor) -> Tensor:
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = max(1, torch.get_num_threads())
    session = onnxruntime.InferenceSession(str(files[0]), options, providers=["CPUExecutionProvider"])
    (logits,) = session.run(["logits"], {"images": images.numpy()})
    return torch.from_numpy(logits)


# --------------------------------------------------------------------------- torch.export


def _write_program(net: Network, example: Tensor, path: Path, final: Path) -> list[Path]:
    with _quiet():
        program = torch.export.export(net, (example,), dynamic_shapes=_dynamic_batch())
    torch.export.save(program, str(path))
    return [path]


def _run_program(files: Sequence[Path], images: Tensor) -> Tensor:
    with _quiet():
        module = torch.export.load(str(files[0])).module()
    with torch.no_grad():
        return module(images)


# --------------------------------------------------------------------------- plain python module

#: Modules whose functions and classes the plain module file may import.
_IMPORTABLE = ("torch", "builtins", "operator", "math")


def _import_line(name: str, obj: Any) -> str:
    """The import that binds ``name`` to ``obj`` in the generated file, or ExportError."""
    if isinstance(obj, float):  # fx binds inf and nan as globals
        return f"{name} = float({str(obj)!r})"
    if obj is type(None):
        return f"{name} = type(None)"
    if obj is None or isinstance(obj, (str, int, bool)):  # e.g. a type annotation fx keeps as a string
        return f"{name} = {obj!r}"
    if isinstance(obj, type(sys)):
        if obj.__name__.split(".")[0] not in _IMPORTABLE:
            raise ExportError(f"the traced network uses module {obj.__name__!r}; a plain module file may import "
                              f"only {', '.join(_IMPORTABLE)}.")
        return f"import {obj.__name__}" if obj.__name__ == name else f"import {obj.__name__} as {name}"
    module = getattr(obj, "__module__", None) or ""
    qualname = getattr(obj, "__qualname__", None) or getattr(obj, "__name__", None)
    if module.split(".")[0] not in _IMPORTABLE or not qualname or "<" in qualname:
        raise ExportError(f"the traced network calls {obj!r} from {module or 'an unknown module'!r}; a plain "
                          f"module file may call only {', '.join(_IMPORTABLE)}: use the onnx or program format.")
    if "." in qualname:  # a method or a nested class: reached through its module
        return f"import {module}\n{name} = {module}.{qualname}"
    return f"from {module} import {qualname} as {name}"


_PLAIN_HEADER = '''"""Architecture {key} as a plain PyTorch module (written by `nas export`; needs only torch).

    net = load()                    # weights from {weights}, eval mode
    logits = net(images)            # images: (B, {shape}) normalised like the training data
"""

from pathlib import Path

import torch
from torch import nn

{imports}

#: The weights file written beside this one.
WEIGHTS = "{weights}"


def _place(root: nn.Module, path: str, value) -> None:
    *parents, name = path.split(".")
    for part in parents:
        if not hasattr(root, part):
            root.add_module(part, nn.Module())
        root = getattr(root, part)
    if isinstance(value, nn.Module):
        root.add_module(name, value)
    else:
        root.register_buffer(name, value)


class Net(nn.Module):
    """Architecture {key}: input (B, {shape}), output (B, {classes}) logits."""

    def __init__(self) -> None:
        super().__init__()
{layers}

{forward}

def load(weights=None, map_location="cpu") -> Net:
    """The network with its trained weights (default: the file WEIGHTS beside this one), in eval mode."""
    net = Net()
    path = Path(weights) if weights is not None else Path(__file__).with_name(WEIGHTS)
    net.load_state_dict(torch.load(path, map_location=map_location, weights_only=True))
    return net.eval()
'''


def _plain_source(net: Network, weights_name: str) -> tuple[str, dict[str, Tensor]]:
    """Source of a module file equivalent to ``net`` that imports only torch, and the state it loads."""
    try:
        traced = torch.fx.symbolic_trace(copy.deepcopy(net))  # tracing stores tensor constants on its root
    except Exception as err:  # noqa: BLE001 - any tracing failure means this format is not available
        raise ExportError(f"the network cannot be traced into a plain module file ({type(err).__name__}: "
                          f"{one_line(err)}); use the onnx or program format.") from err
    layers: list[str] = []
    state: dict[str, Tensor] = {}
    for node in traced.graph.nodes:
        if node.op == "call_module":
            module = traced.get_submodule(node.target)
            if not type(module).__module__.startswith("torch.nn") or list(module.children()):
                raise ExportError(f"layer {node.target!r} is a {type(module).__name__}, not a torch.nn layer; "
                                  "use the onnx or program format.")
            layers.append(f"        _place(self, {node.target!r}, nn.{module!r})")
            state.update({f"{node.target}.{k}": v for k, v in module.state_dict().items()})
        elif node.op == "get_attr" and node.target not in state:
            value = operator.attrgetter(node.target)(traced)
            if not isinstance(value, Tensor):
                raise ExportError(f"the traced network reads {node.target!r}, a {type(value).__name__}, "
                                  "not a tensor; use the onnx or program format.")
            layers.append(f"        _place(self, {node.target!r}, torch.empty({tuple(value.shape)}, "
                          f"dtype={value.dtype}))")
            state[node.target] = value.detach()
    code = traced.graph.python_code(root_module="self")
    imports = sorted({_import_line(name, obj) for name, obj in code.globals.items()
                      if name not in ("torch", "nn") and getattr(builtins, name, None) is not obj
                      and re.search(rf"\b{re.escape(name)}\b", code.src)})
    forward = "\n".join("    " + line if line.strip() else "" for line in code.src.strip("\n").splitlines())
    graph = net.graph
    text = _PLAIN_HEADER.format(
        key=graph.key[:12], weights=weights_name, shape=", ".join(map(str, graph.input_shape)),
        classes=graph.num_classes, imports="\n".join(imports), layers="\n".join(layers) or "        pass",
        forward=forward)
    return text, {k: v.detach().cpu().clone() for k, v in state.items()}


def _write_python(net: Network, example: Tensor, path: Path, final: Path) -> list[Path]:
    weights = path.with_name(path.stem + FILE_ENDINGS["python"][1])
    text, state = _plain_source(net, final.stem + FILE_ENDINGS["python"][1])  # the name it will have once checked
    path.write_text(text)
    save_torch(state, weights, what="plain module weights")
    return [path, weights]


def _run_python(files: Sequence[Path], images: Tensor) -> Tensor:
    spec = importlib.util.spec_from_file_location(f"_nas_export_{files[0].stem.replace('.', '_')}", files[0])
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    net = module.load(files[1])
    with torch.no_grad():
        return net(images)


#: format -> (writer(net, example, path, final path) -> files, runner(files, images) -> logits).
_FORMATS: dict[str, tuple[Callable[..., list[Path]], Callable[..., Tensor]]] = {
    "onnx": (_write_onnx, _run_onnx),
    "program": (_write_program, _run_program),
    "python": (_write_python, _run_python),
}


def export_candidate(
    graph: ArchGraph,
    state: Mapping[str, Tensor],
    images: Tensor,
    out: str | Path,
    *,
    formats: Sequence[str] = EXPORT_FORMATS,
    stem: str = "model",
    tolerance: float = TOLERANCE,
    source: str = "the weights",
) -> list[ExportCheck]:
    """Export a trained candidate in each format and check each against the PyTorch network.

    Args:
        graph: The architecture.
        state: Its trained state_dict.
        images: Real images of the dataset to check on, ``(N, C, H, W)`` with
            ``(C, H, W) == graph.input_shape``, normalised like training data.
        out: Folder to write into (created if missing).
        formats: Which of :data:`EXPORT_FORMATS` to write.
        stem: File name stem (``model`` -> ``model.onnx``, ``model.pt2``, ``model.py``).
        tolerance: Largest absolute logit difference allowed.
        source: What ``state`` is, for error messages.

    Returns:
        One :class:`ExportCheck` per format, in the order of ``formats``.

    Raises:
        ExportError: An unknown format, images of the wrong shape, weights that
            do not fit, a failed export, or logits that differ by more than
            ``tolerance`` (that format's files are not kept; formats already
            checked are).
    """
    unknown = [f for f in formats if f not in _FORMATS]
    if unknown or not formats:
        raise ExportError(f"`formats` must be a non-empty selection of {', '.join(EXPORT_FORMATS)}, "
                          f"but got {list(formats)!r}.")
    if images.dim() != 4 or tuple(images.shape[1:]) != tuple(graph.input_shape) or not len(images):
        raise ExportError(f"`images` must have shape (N, {', '.join(map(str, graph.input_shape))}) with N >= 1, "
                          f"but got {tuple(images.shape)}.")
    if not (tolerance > 0):
        raise ExportError(f"`tolerance` must be positive, but got {tolerance!r}.")
    net = load_network(graph, state, source=source)
    images = images.detach().float().cpu()
    with torch.no_grad():
        reference = net(images)  # (N, num_classes)
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    checks = []
    for fmt in dict.fromkeys(formats):
        checks.append(_export_one(fmt, net, images, reference, folder / f"{stem}{FILE_ENDINGS[fmt][0]}", tolerance))
    return checks


def _export_one(fmt: str, net: Network, images: Tensor, reference: Tensor, path: Path,
                tolerance: float) -> ExportCheck:
    """Write one format under temporary names, check it, and rename it into place."""
    write, run = _FORMATS[fmt]
    start = time.perf_counter()
    tmp = temporary_path(path)
    written: list[Path] = []
    try:
        try:
            example = images[:2] if len(images) >= 2 else images.repeat(2, 1, 1, 1)  # batch 1 would pin the size
            written = write(net, example, tmp, path)
            logits = run(written, images)
        except ExportError:
            raise
        except Exception as err:  # noqa: BLE001 - exporters raise many kinds; each becomes one line
            raise ExportError(f"{fmt} export of {net.graph.key[:12]} failed ({type(err).__name__}: "
                              f"{one_line(err)}).") from err
        if tuple(logits.shape) != tuple(reference.shape):
            raise ExportError(f"{fmt} export returns logits of shape {tuple(logits.shape)}, "
                              f"not {tuple(reference.shape)}; it is not kept.")
        diff = float((logits.float() - reference).abs().max())
        if not diff <= tolerance:
            raise ExportError(f"{fmt} export differs from the PyTorch network by {diff:.3g} (largest absolute logit "
                              f"difference over {len(images)} images; at most {tolerance:g} allowed); it is not kept.")
        final = [path if f == tmp else path.with_name(path.stem + f.name[len(tmp.stem):]) for f in written]
        for src, dst in zip(written, final):
            os.replace(src, dst)
        written = []
    finally:
        for f in written:
            f.unlink(missing_ok=True)
    return ExportCheck(fmt, tuple(final), diff, len(images), time.perf_counter() - start)


def run_export(check: ExportCheck, images: Tensor) -> Tensor:
    """Run an exported model (as :func:`export_candidate` checks it) on ``images``; returns the logits."""
    return _FORMATS[check.format][1](check.files, images)
