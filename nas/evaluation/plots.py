"""Figures of the correlation study, drawn from its tables.

Each function takes the DataFrame(s) of :func:`nas.evaluation.correlate`,
draws on ``ax`` (a new figure when ``None``) and returns the
:class:`~matplotlib.axes.Axes`; nothing is shown. Figures are created with
:class:`matplotlib.figure.Figure` directly, so no pyplot state or interactive
backend is involved. :func:`save_figure` writes a PNG (200 dpi) and a PDF.

Examples:
    >>> ax = plot_method_bars(result.summary)  # doctest: +SKIP
    >>> save_figure(ax.figure, "out/figures/method_bars")  # doctest: +SKIP
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from scipy import stats

from nas import _atomic
from nas.evaluation.metrics import ranking_scores

__all__ = ["plot_score_vs_truth", "plot_method_bars", "save_figure"]

_GHN_COLOR = "tab:red"
_BASE_COLOR = "tab:blue"


def _new_axes(figsize: tuple[float, float]) -> Axes:
    fig = Figure(figsize=figsize)
    return fig.subplots()


def _label(method: str) -> str:
    return method.replace("_", " ")


def plot_score_vs_truth(frame: pd.DataFrame, method: str = "ghn", ax: Axes | None = None, *,
                        metric: str = "val_loss") -> Axes:
    """Scatter a method's scores against the trained validation loss.

    Each point is a candidate: its score (higher = predicted better) against
    its validation loss averaged over training seeds; the vertical bar spans
    the per-seed losses (the seed noise). The title gives Kendall's tau and
    Spearman's rho of the score against ``-loss`` (as in the summary).
    Candidates that failed to train or that the method could not score are
    left out of the scatter (their count is shown).

    Args:
        frame: A :attr:`CorrelationResult.frame` (columns ``score_<method>``,
            ``gt_val_loss`` and ``gt_val_loss_s<seed>``).
        method: The method to plot.
        ax: Axes to draw on; a new figure when ``None``.
        metric: The ground truth: ``"val_loss"`` (lower is better) or ``"val_acc"``
            (a table of accuracies; higher is better).

    Returns:
        The axes.

    Raises:
        ValueError: ``frame`` has no scores of ``method``.
    """
    column = f"score_{method}"
    if column not in frame.columns:
        methods = [c[len("score_"):] for c in frame.columns if c.startswith("score_")]
        raise ValueError(f"`method` {method!r} has no scores in `frame`; methods: {methods}.")
    ax = ax if ax is not None else _new_axes((4.5, 3.6))
    valid = frame[~frame["gt_failed"].astype(bool)]
    score = ranking_scores(valid[column].to_numpy(dtype=np.float64))
    loss = valid[f"gt_{metric}"].to_numpy(dtype=np.float64)
    sign = -1.0 if metric.endswith("loss") else 1.0  # the score is compared with "higher = better"
    tau = stats.kendalltau(score, sign * loss).statistic if len(valid) > 1 else math.nan
    rho = stats.spearmanr(score, sign * loss).statistic if len(valid) > 1 else math.nan

    seed_cols = sorted(c for c in frame.columns if re.fullmatch(rf"gt_{metric}_s\d+", c))
    shown = np.isfinite(score)
    x, y = score[shown], loss[shown]
    if seed_cols:
        per_seed = valid[seed_cols].to_numpy(dtype=np.float64)[shown]
        lower, upper = y - per_seed.min(axis=1), per_seed.max(axis=1) - y
        ax.errorbar(
            x, y, yerr=np.vstack([lower, upper]), fmt="none", ecolor="0.6", elinewidth=0.8, capsize=0,
            zorder=1, label=f"range over {len(seed_cols)} seeds",
        )
    color = _GHN_COLOR if method.startswith("ghn") else _BASE_COLOR
    ax.scatter(x, y, s=14, color=color, edgecolors="none", zorder=2, label="candidate (seed mean)")
    if x.size > 1 and x.min() > 0 and x.max() / x.min() > 100:
        ax.set_xscale("log")  # counts and flows span orders of magnitude
    ax.set_xlabel(f"{_label(method)} score (higher = predicted better)")
    ax.set_ylabel("trained validation loss (lower is better)" if sign < 0
                  else "trained validation accuracy (higher is better)")
    ax.set_title(f"{_label(method)}: Kendall $\\tau$ = {tau:.3f}, Spearman $\\rho$ = {rho:.3f}, "
                 f"n = {int(shown.sum())}", fontsize=9)
    hidden = len(frame) - int(shown.sum())
    if hidden:
        ax.text(0.99, 0.01, f"{hidden} not shown (failed / unscored)", transform=ax.transAxes,
                ha="right", va="bottom", fontsize=7, color="0.4")
    ax.legend(fontsize=7, loc="best", frameon=False)
    ax.grid(alpha=0.3, linewidth=0.5)
    ax.figure.tight_layout()
    return ax


def plot_method_bars(
    summary: pd.DataFrame,
    ax: Axes | None = None,
    *,
    noise_ceiling: float | Mapping[str, Any] | None = None,
    metric: str = "kendall",
) -> Axes:
    """Bar chart of every method's rank correlation, with CI error bars and the noise ceiling.

    Methods are sorted by the correlation, best first; GHN-based methods are
    drawn in red. The noise ceiling (the agreement between training seeds) is a
    dashed horizontal line with its CI as a shaded band.

    Args:
        summary: A :attr:`CorrelationResult.summary` (index = method; columns
            ``<metric>``, ``<metric>_lo``, ``<metric>_hi``).
        ax: Axes to draw on; a new figure when ``None``.
        noise_ceiling: The ceiling: a number, or the ``noise_ceiling`` mapping
            of ``summary.json``; default ``summary.attrs["noise_ceiling"]``.
        metric: ``"kendall"`` or ``"spearman"``.

    Returns:
        The axes.

    Raises:
        ValueError: ``metric`` is not a column of ``summary``.
    """
    for col in (metric, f"{metric}_lo", f"{metric}_hi"):
        if col not in summary.columns:
            raise ValueError(
                f"`metric` {metric!r} needs column {col!r} in `summary`; columns: {list(summary.columns)}."
            )
    data = summary.sort_values(metric, ascending=False, na_position="last")
    n = len(data)
    ax = ax if ax is not None else _new_axes((max(4.0, 0.45 * n + 1.5), 3.6))
    value = data[metric].to_numpy(dtype=np.float64)
    lo = data[f"{metric}_lo"].to_numpy(dtype=np.float64)
    hi = data[f"{metric}_hi"].to_numpy(dtype=np.float64)
    yerr = np.nan_to_num(np.vstack([value - lo, hi - value]), nan=0.0).clip(min=0.0)
    colors = [_GHN_COLOR if str(m).startswith("ghn") else _BASE_COLOR for m in data.index]
    positions = np.arange(n)
    ax.bar(positions, np.nan_to_num(value), color=colors, yerr=yerr, capsize=2, error_kw={"elinewidth": 0.8})
    ax.set_xticks(positions, [_label(str(m)) for m in data.index], rotation=45, ha="right", fontsize=8)
    ax.axhline(0.0, color="0.2", linewidth=0.6)

    if noise_ceiling is None:
        noise_ceiling = summary.attrs.get("noise_ceiling")
    ceiling, band = math.nan, (math.nan, math.nan)
    if isinstance(noise_ceiling, Mapping):
        ceiling = _num(noise_ceiling.get(metric))
        band = (_num(noise_ceiling.get(f"{metric}_lo")), _num(noise_ceiling.get(f"{metric}_hi")))
    elif noise_ceiling is not None:
        ceiling = float(noise_ceiling)
    handles = [Patch(color=_GHN_COLOR, label="GHN-based"), Patch(color=_BASE_COLOR, label="baseline")]
    if math.isfinite(ceiling):
        handles.append(ax.axhline(ceiling, color="0.3", linestyle="--", linewidth=1.0,
                                  label=f"noise ceiling: seed vs seed ({ceiling:.2f})"))
        if all(math.isfinite(b) for b in band):
            handles.append(ax.axhspan(band[0], band[1], color="0.5", alpha=0.15, linewidth=0, zorder=0,
                                      label="noise ceiling 95% CI"))
    ax.legend(handles=handles, fontsize=7, loc="upper right", frameon=False)
    name = r"Kendall $\tau$" if metric == "kendall" else r"Spearman $\rho$"
    ax.set_ylabel(f"{name} vs trained, 95% CI (higher is better)")
    count = summary["n"].max() if "n" in summary.columns and len(summary) else None
    if count is not None and not pd.isna(count):
        ax.set_title(f"{n} methods on n = {int(count)} candidates", fontsize=9)
    ax.set_xlim(-0.6, n - 0.4)
    ax.grid(axis="y", alpha=0.3, linewidth=0.5)
    ax.figure.tight_layout()
    return ax


def _num(value: Any) -> float:
    return math.nan if value is None else float(value)


def save_figure(figure: Figure, path: str | Path) -> list[Path]:
    """Lay ``figure`` out tightly and save it atomically as ``<path>.png`` (200 dpi) and ``<path>.pdf``.

    Args:
        figure: The figure (e.g. ``ax.figure``).
        path: Target path without suffix (a suffix is replaced); folders are created.

    Returns:
        The two written paths.
    """
    figure.tight_layout()
    return _atomic.save_figure(figure, path)
