"""The search benchmark's bookkeeping: compute to a threshold, what each method reports, the summary."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

_PATH = Path(__file__).resolve().parents[1] / "bench" / "bench_search.py"
_STUDIES = Path(__file__).resolve().parents[1] / "experiments" / "studies"
_spec = importlib.util.spec_from_file_location("bench_search", _PATH)
bench_search = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench_search)

NAN = math.nan


def _trace(method: str, seed: int, rows: list[tuple]) -> pd.DataFrame:
    """rows: (phase, val_acc, test_acc, finetuned_acc, cpu_s, one_time)."""
    records = []
    cum = 0.0
    for step, (phase, val, test, ft, cpu, one_time) in enumerate(rows):
        cum += cpu
        records.append({
            "method": method, "seed": seed, "step": step, "phase": phase, "key": f"k{step}", "val_acc": val,
            "test_acc": test, "finetuned_acc": ft, "cpu_s": cpu, "cum_cpu_s": cum, "one_time": one_time,
            "cached": False,
        })
    return pd.DataFrame(records, columns=bench_search.TRACE_COLUMNS)


@pytest.fixture
def campaign() -> pd.DataFrame:
    return _trace("campaign", 0, [
        ("meta_train", NAN, NAN, NAN, 100.0, True),
        ("rank", NAN, NAN, NAN, 5.0, False),
        ("finetune", 0.99, 0.97, 0.90, 2.0, False),  # best by ground truth, worst fine-tuned
        ("finetune", 0.95, 0.93, 0.96, 2.0, False),
    ])


@pytest.fixture
def tpe() -> pd.DataFrame:
    return _trace("tpe", 0, [
        ("train", 0.93, 0.94, NAN, 10.0, False),
        ("train", 0.97, 0.90, NAN, 10.0, False),
        ("train", 0.96, 0.96, NAN, 10.0, False),
    ])


def test_first_reach_counts_one_time_costs_unless_marginal(campaign: pd.DataFrame) -> None:
    assert bench_search._first_reach(campaign, 0.98, marginal=False) == pytest.approx(107.0)
    assert bench_search._first_reach(campaign, 0.98, marginal=True) == pytest.approx(7.0)
    assert math.isnan(bench_search._first_reach(campaign, 0.995, marginal=False))


def test_campaign_reports_by_finetuned_accuracy_not_by_ground_truth(campaign: pd.DataFrame) -> None:
    reported = bench_search._reported(campaign, "test_acc").to_numpy()
    assert math.isnan(reported[1])
    assert reported[2] == pytest.approx(0.97)
    assert reported[3] == pytest.approx(0.93)  # the 0.96 fine-tune wins though its ground truth is lower


def test_search_with_training_reports_by_validation_accuracy(tpe: pd.DataFrame) -> None:
    assert bench_search._reported(tpe, "test_acc").tolist() == pytest.approx([0.94, 0.90, 0.90])


def test_summary_has_one_row_per_run_and_the_random_expectation(
    tmp_path: Path, campaign: pd.DataFrame, tpe: pd.DataFrame
) -> None:
    campaign.to_csv(tmp_path / "search_trace_campaign_s0.csv", index=False)
    tpe.to_csv(tmp_path / "search_trace_tpe_s0.csv", index=False)
    levels = {"reference_train_s": 10.0, "reference_n": 100, "judge": "0", "strict": False}
    for metric in ("val_acc", "test_acc"):
        levels.update({f"{metric}_top5": 0.96, f"{metric}_top1": 0.98,
                       f"{metric}_p_top5": 0.05, f"{metric}_p_top1": 0.01})
    summary = bench_search.summarize(tmp_path, levels).set_index("method")

    assert summary.loc["campaign", "one_time_cpu_s"] == pytest.approx(100.0)
    assert summary.loc["campaign", "trained"] == 2
    assert summary.loc["campaign", "marginal_cpu_to_top1"] == pytest.approx(7.0)
    assert summary.loc["tpe", "cpu_to_top5"] == pytest.approx(20.0)
    assert math.isnan(summary.loc["tpe", "cpu_to_top1"])
    assert summary.loc["tpe", "reported_test_acc"] == pytest.approx(0.90)
    # The campaign's first fine-tune is both its reported pick and a top-1% architecture (val 0.99) ...
    assert summary.loc["campaign", "cpu_to_top1_reported"] == pytest.approx(107.0)
    assert summary.loc["campaign", "marginal_cpu_to_top1_reported"] == pytest.approx(7.0)
    # ... but by test accuracy it reaches the top 1% only as a fine-tune, never as the pick (0.97 < 0.98).
    assert math.isnan(summary.loc["campaign", "cpu_to_top1_reported_test"])
    # TPE reports its 0.97 trial from step 1 on: top 5% (0.96) after 20 CPU-s.
    assert summary.loc["tpe", "cpu_to_top5_reported"] == pytest.approx(20.0)
    assert math.isnan(summary.loc["tpe", "marginal_cpu_to_top5_reported"])
    # Within the campaign's 9 marginal CPU-s, TPE has trained nothing yet.
    assert math.isnan(summary.loc["tpe", "best_within_campaign_marginal_cpu"])
    assert summary.loc["random_expected", "cpu_to_top1"] == pytest.approx(10.0 / 0.01)
    assert (tmp_path / "search_curves.png").stat().st_size > 0


def test_expected_cost_restarts_failed_runs_and_reuses_the_campaigns_one_time_cost() -> None:
    nan = math.nan
    summary = pd.DataFrame([
        # Campaign: 100 CPU-s one-time; seed 0 hits after 7 marginal CPU-s, seed 1 spends 9 and misses.
        {"method": "campaign", "seed": 0, "cpu_s": 109.0, "one_time_cpu_s": 100.0, "marginal_cpu_to_top1": 7.0},
        {"method": "campaign", "seed": 1, "cpu_s": 109.0, "one_time_cpu_s": 100.0, "marginal_cpu_to_top1": nan},
        # TPE: seed 0 hits after 40, seed 1 after 80, seed 2 spends 120 and misses.
        {"method": "tpe", "seed": 0, "cpu_s": 120.0, "one_time_cpu_s": 0.0, "cpu_to_top1": 40.0},
        {"method": "tpe", "seed": 1, "cpu_s": 120.0, "one_time_cpu_s": 0.0, "cpu_to_top1": 80.0},
        {"method": "tpe", "seed": 2, "cpu_s": 120.0, "one_time_cpu_s": 0.0, "cpu_to_top1": nan},
    ])
    for column in ("marginal_cpu_to_top5", "cpu_to_top5", "marginal_cpu_to_top5_test", "cpu_to_top5_test",
                   "marginal_cpu_to_top1_test", "cpu_to_top1_test"):
        summary[column] = nan
    for kind in ("", "_test"):  # the reported pick: campaign seed 1 hits after 9, TPE seed 2 after 120
        for q in ("top5", "top1"):
            summary[f"cpu_to_{q}_reported{kind}"] = [nan, nan, nan, nan, 120.0 if q == "top1" else nan]
            summary[f"marginal_cpu_to_{q}_reported{kind}"] = [nan, 9.0 if q == "top1" else nan, nan, nan, nan]
    summary["cpu_to_top1"] = summary["cpu_to_top1"].astype(float)
    ert = bench_search.expected_cost(summary).set_index(["method", "level"])
    campaign, tpe = ert.loc[("campaign", "top1_val")], ert.loc[("tpe", "top1_val")]
    assert campaign["hits"] == 1 and campaign["runs"] == 2
    assert campaign["marginal_ert_cpu_s"] == pytest.approx((7.0 + 9.0) / 1)
    assert campaign["ert_cpu_s"] == pytest.approx(100.0 + 16.0)
    assert tpe["ert_cpu_s"] == pytest.approx((40.0 + 80.0 + 120.0) / 2)
    assert campaign["tpe_over_marginal_ert"] == pytest.approx(120.0 / 16.0)
    assert math.isnan(ert.loc[("tpe", "top5_val"), "ert_cpu_s"])  # no run hits: no expectation
    reported = ert.loc[("campaign", "top1_reported_test")]
    assert reported["hits"] == 1 and reported["marginal_ert_cpu_s"] == pytest.approx((9.0 + 9.0) / 1)
    assert ert.loc[("tpe", "top1_reported_val"), "ert_cpu_s"] == pytest.approx(360.0)
    assert reported["tpe_over_marginal_ert"] == pytest.approx(360.0 / 18.0)


def _summary(rows: list[dict]) -> pd.DataFrame:
    """Per-run summary rows with every level's column (``nan``: never reached) that ``rows`` leave out."""
    summary = pd.DataFrame(rows)
    for column in bench_search.LEVELS.values():
        for name in (column, f"marginal_{column}"):
            if name not in summary:
                summary[name] = math.nan
    return summary


