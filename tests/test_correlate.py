"""The correlation pipeline, its summary.json, figures and the ``nas correlate`` CLI."""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib
import matplotlib.figure
import numpy as np
import pandas as pd
import pytest

from nas.cli import main
from nas.data import Dataset, load_dataset
from nas.evaluation import (
    REPORTED_METHODS,
    CorrelationResult,
    GroundTruthCache,
    Scorer,
    correlate,
    ground_truth,
    plot_method_bars,
    plot_score_vs_truth,
    write_results,
)
from nas.graph import ArchGraph
from nas.space import SearchSpace, load_space
from nas.training import TrainConfig

SPACE_SOURCE = '''
from nas.graph import GraphBuilder
from nas.space import SearchSpace


class Tiny(SearchSpace):
    name = "tiny"

    def build(self, trial):
        b = GraphBuilder(self.input_shape)
        width = trial.suggest_categorical("width", [2, 4, 8])
        x = b.add("conv", b.input, out_channels=width, kernel=trial.suggest_categorical("kernel", [1, 3]))
        block = trial.suggest_categorical("block", ["rcb", "relu", "pool"])
        if block == "rcb":
            x = b.add("relu_conv_bn", x, out_channels=width, kernel=3)
        elif block == "relu":
            x = b.add("relu", x)
        else:
            x = b.add("max_pool", x, kernel=3, stride=1)
        x = b.add("global_avg_pool", x)
        return b.build(b.add("linear", x, out_features=self.num_classes))
'''

ARCHS, EPOCHS, SEEDS, MAX_TRAIN = 6, 1, 2, 192


@pytest.fixture(scope="module")
def space_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("space") / "tiny_space.py"
    path.write_text(SPACE_SOURCE)
    return path


@pytest.fixture(scope="module")
def data() -> Dataset:
    return load_dataset("digits", max_train=MAX_TRAIN)


@pytest.fixture(scope="module")
def space(space_file: Path, data: Dataset) -> SearchSpace:
    return load_space(f"{space_file}:Tiny", input_shape=data.input_shape, num_classes=data.num_classes)


class Oracle(Scorer):
    """Reads the trained losses from the cache: a scorer subclass in a few lines."""

    def __init__(self, cache: Path, *, sign: float = 1.0, name: str = "oracle") -> None:
        self.cache, self.sign, self.name = GroundTruthCache(cache), sign, name

    def score(self, graphs: Sequence[ArchGraph], data: Dataset) -> list[float]:
        budget = TrainConfig(epochs=EPOCHS)
        losses = [[self.cache.get(g, data, budget, s).val_loss for s in range(SEEDS)] for g in graphs]
        return [-self.sign * sum(v) / SEEDS for v in losses]


class FakeGHN:
    """Duck-typed GHN: predicted loss 1 / num_params (so it ranks like ``params``)."""

    def evaluate(self, graphs: Sequence[ArchGraph], data: Dataset, **kwargs: Any) -> list[dict[str, float]]:
        return [{"loss": 1.0 / g.num_params(), "acc": 0.0} for g in graphs]


class FakeRanker:
    """Duck-typed ranker: rank score (lower is better) ``-num_params``, so it ranks like ``params``."""

    def score(self, graphs: Sequence[ArchGraph]) -> Any:
        import numpy as np

        return -np.array([float(g.num_params()) for g in graphs])


@pytest.fixture(scope="module")
def result(tmp_path_factory: pytest.TempPathFactory, space: SearchSpace, data: Dataset) -> CorrelationResult:
    cache = tmp_path_factory.mktemp("gt") / "gt.sqlite"
    return correlate(
        space,
        data,
        archs=ARCHS,
        epochs=EPOCHS,
        seeds=SEEDS,
        scorers=["ghn", "ghn_plain", "params", "random", "naswot", Oracle(cache), Oracle(cache, sign=-1, name="anti")],
        ghn={"ghn": FakeRanker(), "ghn_plain": FakeGHN()},
        cache_path=cache,
        progress=False,
        n_resamples=200,
    )


