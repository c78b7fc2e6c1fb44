"""``nas correlate --ground-truth TABLE``: rank correlation against a table of trained architectures, no training."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from conftest import ROOT, run_cli as _run
from search_spaces import NB201Space
from search_spaces.nb201 import arch_string

SMALL = ["--space", "nb201", "--space-arg", "C=4", "--space-arg", "N=1", "--dataset", "digits"]
COMMITTED = ROOT / "experiments" / "results" / "nb201-mnist5k"


def _candidates(n: int = 24, C: int = 4) -> list:
    space = NB201Space(input_shape=(1, 8, 8), num_classes=10, C=C, N=1)
    return space.sample_many(n, seed=5)


def _loss_table(n: int = 24) -> pd.DataFrame:
    """A table in nas correlate's own layout, with losses that follow log-parameters plus seed noise."""
    rng = np.random.default_rng(0)
    rows = []
    for cand in _candidates(n):
        base = -np.log(cand.graph.num_params())
        rows.append({"key": cand.graph.key, "graph": cand.graph.to_json(),
                     "gt_val_loss_s0": base + rng.normal(0, 0.3), "gt_val_loss_s1": base + rng.normal(0, 0.3)})
    return pd.DataFrame(rows)


def test_a_loss_table_is_the_ground_truth_and_nothing_is_trained(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    table = _loss_table()
    table.to_csv(tmp_path / "gt.csv", index=False)
    code, out, err = _run(capsys, "correlate", *SMALL, "--ground-truth", str(tmp_path / "gt.csv"),
                          "--methods", "params,flops,random", "--out", str(tmp_path / "out"), "--no-progress",
                          "--no-figures")
    assert code == 0, err
    assert "24 architectures of" in out and "val_loss over 2 seed(s); nothing trained" in out
    assert not (tmp_path / "out" / "ground_truth.sqlite").exists()
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    truth = -(table["gt_val_loss_s0"] + table["gt_val_loss_s1"]) / 2
    written = pd.read_csv(tmp_path / "out" / "candidates.csv")
    assert list(written["key"]) == list(table["key"])  # the table's order and architectures
    expected = stats.kendalltau(written["num_params"], truth).statistic
    assert summary["methods"]["params"]["kendall"] == pytest.approx(expected, abs=1e-9)
    ceiling = stats.kendalltau(table["gt_val_loss_s0"], table["gt_val_loss_s1"]).statistic
    assert summary["noise_ceiling"]["kendall"] == pytest.approx(ceiling, abs=1e-9)
    assert summary["ground_truth"]["table"].endswith("gt.csv") and summary["ground_truth"]["metric"] == "val_loss"


def test_nas_bench_201_arch_strings_with_one_accuracy_column(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cands = _candidates()
    acc = np.linspace(0.5, 0.9, len(cands))[::-1]  # some order the scorers do not know
    table = pd.DataFrame({"arch": [arch_string(c) for c in cands], "accuracy": acc})
    table.to_parquet(tmp_path / "nb201.parquet", index=False)
    code, out, err = _run(capsys, "correlate", *SMALL, "--ground-truth", str(tmp_path / "nb201.parquet"),
                          "--methods", "params,random", "--out", str(tmp_path / "out"), "--no-progress")
    assert code == 0, err
    assert "noise ceiling (seed vs seed): not available (the ground truth has one seed)" in out
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["ground_truth"]["metric"] == "val_acc" and summary["ground_truth"]["lower_is_better"] is False
    params = [c.graph.num_params() for c in cands]
    assert summary["methods"]["params"]["kendall"] == pytest.approx(stats.kendalltau(params, acc).statistic, abs=1e-9)
    assert (tmp_path / "out" / "figures" / "score_vs_truth_params.png").is_file()


def test_the_committed_nb201_mnist5k_rows_are_reproduced_from_its_table(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    methods = ["params", "flops", "random", "synflow", "snip", "grad_norm", "jacob_cov", "naswot"]
    code, out, err = _run(capsys, "correlate", "--space", "nb201", "--space-arg", "C=8", "--space-arg", "N=1",
                          "--dataset", "mnist5k", "--ground-truth", str(COMMITTED / "candidates.csv"),
                          "--methods", ",".join(methods), "--out", str(tmp_path), "--no-progress", "--no-figures")
    assert code == 0, err
    new = pd.read_csv(tmp_path / "summary.csv", index_col="method")
    old = pd.read_csv(COMMITTED / "summary.csv", index_col="method").loc[methods]
    columns = ["kendall", "kendall_lo", "kendall_hi", "spearman", "top10_precision"]
    assert np.abs(new.loc[methods, columns].to_numpy() - old[columns].to_numpy()).max() <= 1e-3


def _bad(tmp_path: Path, kind: str) -> tuple[Path, list[str]]:
    table = _loss_table(8)
    extra: list[str] = []
    if kind == "unknown arch string":
        table = pd.DataFrame({"arch": ["|conv_9x9~0|+|none~0|none~1|+|none~0|none~1|none~2|"] * 2 + ["x"] * 6,
                              "val_acc": np.arange(8.0)})
    elif kind == "missing metric":
        table = table.drop(columns=["gt_val_loss_s0", "gt_val_loss_s1"])
    elif kind == "missing architectures":
        table = table.drop(columns=["graph"])
    elif kind == "duplicates":
        table = pd.concat([table, table.iloc[[2]]], ignore_index=True)
    elif kind == "other settings":
        wide = _candidates(8, C=8)
        table["graph"] = [c.graph.to_json() for c in wide]
        table["key"] = [c.graph.key for c in wide]
    elif kind == "edited key":
        table.loc[3, "key"] = table.loc[4, "key"]
    elif kind == "text metric":
        table["gt_val_loss_s0"] = "low"
    elif kind == "with --epochs":
        extra = ["--epochs", "5"]
    path = tmp_path / "bad.csv"
    table.to_csv(path, index=False)
    return path, extra


@pytest.mark.parametrize(
    ("kind", "needle"),
    [
        ("unknown arch string", "row 1: `arch` '|conv_9x9~0|"),
        ("missing metric", "has no trained metric"),
        ("missing architectures", "names no architectures: give a `graph` column"),
        ("duplicates", "rows 3 and 9 are the same architecture"),
        ("other settings", "8 of 8 architectures are not of space 'nb201' with C=4, N=1"),
        ("edited key", "row 4: `key`"),
        ("text metric", "column 'gt_val_loss_s0' must hold numbers"),
        ("with --epochs", "`--epochs` cannot be used with `--ground-truth`"),
    ],
)
def test_bad_tables_get_one_line_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: str,
                                        needle: str) -> None:
    path, extra = _bad(tmp_path, kind)
    code, out, err = _run(capsys, "correlate", *SMALL, "--ground-truth", str(path), "--methods", "params",
                          "--out", str(tmp_path / "out"), "--no-progress", *extra)
    assert code == 2
    assert needle in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "out" / "summary.json").exists()
