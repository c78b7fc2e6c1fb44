"""SIGKILL at random points, restart the same command, lose nothing and compute nothing twice.

Each test starts a real ``nas`` subprocess (through ``_hooked_nas.py``, which
logs every unit of work to a file and can slow units down so that a kill lands
inside one), kills it with SIGKILL when a chosen unit has started plus a
random pause, restarts the same command, and at the end checks:

* every candidate has exactly one completed result in the storage / cache;
* no result that was committed before a kill was computed again after it
  (work log against the committed state read from the storage after each kill);
* checkpoints, weights and caches load;
* the final tables equal those of an uninterrupted run with the same seed.

Kills: ``nas search`` 3 for each rank mode (``--rank-by loss``: ranking, i.e.
a GHN evaluation; ``--rank-by ranker``: the short training of a ranker label;
``--rank-by short``: the short training of a candidate; then fine-tuning and a
checkpoint write), ``nas correlate`` 2 (ground-truth training, cache write),
``nas train-ghn`` 2 (checkpoint write, meta-training step); 13 in all.
"""

from __future__ import annotations

import json
import random
import sqlite3
import time
from collections import Counter
from pathlib import Path

import optuna
import pandas as pd
import pytest
import torch
from optuna.trial import TrialState

from _helpers import (
    CANDIDATE_VALUE_COLUMNS,
    FINETUNED_VALUE_COLUMNS,
    GHN_ARGS,
    SEARCH_ARGS,
    TINY,
    TINY_SIZE,
    base_env,
    nth,
    read_log,
    run_and_kill,
    run_inprocess,
    run_subprocess,
)

pytestmark = pytest.mark.slow

#: Seconds each unit of work sleeps after logging its start in a run that is to be killed.
UNIT_DELAY = 0.8
#: Kills land uniformly in [0, KILL_WINDOW) after the triggering start line, i.e. inside the unit.
KILL_WINDOW = 0.6


def _studies(out: Path) -> tuple[optuna.Study, optuna.Study]:
    storage = f"sqlite:///{out / 'campaign.db'}"
    names = sorted(s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False))
    rank_name = next(n for n in names if n.endswith("-rank"))
    base = rank_name[: -len("-rank")]
    return (
        optuna.load_study(study_name=rank_name, storage=storage),
        optuna.load_study(study_name=f"{base}-finetune", storage=storage),
    )


def _scored_keys(rank: optuna.Study) -> Counter[str]:
    """Key -> rank trials that scored it (not answered from an earlier score)."""
    return Counter(
        t.user_attrs["key"]
        for t in rank.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.FAIL))
        if "key" in t.user_attrs and "rank_score" in t.user_attrs and "duplicate_of" not in t.user_attrs
    )


def _label_keys(out: Path, rank_by: str = "ranker") -> Counter[str]:
    """Key -> rows of the short-training cache: the ranker's labels (``ranker_labels.csv``) or, with
    ``--rank-by short``, the candidates' own runs (``rank_tse.csv``)."""
    path = out / ("rank_tse.csv" if rank_by == "short" else "ranker_labels.csv")
    return Counter(pd.read_csv(path)["key"]) if path.exists() else Counter()


def _finetuned_keys(ft: optuna.Study) -> Counter[str]:
    return Counter(t.user_attrs["key"] for t in ft.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))


def _value_frame(path: Path, columns: list[str], sort: str) -> pd.DataFrame:
    frame = pd.read_csv(path)
    present = [c for c in columns if c in frame.columns]  # ghn_loss / ghn_acc only when the GHN ranked
    return frame[present].sort_values(sort, kind="stable").reset_index(drop=True)


def _assert_same_table(got: pd.DataFrame, want: pd.DataFrame) -> None:
    assert list(got["key"]) == list(want["key"])
    pd.testing.assert_frame_equal(got, want, check_exact=False, rtol=1e-5, atol=1e-6, check_dtype=False)


#: Work unit of the rank stage, per ``--rank-by``: a GHN evaluation of a batch (``loss``), the
#: short training of one of the ranker's label architectures (``ranker``; scoring a candidate is then a
#: millisecond, too short to be hit), or of one candidate (``short``, the default of these 80 trials).
RANK_UNIT = {"loss": "ghn_eval", "ranker": "label", "short": "label"}