def test_expected_cost_bootstraps_the_ratio_to_tpe_over_runs() -> None:
    nan = math.nan
    rows = [
        # "campaign": both runs hit after 5 marginal CPU-s, so every draw's ERT is 5 (ratio 20).
        {"method": "campaign", "seed": 0, "cpu_s": 105.0, "one_time_cpu_s": 100.0, "marginal_cpu_to_top1": 5.0},
        {"method": "campaign", "seed": 1, "cpu_s": 105.0, "one_time_cpu_s": 100.0, "marginal_cpu_to_top1": 5.0},
        # "campaign-b": one hit after 10, one miss spending 10: draws give ERT 10, 20 or inf (ratio 10, 5, 0).
        {"method": "campaign-b", "seed": 0, "cpu_s": 110.0, "one_time_cpu_s": 100.0, "marginal_cpu_to_top1": 10.0},
        {"method": "campaign-b", "seed": 1, "cpu_s": 110.0, "one_time_cpu_s": 100.0, "marginal_cpu_to_top1": nan},
        {"method": "tpe", "seed": 0, "cpu_s": 100.0, "one_time_cpu_s": 0.0, "cpu_to_top1": 100.0},
        {"method": "tpe", "seed": 1, "cpu_s": 100.0, "one_time_cpu_s": 0.0, "cpu_to_top1": 100.0},
    ]
    summary = _summary(rows)
    ert = bench_search.expected_cost(summary, resamples=4000).set_index(["method", "level"])
    sure, unsure = ert.loc[("campaign", "top1_val")], ert.loc[("campaign-b", "top1_val")]
    assert sure["tpe_over_marginal_ert"] == pytest.approx(20.0)
    assert sure["tpe_over_marginal_ert_q05"] == pytest.approx(20.0) == sure["tpe_over_marginal_ert_q95"]
    assert sure["p_marginal_ratio_ge_20"] == 1.0
    assert unsure["tpe_over_marginal_ert"] == pytest.approx(5.0)
    assert unsure["tpe_over_marginal_ert_q05"] == 0.0 and unsure["tpe_over_marginal_ert_q95"] == pytest.approx(10.0)
    assert unsure["p_marginal_ratio_ge_20"] == 0.0
    # No run hits the top 5%: no ratio, no interval.
    assert math.isnan(ert.loc[("campaign", "top5_val"), "tpe_over_marginal_ert_q05"])


