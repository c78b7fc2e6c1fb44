"""Tests of the GHN ranker (nas/ghn/_ranker.py): prediction, checkpoints, fitting, short-training labels.

Everything uses nb201 at ``C=4`` on 8x8 inputs and a GHN of width 16 with one
message-passing layer, so fitting takes seconds on a CPU core.
"""

from __future__ import annotations

import csv
import logging
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from scipy.stats import kendalltau

import nas.ghn._ranker as ranker_module
from nas.data import Dataset, load_dataset
from nas.exceptions import CheckpointError
from nas.ghn import GHN, GHNConfig, GHNRanker, RankerConfig, fit_ranker, label_seconds, short_training_labels
from nas.graph import ArchGraph
from nas.space import SearchSpace, load_space

TINY = GHNConfig(hidden=16, layers=1, s_max=2)


@pytest.fixture(scope="module")
def space() -> SearchSpace:
    return load_space("nb201", input_shape=(1, 8, 8), num_classes=10, C=4)


@pytest.fixture(scope="module")
def ghn(space: SearchSpace) -> GHN:
    torch.manual_seed(0)
    return GHN(TINY, space_info={**space.describe(), "dataset": "digits"})


@pytest.fixture(scope="module")
def graphs(space: SearchSpace) -> list[ArchGraph]:
    return [c.graph for c in space.sample_many(160, seed=0)]


@pytest.fixture(scope="module")
def small_ranker(ghn: GHN, graphs: list[ArchGraph]) -> GHNRanker:
    labels = [math.log(g.num_params()) for g in graphs[:8]]
    return fit_ranker(ghn, graphs[:8], labels, RankerConfig(epochs=2, ensemble=2), progress=False)


@pytest.fixture(scope="module")
def digits() -> Dataset:
    return load_dataset("digits", seed=0)


def conv_nodes(graph: ArchGraph) -> int:
    """The label of the learnability test: number of convolution nodes."""
    return sum(n for op, n in graph.op_counts().items() if "conv" in op)


# ---------------------------------------------------------------- prediction and checkpoints


def test_predict_shape_chunks_and_determinism(small_ranker: GHNRanker, graphs: list[ArchGraph]) -> None:
    part = graphs[20:31]
    first = small_ranker.predict(part)
    assert first.shape == (11,) and np.isfinite(first).all()
    np.testing.assert_array_equal(small_ranker.predict(part), first)  # eval mode: no dropout, no batch statistics
    np.testing.assert_allclose(small_ranker.predict(part, chunk=4), first, rtol=1e-5)  # chunks agree with one pass
    one_by_one = np.array([small_ranker.predict([g])[0] for g in part])
    np.testing.assert_allclose(one_by_one, first, rtol=1e-5)
    assert small_ranker.predict([]).shape == (0,)
    assert len(small_ranker.members) == 2 and len(small_ranker.member_tau) == 2
    # Predictions come back in label units (the labels were log parameter counts of C=4 cells).
    assert 3 < float(first.mean()) < 12


def test_save_load_round_trip(tmp_path: Path, small_ranker: GHNRanker, graphs: list[ArchGraph]) -> None:
    path = tmp_path / "sub" / "ranker.pt"
    small_ranker.save(path)
    loaded = GHNRanker.load(path)
    np.testing.assert_array_equal(loaded.predict(graphs[:16]), small_ranker.predict(graphs[:16]))
    assert loaded.config == small_ranker.config and loaded.space_info == small_ranker.space_info
    assert loaded.label_mean == small_ranker.label_mean and loaded.label_std == small_ranker.label_std
    assert (loaded.flops_mean, loaded.flops_std) == (small_ranker.flops_mean, small_ranker.flops_std)
    np.testing.assert_array_equal(loaded.score(graphs[:16]), small_ranker.score(graphs[:16]))
    assert loaded.member_tau == pytest.approx(small_ranker.member_tau, nan_ok=True)
    assert [p.name for p in path.parent.iterdir()] == ["ranker.pt"]  # written atomically, no temporary left


