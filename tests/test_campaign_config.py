"""Tests of :class:`nas.campaign.CampaignConfig`: every setting round-trips through TOML, flags and storage."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from nas.campaign import Campaign, CampaignConfig, setting_names, stored_campaign_config
from nas.cli import main

#: A value other than the default for every setting (a new setting must be added here).
CHANGED: dict[str, Any] = {
    "space": "darts",
    "space_args": {"C": 4, "widths": [8, 16]},
    "dataset": "digits",
    "data_seed": 3,
    "ghn": "g.pt",
    "ghn_steps": 7,
    "rank_by": "ranker",
    "ranker": ["a.pt", "b.pt"],
    "ranker_labels": 9,
    "ranker_k": 5,
    "label_batch": 3,
    "label_margin": 0.05,
    "label_seconds": 60.0,
    "label_workers": 2,
    "queue_labels": True,
    "trials": 11,
    "refine": 2,
    "refine_trials": 13,
    "sampler": "random",
    "objectives": "loss,params",
    "latency_pool": 9,
    "latency_batch_size": 8,
    "batch_size": 7,
    "self_check": 4,
    "self_check_epochs": 0.5,
    "top_k": 3,
    "finetune_epochs": 0.25,
    "finetune_lr": 0.02,
    "finetune_batch_size": 16,
    "finetune_metric": "loss",
    "pick": "finetuned",
    "storage": "sqlite:///x.db",
    "study": "s1",
    "heartbeat_interval": 5,
    "grace_period": 50,
    "out": "runs/x",
    "seed": 4,
    "device": "cuda",
    "progress": False,
}

#: The defaults the campaign had before CampaignConfig (Campaign.__init__'s keyword defaults and
#: `nas search`'s flags): `nas demo` must rank and pick the same
#: (the latency settings came later and act only with `objectives="loss,latency"`; `rank_by` became
#: ``None``, resolved by the trial count, with round 3 of the ranking suite; the ranker's labels are bought
#: in purchases since the few-label study, ``label_*``).
OLD_DEFAULTS: dict[str, Any] = {
    "space": "nb201", "space_args": {}, "dataset": "mnist5k", "data_seed": 0, "ghn": None, "ghn_steps": None,
    "rank_by": None, "ranker": None, "ranker_labels": 700, "ranker_k": 30, "label_workers": 1, "queue_labels": False,
    "label_batch": None, "label_margin": 0.02, "label_seconds": None, "trials": 300,
    "refine": None, "refine_trials": None, "sampler": "tpe", "objectives": "loss", "latency_pool": 32,
    "latency_batch_size": 1, "batch_size": 32,
    "self_check": 0, "self_check_epochs": None, "top_k": 5, "finetune_epochs": 3.0, "finetune_lr": 0.05,
    "finetune_batch_size": 64, "finetune_metric": "acc", "pick": None, "storage": None, "study": None,
    "heartbeat_interval": 30, "grace_period": 120, "out": "runs/campaign", "seed": 0, "device": "cpu",
    "progress": True,
}


def _argv(values: dict[str, Any]) -> list[str]:
    """The `nas search` flags that set ``values``."""
    argv: list[str] = []
    for name, value in values.items():
        if name == "space_args":
            argv += [item for k, v in value.items() for item in ("--space-arg", f"{k}={v!r}")]
        elif name == "progress":
            argv += [] if value else ["--no-progress"]
        elif isinstance(value, bool):  # an off-by-default switch
            argv += [f"--{name.replace('_', '-')}"] if value else []
        elif isinstance(value, list):
            argv += [item for v in value for item in (f"--{name.replace('_', '-')}", str(v))]
        else:
            argv += [f"--{name.replace('_', '-')}", str(value)]
    return argv


def _print_config(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    assert main(["search", *argv, "--print-config"]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    return out


def test_changed_values_cover_every_setting_and_differ_from_the_defaults() -> None:
    assert list(CHANGED) == list(setting_names())
    default = CampaignConfig()
    assert [name for name, value in CHANGED.items() if getattr(default, name) == value] == []


def test_every_setting_round_trips_through_dict_and_toml() -> None:
    config = CampaignConfig(**CHANGED)
    assert config.to_dict() == {k: (list(v) if isinstance(v, tuple) else v) for k, v in CHANGED.items()}
    assert CampaignConfig.from_dict(config.to_dict()) == config
    assert CampaignConfig.from_toml(config.to_toml()) == config
    assert CampaignConfig.from_toml(CampaignConfig().to_toml()) == CampaignConfig()


def test_every_setting_round_trips_through_the_flags(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    text = _print_config(_argv(CHANGED), capsys)
    assert CampaignConfig.from_toml(text) == CampaignConfig(**CHANGED)
    path = tmp_path / "c.toml"
    path.write_text(text)
    assert _print_config(["--config", str(path)], capsys) == text  # print-config > c.toml; --config c.toml
    # Flags override the file, one setting at a time; the others keep the file's values.
    again = CampaignConfig.from_toml(_print_config(["--config", str(path), "--trials", "99"], capsys))
    assert again == CampaignConfig(**CHANGED).replace(trials=99)
    loss = CampaignConfig.from_toml(_print_config(["--rank-by", "loss"], capsys))
    assert loss == CampaignConfig(rank_by="loss")


def test_default_print_config_is_the_default_configuration(capsys: pytest.CaptureFixture[str]) -> None:
    assert CampaignConfig.from_toml(_print_config([], capsys)) == CampaignConfig()


def _stored_values(tmp_path: Path) -> dict[str, Any]:
    """:data:`CHANGED` with a real space, device, storage and paths under ``tmp_path``: a campaign that opens."""
    return {**CHANGED, "space": "nb201", "space_args": {"C": 4}, "device": "cpu",
            "storage": f"sqlite:///{tmp_path / 'c.db'}", "out": str(tmp_path / "run"), "ghn": str(tmp_path / "g.pt"),
            "ranker": [str(tmp_path / "a.pt"), str(tmp_path / "b.pt")]}


def test_every_setting_round_trips_through_the_storage(tmp_path: Path) -> None:
    values = _stored_values(tmp_path)
    campaign = Campaign(CampaignConfig(**values))
    assert campaign.config == CampaignConfig(**values)  # nothing left to resolve: every setting is given
    settings = campaign.settings()
    assert stored_campaign_config(settings) == campaign.stored_config() == campaign.config
    campaign.open()
    worker = Campaign.from_storage(values["storage"], "s1", progress=False)
    assert worker.config == campaign.config


def test_defaults_are_the_old_campaign_defaults() -> None:
    assert CampaignConfig().to_dict() == OLD_DEFAULTS


def test_resolved_defaults_depend_on_the_ranking_as_before() -> None:
    ranker = CampaignConfig(rank_by="ranker").resolved()
    assert (ranker.refine, ranker.refine_trials, ranker.self_check_epochs, ranker.pick) == (5, 300, 3.0, "rank")
    loss = CampaignConfig(rank_by="loss", objectives="loss,flops").resolved()
    assert (loss.refine, loss.pick) == (0, "finetuned")
    assert CampaignConfig(objectives="loss,params").resolved().pick == "finetuned"


@pytest.mark.parametrize(
    "values, rank_by",
    [
        ({}, "short"),  # 300 trials cost less to train briefly than 700 labels
        ({"trials": 700}, "short"),
        ({"trials": 701}, "ranker"),
        ({"trials": 50, "ranker_labels": 40}, "ranker"),
        ({"trials": 10, "ranker": "r.pt"}, "ranker"),  # a fitted ranker costs nothing more
        ({"trials": 5000, "rank_by": "short"}, "short"),
        ({"rank_by": "loss"}, "loss"),
    ],
)
def test_rank_by_defaults_to_short_training_when_it_costs_no_more_than_the_labels(
    values: dict[str, Any], rank_by: str
) -> None:
    config = CampaignConfig(**values)
    assert config.rank_by == values.get("rank_by")
    resolved = config.resolved()
    assert resolved.rank_by == rank_by
    assert resolved.refine == (5 if rank_by == "ranker" else 0)  # one-choice refinement only where scores are free
    assert resolved.pick == ("finetuned" if rank_by == "loss" else "rank")
    assert resolved.resolved() == resolved


def test_short_training_keeps_its_steps_in_the_identity_and_drops_the_labels() -> None:
    short = CampaignConfig(rank_by="short").identity()
    assert short["ranker_k"] == 30 and short["ranker_labels"] is None
    assert CampaignConfig(rank_by="loss").identity()["ranker_k"] is None


def test_demo_settings_are_unchanged() -> None:
    from nas.cli.search import DEMO
    from nas.ghn import MetaTrainConfig

    demo = CampaignConfig(**DEMO).resolved()
    old = {  # nas demo before CampaignConfig: its DEMO dict over Campaign's defaults
        **OLD_DEFAULTS, "trials": 300, "top_k": 3, "finetune_epochs": 2.0, "self_check": 8, "self_check_epochs": 1.0,
        "batch_size": 50, "ranker_labels": 700, "ranker_k": 30, "label_workers": 2, "ghn_steps": 400,
        "out": "runs/demo", "refine": 3, "refine_trials": 300, "pick": "rank", "rank_by": "ranker",
    }
    assert demo.to_dict() == old
    default = MetaTrainConfig()
    campaign = Campaign(demo)
    assert campaign._meta_train() == MetaTrainConfig(
        steps=400, device="cpu", warmup_steps=min(default.warmup_steps, 400), eval_every=min(default.eval_every, 400)
    )


@pytest.mark.parametrize(
    "values, fragment",
    [
        ({"trials": 0}, "`trials` must be positive, but got 0."),
        ({"finetune_lr": float("nan")}, "`finetune_lr` must be positive, but got nan."),
        ({"objectives": "acc"}, "`objectives` must be one of loss, loss,params, loss,flops, loss,latency, but got 'acc'."),
        ({"grace_period": 30}, "`grace_period` (30) must exceed `heartbeat_interval` (30)."),
        ({"space_args": ["C=4"]}, "`space_args` must be a dict of settings by name, but got ['C=4']."),
        ({"progress": "yes"}, "`progress` must be true or false, but got 'yes'."),
        ({"rerank": "grad_norm"}, "unknown campaign setting 'rerank'"),
    ],
)
def test_bad_settings_name_the_setting_and_the_value(values: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ValueError) as err:
        CampaignConfig.from_dict(values)
    assert fragment in str(err.value)


def test_a_bad_toml_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("trials = 0\n")
    with pytest.raises(ValueError, match=r"c\.toml'.*`trials` must be positive"):
        CampaignConfig.read(path)
    path.write_text("trials = \n")
    with pytest.raises(ValueError, match="not valid TOML"):
        CampaignConfig.read(path)


def test_identity_settings_are_marked_on_the_fields() -> None:
    from nas.campaign import IDENTITY_KEYS

    marked = tuple(f.name for f in dataclasses.fields(CampaignConfig) if f.metadata["identity"])
    assert IDENTITY_KEYS == marked
    assert {"dataset", "rank_by", "objectives", "finetune_epochs"} <= set(IDENTITY_KEYS)
    assert not {"trials", "top_k", "label_workers", "device", "out"} & set(IDENTITY_KEYS)
    assert CampaignConfig(rank_by="loss").identity()["ranker_labels"] is None  # labels matter to the ranker only


def test_a_removed_setting_stored_by_an_older_version_is_dropped_on_read(tmp_path: Path) -> None:
    """Older versions stored ``ranker_calibration``: their campaigns and config files still read."""
    from nas.campaign._campaign import _FORMAT
    from nas.campaign._config import REMOVED_SETTINGS

    assert set(REMOVED_SETTINGS) == {"ranker_calibration"}
    assert not set(REMOVED_SETTINGS) & set(setting_names())
    config = CampaignConfig(**{**CHANGED, "rank_by": "ranker"})
    for value in (0, 20):
        old = {**config.to_dict(), "ranker_calibration": value}
        assert CampaignConfig.from_dict(old) == config
        assert stored_campaign_config({"format": _FORMAT, "config": old}) == config
        assert "ranker_calibration" not in CampaignConfig.from_dict(old).identity()
    assert CampaignConfig.from_toml("ranker_calibration = 20\ntrials = 7\n") == CampaignConfig(trials=7)
    # Only reading drops it: as a setting it is unknown.
    with pytest.raises(ValueError, match="unknown campaign setting 'ranker_calibration'"):
        CampaignConfig().replace(ranker_calibration=20)
    with pytest.raises(TypeError, match="ranker_calibration"):
        CampaignConfig(ranker_calibration=20)  # type: ignore[call-arg]


def test_a_campaign_stored_with_a_removed_setting_can_be_joined_and_worked_on(tmp_path: Path) -> None:
    import optuna

    from nas.campaign import CAMPAIGN_ATTR

    values = _stored_values(tmp_path)
    campaign = Campaign(CampaignConfig(**values))
    rank, _ = campaign.open()
    stored = rank.user_attrs[CAMPAIGN_ATTR]
    assert "ranker_calibration" not in stored["config"]
    # As an older version stored it: the ranker's prior weight chosen on 20 trained architectures.
    rank.set_user_attr(CAMPAIGN_ATTR, {**stored, "config": {**stored["config"], "ranker_calibration": 20}})
    Campaign(CampaignConfig(**values)).open()  # joins: the identity check reads the stored settings
    held = optuna.load_study(study_name="s1-rank", storage=values["storage"]).user_attrs[CAMPAIGN_ATTR]
    assert held["config"]["ranker_calibration"] == 20  # still there for the worker to read
    worker = Campaign.from_storage(values["storage"], "s1", progress=False)  # what `nas worker` does
    assert worker.config == campaign.config