def test_expected_cost_draws_each_methods_bootstrap_from_its_own_stream() -> None:
    nan = math.nan
    hits = {"campaign-a": [3.0, 7.0, 11.0, nan, 20.0, 4.0], "campaign-z": [1.0, 2.0, nan, 9.0, 5.0, 30.0],
            "tpe": [80.0, 150.0, nan, 60.0, 300.0, 120.0]}
    rows = [{"method": m, "seed": i, "cpu_s": (130.0 if m != "tpe" else 310.0), "one_time_cpu_s": 0.0,
             ("cpu_to_top1" if m == "tpe" else "marginal_cpu_to_top1"): v}
            for m, values in hits.items() for i, v in enumerate(values)]
    summary = _summary(rows)
    interval = ["tpe_over_marginal_ert_q05", "tpe_over_marginal_ert_q95"]
    both = bench_search.expected_cost(summary, resamples=500).set_index(["method", "level"])
    # Adding or removing a method ("campaign-a" sorts before "campaign-z" and "tpe") leaves the others' draws.
    alone = bench_search.expected_cost(summary[summary["method"] != "campaign-a"], resamples=500)
    alone = alone.set_index(["method", "level"])
    drawn = both.loc[("campaign-z", "top1_val"), interval].tolist()
    assert alone.loc[("campaign-z", "top1_val"), interval].tolist() == drawn
    other_seed = bench_search.expected_cost(summary, resamples=500, seed=1).set_index(["method", "level"])
    assert other_seed.loc[("campaign-z", "top1_val"), interval].tolist() != drawn  # the draws do matter


def test_summary_judged_by_other_seeds_keeps_what_search_with_training_saw(
    tmp_path: Path, tpe: pd.DataFrame
) -> None:
    tpe.to_csv(tmp_path / "search_trace_tpe_s0.csv", index=False)
    levels = {"reference_train_s": 10.0, "reference_n": 240, "judge": "0+1", "strict": False}
    for metric in ("val_acc", "test_acc"):
        levels.update({f"{metric}_top5": 0.96, f"{metric}_top1": 0.98,
                       f"{metric}_p_top5": 0.05, f"{metric}_p_top1": 0.01})
    # A second seed says trial 1 (seen 0.97, TPE's pick) is really 0.95, and trial 2 (seen 0.96) is 0.985.
    judge = pd.DataFrame({"key": ["k0", "k1", "k2"], "val_acc": [0.93, 0.95, 0.985], "test_acc": [0.94, 0.9, 0.96]})
    summary = bench_search.summarize(tmp_path, levels, judge=judge, suffix="_ref01").set_index("method")
    assert summary.loc["tpe", "cpu_to_top5"] == pytest.approx(30.0)  # only trial 2 reaches 0.96 under the judge
    assert summary.loc["tpe", "cpu_to_top1"] == pytest.approx(30.0)
    assert summary.loc["tpe", "reported_val_acc"] == pytest.approx(0.95)  # TPE still reports what it saw best
    assert (tmp_path / "search_summary_ref01.csv").is_file() and (tmp_path / "search_curves_ref01.png").is_file()
    assert not (tmp_path / "search_summary.csv").exists()
    ert = pd.read_csv(tmp_path / "search_expected_cost_ref01.csv", dtype={"judge": str})
    assert set(ert["judge"]) == {"0+1"} and set(ert["reference"]) == {240} and not ert["strict"].any()


class _TiedReferee:
    """A referee whose reference sample has its three best architectures tied (accuracies are quantised)."""

    def __init__(self, n: int) -> None:
        self.acc = {f"a{i}": 0.9 + 0.0001 * min(i, n - 3) for i in range(n)}

    def judge_seeds(self, graphs: list, seeds: list[int], *, workers: int = 1) -> pd.DataFrame:
        return pd.DataFrame({"key": [g.key for g in graphs], "val_acc": [self.acc[g.key] for g in graphs],
                             "test_acc": [self.acc[g.key] for g in graphs]})

    def get(self, graph, seed: int = 0):
        return type("Record", (), {"wall_time": 5.0})()