def test_score_is_standardised_prediction_minus_weighted_log_flops(
    small_ranker: GHNRanker, graphs: list[ArchGraph]
) -> None:
    part = graphs[:12]
    flops = np.log([float(g.flops()) for g in part])  # computed here, independently of log_flops
    z_pred = (small_ranker.predict(part) - small_ranker.label_mean) / small_ranker.label_std
    w = small_ranker.config.flops_weight
    assert w == 0.0 == RankerConfig().flops_weight  # the default: the standardised prediction alone
    np.testing.assert_allclose(small_ranker.score(part), z_pred, rtol=1e-6, atol=1e-9)
    small_ranker.config.flops_weight = 0.5
    try:
        want = z_pred - 0.5 * (flops - small_ranker.flops_mean) / small_ranker.flops_std
        np.testing.assert_allclose(small_ranker.score(part), want, rtol=1e-6, atol=1e-9)
        # The statistics come from the labelled architectures, not from the graphs scored.
        assert small_ranker.flops_std > 0 and np.isfinite(small_ranker.flops_mean)
        np.testing.assert_allclose(small_ranker.score(part[:3]), want[:3], rtol=1e-6, atol=1e-9)
    finally:
        small_ranker.config.flops_weight = w


def test_checkpoint_without_flops_statistics_loads_without_the_prior(
    tmp_path: Path, small_ranker: GHNRanker, graphs: list[ArchGraph]
) -> None:
    path = tmp_path / "v1.pt"
    small_ranker.save(path)
    payload = torch.load(path, weights_only=True)
    for name in ("flops_mean", "flops_std"):
        del payload[name]
    del payload["config"]["flops_weight"]  # as written before the prior existed
    torch.save(payload, path)
    old = GHNRanker.load(path)
    assert old.config.flops_weight == 0.0
    z = (small_ranker.predict(graphs[:5]) - small_ranker.label_mean) / small_ranker.label_std
    np.testing.assert_allclose(old.score(graphs[:5]), z, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("kind", ["ghn-checkpoint", "garbage", "missing", "truncated", "wrong-weights"])
def test_load_refuses_bad_files(tmp_path: Path, ghn: GHN, small_ranker: GHNRanker, kind: str) -> None:
    path = tmp_path / "ranker.pt"
    if kind == "ghn-checkpoint":
        ghn.save(path)
    elif kind == "garbage":
        path.write_bytes(b"\x00\x01 not a checkpoint")
    elif kind == "truncated":
        small_ranker.save(path)
        path.write_bytes(path.read_bytes()[:200])
    elif kind == "wrong-weights":
        small_ranker.save(path)
        payload = torch.load(path, weights_only=True)
        payload["ghn_config"]["hidden"] = 32  # the saved weights no longer fit the settings
        torch.save(payload, path)
    with pytest.raises(CheckpointError) as err:
        GHNRanker.load(path)
    message = str(err.value)
    assert "\n" not in message and str(path) in message
    expected = {
        "ghn-checkpoint": "is not a ghn-nas ranker checkpoint (format 'ghn-nas/ghn'",
        "garbage": "cannot be read safely",
        "missing": "does not exist",
        "truncated": "cannot be read safely",
        "wrong-weights": "is invalid",
    }[kind]
    assert expected in message


# ---------------------------------------------------------------- fitting


def test_fit_ranker_learns_a_function_of_the_graph(ghn: GHN, graphs: list[ArchGraph]) -> None:
    """Labels = number of conv nodes: the fitted ranker orders unseen graphs by it (Kendall tau > 0.5)."""
    train, test = graphs[:120], graphs[120:]
    labels = [float(conv_nodes(g)) for g in train]
    config = RankerConfig(epochs=25, ensemble=1, batch_size=32, lr=3e-3, val_fraction=0.2)
    ranker = fit_ranker(ghn, train, labels, config, label_info={"target": "conv_nodes"}, progress=False)
    tau = kendalltau(ranker.predict(test), [conv_nodes(g) for g in test]).statistic
    assert tau > 0.5, tau
    assert ranker.label_info.pop("fit_seconds") > 0  # the fit's own time, for one-time cost reports
    assert ranker.label_info == {"target": "conv_nodes"} and math.isfinite(ranker.member_tau[0])


def test_fit_ranker_leaves_the_ghn_unchanged(ghn: GHN, graphs: list[ArchGraph]) -> None:
    before = {k: v.clone() for k, v in ghn.state_dict().items()}
    fit_ranker(ghn, graphs[:6], [1.0, 2.0, 3.0, 4.0, 5.0, 6.0], RankerConfig(epochs=2, ensemble=1), progress=False)
    assert all(torch.equal(before[k], v) for k, v in ghn.state_dict().items())


@pytest.mark.parametrize(
    "labels, n_graphs, fragment",
    [
        ([1.0, 2.0, 3.0], 3, "`graphs` must hold at least 4"),
        ([1.0, 2.0, 3.0], 4, "`labels` must have one value per graph (4), but got 3"),
        ([1.0, 2.0, math.nan, 4.0], 4, "`labels` must be finite, but 1 are not"),
    ],
)
def test_fit_ranker_rejects_bad_labels(
    ghn: GHN, graphs: list[ArchGraph], labels: list[float], n_graphs: int, fragment: str
) -> None:
    with pytest.raises(ValueError) as err:
        fit_ranker(ghn, graphs[:n_graphs], labels, RankerConfig(epochs=1, ensemble=1), progress=False)
    assert fragment in str(err.value)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"epochs": 0}, "epochs"),
        ({"batch_size": -1}, "batch_size"),
        ({"ensemble": 1.5}, "ensemble"),
        ({"head_hidden": True}, "head_hidden"),
        ({"lr": 0.0}, "lr"),
        ({"lr": math.inf}, "lr"),
        ({"weight_decay": -1e-4}, "weight_decay"),
        ({"val_fraction": 1.0}, "val_fraction"),
        ({"flops_weight": -0.5}, "flops_weight"),
        ({"flops_weight": math.nan}, "flops_weight"),
    ],
)
def test_ranker_config_rejects_bad_values(kwargs: dict[str, Any], name: str) -> None:
    with pytest.raises(ValueError, match=f"`{name}`.*{kwargs[name]!r}"):
        RankerConfig(**kwargs)


