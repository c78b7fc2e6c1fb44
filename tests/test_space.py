"""The search-space base class, random trials and the space resolver."""

from __future__ import annotations

import math
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conftest import ROOT
from nas.exceptions import SpaceError
from nas.graph import ArchGraph, GraphBuilder
from nas.space import Candidate, RandomTrial, SearchSpace, load_space
from search_spaces import BUILTIN_SPACES, DARTSSpace, NB201Space


class TwoWidths(SearchSpace):
    """Two candidates only: a conv of width 4 or 8."""

    name = "two_widths"

    def build(self, trial: Any) -> ArchGraph:
        b = GraphBuilder(self.input_shape)
        x = b.add("conv", b.input, out_channels=trial.suggest_categorical("width", [4, 8]))
        x = b.add("global_avg_pool", x)
        return b.build(b.add("linear", x, out_features=self.num_classes))


class Raises(SearchSpace):
    def build(self, trial: Any) -> ArchGraph:
        raise KeyError("boom")


class ReturnsDict(SearchSpace):
    def build(self, trial: Any) -> ArchGraph:
        return {"nodes": []}  # type: ignore[return-value]


def tiny_build(trial: Any, space: SearchSpace) -> ArchGraph:
    """A space given as a plain function."""
    b = GraphBuilder(space.input_shape)
    x = b.add("global_avg_pool", b.input)
    x = b.add("linear", x, out_features=trial.suggest_int("hidden", 4, 6))
    return b.build(b.add("linear", x, out_features=space.num_classes))


# --------------------------------------------------------------------------- RandomTrial


def test_random_trial_is_seeded() -> None:
    def draw(seed: int) -> list[Any]:
        t = RandomTrial(seed)
        return [t.suggest_categorical(f"c{i}", ["a", "b", "c"]) for i in range(20)]

    assert draw(3) == draw(3)
    assert draw(3) != draw(4)


def test_random_trial_returns_the_first_answer_and_records_params() -> None:
    t = RandomTrial(np.random.default_rng(0))
    first = t.suggest_int("n", 0, 1000)
    assert t.suggest_int("n", 0, 1000) == first
    assert t.suggest_categorical("op", ["x", "y"]) in ("x", "y")
    assert t.params == {"n": first, "op": t.params["op"]}


def test_random_trial_ranges_and_types() -> None:
    t = RandomTrial(0)
    ints = [t.suggest_int(f"i{k}", 2, 10, step=4) for k in range(200)]
    assert set(ints) == {2, 6, 10}
    logs = [t.suggest_int(f"l{k}", 1, 64, log=True) for k in range(200)]
    assert min(logs) >= 1 and max(logs) <= 64 and len(set(logs)) > 5
    floats = [t.suggest_float(f"f{k}", 0.5, 1.5) for k in range(200)]
    assert all(0.5 <= f <= 1.5 for f in floats)
    logf = [t.suggest_float(f"g{k}", 1e-4, 1e-1, log=True) for k in range(200)]
    assert all(1e-4 <= f <= 1e-1 for f in logf)
    assert np.median(np.log10(logf)) == pytest.approx(-2.5, abs=0.4)  # uniform in log space
    stepped = {t.suggest_float(f"s{k}", 0.0, 1.0, step=0.25) for k in range(200)}
    assert stepped == {0.0, 0.25, 0.5, 0.75, 1.0}
    cat = t.suggest_categorical("np", np.array([1, 2, 3]))
    assert type(cat) is int  # numpy scalars become Python values (JSON-able)


def test_random_trial_errors() -> None:
    t = RandomTrial(0)
    with pytest.raises(SpaceError, match="`choices` of 'x' must not be empty"):
        t.suggest_categorical("x", [])
    with pytest.raises(SpaceError, match="`high` 1 is below `low` 5"):
        t.suggest_int("y", 5, 1)


# --------------------------------------------------------------------------- SearchSpace


def test_sample_returns_candidate_with_params() -> None:
    cand = TwoWidths(input_shape=(1, 8, 8), num_classes=3).sample(0)
    assert isinstance(cand, Candidate)
    assert cand.graph.num_classes == 3
    assert cand.params["width"] in (4, 8)
    assert cand.graph.nodes[1].attrs["out_channels"] == cand.params["width"]


def test_sample_many_is_unique_and_deterministic() -> None:
    space = NB201Space(input_shape=(1, 8, 8))
    a = space.sample_many(30, seed=1)
    keys = [c.graph.key for c in a]
    assert len(set(keys)) == 30
    assert keys == [c.graph.key for c in space.sample_many(30, seed=1)]
    assert keys != [c.graph.key for c in space.sample_many(30, seed=2)]


def test_sample_many_without_unique_can_repeat() -> None:
    space = TwoWidths(input_shape=(1, 8, 8))
    cands = space.sample_many(10, seed=0, unique=False)
    assert len(cands) == 10 and len({c.graph.key for c in cands}) == 2


def test_sample_many_gives_up_when_the_space_is_too_small() -> None:
    with pytest.raises(SpaceError, match="gave only 2 distinct candidates in 150 draws; asked for 3"):
        TwoWidths(input_shape=(1, 8, 8)).sample_many(3, seed=0)
    with pytest.raises(ValueError, match="`n` must be non-negative, but got -1"):
        TwoWidths().sample_many(-1)


def test_from_params_rebuilds_and_names_a_missing_choice() -> None:
    space = TwoWidths(input_shape=(1, 8, 8))
    assert space.from_params({"width": 8}).nodes[1].attrs["out_channels"] == 8
    with pytest.raises(SpaceError, match="`params` lacks a choice of space 'two_widths'"):
        space.from_params({})


