"""Ground truth read from a table of trained architectures instead of trained here.

``nas correlate --ground-truth table.csv`` (or ``.parquet``) evaluates every
ranking method against results the user already has: a benchmark's published
table, or an earlier ``nas correlate`` run's ``candidates.csv``. Nothing is
trained.

Layouts (:func:`read_ground_truth`):

* architectures: a ``graph`` column of graph JSON (``key``, when present, must
  be that graph's key), or an ``arch`` column in the space's own encoding
  (:meth:`~nas.space.SearchSpace.params_from_encoding`; NAS-Bench-201's arch
  strings ``|op~0|+|op~0|op~1|+|op~0|op~1|op~2|`` for ``nb201``), built with the
  given space settings;
* the trained metric, first found of: validation losses per seed
  (``gt_val_loss_s0``, ``gt_val_loss_s1``, ...), one loss (``gt_val_loss`` or
  ``val_loss``), accuracies per seed (``gt_val_acc_s<seed>``), one accuracy
  (``gt_val_acc``, ``val_acc``, ``accuracy`` or ``acc``). Losses rank lower as
  better, accuracies higher. A row whose metric is missing (or ``gt_failed``
  true) counts as failed, as a failed training does.

Every architecture must belong to the space with the given settings: it must
take the dataset's images and classes, and every node (operation, attributes
and input shapes) must be one the space builds. A table of another setting
(NAS-Bench-201's own tables are C=16, N=5 on CIFAR-10) is refused with the rows
that do not fit.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from nas.exceptions import DatasetError, GraphError, SpaceError
from nas.graph import ArchGraph

if TYPE_CHECKING:
    from nas.data import Dataset
    from nas.space import SearchSpace

__all__ = ["TableGroundTruth", "read_ground_truth"]

#: Single-value metric columns, in the order they are looked for: (column, metric).
_SINGLE = (("gt_val_loss", "val_loss"), ("val_loss", "val_loss"), ("gt_val_acc", "val_acc"),
           ("val_acc", "val_acc"), ("accuracy", "val_acc"), ("acc", "val_acc"))
#: Samples of the space whose node kinds a table's architectures are checked against, at most.
_MAX_REFERENCE = 4096


@dataclass(frozen=True)
class TableGroundTruth:
    """Trained results read from a table.

    Attributes:
        graphs: The architectures, in the table's order.
        runs: One row per (architecture, seed): ``key``, ``seed``, ``val_loss``,
            ``val_acc``, ``test_acc`` (``nan`` where the table has none),
            ``failed`` and ``wall_time`` (``nan``: not known).
        metric: ``"val_loss"`` (lower is better) or ``"val_acc"`` (higher is better).
        seeds: The training seeds of the table (``[0]`` for a single column).
        source: The file, for messages and ``summary.json``.
    """

    graphs: list[ArchGraph]
    runs: pd.DataFrame
    metric: str
    seeds: list[int]
    source: str

    @property
    def lower_is_better(self) -> bool:
        """Whether a lower value of :attr:`metric` is better."""
        return self.metric.endswith("loss")


def _read(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise FileNotFoundError(f"`--ground-truth`: no such file {str(path)!r}.")
    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            return pd.read_csv(path)
        if suffix == ".parquet":
            return pd.read_parquet(path)
    except Exception as err:  # noqa: BLE001 - any unreadable file is one line naming it
        raise DatasetError(f"`--ground-truth` {str(path)!r} cannot be read as {suffix[1:]} "
                           f"({type(err).__name__}: {' '.join(str(err).split())[:200]}).") from None
    raise DatasetError(f"`--ground-truth` must be a .csv or .parquet file, but got {str(path)!r}.")


def _metric_columns(frame: pd.DataFrame, where: str) -> tuple[str, dict[int, str]]:
    """The metric and its column per seed."""
    for metric in ("val_loss", "val_acc"):
        per_seed = {int(m.group(1)): c for c in frame.columns if (m := re.fullmatch(rf"gt_{metric}_s(\d+)", str(c)))}
        if per_seed:
            return metric, dict(sorted(per_seed.items()))
    for column, metric in _SINGLE:
        if column in frame.columns:
            return metric, {0: column}
    raise DatasetError(
        f"{where} has no trained metric: give validation losses per seed (gt_val_loss_s0, gt_val_loss_s1, ...), "
        "one loss (gt_val_loss or val_loss) or one accuracy (gt_val_acc, val_acc, accuracy or acc); "
        f"its columns are {list(map(str, frame.columns))[:12]}."
    )


def _graphs(frame: pd.DataFrame, space: SearchSpace, where: str) -> list[ArchGraph]:
    graphs: list[ArchGraph] = []
    if "graph" in frame.columns:
        for row, (text, key) in enumerate(zip(frame["graph"], frame.get("key", [None] * len(frame)))):
            try:
                graph = ArchGraph.from_json(str(text))
            except (GraphError, ValueError, TypeError) as err:
                raise GraphError(f"{where} row {row + 1}: `graph` is not an architecture ({err}).") from None
            if isinstance(key, str) and key and key != graph.key:
                raise GraphError(f"{where} row {row + 1}: `key` {key[:12]}... is not the key of its graph "
                                 f"({graph.key[:12]}...); the row was edited or mixed up.")
            graphs.append(graph)
        return graphs
    if "arch" in frame.columns:
        for row, text in enumerate(frame["arch"]):
            try:
                graphs.append(space.from_params(space.params_from_encoding(str(text))))
            except (SpaceError, GraphError) as err:
                raise SpaceError(f"{where} row {row + 1}: `arch` {str(text)[:80]!r} is not an architecture of "
                                 f"space {space.name!r} ({err}).") from None
        return graphs
    raise DatasetError(f"{where} names no architectures: give a `graph` column (graph JSON, as in nas correlate's "
                       "candidates.csv) or an `arch` column in the space's encoding (NAS-Bench-201 arch strings "
                       "for nb201); a `key` alone cannot be rebuilt.")


def _kind(graph: ArchGraph, i: int) -> str:
    node = graph.nodes[i]
    return json.dumps([node.op, node.attrs, [list(s) for s in graph.in_shapes(i)]], sort_keys=True, default=str)


def _space_kinds(space: SearchSpace) -> tuple[set[str], bool]:
    """Node kinds the space builds, from up to :data:`_MAX_REFERENCE` samples; whether the set stopped growing."""
    kinds: set[str] = set()
    quiet = 0
    for cand in space.iter_samples(_MAX_REFERENCE, seed=0):
        before = len(kinds)
        kinds.update(_kind(cand.graph, i) for i in range(len(cand.graph)))
        quiet = quiet + 1 if len(kinds) == before else 0
        if quiet >= 256:
            return kinds, True
    return kinds, False


def _check_membership(graphs: list[ArchGraph], space: SearchSpace, data: Dataset, where: str) -> None:
    settings = ", ".join(f"{k}={v}" for k, v in space.settings.items()) or "its defaults"
    wrong = [(row, g) for row, g in enumerate(graphs)
             if tuple(g.input_shape) != tuple(data.input_shape) or g.num_classes != data.num_classes]
    if wrong:
        row, g = wrong[0]
        raise GraphError(
            f"{where}: {len(wrong)} of {len(graphs)} architectures do not take dataset {data.name!r}'s inputs "
            f"{tuple(data.input_shape)} with {data.num_classes} classes (row {row + 1}: {tuple(g.input_shape)} with "
            f"{g.num_classes}); evaluate the table on the dataset it was trained on."
        )
    kinds, complete = _space_kinds(space)
    foreign = []
    for row, g in enumerate(graphs):
        unknown = [i for i in range(len(g)) if _kind(g, i) not in kinds]
        if unknown:
            foreign.append((row, g, unknown[0]))
    if foreign and complete:
        row, g, i = foreign[0]
        rows = ", ".join(str(r + 1) for r, _, _ in foreign[:10]) + (" ..." if len(foreign) > 10 else "")
        raise GraphError(
            f"{where}: {len(foreign)} of {len(graphs)} architectures are not of space {space.name!r} with "
            f"{settings} (rows {rows}; row {row + 1} has {g.nodes[i].op} {g.nodes[i].attrs} on inputs "
            f"{[tuple(s) for s in g.in_shapes(i)]}, which the space never builds); pass the --space and "
            "--space-arg settings the table was trained with."
        )


def read_ground_truth(path: str | Path, space: SearchSpace, data: Dataset) -> TableGroundTruth:
    """Read a table of trained architectures as ground truth (layouts in the module docstring).

    Args:
        path: A ``.csv`` or ``.parquet`` file.
        space: The space the architectures must belong to (with its settings).
        data: The dataset they were trained on (its input shape and classes are checked).

    Returns:
        The architectures and their results.

    Raises:
        FileNotFoundError: No such file.
        DatasetError: An unreadable file, no architecture or metric column, a
            non-numeric metric, or fewer than 2 architectures.
        GraphError: A bad graph, a key that is not its graph's, duplicate
            architectures, or architectures not of the space and dataset.
        SpaceError: An ``arch`` string the space cannot decode.
    """
    file = Path(path)
    where = f"ground-truth table {str(file)!r}"
    frame = _read(file)
    if len(frame) < 2:
        raise DatasetError(f"{where} has {len(frame)} rows; a ranking needs at least 2 architectures.")
    metric, columns = _metric_columns(frame, where)
    for column in columns.values():
        if not pd.api.types.is_numeric_dtype(frame[column]):
            raise DatasetError(f"{where}: column {column!r} must hold numbers, but has {frame[column].dtype} "
                               f"values such as {frame[column].iloc[0]!r}.")
    graphs = _graphs(frame, space, where)
    seen: dict[str, int] = {}
    for row, g in enumerate(graphs):
        if g.key in seen:
            raise GraphError(f"{where}: rows {seen[g.key] + 1} and {row + 1} are the same architecture "
                             f"({g.key[:12]}...); give each architecture once (average its runs).")
        seen[g.key] = row
    _check_membership(graphs, space, data, where)
    failed_col = frame["gt_failed"].astype(bool).to_numpy() if "gt_failed" in frame.columns else None
    other = "val_acc" if metric == "val_loss" else "val_loss"
    records = []
    for row, g in enumerate(graphs):
        for seed, column in columns.items():
            value = float(frame[column].iloc[row])
            twin = f"gt_{other}_s{seed}"  # the other metric of the same run, when the table has it
            twin_value = float(frame[twin].iloc[row]) if twin in frame.columns else math.nan
            failed = not math.isfinite(value) or bool(failed_col is not None and failed_col[row])
            records.append({
                "key": g.key, "seed": seed, metric: value, other: twin_value,
                "test_acc": float(frame["gt_test_acc"].iloc[row]) if "gt_test_acc" in frame.columns else math.nan,
                "failed": failed, "wall_time": math.nan,
            })
    runs = pd.DataFrame(records, columns=["key", "seed", "val_loss", "val_acc", "test_acc", "failed", "wall_time"])
    if bool(np.all(runs.groupby("key")["failed"].any())):
        raise DatasetError(f"{where}: every architecture's {metric} is missing or failed; nothing to rank against.")
    return TableGroundTruth(graphs, runs, metric, list(columns), str(file))
