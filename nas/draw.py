"""Draw an architecture graph: Graphviz ``dot`` lays it out, matplotlib draws it.

With Graphviz installed (the ``dot`` program), :func:`dot_layout` places the
nodes and routes every edge as a spline around the boxes (``dot -Tplain``);
matplotlib draws the splines with their arrowheads first and the boxes on top,
so a figure saves as PNG and PDF alike. Without Graphviz the fallback
:func:`layered_layout` places nodes in layers by topological depth (the longest
path from the input), ordered inside a layer by the mean position of their
inputs, and edges are straight or slightly bent. Each node is a box coloured by
its op and labelled with the op and its main attributes.

Examples:
    >>> from search_spaces import NB201Space
    >>> ax = draw_graph(NB201Space(input_shape=(1, 8, 8)).sample(0).graph)
    >>> ax.figure.savefig("cell.png")  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import shutil
import subprocess
from collections import defaultdict
from typing import Any, NamedTuple

from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch
from matplotlib.path import Path as MplPath

from nas.graph import ArchGraph
from nas.ops import op_names

__all__ = ["DotLayout", "dot_layout", "draw_graph", "layered_layout", "node_label"]

logger = logging.getLogger(__name__)


class DotLayout(NamedTuple):
    """A Graphviz layout, in inches: the drawing's size, node centres and sizes, edge splines."""

    width: float
    height: float
    nodes: dict[int, tuple[float, float, float, float]]  # index -> (x, y, width, height)
    edges: list[tuple[int, int, list[tuple[float, float]]]]  # (source, target, cubic B-spline control points)


def _box_size(label: str, fontsize: float) -> tuple[float, float]:
    """Width and height in inches of a box holding ``label`` at ``fontsize`` points."""
    lines = label.split("\n")
    char = 0.6 * fontsize / 72  # a character's mean width in inches
    return max(len(line) for line in lines) * char + 0.2, len(lines) * 1.25 * fontsize / 72 + 0.12


def dot_layout(graph: ArchGraph, *, fontsize: float = 7.0, timeout: float = 30.0) -> DotLayout | None:
    """Lay ``graph`` out with Graphviz ``dot``, or return ``None`` when Graphviz is not installed or fails.

    Args:
        graph: The graph.
        fontsize: Font size the boxes are sized for.
        timeout: Seconds ``dot`` may take.

    Returns:
        The layout, top to bottom from the input.
    """
    program = shutil.which("dot")
    if program is None:
        return None
    lines = ["digraph G {", "rankdir=TB; nodesep=0.2; ranksep=0.3; splines=spline;",
             "node [shape=box, fixedsize=true, label=\"\"];"]
    for i in range(len(graph.nodes)):
        w, h = _box_size(node_label(graph, i), fontsize)
        lines.append(f"n{i} [width={w:.3f}, height={h:.3f}];")
    for i, node in enumerate(graph.nodes):
        lines += [f"n{j} -> n{i};" for j in node.inputs]
    lines.append("}")
    try:
        proc = subprocess.run([program, "-Tplain"], input="\n".join(lines), capture_output=True, text=True,
                              timeout=timeout, check=True)
    except (OSError, subprocess.SubprocessError) as err:
        logger.warning("Graphviz dot failed (%s); drawing with the built-in layout", err)
        return None
    width = height = 0.0
    nodes: dict[int, tuple[float, float, float, float]] = {}
    edges: list[tuple[int, int, list[tuple[float, float]]]] = []
    for row in proc.stdout.splitlines():
        parts = row.split()
        if parts[:1] == ["graph"]:
            width, height = float(parts[2]), float(parts[3])
        elif parts[:1] == ["node"]:
            nodes[int(parts[1][1:])] = (float(parts[2]), float(parts[3]), float(parts[4]), float(parts[5]))
        elif parts[:1] == ["edge"]:
            n = int(parts[3])
            points = [(float(parts[4 + 2 * k]), float(parts[5 + 2 * k])) for k in range(n)]
            edges.append((int(parts[1][1:]), int(parts[2][1:]), points))
    return DotLayout(width, height, nodes, edges)