def test_frame_has_one_row_per_candidate(result: CorrelationResult) -> None:
    frame = result.frame
    assert len(frame) == ARCHS and frame["key"].is_unique
    for column in ("graph", "num_params", "flops", "gt_val_loss_s0", "gt_val_loss_s1", "gt_val_loss",
                   "gt_val_acc_s0", "gt_val_acc", "score_ghn", "score_params", "score_oracle"):
        assert column in frame.columns
    mean = (frame["gt_val_loss_s0"] + frame["gt_val_loss_s1"]) / 2
    assert frame["gt_val_loss"].tolist() == pytest.approx(mean.tolist())
    assert ArchGraph.from_json(frame.loc[0, "graph"]).key == frame.loc[0, "key"]


def test_summary_ranks_against_minus_loss(result: CorrelationResult) -> None:
    summary = result.summary
    assert list(summary.index) == ["ghn", "ghn_plain", "params", "random", "naswot", "oracle", "anti"]
    assert summary.loc["oracle", "kendall"] == pytest.approx(1.0)
    assert summary.loc["oracle", "spearman"] == pytest.approx(1.0)
    assert summary.loc["oracle", "top10_precision"] == pytest.approx(1.0)
    assert summary.loc["anti", "kendall"] == pytest.approx(-1.0)
    assert summary.loc["anti", "top10_precision"] == pytest.approx(0.0)
    # -loss of the fake GHN and the fake ranker's score order candidates exactly as their parameter counts.
    assert summary.loc["ghn", "kendall"] == pytest.approx(summary.loc["params", "kendall"])
    assert summary.loc["ghn_plain", "kendall"] == pytest.approx(summary.loc["params", "kendall"])
    for method in summary.index:
        row = summary.loc[method]
        assert row["kendall_lo"] <= row["kendall"] + 1e-12 <= row["kendall_hi"] + 2e-12
        assert row["seconds_per_candidate"] >= 0
    assert summary.loc["naswot", "seconds_per_candidate"] > summary.loc["params", "seconds_per_candidate"]


def test_summary_json_has_the_documented_shape(result: CorrelationResult, tmp_path: Path) -> None:
    paths = write_results(result, tmp_path, figures=False)
    on_disk = json.loads(paths["summary_json"].read_text())
    assert on_disk == json.loads(json.dumps(result.summary_json))
    assert {"noise_ceiling", "methods", "ground_truth", "n"} <= set(on_disk)
    assert {"kendall", "spearman"} <= set(on_disk["noise_ceiling"])
    assert -1 <= on_disk["noise_ceiling"]["kendall"] <= 1
    assert set(REPORTED_METHODS) <= set(on_disk["methods"])
    assert {"oracle", "anti"} <= set(on_disk["methods"])
    for name, entry in on_disk["methods"].items():
        assert {"kendall", "spearman", "top10_precision", "seconds_per_candidate"} <= set(entry), name
    assert on_disk["methods"]["oracle"]["kendall"] == pytest.approx(1.0)
    assert on_disk["methods"]["synflow"]["kendall"] is None  # documented but not run
    gt = on_disk["ground_truth"]
    assert gt["n"] == ARCHS and gt["seeds"] == [0, 1] and gt["epochs"] == EPOCHS
    assert gt["seconds_per_run"] > 0 and gt["dataset"] == "digits"
    assert len(pd.read_csv(paths["candidates"])) == ARCHS
    assert list(pd.read_csv(paths["summary"], index_col="method").index) == list(result.summary.index)


def test_plots_return_axes(result: CorrelationResult) -> None:
    ax = plot_score_vs_truth(result.frame, method="oracle")
    assert isinstance(ax, matplotlib.axes.Axes)
    assert "1.000" in ax.get_title() and ax.get_xlabel() and ax.get_ylabel()
    ax = plot_method_bars(result.summary)
    labels = [t.get_text() for t in ax.get_xticklabels()]
    assert labels[0] == "oracle" and labels[-1] == "anti"  # sorted best first
    ceiling = result.summary_json["noise_ceiling"]["kendall"]
    assert any(line.get_ydata()[0] == pytest.approx(ceiling) for line in ax.get_lines())
    # Every colour and line has a legend entry; the axis says which way is better; n is stated.
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend[:2] == ["GHN-based", "baseline"] and any("noise ceiling" in t for t in legend)
    assert "higher is better" in ax.get_ylabel() and f"n = {ARCHS}" in ax.get_title()
    assert "lower is better" in plot_score_vs_truth(result.frame, method="oracle").get_ylabel()
    with pytest.raises(ValueError, match="synflow"):
        plot_score_vs_truth(result.frame, method="synflow")
    fig = matplotlib.figure.Figure()
    left, right = fig.subplots(1, 2)
    assert plot_score_vs_truth(result.frame, "params", right) is right and not left.has_data()
    assert right.collections  # the scatter