def test_strict_thresholds_exclude_architectures_tied_at_the_quantile(monkeypatch: pytest.MonkeyPatch) -> None:
    correlate = importlib.import_module("nas.evaluation.correlate")  # the package also exports a function so named
    graphs = [type("G", (), {"key": f"a{i}"})() for i in range(100)]
    monkeypatch.setattr(correlate, "sample_candidates", lambda space, n, seed: graphs[:n])
    referee = _TiedReferee(100)
    tied = max(referee.acc.values())
    loose = bench_search.thresholds(referee, None, 100, [0])
    strict = bench_search.thresholds(referee, None, 100, [0], strict=True)
    assert loose["val_acc_top1"] == pytest.approx(tied) and loose["val_acc_p_top1"] == 0.03
    assert strict["val_acc_top1"] > tied and strict["val_acc_p_top1"] == 0.0
    run = _trace("campaign", 0, [("rank", NAN, NAN, NAN, 5.0, False), ("finetune", tied, tied, 0.9, 2.0, False)])
    assert bench_search._first_reach(run, loose["val_acc_top1"], marginal=True) == 7.0
    assert math.isnan(bench_search._first_reach(run, strict["val_acc_top1"], marginal=True))


def test_reference_unites_sample_seeds_and_leaves_out_excluded_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    correlate = importlib.import_module("nas.evaluation.correlate")
    graphs = [type("G", (), {"key": f"a{i}"})() for i in range(150)]
    # Seed s draws a{50 s} .. a{50 s + n - 1}: seeds 0 and 1 overlap in 50 keys.
    monkeypatch.setattr(correlate, "sample_candidates", lambda space, n, seed: graphs[50 * seed:50 * seed + n])
    referee = _TiedReferee(150)
    judged: list[list[str]] = []
    original = referee.judge_seeds
    monkeypatch.setattr(referee, "judge_seeds", lambda gs, seeds, workers=1: judged.append([g.key for g in gs])
                        or original(gs, seeds, workers=workers))
    levels = bench_search.thresholds(referee, None, 100, [0], sample_seeds=[0, 1], exclude={"a0", "a149", "zz"})
    assert levels["reference_n"] == 148 and levels["reference_excluded"] == 2
    assert judged == [[f"a{i}" for i in range(1, 149)]]


def test_judges_table_reads_each_judges_file_and_marks_the_ones_no_search_selected_on(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("bench_judges", _STUDIES / "bench_judges.py")
    bench_judges = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench_judges)
    row = {"method": "tpe", "level": "top1_val", "runs": 2, "hits": 1, "ert_cpu_s": 9.0}
    for name, judge, reference, strict in (("search_expected_cost.csv", "0", 100, False),
                                           ("search_expected_cost_ref01.csv", "0+1", 100, False),
                                           ("search_expected_cost_ref123_refsample012.csv", "1+2+3", 240, False),
                                           ("search_expected_cost_ref01_strict.csv", "0+1", 100, True),
                                           ("search_expected_cost_ref10.csv", "10", 100, False)):
        pd.DataFrame([{**row, "judge": judge, "reference": reference, "strict": strict}]).to_csv(
            tmp_path / name, index=False)
    frame = bench_judges.judges(tmp_path).set_index("judge")
    assert sorted(frame.index) == ["0", "0+1", "1+2+3", "10"]  # the --strict file is left out
    assert frame.loc["1+2+3", "unseen"] and not frame.loc["0+1", "unseen"] and not frame.loc["0", "unseen"]
    assert frame.loc["10", "unseen"]  # seed 10 is not seed 0
    assert frame.loc["1+2+3", "reference"] == 240 and frame.loc["0+1", "reference"] == 100
    with pytest.raises(FileNotFoundError, match="no search_expected_cost"):
        bench_judges.judges(tmp_path / "empty")
    pd.DataFrame([row]).to_csv(tmp_path / "search_expected_cost_ref2.csv", index=False)
    with pytest.raises(ValueError, match="does not name its judge"):
        bench_judges.judges(tmp_path)