# ---------------------------------------------------------------- short-training labels


def test_short_training_labels_resume_from_the_csv_and_exclude_keys(
    tmp_path: Path, space: SearchSpace, digits: Dataset, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []

    def fake_training(args: tuple[str, Any, int, int]) -> tuple[float, float]:
        graph_json, _, k, seed = args
        graph = ArchGraph.from_json(graph_json)
        calls.append(graph.key)
        if len(calls) == 2:
            return math.nan, 0.5  # a diverged short training is dropped, and not retried
        return float(graph.num_params() * k + seed), 0.25 * len(calls)

    monkeypatch.setattr(ranker_module, "_short_training_loss", fake_training)
    exclude = [c.graph.key for c in space.sample_many(3, seed=5)]  # first draws of the label seed
    cache = tmp_path / "labels" / "tse.csv"
    graphs, labels = short_training_labels(space, digits, 6, k=3, seed=5, exclude=exclude, cache=cache, progress=False)
    assert len(calls) == 6 and not set(calls) & set(exclude)
    assert len(graphs) == 5 and labels.shape == (5,)  # the NaN one is dropped
    assert [g.key for g in graphs] == [k for i, k in enumerate(calls) if i != 1]
    assert list(labels) == [g.num_params() * 3 + 5 for g in graphs]
    text = cache.read_text()
    assert text.splitlines()[0] == "key,graph,tse,seconds" and len(text.splitlines()) == 7
    # Recorded training seconds: calls 1, 3, 4, 5, 6 took 0.25 x their call number.
    assert label_seconds(cache, [g.key for g in graphs]) == (pytest.approx(0.25 * (1 + 3 + 4 + 5 + 6)), 0)

    # Resume: nothing trained again (not even the one whose training diverged), same result.
    again, labels2 = short_training_labels(space, digits, 6, k=3, seed=5, exclude=exclude, cache=cache, progress=False)
    assert len(calls) == 6 and cache.read_text() == text
    assert [g.key for g in again] == [g.key for g in graphs] and list(labels2) == list(labels)

    # A larger n trains only the new architectures.
    more, _ = short_training_labels(space, digits, 8, k=3, seed=5, exclude=exclude, cache=cache, progress=False)
    assert len(calls) == 8 and len(more) == 7 and len(cache.read_text().splitlines()) == 9

    # A row torn by a kill mid-write (no newline yet) is dropped and its label trained again.
    lines = cache.read_text().splitlines(keepends=True)
    cache.write_text("".join(lines[:-1]) + lines[-1][: len(lines[-1]) // 2])
    torn_key = lines[-1].split(",")[0]
    healed, healed_labels = short_training_labels(space, digits, 8, k=3, seed=5, exclude=exclude, cache=cache,
                                                  progress=False)
    assert calls[-1] == torn_key and len(calls) == 9
    assert [g.key for g in healed] == [g.key for g in more] and len(cache.read_text().splitlines()) == 9
    assert healed_labels[-1] == healed[-1].num_params() * 3 + 5


def test_short_training_labels_really_train(
    space: SearchSpace, digits: Dataset, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Real TSE labels: finite, positive, the same in worker processes as in this one."""
    with monkeypatch.context() as patch:
        set_threads: list[int] = []
        patch.setattr(torch, "set_num_threads", set_threads.append)
        graphs, labels = short_training_labels(space, digits, 3, k=2, seed=1, progress=False)
    assert set_threads == []  # training in this process leaves the caller's thread setting alone
    assert len(graphs) == 3 and np.isfinite(labels).all()
    # Two steps of cross-entropy on 10 classes from random initialisation: each loss is near ln(10).
    assert ((labels > 2 * 1.0) & (labels < 2 * 5.0)).all(), labels
    in_workers, labels2 = short_training_labels(space, digits, 3, k=2, seed=1, workers=2, progress=False)
    assert [g.key for g in in_workers] == [g.key for g in graphs]
    np.testing.assert_allclose(labels2, labels, rtol=1e-4)


def test_short_training_labels_do_not_log_the_one_image_accuracy(
    space: SearchSpace, digits: Dataset, caplog: pytest.LogCaptureFixture
) -> None:
    """Labels evaluate on one kept image; the trainer's accuracy line would be noise under the progress bar."""
    trainer_log = logging.getLogger("nas.training")
    before = trainer_log.level
    with caplog.at_level(logging.INFO):
        short_training_labels(space, digits, 2, k=2, seed=1, progress=False)
    assert not [r for r in caplog.records if r.name == "nas.training" and r.levelno == logging.INFO]
    assert trainer_log.level == before  # restored for the caller's own trainings
    with caplog.at_level(logging.INFO, logger="nas.training"):
        from nas.network import Network
        from nas.training import TrainConfig, train

        train(Network(space.sample(seed=0).graph), digits, TrainConfig(steps=1, progress=False))
    assert any(r.name == "nas.training" and "trained 1 steps" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(
    "kwargs, name",
    [({"n": 0}, "n"), ({"n": True}, "n"), ({"k": 0}, "k"), ({"k": 2.5}, "k"), ({"workers": 0}, "workers")],
)
def test_short_training_labels_reject_bad_values(
    space: SearchSpace, digits: Dataset, kwargs: dict[str, Any], name: str
) -> None:
    settings: dict[str, Any] = {"n": 4, "k": 2, "workers": 1, **kwargs}
    n = settings.pop("n")
    with pytest.raises(ValueError, match=f"`{name}` must be a positive int, but got {kwargs[name]!r}"):
        short_training_labels(space, digits, n, progress=False, **settings)


# ---------------------------------------------------------------- ensure_ranker and `nas fit-ranker`


def test_ensure_ranker_fits_once_then_reuses_and_refuses_other_labels(
    tmp_path: Path, ghn: GHN, space: SearchSpace, digits: Dataset, monkeypatch: pytest.MonkeyPatch
) -> None:
    from nas.ghn import ensure_ranker

    path = tmp_path / "ranker.pt"
    config = RankerConfig(epochs=2, ensemble=1)
    first = ensure_ranker(space, digits, ghn, path=path, ranker_labels=6, ranker_k=2, config=config, progress=False)
    assert path.is_file() and (tmp_path / "ranker_labels_k2.csv").is_file()
    assert first.label_info["n"] == 6 and first.label_info["k"] == 2 and first.label_info["labelled"] == 6
    rows = (tmp_path / "ranker_labels_k2.csv").read_text().splitlines()
    assert len(rows) == 7  # header + one row per label

    def no_training(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a saved ranker must be reused, not fitted again")

    monkeypatch.setattr("nas.ghn._default.short_training_labels", no_training)
    again = ensure_ranker(space, digits, ghn, path=path, ranker_labels=6, ranker_k=2, config=config, progress=False)
    graphs = [c.graph for c in space.sample_many(5, seed=9)]
    np.testing.assert_allclose(again.predict(graphs), first.predict(graphs), rtol=1e-6)
    with pytest.raises(CheckpointError, match=r"fitted on labels .*'k': 2.*not the requested .*'k': 5"):
        ensure_ranker(space, digits, ghn, path=path, ranker_labels=6, ranker_k=5, config=config, progress=False)
    with pytest.raises(ValueError, match="`ranker_labels` must be an int of at least 4, but got 3"):
        ensure_ranker(space, digits, ghn, path=tmp_path / "other.pt", ranker_labels=3, ranker_k=2, progress=False)


def test_fit_ranker_cli_writes_a_ranker_that_search_can_load(
    tmp_path: Path, ghn: GHN, space: SearchSpace, capsys: pytest.CaptureFixture[str]
) -> None:
    from nas.cli import main

    ghn_path = tmp_path / "ghn.pt"
    ghn.save(ghn_path)
    out = tmp_path / "ranker.pt"
    argv = ["fit-ranker", "--space", "nb201", "--space-arg", "C=4", "--dataset", "digits", "--ghn", str(ghn_path),
            "--out", str(out), "--ranker-labels", "5", "--ranker-k", "2", "--epochs", "2", "--ensemble", "1", "--no-progress",
            "--threads", "1", "--flops-weight", "0.25"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "labels:            5 trained for k=2 steps" in printed and str(out) in printed
    assert "purchase:" in printed and "stopped:           budget" in printed
    assert "flops weight:      0.25\n" in printed
    ranker = GHNRanker.load(out)
    ranker.check_compatible(space)
    assert ranker.label_info["k"] == 2 and len(ranker.members) == 1 and ranker.config.flops_weight == 0.25
    assert ranker.config.pretrained is False  # the GHN gives its settings, not its weights

    # Without --ghn: the default settings; nothing meta-trained is needed.
    bare = tmp_path / "bare.pt"
    assert main([*argv[:argv.index("--ghn")], *argv[argv.index("--ghn") + 2:argv.index("--out") + 1], str(bare),
                 *argv[argv.index("--out") + 2:]]) == 0
    ranker = GHNRanker.load(bare)
    ranker.check_compatible(space)
    assert ranker.label_info["labelled"] == 5


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--ranker-labels", "2"], "`--ranker-labels` must be at least 4, but got 2."),
        (["--ranker-k", "0"], "`--ranker-k` must be positive, but got 0."),
        (["--ghn", "missing.pt"], "GHN checkpoint 'missing.pt' does not exist"),
        (["--flops-weight", "-1"], "`--flops-weight` must be a non-negative number, but got -1.0."),
    ],
)
def test_fit_ranker_cli_bad_input_is_one_line_exit_2(
    tmp_path: Path, ghn: GHN, capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    from nas.cli import main

    ghn_path = tmp_path / "ghn.pt"
    ghn.save(ghn_path)
    argv = ["fit-ranker", "--space", "nb201", "--space-arg", "C=4", "--dataset", "digits", "--ghn", str(ghn_path),
            "--out", str(tmp_path / "r.pt"), "--no-progress", *extra]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0] and err[0].startswith("nas fit-ranker: error:")
    assert not (tmp_path / "r.pt").exists()


def test_ranker_ensemble_scores_the_mean_standardised_tse_with_the_first_rankers_prior(
    tmp_path: Path, ghn: GHN, small_ranker: GHNRanker, graphs: list[ArchGraph]
) -> None:
    from nas.ghn import RankerEnsemble, with_flops_prior

    # A second ranker that disagrees: fitted on the opposite labels.
    other = fit_ranker(ghn, graphs[8:16], [-math.log(g.num_params()) for g in graphs[8:16]],
                       RankerConfig(epochs=2, ensemble=1, flops_weight=0.0), progress=False)
    ensemble = RankerEnsemble([small_ranker, other])
    z = (small_ranker.standardised(graphs) + other.standardised(graphs)) / 2
    np.testing.assert_allclose(ensemble.standardised(graphs), z, rtol=1e-6)
    first = small_ranker
    expected = with_flops_prior(z, graphs, weight=first.config.flops_weight, mean=first.flops_mean, std=first.flops_std)
    np.testing.assert_allclose(ensemble.score(graphs), expected, rtol=1e-6)
    assert not np.allclose(ensemble.score(graphs), small_ranker.score(graphs))  # the second ranker counts
    np.testing.assert_allclose(RankerEnsemble([small_ranker]).score(graphs), small_ranker.score(graphs), rtol=1e-6)
    assert ensemble.space_info == small_ranker.space_info

    paths = [tmp_path / "a.pt", tmp_path / "b.pt"]
    small_ranker.save(paths[0])
    other.save(paths[1])
    np.testing.assert_allclose(RankerEnsemble.load(paths).score(graphs), ensemble.score(graphs), rtol=1e-6)
    with pytest.raises(CheckpointError, match="missing.pt"):
        RankerEnsemble.load([paths[0], tmp_path / "missing.pt"])
    with pytest.raises(ValueError, match="`rankers` must hold at least one"):
        RankerEnsemble([])
    with pytest.raises(ValueError, match="`rankers` must hold GHNRanker objects, but got str"):
        RankerEnsemble([small_ranker, "b.pt"])


def test_ranker_ensemble_converts_each_graph_once_for_builds_that_convert_alike(
    monkeypatch: pytest.MonkeyPatch, ghn: GHN, space: SearchSpace, graphs: list[ArchGraph]
) -> None:
    import nas.ghn._model as model_module
    from nas.ghn import RankerEnsemble

    def fit(seed: int, config: GHNConfig = TINY) -> GHNRanker:
        torch.manual_seed(seed)
        build = GHN(config, space_info={**space.describe(), "dataset": "digits"})
        labels = [math.log(g.num_params()) for g in graphs[:8]]
        return fit_ranker(build, graphs[:8], labels, RankerConfig(epochs=1, ensemble=1, seed=seed), progress=False)

    rankers = [fit(1), fit(2), fit(3, GHNConfig(hidden=16, layers=1, s_max=3))]  # the third converts otherwise
    alone = [r.standardised(graphs[40:60]) for r in rankers]
    for r in rankers:
        r.members[0].ghn._entries.clear()
    calls = []
    real = model_module.graph_entry
    monkeypatch.setattr(model_module, "graph_entry", lambda g, **kw: calls.append(kw) or real(g, **kw))
    ensemble = RankerEnsemble(rankers)
    np.testing.assert_allclose(ensemble.standardised(graphs[40:60]), np.mean(alone, axis=0), rtol=1e-6)
    assert len(calls) == 40  # 20 graphs for the two alike builds, 20 more for the third
    assert sorted({kw["s_max"] for kw in calls}) == [2, 3]
    assert not rankers[0].members[0].ghn.share_graph_cache(rankers[2].members[0].ghn)


def test_a_label_cache_without_times_gains_the_column_and_times_new_labels(
    space: Any, digits: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Caches written before label times were kept stay readable; new labels are timed, old ones estimated."""
    monkeypatch.setattr(ranker_module, "_short_training_loss", lambda args: (1.0, 2.0))
    cache = tmp_path / "old.csv"
    first, _ = short_training_labels(space, digits, 3, k=2, seed=7, progress=False)
    with cache.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["key", "graph", "tse"])
        writer.writerows([g.key, g.to_json(), 1.0] for g in first)
    seconds, estimated = label_seconds(cache, [g.key for g in first])
    assert math.isnan(seconds) and estimated == 3  # no time recorded at all: unknown, not zero
    graphs, _ = short_training_labels(space, digits, 5, k=2, seed=7, cache=cache, progress=False)
    lines = cache.read_text().splitlines()
    assert lines[0] == "key,graph,tse,seconds" and len(lines) == 6
    assert [g.key for g in graphs[:3]] == [g.key for g in first]  # the old labels were not trained again
    # 2 new labels timed at 2 s; the 3 old ones counted at that mean.
    assert label_seconds(cache, [g.key for g in graphs]) == (pytest.approx(10.0), 3)
    assert label_seconds(cache, [g.key for g in graphs[3:]]) == (pytest.approx(4.0), 0)


# ---------------------------------------------------------------- checkpoints of older versions

#: What an older version stored in ``label_info`` when it chose the prior's weight on trained architectures.
OLD_WEIGHT_RECORD: dict[str, Any] = {
    "asked": 20, "epochs": 3.0, "seed": 104729, "seconds": 41.5, "cache": "/gone/ranker_calibration_e3.csv",
    "n": 20, "weight": 1.0, "tau": {"0": 0.41, "0.25": 0.45, "0.5": 0.47, "1": 0.52},
}


def _as_old_checkpoint(path: Path) -> None:
    """Rewrite the ranker at ``path`` as an older version saved it after choosing the prior's weight 1."""
    payload = torch.load(path, weights_only=True)
    payload["config"]["flops_weight"] = 1.0
    payload["label_info"] = {**payload["label_info"], "calibration": dict(OLD_WEIGHT_RECORD)}
    torch.save(payload, path)


def test_a_checkpoint_with_an_old_weight_record_loads_with_its_saved_weight(
    tmp_path: Path, small_ranker: GHNRanker, graphs: list[ArchGraph]
) -> None:
    path = tmp_path / "old.pt"
    small_ranker.save(path)
    _as_old_checkpoint(path)
    old = GHNRanker.load(path)
    assert old.config.flops_weight == 1.0
    assert old.label_info["calibration"] == OLD_WEIGHT_RECORD  # kept as it was, and saved again as it was
    part = graphs[:12]
    z = (small_ranker.predict(part) - small_ranker.label_mean) / small_ranker.label_std
    flops = np.log([float(g.flops()) for g in part])
    np.testing.assert_allclose(old.score(part), z - 1.0 * (flops - old.flops_mean) / old.flops_std,
                               rtol=1e-6, atol=1e-9)
    old.save(tmp_path / "again.pt")
    assert GHNRanker.load(tmp_path / "again.pt").label_info["calibration"] == OLD_WEIGHT_RECORD


def test_ensure_ranker_reuses_an_old_checkpoint_as_saved(
    tmp_path: Path, ghn: GHN, space: SearchSpace, digits: Dataset, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A campaign resumed on a ranker of an older version ranks on with the weight its stored trials had."""
    from nas.ghn import ensure_ranker

    path = tmp_path / "ranker.pt"
    config = RankerConfig(epochs=1, ensemble=1, flops_weight=0.5)
    kwargs: dict[str, Any] = dict(path=path, ranker_labels=5, ranker_k=2, config=config, progress=False)
    ensure_ranker(space, digits, ghn, **kwargs)
    _as_old_checkpoint(path)
    before = (path.read_bytes(), path.stat().st_mtime_ns)

    def no_training(*args: Any, **kw: Any) -> Any:
        raise AssertionError("a saved ranker must be reused, not labelled or fitted again")

    monkeypatch.setattr(ranker_module, "_short_training_loss", no_training)
    monkeypatch.setattr("nas.ghn._default.fit_ranker", no_training)
    with caplog.at_level(logging.INFO, logger="nas.ghn._default"):
        ranker = ensure_ranker(space, digits, ghn, **kwargs)
    assert ranker.config.flops_weight == 1.0 and ranker.label_info["calibration"] == OLD_WEIGHT_RECORD
    assert "keeps the FLOPs-prior weight it was saved with, 1 (not 0.5)" in caplog.text
    assert (path.read_bytes(), path.stat().st_mtime_ns) == before  # not rewritten


def test_a_label_cache_of_other_measurements_is_refused(tmp_path: Path, graphs: list[ArchGraph],
                                                        digits: Dataset) -> None:
    from nas.ghn import tse_scores

    cache = tmp_path / "other.csv"
    cache.write_text(f"key,graph,val_loss,seconds\n{graphs[0].key},{{}},1.5,2.0\n")
    before = cache.read_bytes()
    with pytest.raises(ValueError, match=r"cache '.*other.csv' has no 'tse' column \(columns: key, graph, val_loss"):
        tse_scores(graphs[:2], digits, k=1, cache=cache, progress=False)
    assert cache.read_bytes() == before  # nothing appended to the other file


# ---------------------------------------------------------------- labels bought in purchases


def test_held_out_labels_keep_their_side_when_labels_are_added(graphs: list[ArchGraph]) -> None:
    from nas.ghn._ranker import _held_out

    keys = [g.key for g in graphs]
    config = RankerConfig(val_fraction=0.2)
    small, large = _held_out(keys[:40], 0, config), _held_out(keys, 0, config)
    np.testing.assert_array_equal(small, large[:40])
    assert 0.1 < large.mean() < 0.3  # about val_fraction of them
    assert not np.array_equal(large, _held_out(keys, 1, config))  # each member holds out its own


def test_fit_ranker_reports_the_out_of_fold_tau_and_extends_a_fit(ghn: GHN, graphs: list[ArchGraph]) -> None:
    labels = np.array([float(conv_nodes(g)) for g in graphs[:80]])
    config = RankerConfig(epochs=3, ensemble=2, batch_size=32)
    first = fit_ranker(ghn, graphs[:40], labels[:40], config, progress=False)
    assert -1 <= first.cv_tau <= 1
    extended = fit_ranker(ghn, graphs[:80], labels, config, init=first, progress=False)
    scratch = fit_ranker(ghn, graphs[:80], labels, config, progress=False)
    assert not np.allclose(extended.predict(graphs[100:]), scratch.predict(graphs[100:]))  # started from `first`
    with pytest.raises(ValueError, match="`init` was fitted with other members"):
        fit_ranker(ghn, graphs[:80], labels, RankerConfig(epochs=1, ensemble=3), init=first, progress=False)


def test_ensure_ranker_buys_labels_until_a_purchase_stops_lifting_its_tau(
    tmp_path: Path, ghn: GHN, space: SearchSpace, digits: Dataset
) -> None:
    from nas.ghn import ensure_ranker

    config = RankerConfig(epochs=2, ensemble=3)
    # A margin no purchase can clear: buying stops after the second purchase (the first has nothing to beat).
    ranker = ensure_ranker(space, digits, None, path=tmp_path / "r.pt", ranker_labels=40, ranker_k=1, config=config,
                           label_batch=12, label_margin=2.0, progress=False)
    info = ranker.label_info
    assert info["stopped"] == "plateau" and [h["labels"] for h in info["history"]] == [12, 24]
    assert info["labelled"] == 24 and info["label_seconds"] > 0 and info["cv_tau"] == ranker.cv_tau
    assert len((tmp_path / "r_labels_k1.csv").read_text().splitlines()) == 25  # header + the 24 bought
    # A CPU budget spent by the first purchase ends buying there.
    ranker = ensure_ranker(space, digits, None, path=tmp_path / "s.pt", ranker_labels=30, ranker_k=1, config=config,
                           label_batch=12, label_seconds=0.0, progress=False)
    assert ranker.label_info["stopped"] == "seconds" and ranker.label_info["labelled"] == 12


def test_ensure_ranker_extends_a_ranker_that_stopped_at_a_smaller_budget(
    tmp_path: Path, space: SearchSpace, digits: Dataset, monkeypatch: pytest.MonkeyPatch
) -> None:
    import nas.ghn._default as default
    from nas.ghn import ensure_ranker

    config = RankerConfig(epochs=2, ensemble=2)
    path = tmp_path / "r.pt"
    first = ensure_ranker(space, digits, None, path=path, ranker_labels=10, ranker_k=1, config=config,
                          label_batch=None, progress=False)
    assert first.label_info["stopped"] == "budget" and first.label_info["labelled"] == 10
    bought = (tmp_path / "r_labels_k1.csv").read_text().splitlines()
    starts = []
    fit = default.fit_ranker

    def spy(*args: Any, **kwargs: Any) -> GHNRanker:
        starts.append(kwargs.get("init"))
        return fit(*args, **kwargs)

    monkeypatch.setattr(default, "fit_ranker", spy)
    more = ensure_ranker(space, digits, None, path=path, ranker_labels=20, ranker_k=1, config=config,
                         label_batch=10, label_margin=0.0, progress=False)
    assert [h["labels"] for h in more.label_info["history"]] == [10, 20] and more.label_info["stopped"] == "budget"
    assert len(starts) == 1 and starts[0] is not None  # extended from the saved fit, not fitted from scratch
    rows = (tmp_path / "r_labels_k1.csv").read_text().splitlines()
    assert len(rows) == 21 and rows[:11] == bought  # the first ten labels were not trained again
    # A ranker whose buying plateaued is reused as it is, even when a later call allows more labels.
    starts.clear()
    again = ensure_ranker(space, digits, None, path=tmp_path / "p.pt", ranker_labels=30, ranker_k=1, config=config,
                          label_batch=10, label_margin=5.0, progress=False)
    assert again.label_info["stopped"] == "plateau"
    n = len(starts)
    ensure_ranker(space, digits, None, path=tmp_path / "p.pt", ranker_labels=60, ranker_k=1, config=config,
                  label_batch=10, label_margin=5.0, progress=False)
    assert len(starts) == n


def test_ensure_ranker_resumes_a_purchase_loop_killed_between_purchases(
    tmp_path: Path, space: SearchSpace, digits: Dataset
) -> None:
    from nas.ghn import ensure_ranker

    config = RankerConfig(epochs=2, ensemble=2)
    path = tmp_path / "r.pt"
    ranker = ensure_ranker(space, digits, None, path=path, ranker_labels=10, ranker_k=1, config=config,
                           label_batch=None, progress=False)
    ranker.label_info["stopped"] = None  # as saved after a purchase that did not end the buying
    ranker.save(path)
    resumed = ensure_ranker(space, digits, None, path=path, ranker_labels=20, ranker_k=1, config=config,
                            label_batch=10, label_margin=0.0, progress=False)
    assert [h["labels"] for h in resumed.label_info["history"]] == [10, 20]
    assert resumed.label_info["stopped"] == "budget" and resumed.label_info["labelled"] == 20


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"label_batch": 0}, "`label_batch` must be a positive int or None, but got 0"),
     ({"label_margin": -0.1}, "`label_margin` must be a non-negative number, but got -0.1"),
     ({"label_seconds": float("nan")}, "`label_seconds` must be a non-negative number, but got nan")],
)
def test_ensure_ranker_rejects_bad_purchase_settings(
    tmp_path: Path, space: SearchSpace, digits: Dataset, kwargs: dict[str, Any], message: str
) -> None:
    from nas.ghn import ensure_ranker

    with pytest.raises(ValueError, match=re.escape(message)):
        ensure_ranker(space, digits, None, path=tmp_path / "r.pt", ranker_labels=10, ranker_k=1, progress=False,
                      **kwargs)
    assert not (tmp_path / "r.pt").exists()
