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

Kills: ``nas search`` 3 (ranking, fine-tuning, checkpoint write), ``nas
correlate`` 2 (ground-truth training, cache write), ``nas train-ghn`` 2
(checkpoint write, meta-training step); 7 in all.
"""

from __future__ import annotations

import json
import math
import random
import sqlite3
import time
from collections import Counter
from pathlib import Path
from typing import Any

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
    """Key -> rank trials that scored it with the GHN (not answered from an earlier score)."""
    return Counter(
        t.user_attrs["key"]
        for t in rank.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.FAIL))
        if "key" in t.user_attrs and "ghn_loss" in t.user_attrs and "duplicate_of" not in t.user_attrs
    )


def _finetuned_keys(ft: optuna.Study) -> Counter[str]:
    return Counter(t.user_attrs["key"] for t in ft.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))


def _value_frame(path: Path, columns: list[str], sort: str) -> pd.DataFrame:
    frame = pd.read_csv(path)
    return frame[columns].sort_values(sort, kind="stable").reset_index(drop=True)


def _assert_same_table(got: pd.DataFrame, want: pd.DataFrame) -> None:
    assert list(got["key"]) == list(want["key"])
    pd.testing.assert_frame_equal(got, want, check_exact=False, rtol=1e-5, atol=1e-6, check_dtype=False)


def test_search_survives_kills_during_ranking_finetuning_and_checkpoint_write(
    tmp_path: Path, tiny_ghn: Path, finished_campaign: Path
) -> None:
    out, log = tmp_path / "out", tmp_path / "work.log"
    argv = ["search", *SEARCH_ARGS, "--ghn", str(tiny_ghn), "--out", str(out)]
    rng = random.Random(20240611)
    plan = [
        ("ranking", nth("ghn_eval", "start", 1), {}),
        ("fine-tuning", nth("train", "start", 2), {}),
        ("checkpoint write", nth("save", "mid", 1), {"NAS_TEST_SLOW_SAVE": "1"}),
    ]
    committed_rank: set[str] = set()
    committed_ft: set[str] = set()
    for i, (stage, when, extra) in enumerate(plan):
        env = base_env(tmp_path, NAS_TEST_WORK_LOG=str(log), NAS_TEST_RUN=str(i),
                       NAS_TEST_UNIT_DELAY=str(UNIT_DELAY), **extra)
        run = run_and_kill(argv, env=env, log=log, when=when, rng=rng, delay=KILL_WINDOW)
        assert run.killed, f"run {i} was to be killed during {stage} but exited {run.code}:\n{run.err[-3000:]}"
        events = [e for e in read_log(log) if e["run"] == str(i)]
        # Nothing committed by an earlier run was scored or trained again by this one.
        scored = {k for e in events if e["kind"] == "ghn_eval" and e["event"] == "start" for k in e["keys"]}
        trained = {e["key"] for e in events if e["kind"] == "train" and e["event"] == "start"}
        assert not scored & committed_rank, f"run {i} re-scored committed candidates {scored & committed_rank}"
        assert not trained & committed_ft, f"run {i} re-trained committed candidates {trained & committed_ft}"
        rank, ft = _studies(out)
        committed_rank |= set(_scored_keys(rank))
        committed_ft |= set(_finetuned_keys(ft))

    final = run_subprocess(argv, env=base_env(tmp_path, NAS_TEST_WORK_LOG=str(log), NAS_TEST_RUN="final"))
    assert final.code == 0, final.err[-3000:]
    events = [e for e in read_log(log) if e["run"] == "final"]
    scored = {k for e in events if e["kind"] == "ghn_eval" and e["event"] == "start" for k in e["keys"]}
    trained = {e["key"] for e in events if e["kind"] == "train" and e["event"] == "start"}
    assert not scored & committed_rank and not trained & committed_ft

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
    assert set(evals) == set(scored_keys) and set(trains) == set(ft_keys)
    assert sum(trains.values()) <= len(ft_keys) + 1  # only the checkpoint-write kill loses a finished training

    # Checkpoints and weights load (weights_only=True); leftover temporary files are not read.
    for trial in ft.get_trials(states=(TrialState.COMPLETE,)):
        state = torch.load(trial.user_attrs["weights"], weights_only=True)
        assert state and all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())
    assert torch.load(out / "best.pt", weights_only=True)
    json.loads((out / "best.json").read_text())

    # The tables equal those of the uninterrupted run with the same seed.
    _assert_same_table(
        _value_frame(out / "finetuned.csv", FINETUNED_VALUE_COLUMNS, "rank"),
        _value_frame(finished_campaign / "finetuned.csv", FINETUNED_VALUE_COLUMNS, "rank"),
    )
    _assert_same_table(
        _value_frame(out / "candidates.csv", CANDIDATE_VALUE_COLUMNS, "key"),
        _value_frame(finished_campaign / "candidates.csv", CANDIDATE_VALUE_COLUMNS, "key"),
    )