def layered_layout(graph: ArchGraph) -> dict[int, tuple[float, float]]:
    """Positions of the nodes: ``x`` inside a layer, ``y = -depth``.

    Args:
        graph: The graph to lay out.

    Returns:
        ``{node index: (x, y)}``; the input is at ``y = 0``, each layer's nodes
        are centred on ``x = 0`` one unit apart.
    """
    depth: dict[int, int] = {}
    for i in graph.order:
        depth[i] = 1 + max((depth[j] for j in graph.nodes[i].inputs), default=-1)
    layers: dict[int, list[int]] = defaultdict(list)
    for i in graph.order:
        layers[depth[i]].append(i)
    pos: dict[int, tuple[float, float]] = {}
    for d in sorted(layers):
        members = layers[d]

        def barycentre(i: int) -> float:
            xs = [pos[j][0] for j in graph.nodes[i].inputs]
            return sum(xs) / len(xs) if xs else 0.0

        members.sort(key=lambda i: (barycentre(i), i))
        offset = (len(members) - 1) / 2
        for k, i in enumerate(members):
            pos[i] = (k - offset, -float(d))
    return pos


def node_label(graph: ArchGraph, i: int) -> str:
    """Short label of node ``i``: the op, then kernel, stride, dilation, groups and width.

    Example: ``"conv 3x3 /2\\n16ch dw"`` for a depthwise 3x3 conv of stride 2.
    """
    node = graph.nodes[i]
    attrs = node.attrs
    if node.op == "input":
        return "input\n" + "x".join(map(str, graph.input_shape))
    if node.op == "output":
        return f"output\n{graph.num_classes} classes"
    head = node.op
    if "kernel" in attrs:
        head += f" {attrs['kernel']}x{attrs['kernel']}"
    if attrs.get("stride", 1) != 1:
        head += f" /{attrs['stride']}"
    details = []
    if "out_channels" in attrs:
        details.append(f"{attrs['out_channels']}ch")
    if "out_features" in attrs:
        details.append(f"{attrs['out_features']}")
    if attrs.get("dilation", 1) != 1:
        details.append(f"d{attrs['dilation']}")
    groups = attrs.get("groups", 1)
    if groups != 1:
        details.append("dw" if groups == graph.in_shapes(i)[0][0] else f"g{groups}")
    return head + ("\n" + " ".join(details) if details else "")


def draw_graph(graph: ArchGraph, ax: Axes | None = None, *, fontsize: float = 7.0) -> Axes:
    """Draw ``graph`` as a DAG, laid out by Graphviz ``dot`` when it is installed (:func:`dot_layout`).

    Args:
        graph: The graph to draw.
        ax: Axes to draw into; by default a new :class:`~matplotlib.figure.Figure`
            (not registered with pyplot) sized to the graph.
        fontsize: Font size of the node labels.

    Returns:
        The axes drawn into; save with ``ax.figure.savefig(path)``.
    """
    layout = dot_layout(graph, fontsize=fontsize)
    if layout is not None:
        return _draw_dot(graph, layout, ax, fontsize=fontsize)
    pos = layered_layout(graph)
    if ax is None:
        width = max(sum(1 for p in pos.values() if p[1] == y) for y in {p[1] for p in pos.values()})
        depth = -min(p[1] for p in pos.values())
        fig = Figure(figsize=(max(4.0, 1.5 * width), max(3.0, 0.65 * (depth + 1))))
        ax = fig.add_subplot()
    names = op_names()
    cmap = colormaps["tab20"]
    for i, node in enumerate(graph.nodes):
        for k, j in enumerate(node.inputs):
            props: dict[str, Any] = {"arrowstyle": "-|>", "color": "0.35", "lw": 0.8, "shrinkA": 9, "shrinkB": 9}
            if pos[j][1] - pos[i][1] > 1:  # bend edges that skip layers, so they do not hide nodes
                props["connectionstyle"] = "arc3,rad=0.15"
            ax.annotate("", xy=pos[i], xytext=pos[j], arrowprops=props, zorder=1)
            if node.op == "concat":  # concat order matters; show it
                mid = ((pos[i][0] * 2 + pos[j][0]) / 3, (pos[i][1] * 2 + pos[j][1]) / 3)
                ax.text(*mid, str(k), fontsize=fontsize - 1, color="0.3", ha="center", va="center", zorder=2)
    for i, node in enumerate(graph.nodes):
        colour = cmap(names.index(node.op) % cmap.N)
        ax.text(
            *pos[i],
            node_label(graph, i),
            ha="center",
            va="center",
            fontsize=fontsize,
            zorder=3,
            bbox={"boxstyle": "round,pad=0.3", "facecolor": colour, "edgecolor": "0.2", "lw": 0.6},
        )
    xs = [p[0] for p in pos.values()]
    ys = [p[1] for p in pos.values()]
    ax.set_xlim(min(xs) - 0.8, max(xs) + 0.8)
    ax.set_ylim(min(ys) - 0.6, max(ys) + 0.6)
    ax.set_axis_off()
    ax.set_title(f"{len(graph)} nodes, {graph.num_params():,} params, key {graph.key[:10]}", fontsize=fontsize + 1)
    return ax


