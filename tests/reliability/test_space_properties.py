"""Random define-by-run search spaces: sampling without a study agrees with Optuna, and what a study would refuse
is refused before any one-time cost.

Hypothesis writes small define-by-run programs from the trial API's calls:
categorical choices, ints with a step or a log scale, floats on a step grid,
calls made only on a branch of an earlier choice, and, in the spaces that must
fail, a choice list that depends on an earlier choice (Optuna's "dynamic value
space"). For each program:

* a valid one samples the same joint values through ``space.sample`` (the
  ``RandomTrial`` of labels and meta-training) as through a real Optuna study
  with ``RandomSampler``: 2,000 draws each, the same set of value tuples, and a
  chi-square test of their frequencies failing at p < 1e-4 (fixed seeds);
* ``check_space`` passes exactly when a real study runs 300 trials of it
  without an error, and otherwise fails naming the choice;
* a campaign of a failing program stops in its first step, before the storage,
  the GHN or a label exists.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import warnings

import numpy as np
import optuna
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy import stats

from nas.exceptions import SpaceError
from nas.graph import ArchGraph, GraphBuilder
from nas.space import SearchSpace
from nas.testing import check_space

DRAWS = 2000
P_FAIL = 1e-4
STUDY_TRIALS = 300
SETTINGS = settings(max_examples=12, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.function_scoped_fixture])


@dataclass(frozen=True)
class Call:
    """One trial call: ``kind`` with ``args``, made only when ``when`` (an earlier name, its value) holds.

    ``by_parent`` (categorical only) makes the choice list depend on the value of
    an earlier call: {parent value: choices}, the dynamic value space Optuna refuses.
    """

    name: str
    kind: str
    args: dict[str, Any]
    when: tuple[str, Any] | None = None
    by_parent: tuple[str, dict[Any, list[Any]]] | None = None


def _run(program: list[Call], trial: Any) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for call in program:
        if call.when is not None and values.get(call.when[0]) != call.when[1]:
            continue
        if call.by_parent is not None:
            parent, lists = call.by_parent
            values[call.name] = trial.suggest_categorical(call.name, lists[values[parent]])
        elif call.kind == "categorical":
            values[call.name] = trial.suggest_categorical(call.name, call.args["choices"])
        elif call.kind == "int":
            values[call.name] = trial.suggest_int(call.name, **call.args)
        else:
            values[call.name] = trial.suggest_float(call.name, **call.args)
    return values


class ProgramSpace(SearchSpace):
    """A space that runs a :class:`Call` program; the candidate is a small fixed network."""

    name = "program"

    def __init__(self, program: list[Call], **kwargs: Any) -> None:
        super().__init__(input_shape=(1, 8, 8), num_classes=10, **kwargs)
        self.program = program

    def build(self, trial: Any) -> ArchGraph:
        _run(self.program, trial)
        b = GraphBuilder(self.input_shape)
        x = b.add("global_avg_pool", b.add("conv", b.input, out_channels=2, kernel=1))
        return b.build(b.add("linear", x, out_features=self.num_classes))


# ------------------------------------------------------------------ programs

CHOICES = st.lists(st.one_of(st.integers(-3, 3), st.sampled_from(["a", "b", "c"])), min_size=1, max_size=3,
                   unique_by=lambda v: (type(v).__name__, v))


def _call(name: str) -> st.SearchStrategy[Call]:
    return st.one_of(
        CHOICES.map(lambda c: Call(name, "categorical", {"choices": c})),
        st.tuples(st.integers(0, 5), st.integers(0, 6), st.integers(1, 3)).map(
            lambda t: Call(name, "int", {"low": t[0], "high": t[0] + t[1], "step": t[2]})),
        st.tuples(st.integers(1, 4), st.integers(0, 12)).map(
            lambda t: Call(name, "int", {"low": t[0], "high": t[0] + t[1], "log": True})),
        st.tuples(st.integers(0, 4), st.integers(1, 6), st.sampled_from([0.25, 0.5, 0.6])).map(
            lambda t: Call(name, "float", {"low": t[0] / 4, "high": t[0] / 4 + t[1] / 4, "step": t[2]})),
    )


@st.composite
def programs(draw: st.DrawFn, *, dynamic: bool) -> list[Call]:
    """A root categorical call, up to three more calls, some on a branch of the root; ``dynamic`` adds a
    choice list that depends on the root's value."""
    root = Call("root", "categorical", {"choices": draw(st.lists(st.sampled_from(["x", "y", "z"]), min_size=2,
                                                                   max_size=3, unique=True))})
    program = [root]
    for i in range(draw(st.integers(1, 3))):
        call = draw(_call(f"c{i}"))
        if draw(st.booleans()):
            call = Call(call.name, call.kind, call.args, when=("root", draw(st.sampled_from(root.args["choices"]))))
        program.append(call)
    if dynamic:
        first, second = draw(CHOICES), draw(CHOICES)
        if first == second:
            second = [*first, "extra"]
        lists = {value: (first if i == 0 else second) for i, value in enumerate(root.args["choices"])}
        program.append(Call("dyn", "categorical", {}, by_parent=("root", lists)))
    return program


