"""How the search benchmark's ratio to TPE depends on where "top" starts.

``bench/bench_search.py`` reports the compute to reach the top 5% and top 1%
of a trained reference sample. On nb201 / mnist5k the top 1% holds one to
four reference architectures, and which ones depends on the training seeds
that judge them, so the ratio of TPE's expected cost (ERT) to the campaign's
can jump between neighbouring thresholds. This sweep recomputes, from the
committed traces and the ground-truth cache, the ERT of every method and its
ratio to TPE's (with the bootstrap interval over runs of
:func:`bench_search.expected_cost`) for the top ``--tops`` percent of the
reference, judged by the mean over ``--judge-seeds``.

Writes ``search_threshold_sweep<suffix>.csv`` and a figure
(``.png``/``.pdf``) into ``--results``, where ``<suffix>`` names the judge
and reference as ``bench_search.py`` does. It trains nothing: every judged
run must be in ``--cache``. It measures; it asserts nothing.

Usage::

    python experiments/studies/bench_threshold_sweep.py --judge-seeds 1 2 3 4 --reference-sample-seeds 0 1 2
"""

from __future__ import annotations

import argparse
import importlib.util
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

_spec = importlib.util.spec_from_file_location("bench_search", Path(__file__).resolve().parents[2] / "bench" / "bench_search.py")
bench_search = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench_search)

Y_TICKS = [1, 2, 5, 10, 20, 50, 100]
LEVEL_COLUMNS = [prefix + column for prefix in ("", "marginal_") for column in bench_search.LEVELS.values()]


def sweep(traces: pd.DataFrame, reference: pd.DataFrame, tops: list[float], *,
          resamples: int = 10_000) -> pd.DataFrame:
    """ERT of every method and its ratio to TPE's when "top" is the best ``p`` percent, for each ``p`` of ``tops``.

    Args:
        traces: The trace rows of ``bench_search.py`` with ``val_acc`` and
            ``test_acc`` already set to the judge's accuracies.
        reference: The reference sample's judged ``val_acc`` and ``test_acc``.
        tops: Percentages, e.g. ``[0.5, 1, 2, 5]``.
        resamples: Bootstrap draws of :func:`bench_search.expected_cost`.

    Returns:
        One row per percentage, method and metric (``val`` / ``test``): the
        threshold, hits, runs, ``marginal_ert_cpu_s``, ``tpe_over_marginal_ert``
        with its 5% / 95% bootstrap quantiles and ``p_marginal_ratio_ge_20``.

    Raises:
        ValueError: A percentage outside ``(0, 100)``.
    """
    bad = [p for p in tops if not 0 < p < 100]
    if bad:
        raise ValueError(f"`tops` must be percentages in (0, 100), but got {bad}.")
    runs = {key: run.sort_values("step") for key, run in traces.groupby(["method", "seed"])}
    frames = []
    for p in tops:
        levels = {m: float(np.quantile(reference[m], 1 - p / 100)) for m in ("val_acc", "test_acc")}
        rows = []
        for (method, seed), run in runs.items():
            campaign = str(method).startswith("campaign")
            row: dict[str, Any] = {column: math.nan for column in LEVEL_COLUMNS}
            row.update({"method": method, "seed": seed, "cpu_s": float(run["cpu_s"].sum()),
                        "one_time_cpu_s": float(run.loc[run["one_time"], "cpu_s"].sum())})
            for metric, tag in (("val_acc", ""), ("test_acc", "_test")):
                row[f"cpu_to_top1{tag}"] = bench_search._first_reach(run, levels[metric], marginal=False, metric=metric)
                if campaign:
                    row[f"marginal_cpu_to_top1{tag}"] = bench_search._first_reach(
                        run, levels[metric], marginal=True, metric=metric)
            rows.append(row)
        ert = bench_search.expected_cost(pd.DataFrame(rows), resamples=resamples)
        ert = ert[ert["level"].isin(["top1_val", "top1_test"])].assign(
            top_pct=p, metric=lambda f: f["level"].str.removeprefix("top1_"),
            threshold=lambda f: f["metric"].map({"val": levels["val_acc"], "test": levels["test_acc"]}),
            reference_at_or_above=lambda f: [int((reference[f"{m}_acc"] >= t - 1e-12).sum())
                                             for m, t in zip(f["metric"], f["threshold"])],
        )
        frames.append(ert.drop(columns="level"))
    return pd.concat(frames, ignore_index=True)


