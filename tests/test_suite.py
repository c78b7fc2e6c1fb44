"""The ranking suite (``experiments/suite.py``) on a tiny protocol: rows, resumption and the report."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pandas as pd
import pytest

SUITE = Path(__file__).resolve().parents[1] / "experiments" / "suite.py"


@pytest.fixture(scope="module")
def suite() -> ModuleType:
    spec = importlib.util.spec_from_file_location("suite_under_test", SUITE)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def tiny(suite: ModuleType) -> object:
    return suite.Protocol(archs=6, epochs=0.2, ghn_steps=4, label_counts=(4, 5), few=4, default_labels=5)


@pytest.fixture(scope="module")
def ran(suite: ModuleType, tiny: object, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    root = tmp_path_factory.mktemp("suite")
    pair = next(p for p in suite.PAIRS if p.name == "my_space-digits")
    suite.run_pair(pair, root, tiny, progress=False)
    return root, pair


def test_every_row_of_the_protocol_is_scored(ran: tuple[Path, object], suite: ModuleType) -> None:
    root, pair = ran
    summary = json.loads((root / pair.name / "summary.json").read_text())
    methods = {name for name, row in summary["methods"].items() if row["kendall"] is not None}
    ranker_rows = {"ghn", "ghn_w05", "ghn_noprior", "ghn_meta", "ghn_meta_noprior", "opcount_ranker",
                   "opcount_ranker_flops", "ghn_n4", "ghn_meta_n4", "opcount_ranker_flops_n4",
                   "ghn_n4_s102", "ghn_meta_n4_s102", "ghn_n4_s103", "ghn_meta_n4_s103"}
    assert ranker_rows | set(suite.BASELINES) | {"ghn_plain"} <= methods
    # Held-out label seeds; one cost record per recipe, each with the GHN's meta-training time.
    assert set(summary["ranker"]) == {"default", "_n4", "_n4_s102", "_n4_s103"}
    assert summary["ranker"]["default"]["seed"] == 101 and summary["ranker"]["_n4_s103"]["seed"] == 103
    assert summary["ghn_seconds"] > 0
    default = summary["ranker"]["default"]
    assert default["one_time_seconds"]["ghn_meta"] > summary["ghn_seconds"]
    # The campaign's ranker (random weights) is charged its labels and fit, not the GHN's meta-training;
    # its ablations with a fixed weight or none cost the same.
    for cost in summary["ranker"].values():
        assert "calibration" not in cost
    once = default["one_time_seconds"]
    assert once["ghn"] == pytest.approx(default["label_seconds"] + default["fit_seconds"]["scratch"])
    assert once["ghn_w05"] == once["ghn_noprior"] == once["ghn"]
    assert "calibration" not in summary["protocol"]
    role = pd.read_csv(root / pair.name / "ghn_role.csv")
    assert role["labels"].tolist() == [4, 5] and role["label_seeds"].tolist() == [3, 1]
    assert (role["lo"] <= role["value"] + 1e-12).all() and (role["value"] <= role["hi"] + 1e-12).all()


def test_a_rerun_scores_and_trains_nothing(ran: tuple[Path, object], suite: ModuleType, tiny: object,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    root, pair = ran
    before = pd.read_csv(root / pair.name / "candidates.csv")
    called: list[str] = []
    from nas.evaluation import ground_truth
    from nas.ghn import _ranker

    monkeypatch.setattr(ground_truth, "_train_one", lambda *a: called.append("ground truth"))
    monkeypatch.setattr(_ranker, "_short_training_loss", lambda *a: called.append("label"))
    monkeypatch.setattr(_ranker, "fit_ranker", lambda *a, **k: called.append("fit"))
    suite.run_pair(pair, root, tiny, progress=False)
    assert called == []
    after = pd.read_csv(root / pair.name / "candidates.csv")
    columns = [c for c in before.columns if c.startswith("score_")]
    pd.testing.assert_frame_equal(before[columns], after[columns])


def test_report_writes_the_suite_table_and_figure(ran: tuple[Path, object], suite: ModuleType) -> None:
    root, pair = ran
    table = suite.report(root, [pair])
    assert set(table["pair"]) == {pair.name} and table["held_out"].all()
    best = table[table["method"] == "best_zero_cost"]
    proxies = table[table["method"].isin(suite.ZERO_COST)]
    assert len(best) == 1 and best["kendall"].iloc[0] == pytest.approx(proxies["kendall"].max())
    ghn = table[table["method"] == "ghn"].iloc[0]
    assert ghn["ratio_to_ceiling"] == pytest.approx(ghn["kendall"] / ghn["noise_ceiling"])
    assert ghn["one_time_seconds"] > 0
    assert "| pair" in (root / "suite" / "suite.md").read_text()
    rule = pd.read_csv(root / "suite" / "verdict.csv").iloc[0]
    assert rule["at_0.9_ceiling"] == (ghn["kendall"] >= 0.9 * ghn["noise_ceiling"])
    assert rule["beats_zero_cost"] == (ghn["kendall"] >= best["kendall"].iloc[0])
    assert rule["ghn_lifts"] == (rule["ghn_lift"] >= 0.05 and rule["ghn_lift_lo"] > 0)
    for suffix in (".png", ".pdf"):
        assert (root / "suite" / f"kendall_by_pair{suffix}").stat().st_size > 1000


def test_label_seconds_estimated_for_an_old_record_add_no_weight_choice(suite: ModuleType) -> None:
    """Records of rounds 2 and 3 carry the runs that chose the prior's weight; they are no longer charged."""
    timed = {"labels": 4, "labelled": 4, "label_seconds": 8.0, "label_seconds_estimated": 0, "ghn_seconds": 100.0,
             "fit_seconds": {"scratch": 3.0, "ghn": 5.0}, "calibration": None, "one_time_seconds": {}}
    untimed = {**timed, "labels": 10, "labelled": 10, "label_seconds": None, "one_time_seconds": {},
               "calibration": {"n": 20, "trained": 20, "epochs": 3.0, "seconds": 400.0, "weight": {"scratch": 1.0}}}
    costs = suite._estimate_missing_label_seconds({"_n4": timed, "default": untimed})
    default = costs["default"]
    assert default["label_seconds"] == pytest.approx(20.0) and default["label_seconds_estimated"] == 10
    assert default["one_time_seconds"]["ghn"] == pytest.approx(20.0 + 3.0)
    assert default["one_time_seconds"]["ghn_w05"] == default["one_time_seconds"]["ghn"]
    assert default["one_time_seconds"]["ghn_meta"] == pytest.approx(20.0 + 5.0 + 100.0)
    assert costs["_n4"]["one_time_seconds"] == {}  # timed: left as recorded


def test_report_reads_a_committed_summary_with_old_weight_records(suite: ModuleType, tmp_path: Path) -> None:
    pair = next(p for p in suite.PAIRS if p.name == "nb201-mnist5k")
    committed = json.loads((suite.ROOT / pair.name / "summary.json").read_text())
    assert committed["ranker"]["default"]["calibration"]["seconds"] > 0  # what the old record holds
    (tmp_path / pair.name).mkdir()
    (tmp_path / pair.name / "summary.json").write_text(json.dumps(committed))
    table = suite.report(tmp_path, [pair])
    ghn = table[table["method"] == "ghn"].iloc[0]
    assert ghn["kendall"] == pytest.approx(committed["methods"]["ghn"]["kendall"])
    assert ghn["one_time_seconds"] == pytest.approx(committed["ranker"]["default"]["one_time_seconds"]["ghn"])