@pytest.mark.parametrize("rank_by", ["loss", "ranker", "short"])
def test_search_survives_kills_during_ranking_finetuning_and_checkpoint_write(
    tmp_path: Path, tiny_ghn: Path, finished_campaign: Path, rank_by: str
) -> None:
    out, log = tmp_path / "out", tmp_path / "work.log"
    argv = ["search", *SEARCH_ARGS, "--ghn", str(tiny_ghn), "--out", str(out), "--rank-by", rank_by]
    if rank_by == "ranker":
        reference = finished_campaign  # ranked by the ranker
    else:
        reference = tmp_path / "reference"
        ref = run_inprocess(["search", *SEARCH_ARGS, "--ghn", str(tiny_ghn), "--out", str(reference),
                             "--rank-by", rank_by])
        assert ref.code == 0, ref.err
    unit = RANK_UNIT[rank_by]
    rng = random.Random(20240611)
    plan = [
        ("ranking", nth(unit, "start", 2), {}),
        ("fine-tuning", nth("train", "start", 2), {}),
        ("checkpoint write", nth("save", "mid", 1), {"NAS_TEST_SLOW_SAVE": "1"}),
    ]
    committed_rank: set[str] = set()
    committed_labels: set[str] = set()
    committed_ft: set[str] = set()
    for i, (stage, when, extra) in enumerate(plan):
        env = base_env(tmp_path, NAS_TEST_WORK_LOG=str(log), NAS_TEST_RUN=str(i),
                       NAS_TEST_UNIT_DELAY=str(UNIT_DELAY), **extra)
        run = run_and_kill(argv, env=env, log=log, when=when, rng=rng, delay=KILL_WINDOW)
        assert run.killed, f"run {i} was to be killed during {stage} but exited {run.code}:\n{run.err[-3000:]}"
        events = [e for e in read_log(log) if e["run"] == str(i)]
        # Nothing committed by an earlier run was scored, labelled or trained again by this one.
        scored = {k for e in events if e["kind"] == "ghn_eval" and e["event"] == "start" for k in e["keys"]}
        labelled = {e["key"] for e in events if e["kind"] == "label" and e["event"] == "start"}
        trained = {e["key"] for e in events if e["kind"] == "train" and e["event"] == "start"}
        assert not scored & committed_rank, f"run {i} re-scored committed candidates {scored & committed_rank}"
        assert not labelled & committed_labels, f"run {i} re-labelled {labelled & committed_labels}"
        assert not trained & committed_ft, f"run {i} re-trained committed candidates {trained & committed_ft}"
        if (out / "campaign.db").exists():
            rank, ft = _studies(out)
            committed_rank |= set(_scored_keys(rank))
            committed_ft |= set(_finetuned_keys(ft))
        committed_labels |= set(_label_keys(out, rank_by))

    final = run_subprocess(argv, env=base_env(tmp_path, NAS_TEST_WORK_LOG=str(log), NAS_TEST_RUN="final"))
    assert final.code == 0, final.err[-3000:]
    events = [e for e in read_log(log) if e["run"] == "final"]
    scored = {k for e in events if e["kind"] == "ghn_eval" and e["event"] == "start" for k in e["keys"]}
    labelled = {e["key"] for e in events if e["kind"] == "label" and e["event"] == "start"}
    trained = {e["key"] for e in events if e["kind"] == "train" and e["event"] == "start"}
    assert not scored & committed_rank and not labelled & committed_labels and not trained & committed_ft

    # Exactly one completed result per candidate; nothing left queued or running.
    rank, ft = _studies(out)
    scored_keys = _scored_keys(rank)
    assert len(scored_keys) == TINY_SIZE and set(scored_keys.values()) == {1}, scored_keys
    ft_keys = _finetuned_keys(ft)
    assert len(ft_keys) == 3 and set(ft_keys.values()) == {1}, ft_keys
    assert not ft.get_trials(states=(TrialState.WAITING, TrialState.RUNNING))
    assert not rank.get_trials(states=(TrialState.WAITING, TrialState.RUNNING))
    # Work actually done: each candidate scored once and trained once, plus at most the unit in
    # flight at each kill (a result killed before it was stored must be computed again).
    all_events = read_log(log)
    evals = Counter(k for e in all_events if e["kind"] == "ghn_eval" and e["event"] == "done" for k in e["keys"])
    trains = Counter(e["key"] for e in all_events if e["kind"] == "train" and e["event"] == "done")
    assert set(trains) == set(ft_keys)
    assert sum(trains.values()) <= len(ft_keys) + 1  # only the checkpoint-write kill loses a finished training
    if rank_by == "loss":
        assert set(evals) == set(scored_keys)
    else:
        assert not evals  # the ranker and short training score without GHN evaluations
        labels = _label_keys(out, rank_by)
        assert labels and set(labels.values()) == {1}, labels  # each architecture once in the cache
        assert labels == _label_keys(reference, rank_by)
        if rank_by == "short":
            assert set(labels) == set(scored_keys) and not _label_keys(out)  # the candidates, and no ranker label
        done_labels = Counter(e["key"] for e in all_events if e["kind"] == "label" and e["event"] == "done")
        assert set(done_labels) == set(labels)
        assert sum(done_labels.values()) <= len(labels) + 1  # at most the label in flight at the ranking kill

    # Checkpoints and weights load (weights_only=True); leftover temporary files are not read.
    for trial in ft.get_trials(states=(TrialState.COMPLETE,)):
        state = torch.load(trial.user_attrs["weights"], weights_only=True)
        assert state and all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())
    assert torch.load(out / "best.pt", weights_only=True)
    json.loads((out / "best.json").read_text())

    # The tables equal those of the uninterrupted run with the same seed.
    _assert_same_table(
        _value_frame(out / "finetuned.csv", FINETUNED_VALUE_COLUMNS, "key"),
        _value_frame(reference / "finetuned.csv", FINETUNED_VALUE_COLUMNS, "key"),
    )
    _assert_same_table(
        _value_frame(out / "candidates.csv", CANDIDATE_VALUE_COLUMNS, "key"),
        _value_frame(reference / "candidates.csv", CANDIDATE_VALUE_COLUMNS, "key"),
    )


