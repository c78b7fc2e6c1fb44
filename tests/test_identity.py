"""Checkpoint identity (nas/ghn/_identity.py): what a GHN or ranker was built for, checked on load."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from nas.data import load_dataset
from nas.exceptions import CheckpointError
from nas.ghn import GHN, GHNConfig, IDENTITY_KEYS, RankerConfig, check_identity, ensure_ranker, identity
from nas.space import load_space

DIGITS = load_dataset("digits", seed=0)


def _space(**settings: int):  # noqa: ANN202
    return load_space("nb201", input_shape=(1, 8, 8), num_classes=10, **{"C": 4, **settings})


def test_identity_names_the_space_its_settings_the_dataset_and_its_split() -> None:
    info = identity(_space(), load_dataset("digits", seed=3))
    assert set(info) == set(IDENTITY_KEYS)
    assert info["space"] == "nb201" and info["settings"] == {"C": 4, "N": 1}
    assert info["dataset"] == "digits" and info["data_seed"] == 3


@pytest.mark.parametrize(
    ("change", "needle"),
    [({"settings": {"C": 8, "N": 1}}, r"settings \{'C': 8, 'N': 1\}, but this run uses settings \{'C': 4, 'N': 1\}"),
     ({"space": "darts"}, "space 'darts', but this run uses space 'nb201'"),
     ({"dataset": "mnist5k"}, "dataset 'mnist5k', but this run uses dataset 'digits'"),
     ({"data_seed": 1}, "data_seed 1, but this run uses data_seed 0"),
     ({"input_shape": (1, 28, 28)}, r"input_shape \[1, 28, 28\]")],
    ids=["settings", "space", "dataset", "split", "input-shape"],
)
def test_any_difference_is_refused_naming_both_sides(change: dict, needle: str) -> None:
    info = {**identity(_space(), DIGITS), **change}
    with pytest.raises(CheckpointError, match=f"GHN checkpoint 'g.pt' was built for {needle}"):
        check_identity(info, _space(), DIGITS, where="GHN checkpoint 'g.pt'")


def test_same_identity_passes_and_tuples_equal_lists() -> None:
    info = identity(_space(), DIGITS)
    info["input_shape"] = tuple(info["input_shape"])
    check_identity(info, _space(), DIGITS, where="x")
    check_identity({**info, "dataset": "other"}, _space(), None, where="x")  # no dataset: dataset not checked


def test_an_older_checkpoint_loads_with_a_warning_naming_what_was_not_checked(caplog: pytest.LogCaptureFixture) -> None:
    info = identity(_space(), DIGITS)
    del info["data_seed"], info["settings"]
    with caplog.at_level(logging.WARNING):
        check_identity(info, _space(), DIGITS, where="GHN checkpoint 'old.pt'")
    assert "GHN checkpoint 'old.pt' predates stored settings, data_seed" in caplog.text


def test_ensure_ranker_refuses_a_ranker_of_other_settings_and_leaves_it_as_it_is(tmp_path: Path) -> None:
    path = tmp_path / "ranker.pt"
    config = RankerConfig(epochs=1, ensemble=1, pretrained=False)
    ghn = GHN(GHNConfig(hidden=8, layers=1), space_info=identity(_space(), DIGITS))
    ensure_ranker(_space(), DIGITS, ghn, path=path, ranker_labels=4, ranker_k=1, config=config, progress=False)
    before = path.read_bytes()
    with pytest.raises(CheckpointError, match=r"ranker checkpoint .* was built for settings \{'C': 4"):
        ensure_ranker(_space(C=8), DIGITS, None, path=path, ranker_labels=4, ranker_k=1, config=config,
                      progress=False)
    assert path.read_bytes() == before
    payload = torch.load(path, weights_only=True)
    assert payload["space_info"]["data_seed"] == 0