def _border_point(start: tuple[float, float], box: tuple[float, float, float, float]) -> tuple[float, float]:
    """Where the segment from ``start`` towards the centre of ``box`` (x, y, width, height) meets its border."""
    x, y, w, h = box
    dx, dy = x - start[0], y - start[1]
    scale = min(abs(w / 2 / dx) if dx else float("inf"), abs(h / 2 / dy) if dy else float("inf"))
    if scale >= 1:  # start is inside the box already
        return start
    return x - dx * scale, y - dy * scale


def _draw_dot(graph: ArchGraph, layout: DotLayout, ax: Axes | None, *, fontsize: float) -> Axes:
    """Draw a :func:`dot_layout`: splines with arrowheads under the boxes, one inch per data unit."""
    if ax is None:
        fig = Figure(figsize=(max(3.0, layout.width + 0.4), max(2.0, layout.height + 0.6)))
        ax = fig.add_subplot()
        fig.subplots_adjust(left=0.02, right=0.98, bottom=0.02, top=1 - 0.45 / fig.get_figheight())
    names = op_names()
    cmap = colormaps["tab20"]
    for source, target, points in layout.edges:
        # dot ends a spline where its own arrowhead would start: continue it to the target box's border.
        tip = _border_point(points[-1], layout.nodes[target])
        codes = [MplPath.MOVETO] + [MplPath.CURVE4] * (len(points) - 1) + [MplPath.LINETO]
        arrow = FancyArrowPatch(path=MplPath([*points, tip], codes), arrowstyle="-|>", mutation_scale=9,
                                color="0.3", lw=0.8, zorder=1)
        ax.add_patch(arrow)
        node = graph.nodes[target]
        if node.op == "concat":  # concat order matters; show it next to the edge's end
            x, y = points[-1]
            ax.text(x + 0.05, y + 0.05, str(node.inputs.index(source)), fontsize=fontsize - 1, color="0.3",
                    zorder=2)
    for i, node in enumerate(graph.nodes):
        x, y, w, h = layout.nodes[i]
        ax.add_patch(FancyBboxPatch((x - w / 2, y - h / 2), w, h, boxstyle="round,pad=0,rounding_size=0.05",
                                    facecolor=cmap(names.index(node.op) % cmap.N), edgecolor="0.2", lw=0.6,
                                    zorder=3))
        ax.text(x, y, node_label(graph, i), ha="center", va="center", fontsize=fontsize, zorder=4)
    ax.set_xlim(-0.1, layout.width + 0.1)
    ax.set_ylim(-0.1, layout.height + 0.1)
    ax.set_aspect("equal")
    ax.set_axis_off()
    ax.set_title(f"{len(graph)} nodes, {graph.num_params():,} params, key {graph.key[:10]}", fontsize=fontsize + 1)
    return ax