CORRELATE_ARGS = [
    "correlate", "--space", TINY, "--dataset", "digits", "--archs", str(TINY_SIZE), "--epochs", "0.3",
    "--train-seeds", "2", "--methods", "params,flops,ghn_plain", "--no-figures", "--no-progress",
]


def _cache_rows(path: Path) -> list[tuple[str, int]]:
    with sqlite3.connect(path) as conn:
        return [(k, int(s)) for k, s in conn.execute("SELECT arch_key, seed FROM results")]


def test_correlate_ground_truth_survives_kills(tmp_path: Path, tiny_ghn: Path) -> None:
    out, log = tmp_path / "corr", tmp_path / "work.log"
    argv = [*CORRELATE_ARGS, "--ghn", str(tiny_ghn), "--out", str(out)]
    rng = random.Random(7)
    plan = [
        ("ground-truth training", nth("train", "start", 3), UNIT_DELAY, KILL_WINDOW),
        # Right after a training finished: its result may or may not be in the cache yet.
        ("between training and cache write", nth("train", "done", 2), 0.0, 0.05),
    ]
    committed: set[tuple[str, int]] = set()
    for i, (stage, when, unit_delay, window) in enumerate(plan):
        env = base_env(tmp_path, NAS_TEST_WORK_LOG=str(log), NAS_TEST_RUN=str(i), NAS_TEST_UNIT_DELAY=str(unit_delay))
        run = run_and_kill(argv, env=env, log=log, when=when, rng=rng, delay=window)
        assert run.killed, f"run {i} was to be killed during {stage} but exited {run.code}:\n{run.err[-3000:]}"
        trained = {(e["key"], e["seed"]) for e in read_log(log) if e["run"] == str(i) and e["kind"] == "train"}
        assert not trained & committed, f"run {i} re-trained cached results {trained & committed}"
        committed |= set(_cache_rows(out / "ground_truth.sqlite"))

    final = run_subprocess(argv, env=base_env(tmp_path, NAS_TEST_WORK_LOG=str(log), NAS_TEST_RUN="final"))
    assert final.code == 0, final.err[-3000:]
    trained = {(e["key"], e["seed"]) for e in read_log(log) if e["run"] == "final" and e["kind"] == "train"}
    assert not trained & committed

    rows = _cache_rows(out / "ground_truth.sqlite")
    assert len(rows) == len(set(rows)) == 2 * TINY_SIZE  # one result per (candidate, seed)
    done = Counter((e["key"], e["seed"]) for e in read_log(log) if e["kind"] == "train" and e["event"] == "done")
    assert set(done) == set(rows)
    assert sum(done.values()) <= len(rows) + 1  # at most the result finished just before the 2nd kill

    # The tables equal those of an uninterrupted run (in this process, same seed).
    ref = tmp_path / "ref"
    result = run_inprocess([*CORRELATE_ARGS, "--ghn", str(tiny_ghn), "--out", str(ref)])
    assert result.code == 0, result.err
    for name, drop in (("summary.csv", ["seconds_per_candidate"]), ("candidates.csv", ["gt_seconds"])):
        got = pd.read_csv(out / name).drop(columns=drop)
        want = pd.read_csv(ref / name).drop(columns=drop)
        pd.testing.assert_frame_equal(got, want, check_exact=False, rtol=1e-6)


