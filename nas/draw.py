"""Draw an architecture graph with matplotlib alone.

Nodes are placed in layers by their topological depth (the longest path from
the input), top to bottom, and ordered inside a layer by the mean position of
their inputs, which keeps most edges short. Each node is a box coloured by its
op and labelled with the op and its main attributes.

Examples:
    >>> from search_spaces import NB201Space
    >>> ax = draw_graph(NB201Space(input_shape=(1, 8, 8)).sample(0).graph)
    >>> ax.figure.savefig("cell.png")  # doctest: +SKIP
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from nas.graph import ArchGraph
from nas.ops import op_names

__all__ = ["draw_graph", "layered_layout", "node_label"]


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
    """Draw ``graph`` as a layered DAG.

    Args:
        graph: The graph to draw.
        ax: Axes to draw into; by default a new :class:`~matplotlib.figure.Figure`
            (not registered with pyplot) sized to the graph.
        fontsize: Font size of the node labels.

    Returns:
        The axes drawn into; save with ``ax.figure.savefig(path)``.
    """
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