def test_build_raising_becomes_space_error() -> None:
    with pytest.raises(SpaceError, match="build\\(\\) raised KeyError: 'boom'") as info:
        Raises().sample(0)
    assert isinstance(info.value.__cause__, KeyError)


def test_build_returning_a_non_graph_is_refused() -> None:
    with pytest.raises(SpaceError, match="build\\(\\) must return an ArchGraph, but returned dict"):
        ReturnsDict().sample(0)


def test_describe_and_settings() -> None:
    space = DARTSSpace(input_shape=(3, 32, 32), num_classes=100, C=4, layers=5)
    assert space.describe() == {
        "space": "darts",
        "input_shape": [3, 32, 32],
        "num_classes": 100,
        "settings": {"C": 4, "layers": 5},
    }
    assert repr(space) == "DARTSSpace(C=4, layers=5)"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"input_shape": (8, 8)}, "`input_shape` must be (C, H, W)"),
        ({"num_classes": 1}, "`num_classes` must be at least 2, but got 1"),
    ],
)
def test_base_class_checks_its_arguments(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", "\\(").replace(")", "\\)")):
        TwoWidths(**kwargs)


# --------------------------------------------------------------------------- load_space


@pytest.mark.parametrize("name", sorted(BUILTIN_SPACES))
def test_load_space_by_builtin_name(name: str) -> None:
    space = load_space(name, input_shape=(1, 8, 8), num_classes=4)
    assert type(space) is BUILTIN_SPACES[name]
    assert space.name == name
    assert space.input_shape == (1, 8, 8) and space.num_classes == 4


def test_load_space_passes_settings() -> None:
    space = load_space("nb201", C=4, N=2)
    assert space.settings == {"C": 4, "N": 2}
    assert space.sample(0).graph.nodes[1].attrs["out_channels"] == 4


def test_load_space_by_module_attr() -> None:
    space = load_space("search_spaces.nb201:NB201Space", input_shape=(1, 8, 8))
    assert isinstance(space, NB201Space)
    fn_space = load_space(f"{__name__}:tiny_build", input_shape=(1, 8, 8), num_classes=3)  # this module
    assert fn_space.name == "tiny_build"
    assert fn_space.sample(0).params["hidden"] in (4, 5, 6)


def test_load_space_by_file_path() -> None:
    space = load_space(f"{ROOT / 'examples' / 'my_space.py'}:MySpace", input_shape=(1, 8, 8), max_depth=1)
    assert space.name == "my_space"
    assert space.sample(0).params["depth"] == 1


def test_load_space_from_a_file_holding_a_function_and_an_instance(tmp_path: Path) -> None:
    path = tmp_path / "spaces.py"
    path.write_text(
        textwrap.dedent(
            """
            from nas.graph import GraphBuilder
            from search_spaces import NB201Space

            nb = NB201Space(C=4)

            def build(trial, space):
                b = GraphBuilder(space.input_shape)
                x = b.add("global_avg_pool", b.input)
                return b.build(b.add("linear", x, out_features=space.num_classes))
            """
        )
    )
    fn_space = load_space(f"{path}:build", input_shape=(3, 4, 4), num_classes=2)
    assert fn_space.sample(0).graph.input_shape == (3, 4, 4)
    inst = load_space(f"{path}:nb", input_shape=(1, 8, 8), num_classes=5)
    assert isinstance(inst, NB201Space) and inst.C == 4 and inst.num_classes == 5


def test_load_space_passes_instances_and_classes_through() -> None:
    space = TwoWidths()
    assert load_space(space) is space
    assert isinstance(load_space(TwoWidths, input_shape=(1, 8, 8)), TwoWidths)


def test_unknown_name_lists_the_builtins() -> None:
    with pytest.raises(SpaceError, match="unknown search space 'nb2001'; built-in spaces: darts, macro, nb201"):
        load_space("nb2001")


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("no/such/file.py:Space", "space file 'no/such/file.py' does not exist"),
        ("search_spaces.nb201:NoSuch", "space 'search_spaces.nb201' has no attribute 'NoSuch'"),
        ("no_such_module_xyz:Space", "space module 'no_such_module_xyz' cannot be imported"),
        ("search_spaces.nb201:NB201_OPS", "is a tuple, not a SearchSpace subclass, instance or function"),
        ("search_spaces:", "must be a built-in name, 'module:attr' or 'path/to/file.py:attr'"),
    ],
)
def test_load_space_errors(spec: str, message: str) -> None:
    with pytest.raises(SpaceError, match=message.replace(".", "\\.")):
        load_space(spec)


def test_missing_attribute_in_a_file(tmp_path: Path) -> None:
    path = tmp_path / "empty_space.py"
    path.write_text("x = 1\n")
    with pytest.raises(SpaceError, match="has no attribute 'Space'"):
        load_space(f"{path}:Space")


def test_file_that_fails_to_import(tmp_path: Path) -> None:
    path = tmp_path / "broken_space.py"
    path.write_text("raise RuntimeError('bad file')\n")
    with pytest.raises(SpaceError, match="raised RuntimeError: bad file"):
        load_space(f"{path}:Space")


def test_rejected_settings_are_a_space_error() -> None:
    with pytest.raises(SpaceError, match="NB201Space rejects its settings: .*unexpected keyword argument 'depth'"):
        load_space("nb201", depth=3)


def test_builtin_size_is_the_product_of_choices() -> None:
    assert NB201Space().size() == 5**6
    assert DARTSSpace().size() == (math.prod((k + 2) * (k + 1) // 2 * 7**2 for k in range(4))) ** 2