GHN_STEPS = 12
TRAIN_GHN_ARGS = [
    "train-ghn", "--space", TINY, "--dataset", "digits", "--ghn-steps", str(GHN_STEPS), "--eval-every", "3",
    *GHN_ARGS, "--no-progress",
]


def test_train_ghn_survives_kills_during_checkpoint_write_and_step(tmp_path: Path) -> None:
    from nas.ghn import GHN

    path, log = tmp_path / "ghn.pt", tmp_path / "work.log"
    argv = [*TRAIN_GHN_ARGS, "--out", str(path)]
    rng = random.Random(11)
    plan = [
        ("checkpoint write", nth("save", "mid", 2), {"NAS_TEST_SLOW_SAVE": "1"}),
        ("meta-training step", nth("meta", "step", 5), {}),
    ]
    resume_points = []
    for i, (stage, when, extra) in enumerate(plan):
        env = base_env(tmp_path, NAS_TEST_WORK_LOG=str(log), NAS_TEST_RUN=str(i), NAS_TEST_UNIT_DELAY="0.4", **extra)
        run = run_and_kill(argv, env=env, log=log, when=when, rng=rng, delay=0.3)
        assert run.killed, f"run {i} was to be killed during {stage} but exited {run.code}:\n{run.err[-3000:]}"
        # A killed run leaves a checkpoint that loads: the last one completely written.
        checkpoints = [e["step"] for e in read_log(log) if e["kind"] == "ckpt" and e["event"] == "done"]
        assert GHN.load(path).training_state["step"] == max(checkpoints)
        resume_points.append(max(checkpoints))

    final = run_subprocess(argv, env=base_env(tmp_path, NAS_TEST_WORK_LOG=str(log), NAS_TEST_RUN="final"))
    assert final.code == 0, final.err[-3000:]

    events = read_log(log)
    # Each restart resumed from the last completed checkpoint, so no checkpointed step ran twice.
    resumed = [e["step"] for e in events if e["kind"] == "meta" and e["event"] == "resume"]
    assert resumed == resume_points
    steps = Counter(e["run"] for e in events if e["kind"] == "meta" and e["event"] == "step")
    assert steps["final"] == GHN_STEPS - resume_points[-1]
    assert steps["1"] >= 1 and resume_points[1] > resume_points[0]

    ghn = GHN.load(path)
    assert ghn.training_state["step"] == GHN_STEPS
    ref_path = tmp_path / "ref.pt"
    result = run_inprocess([*TRAIN_GHN_ARGS, "--out", str(ref_path)])
    assert result.code == 0, result.err
    ref = GHN.load(ref_path)
    got, want = ghn.state_dict(), ref.state_dict()
    assert got.keys() == want.keys()
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-5, atol=1e-6, msg=f"parameter {name} differs")


def test_optuna_heartbeat_requeues_the_trial_of_a_dead_worker(tmp_path: Path) -> None:
    """A worker on another machine stops heart-beating: Optuna fails its trial and the callback re-queues it."""
    from nas.campaign import open_storage

    storage = open_storage(f"sqlite:///{tmp_path / 'hb.db'}", heartbeat_interval=1, grace_period=2)
    study = optuna.create_study(storage=storage, study_name="hb", direction="maximize")
    study.enqueue_trial({"width": 4}, user_attrs={"key": "k4", "choices": {"width": 4}})
    trial = study.ask()  # the "remote worker" claims the queued candidate ...
    assert trial.suggest_categorical("width", [2, 4, 8]) == 4
    storage.record_heartbeat(trial._trial_id)  # ... beats once, then dies without a word
    # Heartbeats are stored with one-second resolution: after 3.5 s the stored gap is at least 3 s > 2 s.
    time.sleep(3.5)
    optuna.storages.fail_stale_trials(study)
    states = Counter(t.state for t in study.get_trials(deepcopy=False))
    assert states == {TrialState.FAIL: 1, TrialState.WAITING: 1}
    retry = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))[0]
    assert retry.system_attrs["fixed_params"] == {"width": 4}
    assert retry.user_attrs["key"] == "k4" and retry.user_attrs["nas_retry_of"] == trial.number

    def objective(t: optuna.Trial) -> float:
        return float(t.suggest_categorical("width", [2, 4, 8]))

    study.optimize(objective, n_trials=1)  # another worker finishes it
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    assert [(t.params, t.user_attrs["key"]) for t in done] == [({"width": 4}, "k4")]