def test_threshold_sweep_recomputes_each_methods_ert_at_each_top_percentage() -> None:
    spec = importlib.util.spec_from_file_location("bench_threshold_sweep", _STUDIES / "bench_threshold_sweep.py")
    sweep_module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sweep_module)
    acc = [0.90 + 0.09 * i / 99 for i in range(100)]  # top 1% starts at 0.98992, top 5% at 0.98550
    reference = pd.DataFrame({"val_acc": acc, "test_acc": acc})
    traces = pd.concat([
        # TPE seed 0 trains a 0.99 second (hits both levels at 20 CPU-s); seed 1 a 0.986 (top 5% only).
        _trace("tpe", 0, [("train", 0.95, 0.95, NAN, 10.0, False), ("train", 0.99, 0.99, NAN, 10.0, False)]),
        _trace("tpe", 1, [("train", 0.95, 0.95, NAN, 10.0, False), ("train", 0.986, 0.986, NAN, 10.0, False)]),
        # The campaigns pay 100 CPU-s once, then fine-tune one candidate: 2 and 6 marginal CPU-s.
        _trace("campaign", 0, [("meta_train", NAN, NAN, NAN, 100.0, True), ("finetune", 0.99, 0.99, 0.9, 2.0, False)]),
        _trace("campaign", 1, [("meta_train", NAN, NAN, NAN, 100.0, True),
                               ("finetune", 0.986, 0.986, 0.9, 6.0, False)]),
    ], ignore_index=True)
    frame = sweep_module.sweep(traces, reference, [1, 5], resamples=200).set_index(["top_pct", "metric", "method"])
    assert frame.loc[(1, "val", "tpe"), "marginal_ert_cpu_s"] == pytest.approx(40.0)  # (20 + 20) / 1 hit
    assert frame.loc[(1, "val", "campaign"), "marginal_ert_cpu_s"] == pytest.approx(8.0)  # (2 + 6) / 1 hit
    assert frame.loc[(5, "test", "tpe"), "marginal_ert_cpu_s"] == pytest.approx(20.0)
    assert frame.loc[(5, "test", "campaign"), "tpe_over_marginal_ert"] == pytest.approx(5.0)
    assert frame.loc[(1, "val", "campaign"), "reference_at_or_above"] == 1
    assert frame.loc[(5, "val", "campaign"), "reference_at_or_above"] == 5
    with pytest.raises(ValueError, match="`tops` must be percentages"):
        sweep_module.sweep(traces, reference, [0])


def test_equal_compute_reports_best_and_reported_accuracy_after_each_budget() -> None:
    spec = importlib.util.spec_from_file_location("bench_equal_compute", _STUDIES / "bench_equal_compute.py")
    equal = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(equal)
    acc = [0.90 + 0.09 * i / 99 for i in range(100)]
    reference = pd.DataFrame({"val_acc": acc, "test_acc": acc})
    # TPE saw 0.95 then 0.94 with its own seed, so it keeps reporting the first (judged 0.9505).
    tpe = _trace("tpe", 0, [("train", 0.9505, 0.9505, NAN, 10.0, False), ("train", 0.995, 0.995, NAN, 10.0, False)])
    tpe["seen_acc"] = [0.95, 0.94]
    # The campaign pays 100 CPU-s once; its first fine-tune scores higher, so it reports that one.
    campaign = _trace("campaign", 0, [("meta_train", NAN, NAN, NAN, 100.0, True),
                                      ("finetune", 0.9705, 0.9705, 0.9, 2.0, False),
                                      ("finetune", 0.995, 0.995, 0.8, 2.0, False)])
    campaign["seen_acc"] = campaign["val_acc"]
    frame = equal.at_budgets(pd.concat([tpe, campaign], ignore_index=True), reference, [1, 2, 4, 20])
    frame = frame.set_index(["method", "budget_cpu_s"])
    assert frame.loc[("campaign", 1), "runs_with_a_result"] == 0  # nothing fine-tuned within 1 marginal CPU-s
    assert frame.loc[("campaign", 2), "best_val_acc"] == pytest.approx(0.9705)
    assert frame.loc[("campaign", 2), "best_val_acc_pct"] == pytest.approx(78.0)  # 78 reference values below
    assert frame.loc[("campaign", 4), "best_test_acc"] == pytest.approx(0.995)
    assert frame.loc[("campaign", 4), "best_test_acc_pct"] == pytest.approx(100.0)
    assert frame.loc[("campaign", 4), "reported_val_acc"] == pytest.approx(0.9705)
    assert frame.loc[("tpe", 4), "runs_with_a_result"] == 0
    assert frame.loc[("tpe", 20), "best_val_acc"] == pytest.approx(0.995)
    assert frame.loc[("tpe", 20), "reported_val_acc_pct"] == pytest.approx(56.0)
    with pytest.raises(ValueError, match="`budgets` must be positive"):
        equal.at_budgets(tpe, reference, [0])


def test_a_replicates_report_reads_the_baselines_search_with_training_but_not_its_campaigns(tmp_path: Path) -> None:
    out, baseline = tmp_path / "replicate", tmp_path / "first"
    out.mkdir()
    baseline.mkdir()
    for folder, names in ((out, ["campaign-x_s0", "random_s0"]), (baseline, ["campaign-x_s0", "tpe_s0", "random_s0"])):
        for name in names:
            (folder / f"search_trace_{name}.csv").write_text("method\n")
    names = [(p.parent.name, p.name) for p in bench_search.trace_paths(out, baseline)]
    assert names == [("replicate", "search_trace_campaign-x_s0.csv"), ("replicate", "search_trace_random_s0.csv"),
                     ("first", "search_trace_tpe_s0.csv")]  # the replicate's own random run wins
    assert len(bench_search.trace_paths(out)) == 2
    with pytest.raises(SystemExit, match="not a folder"):
        bench_search.trace_paths(out, tmp_path / "missing")


