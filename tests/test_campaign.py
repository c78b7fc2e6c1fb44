"""Tests of the search campaign (nas.campaign): both stages, resume, dedupe, storage, reports.

Everything runs on ``digits`` with nb201 at ``C=4`` and a tiny GHN meta-trained
for a few steps (shared with tests/test_cli_search.py through a file in pytest's
session temp folder). Most tests rank by the predicted-weight loss
(``rank_by="loss"``, which counts GHN calls); the ranker tests use a tiny
:class:`nas.ghn.GHNRanker` fitted on made-up labels, or fit one on 6 short
trainings of 2 steps.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import math
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
import pytest
import torch
from optuna.trial import TrialState

from nas.campaign import (
    CANDIDATE_COLUMNS,
    FINETUNED_COLUMNS,
    Campaign,
    best_record,
    candidates_frame,
    mask_url,
    open_storage,
    reap_stale_trials,
    resolve_objectives,
    resolve_sampler,
    select_candidates,
    write_report,
)
from nas.campaign._finetune import _atomic_save
from nas.campaign._storage import HEARTBEAT_ATTR, WORKER_ATTR, is_stale
from nas.data import load_dataset
from nas.exceptions import CheckpointError, StorageError
from nas.graph import ArchGraph
from nas.network import Network
from nas.space import load_space
from tests.conftest import assert_only_files

optuna.logging.set_verbosity(optuna.logging.WARNING)

SPACE_ARGS = {"C": 4}
NB201_CHOICES = ["edge_1_0", "edge_2_0", "edge_2_1", "edge_3_0", "edge_3_1", "edge_3_2"]


def make_tiny_ghn(path: Path) -> Path:
    """Meta-train (once per session) a tiny GHN for nb201 C=4 on digits."""
    from nas.exceptions import CheckpointError
    from nas.ghn import GHN, GHNConfig, MetaTrainConfig, meta_train
    from nas.space import load_space

    if path.is_file():
        try:
            GHN.load(path)
            return path
        except CheckpointError:
            pass
    data = load_dataset("digits")
    space = load_space("nb201", input_shape=data.input_shape, num_classes=data.num_classes, **SPACE_ARGS)
    config = MetaTrainConfig(steps=2, meta_batch=2, batch_size=32, eval_every=2, num_held_out=1, warmup_steps=1)
    meta_train(
        space, data, config, ghn_config=GHNConfig(hidden=16, layers=1, s_max=2), out=path, resume=False, progress=False
    )
    return path


@pytest.fixture(scope="session")
def ghn_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_ghn(tmp_path_factory.getbasetemp() / "tiny_ghn.pt")


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


class CountingGHN:
    """The real GHN, counting what it scores and fine-tunes; can raise KeyboardInterrupt on a given call."""

    def __init__(self, ghn: Any, *, interrupt_evaluate: int | None = None, interrupt_materialize: int | None = None):
        self.ghn = ghn
        self.space_info = ghn.space_info
        self.evaluated: list[str] = []
        self.materialized: list[str] = []
        self.evaluate_calls = 0
        self.materialize_calls = 0
        self.interrupt_evaluate = interrupt_evaluate
        self.interrupt_materialize = interrupt_materialize

    def check_compatible(self, space: Any) -> None:
        self.ghn.check_compatible(space)

    def evaluate(self, graphs, data, **kwargs):
        self.evaluate_calls += 1
        if self.evaluate_calls == self.interrupt_evaluate:
            raise KeyboardInterrupt
        self.evaluated.extend(g.key for g in graphs)
        return self.ghn.evaluate(graphs, data, **kwargs)

    def materialize(self, graph, data=None, **kwargs):
        self.materialize_calls += 1
        if self.materialize_calls == self.interrupt_materialize:
            raise KeyboardInterrupt
        self.materialized.append(graph.key)
        return self.ghn.materialize(graph, data, **kwargs)


def load_ghn(path: Path) -> Any:
    from nas.ghn import GHN

    return GHN.load(path)


def fit_tiny_ranker(ghn: Any, *, input_shape: tuple[int, int, int] = (1, 8, 8)) -> Any:
    """A ranker fitted in a second on 8 candidates labelled by their parameter count."""
    from nas.ghn import RankerConfig, fit_ranker

    space = load_space("nb201", input_shape=input_shape, num_classes=10, **SPACE_ARGS)
    graphs = [c.graph for c in space.sample_many(8, seed=123)]
    labels = [math.log(g.num_params()) for g in graphs]
    torch.manual_seed(0)
    return fit_ranker(ghn, graphs, labels, RankerConfig(epochs=2, ensemble=1), progress=False)


@pytest.fixture(scope="module")
def ranker_path(tmp_path_factory: pytest.TempPathFactory, ghn_path: Path) -> Path:
    path = tmp_path_factory.mktemp("ranker") / "ranker.pt"
    fit_tiny_ranker(load_ghn(ghn_path)).save(path)
    return path


class CountingRanker:
    """A ranker counting the graphs of each ``score`` call."""

    def __init__(self, ranker: Any) -> None:
        self.ranker = ranker
        self.space_info = ranker.space_info
        self.members = ranker.members
        self.calls: list[list[str]] = []

    def predict(self, graphs):
        return self.ranker.predict(graphs)

    def score(self, graphs):
        self.calls.append([g.key for g in graphs])
        return self.ranker.score(graphs)

    def check_compatible(self, space, *, source=None):
        self.ranker.check_compatible(space, source=source)


def small_campaign(out: Path, ghn: Any, **overrides: Any) -> Campaign:
    settings: dict[str, Any] = dict(
        space="nb201",
        dataset="digits",
        ghn=ghn,
        rank_by="loss",
        trials=12,
        top_k=2,
        finetune_epochs=0.3,
        out=out,
        batch_size=6,
        space_args=SPACE_ARGS,
        progress=False,
        heartbeat_interval=5,
        grace_period=60,
    )
    settings.update(overrides)
    return Campaign(**settings)


def complete_rank_trials(campaign: Campaign) -> list[optuna.trial.FrozenTrial]:
    rank, _ = campaign.open()
    return rank.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))


# ---------------------------------------------------------------- end to end


def test_campaign_end_to_end_then_rerun_evaluates_nothing(tmp_path: Path, ghn_path: Path) -> None:
    out = tmp_path / "run"
    counting = CountingGHN(load_ghn(ghn_path))
    result = small_campaign(out, counting, self_check=3, self_check_epochs=0.2).run()

    # Stage 1: the study holds the requested trials; every distinct key was scored exactly once,
    # in batches (one GHN call scores several graphs).
    trials = complete_rank_trials(small_campaign(out, ghn_path))
    assert len(trials) == 12
    keys = {t.user_attrs["key"] for t in trials}
    ranked = counting.evaluated[:-3]  # the last call scored the 3 self-check candidates
    assert sorted(ranked) == sorted(keys)
    assert counting.evaluate_calls - 1 < len(ranked)
    for t in trials:
        for attr in ("key", "num_params", "flops", "rank_score", "ghn_loss", "ghn_acc"):
            assert attr in t.user_attrs
        assert "graph" not in t.user_attrs  # kept out of the dashboard's attribute table: the choices rebuild it
        assert t.user_attrs["rank_score"] == t.user_attrs["ghn_loss"]  # rank_by="loss" keeps the ghn_loss name
        if "duplicate_of" not in t.user_attrs:
            graph = small_campaign(out, ghn_path).space.from_params(t.params)
            assert graph.key == t.user_attrs["key"]
            assert t.user_attrs["num_params"] == graph.num_params()
            assert t.values[0] == pytest.approx(t.user_attrs["ghn_loss"])
    rank, ft_study = small_campaign(out, ghn_path).open()
    assert rank.user_attrs["nas_campaign"]["config"]["rank_by"] == "loss"
    # optuna-dashboard names the objectives after these instead of "Objective 0"
    assert rank.metric_names == ["rank_score"]
    assert ft_study.metric_names == [small_campaign(out, ghn_path).config.finetune_metric]
    assert rank.user_attrs["nas_campaign"]["config"]["ranker"] is None

    # The candidates table: one row per distinct key, documented columns, sorted by GHN loss.
    cand = result.candidates
    assert list(cand.columns[: len(CANDIDATE_COLUMNS)]) == list(CANDIDATE_COLUMNS)
    assert list(cand.columns[len(CANDIDATE_COLUMNS) :]) == [*NB201_CHOICES, "choices", "graph"]
    assert len(cand) == len(keys) and cand["key"].is_unique
    assert cand["ghn_loss"].is_monotonic_increasing
    assert (cand["rank_by"] == "loss").all() and list(cand["rank_score"]) == list(cand["ghn_loss"])
    assert result.rank_by == "loss" and "ranked by loss" in result.summary()
    assert list(cand["rank"]) == list(range(1, len(cand) + 1))
    assert cand["n_trials"].sum() == 12

    # Stage 2: the top-2 distinct candidates, fine-tuned once each from predicted weights.
    ft = result.finetuned
    assert list(ft.columns[: len(FINETUNED_COLUMNS)]) == list(FINETUNED_COLUMNS)
    assert len(ft) == 2 and ft["key"].is_unique
    assert set(ft["key"]) == set(cand["key"].head(2))
    assert sorted(counting.materialized) == sorted(ft["key"])
    assert ft["val_acc"].is_monotonic_decreasing
    assert set(cand.loc[cand["finetuned"], "key"]) == set(ft["key"])

    # Files.
    for name in (
        "candidates.csv", "candidates.parquet", "finetuned.csv", "finetuned.parquet", "best.json", "best.pt",
        "best.png", "history.png", "history.pdf", "selfcheck.png", "selfcheck.csv", "campaign.db",
    ):
        assert (out / name).is_file(), name
    assert not (out / "score_vs_finetuned.png").exists()  # 2 fine-tuned candidates: too few points to plot
    assert not list(out.glob(".*tmp*"))
    csv = pd.read_csv(out / "candidates.csv")
    assert len(csv) == len(cand) and list(csv.columns) == list(cand.columns)
    assert len(pd.read_parquet(out / "finetuned.parquet")) == 2

    # best.json is the top fine-tuned row and best.pt loads into its network.
    best = json.loads((out / "best.json").read_text())
    assert best["key"] == ft["key"].iloc[0] == result.best["key"] and best["pick"] == "finetuned"
    assert best["metrics"]["val_acc"] == pytest.approx(ft["val_acc"].iloc[0])
    graph = ArchGraph.from_dict(best["graph"])
    assert graph.key == best["key"]
    state = torch.load(out / "best.pt", weights_only=True)
    Network(graph).load_state_dict(state, strict=True)
    # Weights paths are written relative to the output folder (which can then move).
    written = pd.read_csv(out / "finetuned.csv")["weights"]
    assert best["weights"] == written.iloc[0] and all(not Path(w).is_absolute() and (out / w).is_file() for w in written)

    # Self-check table and a tau in [-1, 1] (or nan when a side is constant).
    assert result.self_check is not None and len(result.self_check.table) == 3
    assert math.isnan(result.self_check.tau) or -1 <= result.self_check.tau <= 1

    # Rerun: resumes, scores and fine-tunes nothing, same tables.
    again = CountingGHN(load_ghn(ghn_path))
    result2 = small_campaign(out, again).run()
    assert again.evaluated == [] and again.materialized == []
    assert list(result2.candidates["key"]) == list(cand["key"])
    assert list(result2.finetuned["key"]) == list(ft["key"])


def test_resume_after_interrupts_scores_and_trains_nothing_twice(tmp_path: Path, ghn_path: Path) -> None:
    out = tmp_path / "run"
    ghn = load_ghn(ghn_path)
    first = CountingGHN(ghn, interrupt_evaluate=2)
    with pytest.raises(KeyboardInterrupt):
        small_campaign(out, first, trials=14, top_k=3).run()
    rank, _ = small_campaign(out, ghn).open()
    assert not rank.get_trials(states=(TrialState.RUNNING,))  # the interrupted batch went back to the queue
    assert len(rank.get_trials(states=(TrialState.WAITING,))) == 6

    second = CountingGHN(ghn, interrupt_materialize=2)
    with pytest.raises(KeyboardInterrupt):
        small_campaign(out, second, trials=14, top_k=3).run()
    third = CountingGHN(ghn)
    result = small_campaign(out, third, trials=14, top_k=3).run()

    scored = first.evaluated + second.evaluated + third.evaluated
    assert len(scored) == len(set(scored))  # no candidate scored twice across the three runs
    assert set(scored) == {t.user_attrs["key"] for t in complete_rank_trials(small_campaign(out, ghn))}
    assert third.evaluated == []
    trained = first.materialized + second.materialized + third.materialized
    assert len(trained) == len(set(trained)) == 3
    assert len(result.finetuned) == 3 and set(result.finetuned["key"]) == set(trained)
    _, ft = small_campaign(out, ghn).open()
    failed = ft.get_trials(states=(TrialState.FAIL,))
    assert len(failed) == 1  # the interrupted fine-tune, re-queued once
    complete = ft.get_trials(states=(TrialState.COMPLETE,))
    retried = [t for t in complete if t.user_attrs.get("nas_retry_of") == failed[0].number]
    assert len(retried) == 1 and retried[0].user_attrs["key"] == failed[0].user_attrs["key"]


def test_duplicates_are_not_rescored(tmp_path: Path, ghn_path: Path) -> None:
    out = tmp_path / "run"
    counting = CountingGHN(load_ghn(ghn_path))
    campaign = small_campaign(out, counting, trials=3, batch_size=8, sampler="random")
    rank, _ = campaign.open()
    a = {name: "nor_conv_3x3" for name in NB201_CHOICES}
    b = {**a, "edge_3_2": "skip_connect"}
    for params in (a, a, b):
        rank.enqueue_trial(params, skip_if_exists=False)
    campaign.rank()
    assert counting.evaluate_calls == 1 and len(counting.evaluated) == 2  # a twice in one batch: scored once
    trials = rank.get_trials(states=(TrialState.COMPLETE,))
    dup = [t for t in trials if "duplicate_of" in t.user_attrs]
    assert len(dup) == 1
    source = [t for t in trials if t.number == dup[0].user_attrs["duplicate_of"]][0]
    assert dup[0].value == source.value and dup[0].user_attrs["key"] == source.user_attrs["key"]

    # Across runs: the same choices again reuse the stored score.
    rank.enqueue_trial(b, skip_if_exists=False)
    counting2 = CountingGHN(load_ghn(ghn_path))
    small_campaign(out, counting2, trials=4, batch_size=8, sampler="random").rank()
    assert counting2.evaluate_calls == 0
    last = max(rank.get_trials(states=(TrialState.COMPLETE,)), key=lambda t: t.number)
    assert last.params == b and "duplicate_of" in last.user_attrs

    # The table still has one row per distinct candidate.
    table = candidates_frame(rank)
    assert len(table) == 2 and sorted(table["n_trials"]) == [2, 2]


def test_refinement_params_are_untried_one_step_changes_of_the_best() -> None:
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    from nas.campaign._rank import refinement_params

    dists = {
        "op": CategoricalDistribution(["a", "b", "c"]),
        "width": IntDistribution(0, 4, step=2),
        "lr": FloatDistribution(0.1, 1.0),  # continuous: never changed
    }
    study = optuna.create_study()

    def add(params: dict[str, Any], score: float, key: str, **attrs: Any) -> None:
        study.add_trial(optuna.trial.create_trial(
            params=params, distributions=dists, value=score,
            user_attrs={"key": key, "rank_score": score, **attrs},
        ))

    add({"op": "a", "width": 2, "lr": 0.5}, 1.0, "k0")
    add({"op": "b", "width": 2, "lr": 0.5}, 2.0, "k1")
    add({"op": "c", "width": 4, "lr": 0.5}, 0.5, "k0", duplicate_of=0)  # a duplicate is not a candidate
    add({"op": "a", "width": 0, "lr": 0.5}, 3.0, "k0")  # same key as the best: counted once, its choices tried
    assert refinement_params(study, 1) == [
        {"op": "c", "width": 2, "lr": 0.5},  # "b" is tried already
        {"op": "a", "width": 4, "lr": 0.5},  # width 0 is tried already
    ]
    assert refinement_params(study, 2) == [
        {"op": "c", "width": 2, "lr": 0.5},
        {"op": "a", "width": 4, "lr": 0.5},
        {"op": "b", "width": 0, "lr": 0.5},  # the second best's "c" neighbour is the first's
        {"op": "b", "width": 4, "lr": 0.5},
    ]


def test_refine_reaches_a_local_optimum_of_the_score_and_resumes_without_rescoring(
    tmp_path: Path, ghn_path: Path, ranker_path: Path
) -> None:
    from nas.campaign._rank import REFINE_ATTR, refinement_params
    from nas.ghn import GHNRanker

    out = tmp_path / "run"
    make = lambda: small_campaign(  # noqa: E731
        out, ghn_path, rank_by="ranker", ranker=ranker_path, trials=8, batch_size=8, refine=1, refine_trials=150,
        sampler="random", storage=f"journal:///{tmp_path / 'campaign.log'}",
    )
    stats = make().rank()
    rank, _ = make().open()
    trials = rank.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.FAIL))
    sampled = [t for t in trials if REFINE_ATTR not in t.user_attrs]
    refined = [t for t in trials if REFINE_ATTR in t.user_attrs]
    assert len([t for t in sampled if t.state == TrialState.COMPLETE]) == 8  # refinement is on top of `trials`
    assert len(refined) == stats.refined > 0 and len(refined) < 150  # converged within the budget

    # Every one-step change of the best candidate is scored, and none beats it.
    assert refinement_params(rank, 1) == []
    table = candidates_frame(rank)
    best = next(
        t for t in trials if t.user_attrs.get("key") == table["key"].iloc[0] and "duplicate_of" not in t.user_attrs
    )
    space = load_space("nb201", input_shape=(1, 8, 8), num_classes=10, **SPACE_ARGS)
    ranker = GHNRanker.load(ranker_path)
    neighbours = [{**best.params, name: op} for name in NB201_CHOICES for op in
                  rank.trials[best.number].distributions[name].choices if op != best.params[name]]
    graphs = [space.build(optuna.trial.FixedTrial(p)) for p in neighbours]
    assert len(neighbours) == 24
    assert min(ranker.score(graphs)) >= table["rank_score"].iloc[0] - 1e-6
    sampled_scores = [t.user_attrs["rank_score"] for t in sampled if t.state == TrialState.COMPLETE]
    assert table["rank_score"].iloc[0] <= min(sampled_scores)

    # Running it again scores nothing: the sampler's trials are there and the best has no untried neighbour.
    again = make().rank()
    assert again.told == 0 and again.evaluated == 0


def test_refine_defaults_to_top_k_with_the_ranker_and_to_off_with_the_loss(tmp_path: Path, ghn_path: Path) -> None:
    assert small_campaign(tmp_path, ghn_path, rank_by="ranker", top_k=3).config.refine == 3
    assert small_campaign(tmp_path, ghn_path, rank_by="loss", top_k=3).config.refine == 0
    assert small_campaign(tmp_path, ghn_path, rank_by="ranker", top_k=3, refine=0).config.refine == 0
    assert small_campaign(tmp_path, ghn_path, rank_by="loss", top_k=3, refine=2).config.refine == 2


@pytest.mark.parametrize("kwargs, name", [({"refine": -1}, "refine"), ({"refine": 1.5}, "refine"),
                                          ({"refine": 2, "refine_trials": 0}, "refine_trials")])
def test_refine_rejects_bad_values(tmp_path: Path, kwargs: dict[str, Any], name: str) -> None:
    with pytest.raises(ValueError, match=f"`{name}`"):
        Campaign(out=tmp_path / "run", **kwargs)
    assert not (tmp_path / "run").exists()


def test_multi_objective_takes_candidates_from_the_pareto_front(tmp_path: Path, ghn_path: Path) -> None:
    campaign = small_campaign(tmp_path / "mo", ghn_path, objectives="loss,params", trials=10, top_k=2, batch_size=10)
    campaign.rank()
    enqueued = campaign.enqueue()
    rank, ft = campaign.open()
    assert len(rank.directions) == 2
    table = candidates_frame(rank)
    front = table[table["pareto"]]
    assert len(front) >= 1
    front_keys = {t.user_attrs["key"] for t in rank.best_trials}
    assert set(front["key"]) == front_keys
    expected = select_candidates(table, 2, pareto=True)
    assert enqueued == list(expected["key"])
    assert set(enqueued) & front_keys == set(list(front.sort_values("rank_score")["key"])[:2])
    assert len(ft.get_trials(states=(TrialState.WAITING,))) == 2
    assert campaign.enqueue() == []  # enqueued once only


def test_latency_objective_measures_the_pool_once_and_plots_its_front(
    tmp_path: Path, ghn_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import nas.latency as latency

    measured: list[str] = []
    real = latency.measure_latency

    def counting(graph: ArchGraph, **kwargs: Any) -> Any:
        measured.append(graph.key)
        return real(graph, **{**kwargs, "min_run_time": 0.02})

    monkeypatch.setattr(latency, "measure_latency", counting)
    out = tmp_path / "lat"
    result = small_campaign(out, ghn_path, objectives="loss,latency", latency_pool=4, trials=10, top_k=2,
                            batch_size=10).run()
    cands = result.candidates
    has = cands["latency_ms"].map(math.isfinite)
    assert 4 <= int(has.sum()) == len(set(measured)) == len(measured)  # the pool (top 4 and the FLOPs front) once each
    assert set(cands.nsmallest(4, "rank_score")["key"]) <= set(cands[has]["key"])
    front = cands[cands["pareto"]]
    assert len(front) >= 1 and bool(front["latency_ms"].map(math.isfinite).all())
    for _, row in front.iterrows():  # no measured candidate beats a front member on both
        better = cands[has & (cands["rank_score"] <= row["rank_score"]) & (cands["latency_ms"] <= row["latency_ms"])]
        assert len(better[(better["rank_score"] < row["rank_score"]) | (better["latency_ms"] < row["latency_ms"])]) == 0
    expected = list(front.sort_values(["rank_score", "trial"])["key"])[:2]
    assert list(result.finetuned.sort_values("queue_position")["key"])[: len(expected)] == expected
    assert (out / "pareto.png").is_file() and (out / "latency.csv").is_file()
    assert f"latency: measured for {int(has.sum())} candidates" in result.summary()
    assert pd.read_csv(out / "candidates.csv")["latency_ms"].notna().sum() == int(has.sum())
    small_campaign(out, ghn_path, objectives="loss,latency", latency_pool=4, trials=10, top_k=2,
                   batch_size=10).run()
    assert len(measured) == int(has.sum())  # resumed: nothing measured twice


def test_diverged_finetune_is_a_failed_row_not_an_error(tmp_path: Path, ghn_path: Path) -> None:
    out = tmp_path / "div"
    result = small_campaign(out, ghn_path, trials=2, top_k=1, batch_size=2, finetune_lr=1e6).run()
    ft = result.finetuned
    assert len(ft) == 1 and bool(ft["failed"].iloc[0]) and pd.isna(ft["rank"].iloc[0])
    assert "diverged" in ft["error"].iloc[0]
    assert result.best is None and not (out / "best.json").exists()
    assert (out / "finetuned.csv").is_file()


# ---------------------------------------------------------------- ranking by the GHN ranker


def test_rank_by_ranker_scores_each_batch_with_one_score_call(
    tmp_path: Path, ghn_path: Path, ranker_path: Path
) -> None:
    from nas.ghn import GHNRanker

    out = tmp_path / "run"
    counting = CountingGHN(load_ghn(ghn_path))
    ranker = CountingRanker(GHNRanker.load(ranker_path))
    campaign = small_campaign(out, counting, rank_by="ranker", ranker=ranker, self_check=3, self_check_epochs=0.2,
                              refine=0)
    result = campaign.run()

    # No predicted-weight evaluation at all: one ranker call per batch scores the fresh keys.
    assert counting.evaluate_calls == 0
    rank_calls, self_check_call = ranker.calls[:-1], ranker.calls[-1]
    assert result.rank_stats is not None and result.rank_stats.score_calls == len(rank_calls) <= 2  # 12 trials / 6
    trials = complete_rank_trials(small_campaign(out, ghn_path, rank_by="ranker", ranker=ranker_path))
    keys = {t.user_attrs["key"] for t in trials}
    assert sorted(k for call in rank_calls for k in call) == sorted(keys)

    # The stored score is the ranker's score; no predicted-weight loss is stored.
    fresh = GHNRanker.load(ranker_path)
    for t in trials:
        assert "ghn_loss" not in t.user_attrs and "ghn_acc" not in t.user_attrs
        graph = campaign.space.from_params(t.params)
        assert graph.key == t.user_attrs["key"]
        assert t.user_attrs["rank_score"] == pytest.approx(float(fresh.score([graph])[0]), rel=1e-5, abs=1e-6)
        assert t.values[0] == pytest.approx(t.user_attrs["rank_score"])
    rank, _ = campaign.open()
    settings = rank.user_attrs["nas_campaign"]["config"]
    assert settings["rank_by"] == "ranker" and settings["ranker"] is None  # an object, not a file

    # Tables name the score; the top-2 by rank score are fine-tuned from the GHN's predicted weights.
    cand = result.candidates
    assert (cand["rank_by"] == "ranker").all() and cand["ghn_loss"].isna().all()
    assert cand["rank_score"].is_monotonic_increasing
    assert list(cand["rank"]) == list(range(1, len(cand) + 1))
    ft = result.finetuned
    assert list(ft.columns[: len(FINETUNED_COLUMNS)]) == list(FINETUNED_COLUMNS)
    assert set(ft["key"]) == set(cand["key"].head(2)) and sorted(counting.materialized) == sorted(ft["key"])
    assert (ft["rank_by"] == "ranker").all()
    assert sorted(ft["rank_score"]) == pytest.approx(sorted(cand["rank_score"].head(2)))
    # Fine-tuning records what the predicted weights reach before any SGD step (never run by the ranker).
    assert ft["ghn_acc"].between(0, 1).all() and ft["ghn_loss"].map(math.isfinite).all()
    assert (ft["ghn_loss"] != ft["val_loss"]).all()  # before and after fine-tuning differ
    # With the ranker, the campaign reports the ranking's first fine-tuned candidate, not the best fine-tuned one.
    assert sorted(ft["queue_position"]) == [0, 1]
    first = ft.set_index("key").loc[cand["key"].iloc[0]]
    assert first["queue_position"] == 0
    best = json.loads((out / "best.json").read_text())
    assert best["rank_by"] == "ranker" and "rank_score" in best["metrics"] and best["pick"] == "rank"
    assert best["key"] == cand["key"].iloc[0] == result.best["key"]
    assert best["metrics"]["ghn_acc"] == pytest.approx(float(first["ghn_acc"]))
    assert "first fine-tuned candidate in the ranking's order" in result.summary()
    summary = result.summary()
    assert "ranked by ranker" in summary and "rank_score" in summary and "ghn_loss" not in summary
    header = (out / "candidates.csv").read_text().splitlines()[0]
    assert "rank_by,rank_score" in header and "ghn_loss" not in header  # no all-empty column of an unused score

    # The self-check compares the same score with training.
    table = result.self_check.table
    assert list(table["key"]) == self_check_call and (table["rank_by"] == "ranker").all()
    space = load_space("nb201", input_shape=(1, 8, 8), num_classes=10, **SPACE_ARGS)
    graphs = [c.graph for c in space.sample_many(3, seed=7919)]
    assert list(table["rank_score"]) == pytest.approx(list(fresh.score(graphs)), rel=1e-5, abs=1e-6)


class StudyWatchingRanker(CountingRanker):
    """A ranker that records, at each ``score`` call, the states of the stored rank trials."""

    def __init__(self, ranker: Any, storage: str) -> None:
        super().__init__(ranker)
        self.storage = storage
        self.states: list[set[TrialState]] = []

    def score(self, graphs):
        from nas.campaign._storage import open_storage

        study = optuna.load_study(study_name="campaign-rank", storage=open_storage(self.storage))
        self.states.append({t.state for t in study.get_trials(deepcopy=False)})
        return super().score(graphs)


def test_ranker_path_samples_in_memory_and_stores_finished_trials_only(
    tmp_path: Path, ghn_path: Path, ranker_path: Path
) -> None:
    from nas.campaign._rank import REFINE_ATTR
    from nas.campaign._storage import WORKER_ATTR
    from nas.ghn import GHNRanker

    storage = f"journal:///{tmp_path / 'campaign.log'}"
    ranker = StudyWatchingRanker(GHNRanker.load(ranker_path), storage)
    make = lambda trials, refine=0, **kw: small_campaign(  # noqa: E731
        tmp_path / "run", ghn_path, rank_by="ranker", ranker=ranker, trials=trials, batch_size=4,
        storage=storage, study="campaign", refine=refine, **kw,
    )
    first = make(8).rank(worker="worker-a")
    # While a batch is scored, the storage holds no running or queued trial of it: results are stored finished.
    assert len(ranker.states) == first.score_calls >= 2
    assert all(states <= {TrialState.COMPLETE, TrialState.FAIL} for states in ranker.states)
    rank, _ = make(8).open()
    stored = rank.get_trials(deepcopy=False)
    assert len(stored) == first.told == 8
    assert {t.user_attrs[WORKER_ATTR] for t in stored} == {"worker-a"}
    assert all(t.datetime_complete is not None and len(t.params) == len(NB201_CHOICES) for t in stored)

    # Another worker (a rerun) copies those trials in: it stores only new trials and re-scores no stored key.
    scored_before = {k for call in ranker.calls for k in call}
    ranker.calls.clear()
    second = make(16, refine=1, refine_trials=30).rank(worker="worker-b")
    rescored = {k for call in ranker.calls for k in call} & scored_before
    assert not rescored
    rank, _ = make(16).open()
    trials = rank.get_trials(deepcopy=False)
    assert len(trials) == 8 + second.told and second.refined > 0
    assert sum(REFINE_ATTR not in t.user_attrs and t.state == TrialState.COMPLETE for t in trials) == 16
    assert all(t.user_attrs[WORKER_ATTR] == "worker-b" for t in trials[8:])
    # A duplicate points at the trial that scored its key.
    by_number = {t.number: t for t in trials}
    for t in trials:
        if "duplicate_of" in t.user_attrs:
            source = by_number[t.user_attrs["duplicate_of"]]
            assert source.user_attrs["key"] == t.user_attrs["key"] and "duplicate_of" not in source.user_attrs


@pytest.mark.parametrize("refine", [0, 2])
def test_local_sampling_stores_what_sampling_in_the_storage_stores(
    tmp_path: Path, ranker_path: Path, refine: int
) -> None:
    from nas.campaign import resolve_sampler, run_rank_stage
    from nas.campaign._rank import REFINE_ATTR
    from nas.campaign._storage import open_storage
    from nas.ghn import GHNRanker

    space = load_space("nb201", input_shape=(1, 8, 8), num_classes=10, **SPACE_ARGS)
    ranker = GHNRanker.load(ranker_path)
    stored: dict[bool, list[tuple[Any, ...]]] = {}
    for local in (False, True):
        storage = open_storage(f"journal:///{tmp_path / f'{local}.log'}")
        study = optuna.create_study(storage=storage, sampler=resolve_sampler("tpe", seed=3))
        run_rank_stage(study, space, None, None, n_trials=20, batch_size=6, ranker=ranker, worker="w",
                       progress=False, refine=refine, local_sampling=local)
        stored[local] = [
            (t.state, t.params, t.user_attrs["key"], t.user_attrs.get("duplicate_of"), REFINE_ATTR in t.user_attrs,
             t.values)
            for t in study.get_trials(deepcopy=False)
        ]
    # Same seeded sampler, same trials in the same order: only where the sampler runs differs.
    assert len(stored[True]) >= 20 + (refine > 0)
    assert stored[True] == stored[False]


def test_ranker_path_scores_trials_an_earlier_run_left_queued(
    tmp_path: Path, ghn_path: Path, ranker_path: Path
) -> None:
    make = lambda: small_campaign(  # noqa: E731
        tmp_path / "run", ghn_path, rank_by="ranker", ranker=ranker_path, trials=6, batch_size=3,
    )
    rank, _ = make().open()
    params = {name: "skip_connect" for name in NB201_CHOICES}
    rank.enqueue_trial(params)  # what a re-queued trial of a dead worker looks like
    make().rank()
    rank, _ = make().open()
    assert not rank.get_trials(deepcopy=False, states=(TrialState.WAITING, TrialState.RUNNING))
    taken = [t for t in rank.get_trials(deepcopy=False) if t.params == params]
    assert len(taken) == 1 and taken[0].state == TrialState.COMPLETE and taken[0].number == 0


def test_local_sampler_sees_the_trials_scored_in_the_storage(tmp_path: Path, ranker_path: Path) -> None:
    from nas.campaign import resolve_sampler, run_rank_stage
    from nas.campaign._rank import _Mirror
    from nas.campaign._storage import open_storage
    from nas.ghn import GHNRanker

    space = load_space("nb201", input_shape=(1, 8, 8), num_classes=10, **SPACE_ARGS)
    storage = open_storage(f"journal:///{tmp_path / 'rank.log'}")
    study = optuna.create_study(storage=storage, sampler=resolve_sampler("random", seed=0))
    study.enqueue_trial({name: "skip_connect" for name in NB201_CHOICES})
    run_rank_stage(study, space, None, None, n_trials=5, batch_size=2, ranker=GHNRanker.load(ranker_path),
                   worker="w", progress=False, refine=0)
    mirror = _Mirror(study, "w")
    mirror.sync()
    # The queued trial was asked and told in the storage by worker "w": the mirror copies it; the trials
    # that worker stored from its own in-memory study are not copied, as they are in that study already.
    copied = mirror.local.get_trials(deepcopy=False)
    assert [t.params for t in copied] == [{name: "skip_connect" for name in NB201_CHOICES}]


def _ranker_campaign(out: Path, ghn_path: Path, **overrides: Any) -> Campaign:
    from nas.ghn import RankerConfig

    settings: dict[str, Any] = dict(
        rank_by="ranker", ranker_labels=6, ranker_k=2, ranker_config=RankerConfig(epochs=2, ensemble=1),
        trials=8, top_k=1, self_check=3, self_check_epochs=0.1, refine=0,
    )
    return small_campaign(out, ghn_path, **{**settings, **overrides})


def test_a_campaign_buys_at_most_its_trials_in_labels_and_keeps_its_ranker_when_resumed_with_more(
    tmp_path: Path, ghn_path: Path
) -> None:
    from nas.ghn import GHNRanker

    out = tmp_path / "run"
    _ranker_campaign(out, ghn_path, ranker_labels=10, trials=5).run()
    first = GHNRanker.load(out / "ranker.pt")
    assert first.label_info["labelled"] == 5  # the 5 trials cap the 10 labels
    _ranker_campaign(out, ghn_path, ranker_labels=10, trials=9).run()
    again = GHNRanker.load(out / "ranker.pt")
    assert again.label_info["labelled"] == 5 and len(pd.read_csv(out / "ranker_labels.csv")) == 5
    # the candidates of both runs were scored by that one ranker
    from nas.graph import ArchGraph

    cand = pd.read_csv(out / "candidates.csv")
    assert len(cand) > 5
    scores = again.score([ArchGraph.from_json(g) for g in cand["graph"]])
    assert list(cand["rank_score"]) == pytest.approx(list(scores), rel=1e-5, abs=1e-6)


def test_default_ranker_is_fitted_once_then_reused(
    tmp_path: Path, ghn_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import nas.ghn
    import nas.ghn._ranker
    from nas.ghn import GHNRanker, RankerConfig

    out = tmp_path / "run"
    result = _ranker_campaign(out, ghn_path).run()
    labels_csv, ranker_pt = out / "ranker_labels.csv", out / "ranker.pt"
    labels = pd.read_csv(labels_csv)
    assert len(labels) == 6 and labels["key"].is_unique
    self_check_keys = set(result.self_check.table["key"])
    assert len(self_check_keys) == 3 and not self_check_keys & set(labels["key"])  # never a label
    ranker = GHNRanker.load(ranker_pt)
    assert ranker.label_info["k"] == 2 and ranker.label_info["n"] == 6 and ranker.label_info["target"] == "tse"
    # The prior keeps the weight of the fitting settings; nothing but the labels was trained for the ranker.
    weight = RankerConfig().flops_weight
    assert ranker.config.flops_weight == weight and "calibration" not in ranker.label_info
    # 6 labels leave 1 to hold out per member, too few for a Kendall tau: none is reported.
    assert {k: result.ranker[k] for k in ("labelled", "k", "seed", "flops_weight", "held_out_tau", "cv_tau")} == {
        "labelled": 6, "k": 2, "seed": 0, "flops_weight": weight, "held_out_tau": None, "cv_tau": None}
    # One purchase: the 6 labels are fewer than a batch. Its CPU-seconds are the labels' recorded times.
    assert result.ranker["purchases"] == [6] and result.ranker["stopped"] == "budget"
    assert result.ranker["label_seconds"] == pytest.approx(labels["seconds"].sum())
    with_tau = dataclasses.replace(result, ranker={**result.ranker, "cv_tau": 0.8125})
    assert f"FLOPs-prior weight {weight:g}; cross-validated Kendall tau 0.81 on its labels" in with_tau.summary()
    summary = result.summary()
    assert ("ranker: 6 labels of 2 SGD steps, bought in 1 purchase(s) (6; stopped: the label budget was reached); "
            f"{labels['seconds'].sum():.0f} CPU-s of labels") in summary
    assert sorted(p.name for p in out.glob("ranker*")) == ["ranker.json", "ranker.pt", "ranker_labels.csv"]
    report = json.loads((out / "ranker.json").read_text())
    assert report["labelled"] == 6 and [h["labels"] for h in report["history"]] == [6]
    for t in complete_rank_trials(_ranker_campaign(out, ghn_path)):
        if "duplicate_of" not in t.user_attrs:
            graph = _ranker_campaign(out, ghn_path).space.from_params(t.params)
            assert t.user_attrs["rank_score"] == pytest.approx(float(ranker.score([graph])[0]), rel=1e-5, abs=1e-6)
    rank, _ = _ranker_campaign(out, ghn_path).open()
    settings = rank.user_attrs["nas_campaign"]["config"]
    assert settings["rank_by"] == "ranker" and settings["ranker"] == str(ranker_pt.resolve())
    assert (settings["ranker_labels"], settings["ranker_k"]) == (6, 2)

    # Resume with more trials: the ranker is loaded, no architecture is trained or fitted again.
    def forbidden(*_: Any, **__: Any) -> None:
        raise AssertionError("relabelled or refitted on resume")

    before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in (labels_csv, ranker_pt)}
    monkeypatch.setattr(nas.ghn._ranker, "_short_training_loss", forbidden)
    with monkeypatch.context() as patch:
        patch.setattr(nas.ghn, "fit_ranker", forbidden)
        again = _ranker_campaign(out, ghn_path, trials=10).run()
    assert len(again.trials) == 10
    assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in before} == before

    # A lost ranker.pt is refitted from the labels on disk, still without training anything.
    ranker_pt.unlink()
    refit = _ranker_campaign(out, ghn_path, trials=10).ranker
    assert ranker_pt.is_file() and labels_csv.read_bytes() == before[labels_csv][0]
    assert refit.label_info["labelled"] == 6 and refit.config.flops_weight == weight


@pytest.mark.parametrize("kind", ["corrupt", "ghn-checkpoint", "missing", "other-input-shape"])
def test_a_bad_ranker_checkpoint_leaves_the_storage_untouched(
    tmp_path: Path, ghn_path: Path, kind: str
) -> None:
    path = tmp_path / "ranker.pt"
    if kind == "corrupt":
        path.write_bytes(b"PK\x03\x04 not a zip file at all")
    elif kind == "ghn-checkpoint":
        path = ghn_path
    elif kind == "other-input-shape":
        from nas.ghn import GHN, GHNConfig

        ghn = GHN(GHNConfig(hidden=8, layers=1), space_info={"input_shape": [3, 8, 8], "num_classes": 10})
        fit_tiny_ranker(ghn, input_shape=(3, 8, 8)).save(path)
    out = tmp_path / "run"
    with pytest.raises(CheckpointError) as err:
        small_campaign(out, ghn_path, rank_by="ranker", ranker=path).run()
    message = str(err.value)
    assert "\n" not in message and "ranker checkpoint" in message and str(path) in message
    fragment = {
        "corrupt": "cannot be read safely", "ghn-checkpoint": "is not a ghn-nas ranker checkpoint",
        "missing": "does not exist", "other-input-shape": "input_shape [3, 8, 8]",
    }[kind]
    assert fragment in message
    assert not (out / "campaign.db").exists()


def test_rank_by_short_trains_each_candidate_briefly_once_and_resumes(
    tmp_path: Path, ghn_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import nas.ghn._ranker
    from nas.ghn import tse_label

    out = tmp_path / "run"
    # No rank_by: 8 trials cost less to train for 2 steps than the ranker's 20 labels would.
    campaign = small_campaign(out, ghn_path, rank_by=None, ranker_labels=20, ranker_k=2, trials=8, batch_size=4,
                              top_k=2, label_workers=2, self_check=3, self_check_epochs=0.1)
    assert campaign.config.rank_by == "short" and campaign.config.refine == 0
    result = campaign.run()
    assert result.rank_by == "short" and result.ranker is None
    assert not (out / "ranker.pt").exists() and not (out / "ranker_labels.csv").exists()  # no label was trained
    every = pd.read_csv(out / "rank_tse.csv")
    cand, check = result.candidates, result.self_check
    assert check is not None and every["key"].is_unique  # each distinct candidate trained once
    assert set(every["key"]) == set(cand["key"]) | set(check.table["key"])  # the rank candidates, the self-check's
    runs = every[every["key"].isin(cand["key"])]
    assert (cand["rank_by"] == "short").all()
    first = cand.sort_values("rank_score").iloc[0]
    rank, _ = campaign.open()
    graph = campaign.space.from_params(rank.trials[int(first["trial"])].params)
    tse, _ = tse_label(graph, campaign.data, 2, 0)  # the score is the candidate's own 2-step TSE (seed 0)
    assert first["rank_score"] == pytest.approx(tse, rel=1e-5)
    assert result.short_training == {"trained": len(runs), "k": 2, "seconds": pytest.approx(runs["seconds"].sum()),
                                     "labels": 20}
    assert f"short training: {len(runs)} candidates trained for 2 SGD steps each" in result.summary()
    assert "no ranker labels bought" in result.summary()
    assert result.best is not None and result.best["pick"] == "rank"
    assert result.best["key"] == first["key"]
    # The self-check compares the same score, each candidate's own short training, with real training.
    assert "the candidates' own short-training loss" in check.message
    for row in check.table.itertuples():
        graph = campaign.space.from_params(json.loads(row.choices))
        assert row.rank_score == pytest.approx(tse_label(graph, campaign.data, 2, 0)[0], rel=1e-5)

    # Resumed with more trials: the stored rank_by holds; only the new candidates are trained.
    def counting(args: Any) -> Any:
        counting.calls += 1
        return real(args)

    real, counting.calls = nas.ghn._ranker._short_training_loss, 0
    monkeypatch.setattr(nas.ghn._ranker, "_short_training_loss", counting)
    more = small_campaign(out, ghn_path, rank_by="short", ranker_labels=20, ranker_k=2, trials=12, batch_size=4,
                          top_k=2)
    more.rank()
    after = pd.read_csv(out / "rank_tse.csv")
    assert counting.calls == len(after) - len(every) > 0 and after["key"].is_unique
    # The default would now resolve to the ranker (12 > 10 labels): the stored campaign names its own way.
    with pytest.raises(StorageError, match="rank_by: stored 'short', requested 'ranker'"):
        small_campaign(out, ghn_path, rank_by=None, ranker_labels=10, ranker_k=2, trials=12).open()


def test_changing_rank_by_on_resume_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "run"
    rank, _ = small_campaign(out, None, rank_by="ranker").open()
    for overrides, fragment in (
        ({"rank_by": "loss"}, "rank_by: stored 'ranker', requested 'loss'"),
        ({"rank_by": "ranker", "ranker_k": 5}, "ranker_k: stored 30, requested 5"),
        ({"rank_by": "ranker", "ranker_labels": 50}, "ranker_labels: stored 700, requested 50"),
    ):
        with pytest.raises(StorageError) as err:
            small_campaign(out, None, **overrides).open()
        assert fragment in str(err.value) and "\n" not in str(err.value)
    small_campaign(out, None, rank_by="ranker", label_workers=2, trials=50).open()  # not part of the identity

    # A campaign stored before rank_by existed (format 1, one key per setting) ranked by the predicted-weight loss.
    old = tmp_path / "old"
    rank, _ = small_campaign(old, None, rank_by="loss").open()
    config = rank.user_attrs["nas_campaign"]["config"]
    settings = {
        "format": 1, "space": "nb201", "space_info": rank.user_attrs["nas_campaign"]["space_info"],
        "dataset": config["dataset"], "data_seed": 0, "objectives": "loss", "ghn": config["ghn"],
        "finetune": {"epochs": config["finetune_epochs"], "lr": config["finetune_lr"],
                     "batch_size": config["finetune_batch_size"], "metric": config["finetune_metric"]},
        "out": config["out"], "trials": 12, "top_k": 2, "seed": 0, "sampler": "tpe", "device": "cpu",
    }
    rank.set_user_attr("nas_campaign", settings)
    small_campaign(old, None, rank_by="loss").open()
    with pytest.raises(StorageError, match="rank_by: stored 'loss', requested 'ranker'"):
        small_campaign(old, None, rank_by="ranker").open()


def test_from_storage_finds_the_ranker_checkpoint(tmp_path: Path, ghn_path: Path, ranker_path: Path) -> None:
    import shutil

    from nas.ghn import GHNRanker

    path = tmp_path / "my_ranker.pt"
    shutil.copy(ranker_path, path)
    url = f"sqlite:///{tmp_path / 'c.db'}"
    small_campaign(tmp_path / "a", ghn_path, rank_by="ranker", ranker=path, storage=url, study="r", ranker_k=7,
                   refine=3, refine_trials=40).open()
    worker = Campaign.from_storage(url, "r", out=tmp_path / "w", progress=False)
    assert worker.config.rank_by == "ranker" and worker.config.ranker_k == 7
    assert (worker.config.refine, worker.config.refine_trials) == (3, 40)
    x = [c.graph for c in load_space("nb201", input_shape=(1, 8, 8), num_classes=10, **SPACE_ARGS).sample_many(4)]
    assert list(worker.ranker.predict(x)) == list(GHNRanker.load(path).predict(x))
    worker.open()  # joins: same identity

    path.unlink()  # fine-tuning does not need it; ranking does, and says which flag gives it
    worker = Campaign.from_storage(url, "r", out=tmp_path / "w", progress=False)
    with pytest.raises(CheckpointError, match="does not exist.*pass --ranker PATH") as err:
        _ = worker.ranker
    assert str(path) in str(err.value) and "\n" not in str(err.value)

    small_campaign(tmp_path / "b", ghn_path, rank_by="ranker", ranker=GHNRanker.load(ranker_path), storage=url,
                   study="obj").open()
    with pytest.raises(CheckpointError, match="started with a ranker object.*pass --ranker PATH"):
        Campaign.from_storage(url, "obj", progress=False)
    assert Campaign.from_storage(url, "obj", ranker=ranker_path, progress=False).ranker is not None


# ---------------------------------------------------------------- storage and workers


def test_mask_url_hides_passwords() -> None:
    assert mask_url("postgresql://nas:s3cret@db:5432/nas") == "postgresql://nas:***@db:5432/nas"
    masked = mask_url("postgresql+psycopg2://u:p@h/db?sslmode=require")
    assert masked == "postgresql+psycopg2://u:***@h/db?sslmode=require"
    assert "zz" not in mask_url("postgresql://h/db?password=zz")
    assert mask_url("sqlite:////abs/c.db") == "sqlite:////abs/c.db"
    assert mask_url("journal:///tmp/c.log") == "journal:///tmp/c.log"
    assert "pw" not in mask_url("postgresql://u:pw@[::1/db")


@pytest.mark.parametrize(
    "url, fragment",
    [
        ("ftp://u:pw@host/x", "unsupported scheme"),
        ("sqlite:///:memory:", "must name a file"),
        ("nonsense", "unsupported scheme"),
        ("postgresql://u:pw@127.0.0.1:1/db", "127.0.0.1"),
    ],
)
def test_bad_storage_is_one_masked_line(url: str, fragment: str) -> None:
    with pytest.raises(StorageError) as info:
        open_storage(url)
    message = str(info.value)
    assert fragment in message
    assert "\n" not in message and ":pw@" not in message


def test_journal_storage_and_conflicting_settings(tmp_path: Path) -> None:
    url = f"journal://{tmp_path / 'sub' / 'c.log'}"
    storage = open_storage(url)
    assert isinstance(storage, optuna.storages.JournalStorage)
    first = small_campaign(tmp_path / "a", None, storage=url, study="c")
    rank, ft = first.open()
    assert rank.study_name == "c-rank" and ft.study_name == "c-finetune"
    assert rank.user_attrs["nas_campaign"]["space_info"]["settings"]["C"] == 4
    with pytest.raises(StorageError, match="space_info"):
        small_campaign(tmp_path / "b", None, storage=url, study="c", space_args={"C": 8}).open()
    with pytest.raises(StorageError, match="objectives|directions"):
        small_campaign(tmp_path / "b", None, storage=url, study="c", objectives="loss,flops").open()
    # Same settings join (e.g. from another process).
    small_campaign(tmp_path / "b", None, storage=url, study="c", trials=99, top_k=4).open()


def _dead_pid() -> int:
    code = "import os; print(os.getpid())"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return int(proc.stdout)


def test_trials_of_dead_workers_are_failed_and_requeued(tmp_path: Path) -> None:
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 's.db'}", study_name="s")
    host = socket.gethostname()
    dead = study.ask()
    dead.suggest_categorical("x", ["a", "b"])
    dead.set_user_attr(WORKER_ATTR, f"{host}:{_dead_pid()}:deadbeef")
    dead.set_user_attr(HEARTBEAT_ATTR, time.time())
    dead.set_user_attr("queue_position", 4)  # its place in the fine-tune queue goes with the candidate
    silent = study.ask()
    silent.suggest_categorical("x", ["a", "b"])
    silent.set_user_attr(WORKER_ATTR, "other-host:1:cafe")
    silent.set_user_attr(HEARTBEAT_ATTR, time.time() - 1000)
    alive = study.ask()
    alive.suggest_categorical("x", ["a", "b"])
    alive.set_user_attr(WORKER_ATTR, "other-host:2:f00d")
    alive.set_user_attr(HEARTBEAT_ATTR, time.time())
    mine = study.ask()
    mine.set_user_attr(WORKER_ATTR, f"{host}:{os.getpid()}:notactive")  # an ended run of this process

    failed = reap_stale_trials(study, grace_period=120)
    assert sorted(failed) == sorted([dead.number, silent.number, mine.number])
    states = {t.number: t.state for t in study.get_trials()}
    assert states[alive.number] == TrialState.RUNNING
    waiting = study.get_trials(states=(TrialState.WAITING,))
    # Re-queued with the same choices (the trial without choices is not).
    assert sorted(t.system_attrs["fixed_params"]["x"] for t in waiting) == sorted(
        [dead.params["x"], silent.params["x"]]
    )
    assert {t.user_attrs["nas_retry_of"] for t in waiting} == {dead.number, silent.number}
    assert {t.user_attrs["nas_retry_of"]: t.user_attrs.get("queue_position") for t in waiting} == {
        dead.number: 4, silent.number: None}
    assert reap_stale_trials(study, grace_period=120) == []
    assert not is_stale(study.get_trials()[alive.number], grace_period=120)


# ---------------------------------------------------------------- resolvers and validation


def test_resolvers_list_valid_names() -> None:
    assert isinstance(resolve_sampler("tpe", seed=0), optuna.samplers.TPESampler)
    assert isinstance(resolve_sampler("random"), optuna.samplers.RandomSampler)
    assert isinstance(resolve_sampler("gp"), optuna.samplers.GPSampler)
    assert isinstance(resolve_sampler("NSGA2"), optuna.samplers.NSGAIISampler)
    sampler = optuna.samplers.QMCSampler()
    assert resolve_sampler(sampler) is sampler
    with pytest.raises(ValueError, match="tpe, random, gp, nsga2.*'cmaes'"):
        resolve_sampler("cmaes")
    assert resolve_objectives("loss") == ("rank_score",)
    assert resolve_objectives(("loss", "params")) == ("rank_score", "num_params")
    assert resolve_objectives("loss, flops") == ("rank_score", "flops")
    with pytest.raises(ValueError, match="loss,params"):
        resolve_objectives("acc")


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"trials": 0}, "trials"),
        ({"top_k": -1}, "top_k"),
        ({"finetune_epochs": 0}, "finetune_epochs"),
        ({"batch_size": 0}, "batch_size"),
        ({"self_check": 2}, "self_check"),
        ({"sampler": "bogus"}, "sampler"),
        ({"finetune_metric": "f1"}, "finetune_metric"),
        ({"pick": "best"}, "pick"),
        ({"rank_by": "bogus"}, "rank_by"),
        ({"rank_by": "ranker", "ranker_labels": 3}, "ranker_labels"),
        ({"rank_by": "ranker", "ranker_labels": 10.0}, "ranker_labels"),
        ({"rank_by": "ranker", "ranker_k": 0}, "ranker_k"),
        ({"rank_by": "ranker", "label_workers": 0}, "label_workers"),
        ({"rank_by": "ranker", "ranker": 5}, "ranker"),
    ],
)
def test_campaign_rejects_bad_settings(tmp_path: Path, kwargs: dict[str, Any], name: str) -> None:
    with pytest.raises(ValueError, match=f"`{name}`.*{re.escape(repr(kwargs[name]))}"):
        small_campaign(tmp_path, None, **kwargs)
    with pytest.raises(ValueError, match="`ranker` is used only when `rank_by` is 'ranker'"):
        small_campaign(tmp_path, None, rank_by="loss", ranker="ranker.pt")


def test_pick_defaults_to_the_rank_order_with_the_ranker_on_one_objective(tmp_path: Path) -> None:
    assert small_campaign(tmp_path, None, rank_by="ranker").config.pick == "rank"
    assert small_campaign(tmp_path, None, rank_by="loss").config.pick == "finetuned"
    assert small_campaign(tmp_path, None, rank_by="ranker", objectives="loss,params").config.pick == "finetuned"
    assert small_campaign(tmp_path, None, rank_by="ranker", pick="finetuned").config.pick == "finetuned"


def test_best_record_picks_by_queue_position_or_by_finetuned_result() -> None:
    # Sorted as finetuned_frame sorts them: best validation accuracy first; one run diverged.
    frame = pd.DataFrame({
        "rank": pd.array([1, 2, 3, pd.NA], dtype="Int64"), "trial": [5, 3, 4, 2],
        "rank_trial": [50, 30, 40, 20], "queue_position": pd.array([3, 1, 2, 0], dtype="Int64"),
        "key": ["d", "b", "c", "a"], "num_params": [1, 1, 1, 1], "flops": [1, 1, 1, 1],
        "rank_by": ["ranker"] * 4, "rank_score": [0.3, 0.1, 0.2, 0.0], "val_acc": [0.9, 0.8, 0.7, math.nan],
        "test_acc": [0.9, 0.8, 0.7, math.nan], "val_loss": [0.1, 0.2, 0.3, math.nan], "choices": ["{}"] * 4,
        "graph": [None] * 4, "weights": [None] * 4, "worker": [None] * 4,
    })
    assert best_record(frame)["key"] == "d"  # the best fine-tuned result
    assert best_record(frame, pick="rank")["key"] == "b"  # first queued that did not diverge
    assert best_record(frame, pick="rank")["pick"] == "rank"
    # A campaign stored before queue positions existed: the fine-tune trials' order.
    old = frame.assign(queue_position=pd.array([pd.NA] * 4, dtype="Int64"))
    assert best_record(old, pick="rank")["key"] == "b"  # trial 3 (trial 2 diverged)
    with pytest.raises(ValueError, match="`pick` must be one of rank, finetuned, but got 'best'"):
        best_record(frame, pick="best")


def test_top_k_larger_than_distinct_candidates_is_a_clear_error() -> None:
    table = pd.DataFrame({"trial": [0, 1], "key": ["a", "b"], "rank_score": [1.0, 0.5], "pareto": [False, False]})
    assert list(select_candidates(table, 2)["key"]) == ["b", "a"]
    with pytest.raises(ValueError, match="`top_k` is 3.*only 2 distinct"):
        select_candidates(table, 3)


def test_top_k_larger_than_the_space_names_the_flag(tmp_path: Path) -> None:
    campaign = small_campaign(tmp_path, None, top_k=20_000)
    expected = "`top_k` is 20000, but search space 'nb201' has only 15625 candidates; lower --top-k."
    with pytest.raises(ValueError, match=re.escape(expected)):
        _ = campaign.space


# ---------------------------------------------------------------- full disk


def _disk_full_message(message: str) -> bool:
    return os.strerror(errno.ENOSPC) in message or os.strerror(errno.EFBIG) in message


def test_finetuned_weights_on_a_full_disk(tmp_path: Path, full_disk: Callable[[], AbstractContextManager[None]]) -> None:
    path = tmp_path / "cand-t3.pt"
    _atomic_save({"w": torch.zeros(4)}, path)
    before = path.read_bytes()
    with full_disk(), pytest.raises(CheckpointError) as err:
        _atomic_save({"w": torch.ones(1000)}, path)
    message = str(err.value)
    assert str(path) in message and "\n" not in message and _disk_full_message(message)
    assert path.read_bytes() == before
    assert_only_files(tmp_path, {"cand-t3.pt"})


def test_report_on_a_full_disk_keeps_the_previous_files(
    tmp_path: Path, full_disk: Callable[[], AbstractContextManager[None]]
) -> None:
    def report(rows: int) -> list[Path]:
        table = pd.DataFrame({"key": [f"k{i}" for i in range(rows)], "ghn_loss": [0.5 + i for i in range(rows)]})
        return write_report(
            tmp_path, trials=pd.DataFrame(), candidates=table, finetuned=table.iloc[:0], best={"key": "k0"},
            best_state={"w": torch.full((rows,), 1.0)},
        )

    written = report(2)
    before = {p.name: p.read_bytes() for p in written}
    assert set(before) == {"candidates.csv", "candidates.parquet", "finetuned.csv", "finetuned.parquet",
                           "best.json", "best.pt"}
    with full_disk(), pytest.raises((OSError, CheckpointError)) as err:
        report(500)
    message = str(err.value)
    failed = [name for name in before if str(tmp_path / name) in message]
    assert len(failed) == 1 and "\n" not in message and _disk_full_message(message), message
    assert isinstance(err.value, CheckpointError) == (failed == ["best.pt"])
    assert (tmp_path / failed[0]).read_bytes() == before[failed[0]]
    assert_only_files(tmp_path, set(before))


# ---------------------------------------------------------------- removed settings


@pytest.mark.parametrize("name, value", [("rerank", "grad_norm"), ("rerank_pool", 30)])
def test_removed_rerank_settings_are_refused_by_name(tmp_path: Path, name: str, value: Any) -> None:
    # Reranking the shortlist by a zero-cost proxy reached no benefit in its benchmark and was removed.
    with pytest.raises(ValueError, match=f"unknown campaign setting '{name}'"):
        Campaign(out=tmp_path / "run", **{name: value})
    assert not (tmp_path / "run").exists()


def test_enqueue_takes_the_top_k_by_rank_score(tmp_path: Path, ghn_path: Path) -> None:
    campaign = small_campaign(tmp_path / "rr", ghn_path, trials=8, batch_size=8, top_k=3)
    campaign.rank()
    rank, _ = campaign.open()
    expected = list(select_candidates(candidates_frame(rank), 3)["key"])
    assert campaign.enqueue() == expected
    assert campaign.enqueue() == []  # each key once per campaign


@pytest.mark.parametrize("pretrained", [False, True])
def test_a_ranker_from_random_weights_ranks_before_any_meta_training(
    tmp_path: Path, ghn_path: Path, monkeypatch: pytest.MonkeyPatch, pretrained: bool
) -> None:
    """Ranking waits for the GHN only when the ranker starts from its weights; fine-tuning always uses it."""
    import nas.ghn
    from nas.ghn import GHN, RankerConfig

    events: list[str] = []
    fit, score = nas.ghn._ranker.fit_ranker, nas.ghn.GHNRanker.score

    def ensure_ghn(*args: Any, **kwargs: Any) -> Any:
        events.append("meta-train")
        return GHN.load(ghn_path)

    def recorded_fit(ghn: Any, *args: Any, **kwargs: Any) -> Any:
        events.append("fit")
        return fit(ghn, *args, **kwargs)

    def recorded_score(self: Any, graphs: Any, **kwargs: Any) -> Any:
        if not events or events[-1] != "rank":
            events.append("rank")
        return score(self, graphs, **kwargs)

    monkeypatch.setattr(nas.ghn, "ensure_ghn", ensure_ghn)
    monkeypatch.setattr(nas.ghn._default, "fit_ranker", recorded_fit)
    monkeypatch.setattr(nas.ghn.GHNRanker, "score", recorded_score)
    campaign = _ranker_campaign(tmp_path / "run", None, self_check=0, ranker_config=RankerConfig(
        epochs=2, ensemble=1, pretrained=pretrained))
    result = campaign.run()
    assert len(result.finetuned) == 1
    first = events.index("meta-train")
    if pretrained:
        assert events[: first + 1] == ["meta-train"]
    else:
        assert events[:first] == ["fit", "rank"]  # labelled, fitted and ranked before meta-training
    assert events.count("meta-train") == 1
    with pytest.raises(ValueError, match="pretrained"):
        nas.ghn.ensure_ranker(campaign.space, campaign.data, None, path=tmp_path / "r.pt", ranker_labels=4,
                              config=RankerConfig(pretrained=True))
