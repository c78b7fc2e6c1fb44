"""``RandomTrial`` (labels, meta-training, ``space.sample``) draws what Optuna's ``RandomSampler`` draws.

Hypothesis generates suggestions (int with a step or a log scale, float with a
step, a log scale or neither, categorical); for each, 2,000 draws through
``RandomTrial`` and 2,000 through Optuna's ``RandomSampler`` must take the
same set of values with matching frequencies: a chi-square test of the 2 x K
table for discrete suggestions, a two-sample Kolmogorov-Smirnov test for
continuous ones, each failing at p < 1e-4 (fixed seeds, derandomized examples).
Arguments Optuna refuses are refused by ``RandomTrial`` too, as a ``SpaceError``.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import optuna
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from scipy import stats

from nas.exceptions import SpaceError
from nas.space import RandomTrial

DRAWS = 2000
P_FAIL = 1e-4
SETTINGS = settings(max_examples=25, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow])


def _ours(kind: str, args: dict[str, Any]) -> list[Any]:
    rng = np.random.default_rng(0)
    method = {"int": "suggest_int", "float": "suggest_float", "categorical": "suggest_categorical"}[kind]
    return [getattr(RandomTrial(rng), method)("x", **args) for _ in range(DRAWS)]


def _optunas(kind: str, args: dict[str, Any]) -> list[Any]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dist = {"int": IntDistribution, "float": FloatDistribution, "categorical": CategoricalDistribution}[kind](**args)
    sampler = optuna.samplers.RandomSampler(seed=1)
    return [sampler.sample_independent(None, None, "x", dist) for _ in range(DRAWS)]  # type: ignore[arg-type]


ints = st.integers(-20, 40).flatmap(lambda low: st.tuples(st.just(low), st.integers(low, low + 30)))
int_suggestions = st.one_of(
    st.tuples(ints, st.integers(1, 7)).map(lambda t: {"low": t[0][0], "high": t[0][1], "step": t[1]}),
    st.tuples(st.integers(1, 20), st.integers(0, 200)).map(lambda t: {"low": t[0], "high": t[0] + t[1], "log": True}),
)
float_steps = st.tuples(st.integers(-8, 8), st.integers(0, 12), st.sampled_from([0.1, 0.25, 0.3, 0.6, 1.5])).map(
    lambda t: {"low": t[0] / 4, "high": t[0] / 4 + t[1] / 4, "step": t[2]})
float_continuous = st.one_of(
    st.tuples(st.floats(-5, 5), st.floats(0.01, 10)).map(lambda t: {"low": t[0], "high": t[0] + t[1]}),
    st.tuples(st.floats(1e-3, 10), st.floats(1.01, 1000)).map(lambda t: {"low": t[0], "high": t[0] * t[1], "log": True}),
)
choices = st.lists(st.one_of(st.none(), st.booleans(), st.integers(-3, 3), st.text(max_size=2)), min_size=1,
                   max_size=8, unique_by=lambda v: (type(v).__name__, v))


def _same_law_discrete(a: list[Any], b: list[Any], support: set[Any] | None = None) -> None:
    """Same values (all inside ``support`` when given) and frequencies matching under a chi-square test."""
    values = sorted(set(a) | set(b), key=repr)
    if support is not None:
        assert set(values) <= support, f"values outside the support: {set(values) - support}"
    if support is None or len(support) <= 20:  # every value is drawn about 100 times or more
        assert set(a) == set(b), f"values only one side takes: {set(a) ^ set(b)}"
    if len(values) == 1:
        return
    table = np.array([[a.count(v) for v in values], [b.count(v) for v in values]])
    p = stats.chi2_contingency(table).pvalue
    assert p >= P_FAIL, f"frequencies differ (chi-square p = {p:.2g}): {dict(zip(map(repr, values), table.T.tolist()))}"


@SETTINGS
@given(int_suggestions)
def test_int_suggestions_follow_optunas_law(args: dict[str, Any]) -> None:
    step = args.get("step", 1)
    support = set(range(args["low"], args["high"] + 1, step))  # the grid ends at the last step inside the range
    _same_law_discrete(_ours("int", args), _optunas("int", args), support)


@SETTINGS
@given(float_steps)
def test_float_step_suggestions_follow_optunas_grid(args: dict[str, Any]) -> None:
    ours, theirs = _ours("float", args), _optunas("float", args)
    # Grid points computed two ways may differ in the last bit: compare them rounded.
    _same_law_discrete([round(v, 9) for v in ours], [round(v, 9) for v in theirs])


@SETTINGS
@given(float_continuous)
def test_continuous_float_suggestions_follow_optunas_law(args: dict[str, Any]) -> None:
    ours, theirs = _ours("float", args), _optunas("float", args)
    assert min(ours) >= args["low"] and max(ours) <= args["high"]
    p = stats.ks_2samp(ours, theirs).pvalue
    assert p >= P_FAIL, f"distributions differ (KS p = {p:.2g})"


@SETTINGS
@given(choices)
def test_categorical_suggestions_follow_optunas_law(values: list[Any]) -> None:
    _same_law_discrete(_ours("categorical", {"choices": values}), _optunas("categorical", {"choices": values}))


def test_a_step_that_does_not_divide_the_range_ends_the_grid_inside_it() -> None:
    """``suggest_float(0, 1, step=0.6)`` is 0 or 0.6 (Optuna's adjusted high), never 1.2."""
    assert set(_ours("float", {"low": 0.0, "high": 1.0, "step": 0.6})) == {0.0, 0.6}


@pytest.mark.parametrize(
    ("call", "needle"),
    [
        (lambda t: t.suggest_float("x", 1.0, 2.0, step=0.5, log=True), "`step` is not supported when `log`"),
        (lambda t: t.suggest_int("x", 0, 8, log=True), "low >= 1"),
        (lambda t: t.suggest_int("x", 1, 8, step=2, log=True), "x"),
        (lambda t: t.suggest_float("x", 2.0, 1.0), "x"),
        (lambda t: t.suggest_categorical("x", [(1, 2), (3, 4)]), "tuple"),
        (lambda t: t.suggest_categorical("x", [[1], [2]]), "list"),
    ],
    ids=["float-step-and-log", "int-log-from-0", "int-step-and-log", "float-low-above-high", "tuple-choices",
         "list-choices"],
)
def test_arguments_optuna_refuses_are_refused_as_space_errors(call: Any, needle: str) -> None:
    with pytest.raises(SpaceError, match=needle):
        call(RandomTrial(0))