def _study_values(program: list[Call], n: int, seed: int) -> list[dict[str, Any]]:
    """The values of ``n`` trials of a real Optuna study with ``RandomSampler``; raises what the study raises."""
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    out = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Optuna's note that a step grid ends inside the range
        for _ in range(n):
            trial = study.ask()
            out.append(_run(program, trial))
            study.tell(trial, 0.0)
    return out


def _key(values: dict[str, Any]) -> tuple[Any, ...]:
    return tuple(sorted((k, round(v, 9) if isinstance(v, float) else v) for k, v in values.items()))


# ------------------------------------------------------------------ properties


@SETTINGS
@given(programs(dynamic=False))
def test_sampling_without_a_study_draws_what_an_optuna_study_draws(program: list[Call]) -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space = ProgramSpace(program)
    space.check_choices()
    rng = np.random.default_rng(0)
    ours = [_key(space.sample(rng).params) for _ in range(DRAWS)]
    theirs = [_key(v) for v in _study_values(program, DRAWS, seed=1)]
    values = sorted(set(ours) | set(theirs), key=repr)
    if len(values) <= 40:  # every tuple is expected about 50 times or more: both sides must take all of them
        assert set(ours) == set(theirs), f"value tuples only one side takes: {set(ours) ^ set(theirs)}"
    if len(values) > 1:
        table = np.array([[ours.count(v) for v in values], [theirs.count(v) for v in values]])
        p = stats.chi2_contingency(table).pvalue
        assert p >= P_FAIL, f"joint frequencies differ (chi-square p = {p:.2g})"


@SETTINGS
@given(st.one_of(programs(dynamic=False), programs(dynamic=True)))
def test_check_choices_fails_exactly_when_a_study_would(program: list[Call]) -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        _study_values(program, STUDY_TRIALS, seed=0)
        study_error = None
    except ValueError as err:  # Optuna: "CategoricalDistribution does not support dynamic value space."
        study_error = err
    space = ProgramSpace(program)
    if study_error is None:
        check_space(space, n=2)
    else:
        assert "dynamic value space" in str(study_error)
        with pytest.raises(AssertionError, match=r"conformance check 'choices'.*'dyn'.*own name"):
            check_space(space, n=2)


@SETTINGS
@given(program=programs(dynamic=True))
def test_a_campaign_of_a_space_a_study_would_refuse_stops_before_any_cost(
    tmp_path_factory: pytest.TempPathFactory, program: list[Call]
) -> None:
    from nas.campaign import Campaign

    out: Path = tmp_path_factory.mktemp("campaign") / "out"
    campaign = Campaign(space=ProgramSpace(program), dataset="digits", trials=10, top_k=1, out=out, progress=False)
    with pytest.raises(SpaceError, match="'dyn'"):
        campaign.run()
    assert not out.exists(), "the campaign wrote its folder (storage, GHN or labels) before refusing the space"