def test_replicates_pool_the_builds_erts_and_bootstrap_over_builds_then_runs() -> None:
    spec = importlib.util.spec_from_file_location("bench_replicates", _STUDIES / "bench_replicates.py")
    bench_replicates = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench_replicates)
    def runs(hit_at: list[float], spent: float) -> pd.DataFrame:
        return _summary([{"cpu_s": spent, "one_time_cpu_s": 0.0, "marginal_cpu_to_top1": h, "cpu_to_top1": h}
                         for h in hit_at])

    # Build a hits after 5 CPU-s in every run, build b after 15: ERTs 5 and 15, pooled 10; TPE's ERT is 100.
    builds = {"a": runs([5.0, 5.0, 5.0], 20.0), "b": runs([15.0, 15.0, 15.0], 20.0)}
    frame = bench_replicates.replicates(builds, runs([100.0, 100.0], 300.0), resamples=4000)
    top1 = frame[frame["level"] == "top1_val"].set_index("build")
    assert top1.loc["a", "tpe_over_marginal_ert"] == pytest.approx(20.0)
    assert top1.loc["b", "tpe_over_marginal_ert"] == pytest.approx(100 / 15)
    pooled = top1.loc["pooled"]
    assert pooled["marginal_ert_cpu_s"] == pytest.approx(10.0) and pooled["hits"] == 6 and pooled["runs"] == 6
    # Drawing the builds (a, a) gives 20x, (b, b) 6.7x, a mix 10x: 20x in about a quarter of the draws.
    assert pooled["tpe_over_marginal_ert_q05"] == pytest.approx(100 / 15)
    assert pooled["tpe_over_marginal_ert_q95"] == pytest.approx(20.0)
    assert 0.2 < pooled["p_marginal_ratio_ge_20"] < 0.3
    # A build that never hits makes the pooled ERT infinite: no speed-up.
    frame = bench_replicates.replicates({**builds, "c": runs([math.nan] * 3, 20.0)}, runs([100.0], 300.0))
    assert frame.set_index(["level", "build"]).loc[("top1_val", "pooled"), "tpe_over_marginal_ert"] == 0.0
    with pytest.raises(ValueError, match="`builds`"):
        bench_replicates.replicates({}, runs([100.0], 300.0))