def plot(frame: pd.DataFrame, methods: list[str], title: str) -> Any:
    """Ratio to TPE against the top percentage, one panel per metric, with the bootstrap 5-95% band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullLocator

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4), sharey=True)
    for ax, metric in zip(axes, ("val", "test")):
        for i, method in enumerate(methods):
            part = frame[(frame["method"] == method) & (frame["metric"] == metric)].sort_values("top_pct")
            ratio = part["tpe_over_marginal_ert"].clip(lower=0.1)
            ax.plot(part["top_pct"], ratio, marker="o", ms=3, color=f"C{i}", label=method)
            ax.fill_between(part["top_pct"], part["tpe_over_marginal_ert_q05"].clip(lower=0.1),
                            part["tpe_over_marginal_ert_q95"].clip(lower=0.1), color=f"C{i}", alpha=0.15)
        ax.axhline(20, color="k", lw=0.8, ls="--")
        ax.set_xscale("log")
        ax.set_yscale("log")
        tops = sorted(frame["top_pct"].unique())
        ax.set_xticks(tops, [f"{t:g}" for t in tops])
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_yticks(Y_TICKS, [f"{t:g}" for t in Y_TICKS])
        ax.yaxis.set_minor_locator(NullLocator())
        ax.set_xlabel("top % of the reference")
        ax.set_title(f"{'validation' if metric == 'val' else 'test'} accuracy")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("TPE's ERT / campaign's marginal ERT")
    axes[0].legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def add_judge_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of :func:`load_judged`: the judge, the reference and where the traces are."""
    parser.add_argument("--judge-seeds", nargs="+", type=int, default=[1, 2, 3, 4])
    parser.add_argument("--reference-sample-seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--reference-archs", type=int, default=100)
    parser.add_argument("--results", type=Path, default=Path("bench/results/fresh"))
    parser.add_argument("--cache", type=Path, default=Path("bench/results/fresh/search_ground_truth.sqlite"))
    parser.add_argument("--labels", type=Path, default=Path("runs/bench_fw/one_time/ranker_labels_k30.csv"),
                        help="the ranker's label architectures, left out of a united reference")
    parser.add_argument("--epochs", type=float, default=3)


def load_judged(args: argparse.Namespace) -> tuple[pd.DataFrame, pd.DataFrame, str, str]:
    """The traces of ``args.results`` and the reference, both judged by the mean of ``args.judge_seeds``.

    Returns:
        ``(traces, reference, suffix, title)``: the trace rows with ``val_acc``
        / ``test_acc`` set to the judge's accuracies (``seen_acc``: what the
        search itself saw), the reference's judged accuracies, the file suffix
        of ``bench_search.py`` for this judge and reference, and a plot title.

    Raises:
        SystemExit: A judged run is missing from the cache, or the label file
            of a united reference is.
    """
    from nas.data import load_dataset
    from nas.space import load_space

    data = load_dataset("mnist5k")
    space = load_space("nb201", input_shape=data.input_shape, num_classes=data.num_classes)
    referee = bench_search.Referee(args.cache, data, args.epochs)
    united = args.reference_sample_seeds != [0]
    if united and not args.labels.exists():
        raise SystemExit(f"error: --labels {args.labels} not found; a united reference leaves those keys out")
    exclude = set(pd.read_csv(args.labels)["key"]) if united else None
    graphs, excluded = bench_search.reference_graphs(space, args.reference_archs, args.reference_sample_seeds, exclude)
    traces = pd.concat([pd.read_csv(p) for p in sorted(args.results.glob("search_trace_*.csv"))], ignore_index=True)
    traces["one_time"] = traces["one_time"].astype(bool)
    keys = sorted(set(traces["key"].dropna()))
    traced = [referee.graph(k) for k in keys]
    unknown = [k[:10] for k, g in zip(keys, traced) if g is None]
    if unknown:
        raise SystemExit(f"error: {len(unknown)} traced architectures are not in {args.cache} (first: {unknown[0]}); "
                         "run bench_search.py --report with these --referee-seeds first")
    reference = referee.judge_seeds(graphs, args.judge_seeds, train=False)
    truth = referee.judge_seeds(traced, args.judge_seeds, train=False).set_index("key")
    traces["seen_acc"] = traces["val_acc"]  # what search with training saw of its own trials
    for metric in ("val_acc", "test_acc"):
        traces[metric] = traces["key"].map(truth[metric]).where(traces["key"].notna(), math.nan)
    suffix = bench_search.report_suffix(args.judge_seeds, args.reference_sample_seeds)
    title = (f"judge: mean of seeds {', '.join(map(str, args.judge_seeds))}; reference: {len(graphs)} candidates"
             f"{f' ({excluded} label architectures left out)' if excluded else ''}")
    return traces, reference, suffix, title


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_judge_arguments(parser)
    parser.add_argument("--tops", nargs="+", type=float, default=[0.5, 1, 1.5, 2, 3, 4, 5])
    parser.add_argument("--methods", nargs="+", default=["campaign-refine-journal", "campaign-refine-blend-journal",
                                                         "campaign-refine", "campaign-journal"])
    parser.add_argument("--resamples", type=int, default=10_000, help="bootstrap draws per percentage (default 10000)")
    args = parser.parse_args()
    traces, reference, suffix, title = load_judged(args)
    frame = sweep(traces, reference, args.tops, resamples=args.resamples)
    out = args.results / f"search_threshold_sweep{suffix}.csv"
    frame.to_csv(out, index=False)
    shown = frame[frame["method"].isin([*args.methods, "tpe"])]
    fig = plot(shown, args.methods, title)
    for ext in ("png", "pdf"):
        fig.savefig(out.with_suffix(f".{ext}"), dpi=150)
    print(title)
    columns = ["metric", "top_pct", "threshold", "reference_at_or_above", "method", "hits", "runs",
               "marginal_ert_cpu_s", "ert_cpu_s", "tpe_over_marginal_ert", "tpe_over_marginal_ert_q05",
               "tpe_over_marginal_ert_q95", "p_marginal_ratio_ge_20"]
    with pd.option_context("display.width", 250, "display.max_columns", 30, "display.max_rows", 500):
        print(shown.sort_values(["metric", "top_pct", "method"])[columns].round(4).to_string(index=False))
    print(f"written: {out}, {out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
