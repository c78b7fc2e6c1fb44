"""Measured inference latency of candidates, cached per architecture, device and batch size.

Latency is measured, never estimated: the candidate's network runs in eval mode
under ``torch.no_grad`` on the device, timed with :class:`torch.utils.benchmark.Timer`
(``blocked_autorange``: repeated blocks until ``min_run_time`` seconds are
spent), and reported as the median time per batch with its interquartile range
(the measurement's own noise). A measurement costs about ``min_run_time``
seconds plus a warm-up, so campaigns measure only the pool their Pareto front is
drawn from (:attr:`~nas.campaign.CampaignConfig.latency_pool`).

:class:`LatencyCache` keeps measurements in a CSV file (one row per key,
device and batch size); a resumed campaign measures nothing twice.

Example:
    >>> cache = LatencyCache("runs/c/latency.csv")  # doctest: +SKIP
    >>> table = cache.measure_missing(graphs, device="cpu", batch_size=1)  # doctest: +SKIP
    >>> table[["key", "latency_ms", "latency_iqr_ms"]]  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
from torch.utils import benchmark
from tqdm.auto import tqdm

from nas._atomic import atomic_write
from nas.graph import ArchGraph
from nas.network import Network

__all__ = ["LATENCY_COLUMNS", "Latency", "LatencyCache", "measure_latency"]

logger = logging.getLogger(__name__)

#: Columns of the cache file and of :meth:`LatencyCache.measure_missing`'s table.
LATENCY_COLUMNS = ("key", "device", "batch_size", "threads", "latency_ms", "latency_iqr_ms", "runs")


@dataclass(frozen=True)
class Latency:
    """One latency measurement.

    Attributes:
        median_ms: Median wall time of one forward pass of a batch, in milliseconds.
        iqr_ms: Interquartile range of the per-block times, in milliseconds.
        runs: Forward passes timed (all blocks).
    """

    median_ms: float
    iqr_ms: float
    runs: int


def measure_latency(graph: ArchGraph, *, device: str = "cpu", batch_size: int = 1,
                    min_run_time: float = 0.2) -> Latency:
    """Time one forward pass of ``graph``'s network (random weights: latency does not depend on them).

    Args:
        graph: The architecture.
        device: Torch device (``"cpu"``, ``"cuda"``); CUDA is synchronised by the timer.
        batch_size: Images per forward pass.
        min_run_time: Seconds of timed blocks, at least.

    Returns:
        The median and interquartile range per batch.

    Raises:
        ValueError: ``batch_size`` or ``min_run_time`` is not positive.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"`batch_size` must be a positive int, but got {batch_size!r}.")
    if not min_run_time > 0:
        raise ValueError(f"`min_run_time` must be positive, but got {min_run_time!r}.")
    net = Network(graph).to(device).eval()
    x = torch.randn(batch_size, *graph.input_shape, device=device)  # (B, C, H, W)
    with torch.no_grad():
        net(x)  # warm-up: first-call allocations are not latency
        timer = benchmark.Timer(stmt="net(x)", globals={"net": net, "x": x},
                                num_threads=torch.get_num_threads())
        m = timer.blocked_autorange(min_run_time=min_run_time)
    return Latency(m.median * 1e3, m.iqr * 1e3, int(m.number_per_run * len(m.raw_times)))


class LatencyCache:
    """Latency measurements in a CSV file, one row per (key, device, batch size).

    Args:
        path: The CSV file (created on first write; its folder must exist).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def read(self) -> pd.DataFrame:
        """Every cached measurement (columns :data:`LATENCY_COLUMNS`)."""
        if not self.path.is_file():
            return pd.DataFrame(columns=list(LATENCY_COLUMNS))
        frame = pd.read_csv(self.path)
        missing = [c for c in LATENCY_COLUMNS if c not in frame.columns]
        if missing:
            raise ValueError(f"latency cache {str(self.path)!r} lacks columns {missing}; delete it to measure again.")
        return frame[list(LATENCY_COLUMNS)]

    def lookup(self, keys: Sequence[str], *, device: str, batch_size: int) -> pd.DataFrame:
        """Cached rows of ``keys`` on ``device`` at ``batch_size`` (keys never measured are absent)."""
        frame = self.read()
        mask = (frame["device"].astype(str) == str(device)) & (frame["batch_size"] == batch_size)
        return frame[mask & frame["key"].isin(list(keys))].drop_duplicates("key", keep="last")

    def measure_missing(self, graphs: Sequence[ArchGraph], *, device: str = "cpu", batch_size: int = 1,
                        min_run_time: float = 0.2, progress: bool = False) -> pd.DataFrame:
        """Measure the graphs not cached yet (each saved as soon as it is measured); return all of them.

        Returns:
            One row per distinct graph, in the order given (columns :data:`LATENCY_COLUMNS`).
        """
        unique = list({g.key: g for g in graphs}.values())
        known = self.lookup([g.key for g in unique], device=device, batch_size=batch_size)
        todo = [g for g in unique if g.key not in set(known["key"])]
        if todo:
            logger.info("measuring the latency of %d candidates on %s at batch size %d (%d cached)",
                        len(todo), device, batch_size, len(unique) - len(todo))
        for graph in tqdm(todo, desc="latency", unit="cand", disable=not progress):
            lat = measure_latency(graph, device=device, batch_size=batch_size, min_run_time=min_run_time)
            row = {"key": graph.key, "device": str(device), "batch_size": batch_size,
                   "threads": torch.get_num_threads(), "latency_ms": lat.median_ms, "latency_iqr_ms": lat.iqr_ms,
                   "runs": lat.runs}
            frame = pd.concat([self.read(), pd.DataFrame([row])], ignore_index=True)
            atomic_write(self.path, lambda p, f=frame: f.to_csv(p, index=False))
        found = self.lookup([g.key for g in unique], device=device, batch_size=batch_size).set_index("key")
        return found.loc[[g.key for g in unique]].reset_index()[list(LATENCY_COLUMNS)]


def pareto_front(score: Sequence[float], cost: Sequence[float]) -> list[bool]:
    """Which points no other point beats on both (lower ``score`` and lower ``cost``; non-finite points never)."""
    points = list(zip(score, cost))
    out = []
    for i, (s, c) in enumerate(points):
        if not (math.isfinite(s) and math.isfinite(c)):
            out.append(False)
            continue
        dominated = any(math.isfinite(s2) and math.isfinite(c2) and s2 <= s and c2 <= c and (s2 < s or c2 < c)
                        for j, (s2, c2) in enumerate(points) if j != i)
        out.append(not dominated)
    return out