def test_a_combination_of_builds_ranks_by_the_mean_standardised_tse_and_the_first_builds_prior() -> None:
    spec = importlib.util.spec_from_file_location("bench_build_rankers", _STUDIES / "bench_build_rankers.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    z = {"a": np.array([0.0, 1.0, 2.0]), "b": np.array([2.0, 1.0, -2.0])}
    prior = {"a": np.array([0.5, 0.0, 0.0]), "b": np.array([0.0, 0.0, 9.0])}
    np.testing.assert_allclose(module.ensemble_scores(z, ("a",), prior), [0.5, 1.0, 2.0])  # the ranker's own score
    np.testing.assert_allclose(module.ensemble_scores(z, ("a", "b"), prior), [1.5, 1.0, 0.0])
    np.testing.assert_allclose(module.ensemble_scores(z, ("b", "a"), prior), [1.0, 1.0, 9.0])


# --------------------------------------------------------------------------- #
# Multi-fidelity baselines, total cost and the cost model
# --------------------------------------------------------------------------- #


def _levels(judge: str = "0") -> dict:
    levels = {"reference_train_s": 10.0, "reference_n": 100, "judge": judge, "strict": False}
    for metric in ("val_acc", "test_acc"):
        levels.update({f"{metric}_top5": 0.96, f"{metric}_top1": 0.98,
                       f"{metric}_p_top5": 0.05, f"{metric}_p_top1": 0.01})
    return levels


def test_rungs_are_the_min_resource_times_powers_of_the_factor_below_the_budget() -> None:
    assert bench_search.rung_steps(162) == [6, 18, 54]
    assert bench_search.rung_steps(163) == [6, 18, 54, 162]
    assert bench_search.rung_steps(20, 2, 2) == [2, 4, 8, 16]
    with pytest.raises(ValueError, match="no rung below 6 steps"):
        bench_search.rung_steps(6)
    assert isinstance(bench_search.make_pruner("hb", [6, 18, 54], 162), bench_search.optuna.pruners.HyperbandPruner)
    with pytest.raises(ValueError, match="unknown pruner 'asha'"):
        bench_search.make_pruner("asha", [6], 162)


def _fixed_clock(monkeypatch: pytest.MonkeyPatch, step: float) -> None:
    """Every trial of a pruned search costs ``step`` CPU-s (its clock advances ``step`` per reading),
    so how many trials a budget buys does not depend on the machine's load."""
    import types

    readings = iter(range(10**6))
    clock = types.SimpleNamespace(process_time=lambda: next(readings) * step,
                                  perf_counter=bench_search.time.perf_counter)
    monkeypatch.setattr(bench_search, "time", clock)


def test_a_pruned_search_prunes_charges_what_ran_and_replays_after_a_kill(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    from nas.data import load_dataset
    from nas.space import load_space

    torch.set_num_threads(1)
    _fixed_clock(monkeypatch, 0.25)  # 16 trials in 4 CPU-s
    data = load_dataset("digits")  # 1 epoch = 28 steps: rungs at 6 and 18
    space = load_space("nb201", input_shape=data.input_shape, num_classes=data.num_classes, C=4, N=1)
    trace = tmp_path / "search_trace_random-sh_s0.csv"
    bench_search.run_pruned_search("random-sh", 0, space=space, data=data, epochs=1, max_cpu=4, trace=trace)
    first = pd.read_csv(trace)
    assert {"train", "pruned"} <= set(first["phase"])  # successive halving stops some trials and lets others go on
    pruned = first[first["phase"] == "pruned"]
    assert pruned["val_acc"].isna().all()  # a pruned trial is never had
    assert all(json.loads(r) and max(map(int, json.loads(r))) in (6, 18) for r in pruned["rungs"])
    done = first[first["phase"] == "train"]
    assert done["val_acc"].notna().all() and all(set(json.loads(r)) == {"6", "18"} for r in done["rungs"])
    assert first["cum_cpu_s"].iloc[-1] >= 4 > first["cum_cpu_s"].iloc[-2]
    # A longer budget continues the same study: the first rows stay and the sampler goes on where it stopped.
    bench_search.run_pruned_search("random-sh", 0, space=space, data=data, epochs=1, max_cpu=5.5, trace=trace)
    longer = pd.read_csv(trace)
    assert len(longer) > len(first) and longer["key"].iloc[: len(first)].tolist() == first["key"].tolist()
    assert longer["step"].tolist() == list(range(len(longer)))
    # A trace of another space does not replay.
    other = load_space("nb201", input_shape=data.input_shape, num_classes=data.num_classes, C=8, N=1)
    with pytest.raises(RuntimeError, match="does not replay"):
        bench_search.run_pruned_search("random-sh", 0, space=other, data=data, epochs=1, max_cpu=9, trace=trace)


def test_pruned_trials_get_no_ground_truth_from_the_judge(tmp_path: Path) -> None:
    trace = _trace("tpe-sh", 0, [
        ("pruned", NAN, NAN, NAN, 1.0, False),  # k0: its key is top 1% under the judge, but it was pruned
        ("train", 0.95, 0.95, NAN, 6.0, False),
        ("train", 0.97, 0.97, NAN, 6.0, False),
    ]).assign(rungs=['{"6": 0.5}', '{"6": 0.6}', '{"6": 0.7}'])
    trace.to_csv(tmp_path / "search_trace_tpe-sh_s0.csv", index=False)
    judge = pd.DataFrame({"key": ["k0", "k1", "k2"], "val_acc": [0.99, 0.95, 0.985], "test_acc": [0.99, 0.95, 0.99]})
    summary = bench_search.summarize(tmp_path, _levels("1"), judge=judge, suffix="_ref1").set_index("method")
    assert summary.loc["tpe-sh", "cpu_to_top1"] == pytest.approx(13.0)  # k2, not the pruned k0
    assert summary.loc["tpe-sh", "trained"] == 2


def test_cost_parts_split_each_run_into_one_time_budget_free_and_budget_scaled_cpu() -> None:
    run = _trace("campaign", 0, [
        ("meta_train", NAN, NAN, NAN, 100.0, True),
        ("rank", NAN, NAN, NAN, 30.0, False),  # the rank stage's short trainings: no growth with the budget
        ("finetune", 0.95, 0.95, 0.9, 3.0, False),
        ("finetune", 0.99, 0.99, 0.9, 3.0, False),
        ("finetune", 0.90, 0.90, 0.9, 3.0, False),  # after the hit: not charged to the top 1%
    ])
    parts = bench_search.cost_parts({("campaign", 0): run}, _levels(), (0.5, 0.01)).set_index("level")
    top1 = parts.loc["top1_val"]
    assert top1["hit"] and top1["one_time_s"] == pytest.approx(100.0)
    assert top1["fixed_s"] == pytest.approx(30.0 + 2 * 0.5)  # rank stage + two fine-tunes' overhead
    assert top1["scaled_s"] == pytest.approx(2 * 2.5)
    missed = bench_search.cost_parts({("campaign", 0): run}, {**_levels(), "val_acc_top1": 0.995},
                                     (0.5, 0.01)).set_index("level").loc["top1_val"]
    assert not missed["hit"] and missed["scaled_s"] == pytest.approx(3 * 2.5)  # a miss is charged all it spent


def test_step_cost_fits_the_overhead_and_the_per_step_cpu_of_the_multi_fidelity_trials() -> None:
    steps = [6, 18, 54, 162] * 4
    frame = pd.DataFrame({
        "phase": ["pruned", "pruned", "pruned", "train"] * 4, "cpu_s": [0.4 + 0.03 * s for s in steps],
        "rungs": [json.dumps({str(r): 0.5 for r in [6, 18, 54] if r <= s}) for s in steps], "cached": False,
    })
    overhead, step = bench_search.step_cost(frame, 162)
    assert overhead == pytest.approx(0.4) and step == pytest.approx(0.03)
    plain = pd.DataFrame({"phase": ["train"] * 3, "cpu_s": [6.0, 8.1, 7.0], "cached": False})
    assert bench_search.step_cost(plain, 162) == pytest.approx((0.0, 7.0 / 162))


def _parts(method: str, runs: list[tuple[bool, float, float]], one_time: float = 0.0) -> pd.DataFrame:
    return pd.DataFrame([
        {"method": method, "seed": i, "level": level, "hit": hit, "one_time_s": one_time, "fixed_s": fixed,
         "scaled_s": scaled, "overhead_s": 0.0, "step_s": 0.0}
        for i, (hit, fixed, scaled) in enumerate(runs) for level in ("top1_val", "top1_test")
    ])


def test_total_cost_charges_the_one_time_cost_once_and_amortises_it() -> None:
    parts = pd.concat([
        _parts("campaign-x", [(True, 5.0, 5.0), (True, 5.0, 5.0)], one_time=300.0),  # ERT 310, 110, 40
        _parts("tpe", [(True, 0.0, 100.0), (False, 0.0, 200.0)]),  # ERT 300
        _parts("random", [(True, 0.0, 400.0)]),  # ERT 400
    ])
    table = bench_search.total_cost(parts, resamples=200).set_index(["level", "method"])
    row = table.loc[("top1_val", "campaign-x")]
    assert row["ert_cpu_s"] == pytest.approx(310.0)
    assert row["ert_cpu_s_amortised_3"] == pytest.approx(110.0)
    assert row["ert_cpu_s_amortised_10"] == pytest.approx(40.0)
    assert row["best_baseline"] == "tpe" and row["best_baseline_ert_cpu_s"] == pytest.approx(300.0)
    assert row["baseline_over_ert"] == pytest.approx(300.0 / 310.0)
    assert row["baseline_over_ert_amortised_10"] == pytest.approx(300.0 / 40.0)
    assert row["baseline_over_ert_q05"] <= row["baseline_over_ert_q95"]
    assert math.isnan(table.loc[("top1_val", "tpe"), "baseline_over_ert"])  # baselines are not set against themselves


def test_cost_model_finds_where_the_campaign_breaks_even_as_the_budget_grows() -> None:
    parts = pd.concat([
        _parts("campaign-x", [(True, 10.0, 10.0)] * 3, one_time=290.0),  # 300 + 10 x
        _parts("tpe", [(True, 0.0, 100.0)] * 3),  # 100 x
    ])
    model = bench_search.cost_model(parts, 162, budgets=np.array([162.0, 324.0, 486.0, 1620.0]), resamples=100)
    at = model[model["level"] == "top1_val"].set_index("budget_steps")
    # x = budget / 162: campaign 290 + 10 + 10 x against TPE's 100 x -> ratios 3.1, 1.6, 1.1, 0.4.
    assert at["ratio"].tolist() == pytest.approx([310 / 100, 320 / 200, 330 / 300, 400 / 1000])
    assert at["ratio_amortised_10"].tolist() == pytest.approx([(29 + 10 + 10 * x) / (100 * x) for x in (1, 2, 3, 10)])
    assert set(at["best_baseline"]) == {"tpe"} and set(at["runs"]) == {3}
    # Identical runs: every bootstrap draw gives the same ratio.
    assert at["ratio_q05"].tolist() == pytest.approx(at["ratio"].tolist())


def test_campaign_folders_pool_builds_with_their_seeds_apart(tmp_path: Path, campaign: pd.DataFrame) -> None:
    for build in ("b1", "b2"):
        (tmp_path / build).mkdir()
        campaign.to_csv(tmp_path / build / "search_trace_campaign_s0.csv", index=False)
    (tmp_path / "b2" / "search_trace_tpe_s0.csv").write_text("not read\n")
    pooled = bench_search.campaign_traces([tmp_path / "b1", tmp_path / "b2"])
    assert sorted(pooled["seed"].unique()) == [1000, 2000] and set(pooled["method"]) == {"campaign"}
    with pytest.raises(SystemExit, match="--campaigns .*missing is not a folder"):
        bench_search.campaign_traces([tmp_path / "missing"])


def test_predictor_search_fits_on_what_it_trained_and_trains_the_best_scored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    from nas.data import load_dataset
    from nas.space import load_space

    torch.set_num_threads(1)
    data = load_dataset("digits")
    space = load_space("nb201", input_shape=data.input_shape, num_classes=data.num_classes, C=4, N=1)
    referee = bench_search.Referee(tmp_path / "gt.sqlite", data, 0.2)

    class OneSecond:
        """Charges every training 1 CPU-s, so the budget buys the same steps on any machine."""

        def judge(self, graph):
            record, _, cached = referee.judge(graph)
            return record, 1.0, cached

    monkeypatch.setattr(bench_search, "_timed", lambda fn: (fn(), 0.5))  # every fit and scoring: 0.5 CPU-s
    trace = tmp_path / "search_trace_bananas_s0.csv"
    bench_search.run_predictor_search(0, space=space, data=data, referee=OneSecond(), max_cpu=6, start=4, batch=2,
                                       pool=12, trace=trace)
    run = pd.read_csv(trace)
    # 4 start trainings (4 CPU-s), a fit (4.5), the predictor's best 2 (6.5): the budget of 6 is spent.
    assert run["phase"].tolist() == ["train"] * 4 + ["fit"] + ["train"] * 2
    trained = run[run["phase"] == "train"]
    assert trained["key"].is_unique and trained["val_acc"].notna().all()
    assert run["cum_cpu_s"].iloc[-1] == pytest.approx(6.5)
