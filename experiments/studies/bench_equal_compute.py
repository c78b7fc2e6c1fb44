"""The search benchmark at equal compute: what each method has found after B CPU-seconds.

``bench/bench_search.py`` asks how much compute each method needs to reach a
level. This asks the converse, for budgets ``--budgets``: after B
CPU-seconds (the campaign's *marginal* seconds, its one-time GHN and ranker
left out, as for a further campaign on the same space and dataset; TPE and
random search pay every second), what is

* the best judged accuracy among the architectures the run has trained or
  fine-tuned (``best_*``), and
* the judged accuracy of the architecture the run would report as its best
  at that point (``reported_*``: TPE's best seed-0 validation accuracy so far,
  the campaign's best fine-tuned accuracy so far),

each also as the share of the reference it beats (``*_pct``: percent of
reference candidates strictly below it). A run that ended before B keeps what
it had at its end; a run with nothing yet within B counts as missing. Means
over each method's runs.

Judge and reference as in ``experiments/studies/bench_threshold_sweep.py`` (by default the
mean of training seeds 1-4, which no search selected on, over 240 reference
candidates). Writes ``search_equal_compute<suffix>.csv`` into ``--results``.
It trains nothing and asserts nothing.

Usage::

    python experiments/studies/bench_equal_compute.py
"""

from __future__ import annotations

import argparse
import importlib.util
import math
from pathlib import Path

import numpy as np
import pandas as pd

_spec = importlib.util.spec_from_file_location(
    "bench_threshold_sweep", Path(__file__).with_name("bench_threshold_sweep.py"))
bench_threshold_sweep = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench_threshold_sweep)
bench_search = bench_threshold_sweep.bench_search


def at_budgets(traces: pd.DataFrame, reference: pd.DataFrame, budgets: list[float]) -> pd.DataFrame:
    """Best and reported judged accuracy of every run after each budget, averaged per method.

    Args:
        traces: Judged trace rows (``val_acc``, ``test_acc`` of the judge;
            ``seen_acc``: what search with training saw).
        reference: The reference's judged ``val_acc`` and ``test_acc``.
        budgets: CPU-seconds (marginal for campaigns).

    Returns:
        One row per method and budget: ``runs``, ``runs_with_a_result`` and
        the means of ``best_val_acc``, ``best_test_acc``,
        ``reported_val_acc``, ``reported_test_acc`` and of each one's
        ``_pct`` (percent of the reference strictly below it).

    Raises:
        ValueError: A budget that is not positive.
    """
    bad = [b for b in budgets if not b > 0]
    if bad:
        raise ValueError(f"`budgets` must be positive CPU-seconds, but got {bad}.")
    ref = {m: np.sort(reference[m].to_numpy(float)) for m in ("val_acc", "test_acc")}

    def pct(metric: str, value: float) -> float:
        below = np.searchsorted(ref[metric], value, side="left")  # reference values strictly below
        return math.nan if math.isnan(value) else 100.0 * below / len(ref[metric])

    rows = []
    for (method, seed), run in traces.groupby(["method", "seed"]):
        run = run.sort_values("step")
        campaign = str(method).startswith("campaign")
        spent = bench_search._cost(run, marginal=campaign).cumsum().to_numpy()  # [steps]
        reached = run["phase"].isin(["train", "finetune"]).to_numpy()
        reported = {m: bench_search._reported(run, m).to_numpy() for m in ("val_acc", "test_acc")}
        for budget in budgets:
            within = spent <= budget + 1e-9
            row = {"method": method, "seed": seed, "budget_cpu_s": budget}
            for metric in ("val_acc", "test_acc"):
                values = run[metric].to_numpy(float)[within & reached]
                best = float(np.nanmax(values)) if np.isfinite(values).any() else math.nan
                last = np.flatnonzero(within)
                pick = float(reported[metric][last[-1]]) if len(last) else math.nan
                row.update({f"best_{metric}": best, f"best_{metric}_pct": pct(metric, best),
                            f"reported_{metric}": pick, f"reported_{metric}_pct": pct(metric, pick)})
            rows.append(row)
    frame = pd.DataFrame(rows)
    grouped = frame.groupby(["method", "budget_cpu_s"])
    means = grouped.mean(numeric_only=True).drop(columns="seed")
    means.insert(0, "runs_with_a_result", grouped["best_val_acc"].count())
    means.insert(0, "runs", grouped.size())
    return means.reset_index()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    bench_threshold_sweep.add_judge_arguments(parser)
    parser.add_argument("--budgets", nargs="+", type=float, default=[5, 10, 20, 40, 80, 160, 320])
    parser.add_argument("--methods", nargs="+", default=["campaign-refine-journal", "campaign-refine-blend-journal",
                                                         "tpe", "random"])
    args = parser.parse_args()
    traces, reference, suffix, title = bench_threshold_sweep.load_judged(args)
    frame = at_budgets(traces, reference, args.budgets)
    out = args.results / f"search_equal_compute{suffix}.csv"
    frame.to_csv(out, index=False)
    print(title)
    shown = frame[frame["method"].isin(args.methods)]
    columns = ["method", "budget_cpu_s", "runs", "runs_with_a_result", "best_val_acc_pct", "best_test_acc_pct",
               "reported_val_acc_pct", "reported_test_acc_pct", "best_val_acc", "reported_val_acc"]
    with pd.option_context("display.width", 250, "display.max_columns", 30, "display.max_rows", 500):
        print(shown[columns].round(4).to_string(index=False))
    print(f"written: {out}")


if __name__ == "__main__":
    main()