def test_cli_end_to_end_with_a_tiny_ghn(
    space_file: Path, space: SearchSpace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    ghn_module = pytest.importorskip("nas.ghn", reason="nas.ghn is another engineer's package")
    ghn = ghn_module.GHN(ghn_module.GHNConfig(hidden=8, layers=1), space_info={**space.describe(), "dataset": "digits"})
    ckpt = tmp_path / "tiny_ghn.pt"
    ghn.save(ckpt)
    out = tmp_path / "out"
    argv = [
        "correlate", "--space", f"{space_file}:Tiny", "--dataset", "digits", "--max-train", str(MAX_TRAIN),
        "--archs", str(ARCHS), "--epochs", str(EPOCHS), "--train-seeds", str(SEEDS), "--out", str(out),
        "--methods", "ghn,ghn_w05,ghn_plain,ghn_meta,opcount_ranker_flops,params,synflow", "--ghn", str(ckpt),
        "--ranker-labels", "5", "--ranker-k", "3", "--no-progress",
    ]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "noise ceiling" in printed and "synflow" in printed and "ranker: 5 labels of 3 SGD steps" in printed
    summary = json.loads((out / "summary.json").read_text())
    for method in ("ghn", "ghn_plain", "ghn_meta", "opcount_ranker_flops"):
        assert math.isfinite(summary["methods"][method]["kendall"])
        assert summary["methods"][method]["seconds_per_candidate"] > 0
    # The campaign's ranker: labels of other architectures of the space, its cost recorded.
    ranker = summary["ranker"]
    assert (ranker["labels"], ranker["labelled"], ranker["k"], ranker["seed"]) == (5, 5, 3, 1)
    assert ranker["label_seconds"] > 0 and ranker["label_seconds_estimated"] == 0
    assert set(ranker["fit_seconds"]) == {"ghn", "scratch", "opcount"}
    once = ranker["one_time_seconds"]
    # The ranker and its fixed-weight ablation cost the same: its labels and its fit, nothing more.
    assert "calibration" not in ranker
    assert once["ghn"] == once["ghn_w05"] == pytest.approx(ranker["label_seconds"] + ranker["fit_seconds"]["scratch"])
    assert once["ghn_meta"] is None  # the given GHN's meta-training time is unknown (no training state)
    labels = pd.read_csv(out / "ranker_labels_k3_s1.csv")
    candidates = set(pd.read_csv(out / "candidates.csv")["key"])
    assert len(labels) == 5 and not set(labels["key"]) & candidates
    for name in ("method_bars", "score_vs_truth_ghn", "score_vs_truth_synflow"):
        for suffix in (".png", ".pdf"):
            assert (out / "figures" / (name + suffix)).stat().st_size > 1000

    # Parquet beside each CSV, with the same rows and columns.
    for name in ("candidates", "summary"):
        csv, parquet = pd.read_csv(out / f"{name}.csv"), pd.read_parquet(out / f"{name}.parquet")
        assert parquet.shape[0] == csv.shape[0] and set(csv.columns) <= set(parquet.reset_index().columns)

    # A rerun resumes from the caches in OUT: no ground truth and no label is trained again, no ranker refitted.
    trained: list[str] = []
    monkeypatch.setattr(ground_truth, "_train_one", lambda g, d, c: trained.append(g.key))
    monkeypatch.setattr(ghn_module._ranker, "_short_training_loss", lambda args: trained.append(args[0]))
    monkeypatch.setattr(ghn_module._ranker, "fit_ranker", lambda *a, **k: trained.append("fit"))
    scores = pd.read_csv(out / "candidates.csv")["score_ghn"]
    assert main([*argv, "--no-figures"]) == 0
    assert trained == []
    assert pd.read_csv(out / "candidates.csv")["score_ghn"].tolist() == pytest.approx(scores.tolist())


def test_cli_ranks_by_the_campaigns_ranker_without_meta_training(
    space_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Method ``ghn`` (the campaign's ranker, from random weights) needs no meta-trained GHN; ``ghn_meta`` does."""
    from nas.cli import correlate as cli_correlate

    def no_meta_training(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("meta-trained a GHN")

    monkeypatch.setattr(cli_correlate, "_default_ghn", no_meta_training)
    out = tmp_path / "out"
    argv = [
        "correlate", "--space", f"{space_file}:Tiny", "--dataset", "digits", "--max-train", str(MAX_TRAIN),
        "--archs", str(ARCHS), "--epochs", str(EPOCHS), "--train-seeds", str(SEEDS), "--out", str(out),
        "--ranker-labels", "5", "--ranker-k", "3", "--no-progress", "--no-figures",
    ]
    assert main([*argv, "--methods", "ghn,params"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert math.isfinite(summary["methods"]["ghn"]["kendall"])
    assert set(summary["ranker"]["fit_seconds"]) == {"scratch"}
    with pytest.raises(AssertionError, match="meta-trained a GHN"):
        main([*argv, "--methods", "ghn_meta"])


def test_ranker_rows_score_with_todays_prior_weight_even_from_an_older_cached_ranker(
    space: SearchSpace, data: Dataset, tmp_path: Path
) -> None:
    """``ghn`` is the campaign's ranker with the current default weight (0: ``ghn_noprior``'s ranking), even
    when ``OUT/rankers/`` holds a ranker fitted while the default was 0.5; ``ghn_w05`` keeps 0.5."""
    from nas.evaluation import LabelRecipe, ranker_methods, sample_candidates
    from nas.ghn import GHNRanker, RankerConfig

    candidates = sample_candidates(space, 6, seed=0)
    keys = [g.key for g in candidates]
    recipe = LabelRecipe(labels=6, k=2, seed=1)
    methods = ["ghn", "ghn_noprior", "ghn_w05"]
    scorers, _ = ranker_methods(space, data, ghn=None, methods=methods, out=tmp_path, exclude=keys,
                                recipe=recipe, progress=False)
    (cached,) = list((tmp_path / "rankers").glob("*.pt"))
    old = GHNRanker.load(cached)
    old.config = dataclasses.replace(old.config, flops_weight=0.5)  # as fitted before the default changed
    old.save(cached)
    again, _ = ranker_methods(space, data, ghn=None, methods=methods, out=tmp_path, exclude=keys, recipe=recipe,
                              progress=False)
    assert RankerConfig().flops_weight == 0.0
    for first, second in ((scorers, "fresh"), (again, "cached")):
        scores = {s.name: np.asarray(s.score(candidates, data)) for s in first}
        order = {name: list(np.argsort(v, kind="stable")) for name, v in scores.items()}
        assert order["ghn"] == order["ghn_noprior"], second  # the same ranking (the scales differ)
        assert not np.allclose(scores["ghn"], scores["ghn_w05"]), second  # the prior changes the scores


def test_cli_rejects_bad_methods(space_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = ["correlate", "--space", f"{space_file}:Tiny", "--dataset", "digits", "--out", str(tmp_path)]
    assert main([*base, "--methods", "params,synflw"]) == 2
    assert "synflw" in capsys.readouterr().err
    assert main([*base, "--ranker-labels", "3"]) == 2
    assert "`--ranker-labels` must be at least 4, but got 3" in capsys.readouterr().err


def test_short_training_scorer_is_tse_of_a_seeded_run(space: SearchSpace, data: Dataset) -> None:
    import torch

    from nas.evaluation import get_scorer
    from nas.network import Network
    from nas.training import train

    graph = space.sample(0).graph
    base = TrainConfig(epochs=EPOCHS, lr=0.02)
    tse = get_scorer("short_training_tse_k10", train_config=base, seed=3)
    val = get_scorer("short_training_val_k10", train_config=base, seed=3)
    assert tse.name == "short_training_tse_k10"
    torch.manual_seed(3)
    direct = train(Network(graph), data, TrainConfig(steps=10, lr=0.02, schedule="constant", seed=3))
    assert direct.steps == 10
    assert tse.score([graph], data) == pytest.approx([-sum(direct.train_losses)], rel=1e-5)
    assert val.score([graph], data) == pytest.approx([-direct.val_loss], rel=1e-5)
    assert get_scorer("short_training").name == "short_training"


def test_default_ghn_holds_the_evaluated_candidates_out(
    space: SearchSpace, data: Dataset, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ghn_module = pytest.importorskip("nas.ghn", reason="nas.ghn is another engineer's package")
    from nas.cli.correlate import _default_ghn

    graphs = [space.sample(s).graph for s in range(3)]
    seen: dict[str, Any] = {}

    def ensure_ghn(space: Any, data: Any, *, path: Path, progress: bool = True, held_out: Any = ()) -> str:
        seen.update(path=path, held_out=[g.key for g in held_out])
        return "ghn"

    monkeypatch.setattr(ghn_module, "ensure_ghn", ensure_ghn)
    assert _default_ghn(space, data, tmp_path / "ghn.pt", graphs, progress=False) == "ghn"
    assert seen == {"path": tmp_path / "ghn.pt", "held_out": [g.key for g in graphs]}

    # An ensure_ghn without `held_out` falls back to meta_train, which has it.
    class Trained:
        def eval(self) -> str:
            return "trained"

    def meta_train(space: Any, data: Any, config: Any, *, out: Path, held_out: Any = (), **kwargs: Any) -> Trained:
        seen.update(path=out, held_out=[g.key for g in held_out], resume=kwargs.get("resume"))
        return Trained()

    monkeypatch.setattr(ghn_module, "ensure_ghn", lambda space, data, *, path, progress=True: "leaky")
    monkeypatch.setattr(ghn_module, "meta_train", meta_train)
    assert _default_ghn(space, data, tmp_path / "ghn.pt", graphs, progress=False) == "trained"
    assert seen["held_out"] == [g.key for g in graphs] and seen["resume"] is True


@pytest.mark.parametrize(
    ("flag", "value", "needle"),
    [("--max-train", "0", "`--max-train` must be positive, but got 0"),
     ("--device", "bogus", "`--device` is not a valid torch device: 'bogus'")],
)
def test_cli_errors_name_the_flag(
    space_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], flag: str, value: str, needle: str
) -> None:
    out = tmp_path / "out"
    argv = ["correlate", "--space", f"{space_file}:Tiny", "--dataset", "digits", "--out", str(out),
            "--methods", "params", flag, value]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err == f"nas correlate: error: {needle}.\n"
    assert not out.exists()


def test_ranker_rows_buy_labels_in_purchases(space: SearchSpace, data: Dataset, tmp_path: Path) -> None:
    from nas.evaluation import LabelRecipe, ranker_methods, sample_candidates
    from nas.ghn import GHNRanker

    candidates = sample_candidates(space, 6, seed=0)
    keys = [g.key for g in candidates]
    recipe = LabelRecipe(labels=12, k=1, seed=1, batch=6, margin=0.0)
    scorers, cost = ranker_methods(space, data, ghn=None, methods=["ghn", "opcount_ranker"], out=tmp_path,
                                   exclude=keys, recipe=recipe, progress=False)
    assert cost is not None and cost.labels == 12 and cost.labelled == 12
    (path,) = list((tmp_path / "rankers").glob("*.pt"))
    assert path.name == "scratch_n12_k1_s1_b6m0.pt"
    info = GHNRanker.load(path).label_info
    assert [h["labels"] for h in info["history"]] == [6, 12] and info["stopped"] == "budget"
    assert cost.fit_seconds["scratch"] == pytest.approx(info["fit_seconds"])  # both purchases' fits
    assert [s.name for s in scorers] == ["ghn", "opcount_ranker"]


@pytest.mark.parametrize(("field", "value"), [("labels", 3), ("k", 0), ("batch", 0), ("batch", True),
                                              ("margin", -0.01), ("margin", math.nan), ("margin", "0.02")])
def test_label_recipe_names_a_bad_setting(field: str, value: Any) -> None:
    from nas.evaluation import LabelRecipe

    settings = {"labels": 8, "k": 2, field: value}
    with pytest.raises(ValueError, match=f"`{field}` must be"):
        LabelRecipe(**settings)
