"""Measured latency (:mod:`nas.latency`): measurement, its cache, the Pareto front, and the ``latency`` baseline."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest

import nas.latency as latency
from nas.cli import main
from nas.latency import LATENCY_COLUMNS, LatencyCache, measure_latency, pareto_front
from search_spaces import NB201Space

SPACE = NB201Space(input_shape=(1, 8, 8), num_classes=10, C=4, N=1)


def test_a_measurement_has_a_median_a_spread_and_a_count() -> None:
    lat = measure_latency(SPACE.sample(0).graph, batch_size=2, min_run_time=0.05)
    assert lat.median_ms > 0 and math.isfinite(lat.median_ms)
    assert lat.iqr_ms >= 0 and lat.runs >= 1


@pytest.mark.parametrize(("kwargs", "name"), [({"batch_size": 0}, "batch_size"), ({"min_run_time": 0}, "min_run_time")])
def test_bad_settings_are_named(kwargs: dict, name: str) -> None:
    with pytest.raises(ValueError, match=f"`{name}`"):
        measure_latency(SPACE.sample(0).graph, **kwargs)


def test_the_cache_measures_each_key_device_and_batch_size_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    graphs = [c.graph for c in SPACE.sample_many(3, seed=1)]
    calls: list[tuple[str, int]] = []
    real = latency.measure_latency

    def counting(graph, **kwargs):  # noqa: ANN001, ANN003, ANN202 - a spy
        calls.append((graph.key, kwargs["batch_size"]))
        return real(graph, **{**kwargs, "min_run_time": 0.02})

    monkeypatch.setattr(latency, "measure_latency", counting)
    cache = LatencyCache(tmp_path / "latency.csv")
    first = cache.measure_missing(graphs + graphs[:1], batch_size=1)
    assert list(first.columns) == list(LATENCY_COLUMNS) and list(first["key"]) == [g.key for g in graphs]
    assert len(calls) == 3
    again = LatencyCache(tmp_path / "latency.csv").measure_missing(graphs[::-1], batch_size=1)  # a resumed run
    assert len(calls) == 3 and list(again["key"]) == [g.key for g in graphs[::-1]]
    LatencyCache(tmp_path / "latency.csv").measure_missing(graphs[:1], batch_size=4)  # another batch size
    assert calls[-1] == (graphs[0].key, 4) and len(calls) == 4
    assert len(pd.read_csv(tmp_path / "latency.csv")) == 4


def test_pareto_front() -> None:
    score = [1.0, 2.0, 0.5, 3.0, float("nan"), 0.5]
    cost = [5.0, 1.0, 9.0, 0.5, 0.1, 10.0]
    assert pareto_front(score, cost) == [True, True, True, True, False, False]


def test_latency_is_a_baseline_column_of_correlate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cands = SPACE.sample_many(6, seed=2)
    pd.DataFrame({"graph": [c.graph.to_json() for c in cands], "val_loss": range(6)}).to_csv(tmp_path / "t.csv")
    code = main(["correlate", "--space", "nb201", "--space-arg", "C=4", "--space-arg", "N=1", "--dataset", "digits",
                 "--ground-truth", str(tmp_path / "t.csv"), "--methods", "latency,params", "--out", str(tmp_path / "o"),
                 "--no-progress", "--no-figures"])
    assert code == 0, capsys.readouterr().err
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert summary["methods"]["latency"]["n"] == 6 and summary["methods"]["latency"]["kendall"] is not None
    scores = pd.read_csv(tmp_path / "o" / "candidates.csv")["score_latency"]
    assert (scores > 0).all()
