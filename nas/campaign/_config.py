"""The settings of a search campaign: one dataclass, read by the CLI, the Python API and a resumed run.

:class:`CampaignConfig` owns every setting of a :class:`~nas.campaign.Campaign`:
its default, its validation, its documentation (the ``help`` that ``nas search
--help`` shows), its command-line group, and whether it belongs to the
campaign's identity (settings that must agree for a process to join a stored
campaign). It serialises to a dict (:meth:`CampaignConfig.to_dict`) and to TOML
(:meth:`CampaignConfig.to_toml`, :meth:`CampaignConfig.from_toml`): ``nas
search --print-config`` writes the file that ``nas search --config`` reads.

Examples:
    >>> config = CampaignConfig(trials=100, top_k=3)
    >>> CampaignConfig.from_toml(config.to_toml()) == config
    True
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nas.campaign._finetune import FINETUNE_METRICS
from nas.campaign._rank import OBJECTIVES, RANK_BY, SAMPLERS, resolve_objectives, resolve_rank_by
from nas.campaign._report import PICKS
from nas.training import check_non_negative, check_seed

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

__all__ = ["CampaignConfig", "GROUPS", "IDENTITY_KEYS", "MIN_RANKER_LABELS", "REMOVED_SETTINGS", "setting_names"]

#: Command-line groups of the settings, in the order ``nas search --help`` shows them.
GROUPS: dict[str, str] = {
    "space and data": "the search space and the dataset",
    "ranking": "stage 1: score candidates without training them",
    "fine-tuning": "stage 2: fine-tune the best candidates from their predicted weights",
    "storage and workers": "where the campaign is stored, and how workers share it",
    "output": "the output folder and the process",
}

#: Fewest labelled architectures :func:`nas.ghn.fit_ranker` accepts.
MIN_RANKER_LABELS = 4


def _setting(
    default: Any,
    help: str,  # noqa: A002 - the argparse name
    group: str,
    *,
    metavar: str | None = None,
    identity: bool = False,
    choices: Mapping[str, str] | None = None,
    factory: Any = None,
) -> Any:
    metadata = {"help": help, "group": group, "metavar": metavar, "identity": identity, "choices": choices}
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass(frozen=True)
class CampaignConfig:
    """Every setting of a search campaign, validated on construction.

    The dataclass is frozen: derive a changed copy with :meth:`replace`. A
    ``None`` marks a setting whose default depends on others; :meth:`resolved`
    fills those in. The fields' ``metadata`` hold their help text and
    command-line group, from which ``nas search`` builds its flags
    (``trials`` -> ``--trials``).

    Attributes:
        space: A built-in space name (``"nb201"``), ``"module:attr"`` or
            ``"path/file.py:attr"``.
        space_args: Settings of the search space (``{"C": 16}``).
        dataset: A dataset name of :func:`nas.data.load_dataset`.
        data_seed: Seed of the dataset split (must match the GHN's meta-training split).
        ghn: Path of a GHN checkpoint; ``None`` meta-trains the default recipe
            into ``<out>/ghn.pt`` (reused when there).
        ghn_steps: Meta-training steps of that GHN (``None``: the recipe's).
        rank_by: What scores a candidate in stage 1 (:data:`~nas.campaign.RANK_BY`;
            ``None``: ``"short"`` when ``trials`` <= ``ranker_labels`` and no ``ranker`` is given,
            else ``"ranker"``; see :meth:`resolved`).
        ranker: Path of a ranker checkpoint, a list of them (ranked by their
            mean), or ``None`` to fit one into ``<out>/ranker.pt``.
        ranker_labels: The most architectures trained briefly to fit that ranker (at least 4).
        ranker_k: SGD steps of each of those short trainings (and of each candidate's
            with ``rank_by="short"``).
        label_batch: Labels bought per purchase, the ranker refitted after each;
            ``None`` (the default) buys all ``ranker_labels`` at once.
        label_margin: Buying stops when a purchase lifts the ranker's cross-validated
            Kendall tau by less than this.
        label_seconds: CPU-seconds of labels after which no more are bought (``None``: no limit).
        label_workers: Processes running those short trainings (or the candidates') in parallel.
        queue_labels: Queue the labels in the campaign's storage (study
            ``<study>-labels``), so ``nas worker`` processes on any machine label
            too; ``label_workers`` then does not apply.
        trials: Complete rank trials the study must hold (sampler trials).
        refine: Best candidates whose one-choice changes are scored until they
            stop changing (``None``: ``top_k`` when ranking by the ranker, else 0).
        refine_trials: Most refinement trials (``None``: ``trials``).
        sampler: ``"tpe"``, ``"random"``, ``"gp"`` or ``"nsga2"``.
        objectives: ``"loss"``, ``"loss,params"``, ``"loss,flops"`` or ``"loss,latency"``
            (the study searches on FLOPs; latency is measured for the ``latency_pool``
            best candidates by rank score and the FLOPs front, and the Pareto front
            of rank score and measured latency is fine-tuned first).
        latency_pool: Candidates (best by rank score, plus the rank study's
            Pareto front) whose latency ``loss,latency`` measures.
        latency_batch_size: Images per forward pass when measuring latency.
        batch_size: Candidates scored together in one ranker (or GHN) forward pass.
        self_check: Random candidates trained from scratch to check the ranking
            (0 = none, else at least 3).
        self_check_epochs: Their training epochs (``None``: ``finetune_epochs``).
        top_k: Distinct candidates to fine-tune.
        finetune_epochs: Fine-tuning epochs per candidate (may be fractional).
        finetune_lr: Peak learning rate of fine-tuning.
        finetune_batch_size: Images per fine-tuning step.
        finetune_metric: ``"acc"`` (maximise validation accuracy) or ``"loss"``.
        pick: What the campaign reports as its best (:data:`~nas.campaign.PICKS`;
            ``None``: ``"rank"`` when ranking by the ranker on one objective,
            else ``"finetuned"``).
        storage: Optuna storage URL (``None``: ``sqlite:///<out>/campaign.db``).
        study: Campaign name (``None``: ``<space>-<dataset>``).
        heartbeat_interval: Seconds between heartbeats of running trials.
        grace_period: Seconds without heartbeat after which a worker counts as
            dead (must exceed ``heartbeat_interval``).
        out: Output folder (tables, plots, best architecture, default storage).
        seed: Seed of the sampler, the ranker's labels, fine-tuning and the self-check.
        device: ``"cpu"`` or ``"cuda"``.
        progress: Show progress bars.

    Raises:
        ValueError: A setting is out of range; the message names it and shows the value.
    """

    # ---- space and data
    space: str = _setting("nb201", "built-in space, 'module:attr' or 'file.py:attr'", "space and data",
                          metavar="SPACE")
    space_args: dict[str, Any] = _setting(None, "a setting of the space, KEY=VALUE (repeatable), e.g. C=16",
                                          "space and data", metavar="KEY=VALUE", factory=dict)
    dataset: str = _setting("mnist5k", "digits, mnist5k, mnist:PATH or cifar10:PATH", "space and data",
                            metavar="NAME", identity=True)
    data_seed: int = _setting(0, "seed of the dataset split (must match the GHN's)", "space and data",
                              metavar="S", identity=True)
    # ---- ranking
    ghn: str | None = _setting(None, "GHN checkpoint (default: meta-train one into OUT/ghn.pt)", "ranking",
                               metavar="PATH")
    ghn_steps: int | None = _setting(None, "meta-training steps of the GHN trained when --ghn is not given "
                                     "(default: the recipe's)", "ranking", metavar="N")
    rank_by: str | None = _setting(None, "what scores a candidate in stage 1 (default: short when --trials is at "
                                   "most --ranker-labels and no --ranker is given, else ranker)", "ranking",
                                   identity=True, choices=RANK_BY)
    ranker: str | list[str] | None = _setting(
        None, "ranker checkpoint (default: fit one into OUT/ranker.pt; with --rank-by ranker only); repeat it to "
        "rank by the mean of several rankers", "ranking", metavar="PATH")
    ranker_labels: int = _setting(700, "architectures trained briefly to fit the ranker when --ranker is not "
                                  "given", "ranking", metavar="N", identity=True)
    ranker_k: int = _setting(30, "SGD steps of each of those short trainings (and of each candidate's with "
                             "--rank-by short)", "ranking", metavar="K", identity=True)
    label_batch: int | None = _setting(None, "buy the ranker's labels N at a time, refitting it after each purchase, "
                                       "until --label-margin / --label-seconds stop it (default: all at once)",
                                       "ranking", metavar="N")
    label_margin: float = _setting(0.02, "stop buying labels when a purchase lifts the ranker's cross-validated "
                                   "Kendall tau by less than this", "ranking", metavar="M")
    label_seconds: float | None = _setting(None, "stop buying labels once they have cost this many CPU-seconds "
                                           "(default: no limit)", "ranking", metavar="S")
    label_workers: int = _setting(1, "processes running those short trainings (or the candidates') in parallel",
                                  "ranking", metavar="W")
    queue_labels: bool = _setting(False, "queue the ranker's labels in the storage (study STUDY-labels) so that "
                                  "`nas worker` processes on any machine label too (--label-workers then does not "
                                  "apply)", "ranking")
    trials: int = _setting(300, "rank trials", "ranking", metavar="N")
    refine: int | None = _setting(
        None, "after the rank trials, score every one-choice change of the R best candidates until they stop "
        "changing (default: --top-k when ranking by the ranker, 0 (off) with --rank-by short or loss)", "ranking",
        metavar="R")
    refine_trials: int | None = _setting(None, "most refinement trials (default: --trials)", "ranking",
                                         metavar="N")
    sampler: str = _setting("tpe", "Optuna sampler of the rank study", "ranking",
                            choices={name: name for name in SAMPLERS})
    objectives: str = _setting("loss", "objectives of the rank study, each minimised", "ranking", identity=True,
                               choices={name: name for name in OBJECTIVES})
    latency_pool: int = _setting(32, "with --objectives loss,latency: candidates whose latency is measured (best "
                                 "by rank score, plus the FLOPs front)", "ranking", metavar="N")
    latency_batch_size: int = _setting(1, "images per forward pass when measuring latency", "ranking", metavar="B")
    batch_size: int = _setting(32, "candidates scored together, in one ranker (or GHN) forward pass", "ranking",
                               metavar="B")
    self_check: int = _setting(0, "train N random candidates to check the stage-1 ranking (0 = none, else at "
                               "least 3)", "ranking", metavar="N")
    self_check_epochs: float | None = _setting(None, "their epochs (default: --finetune-epochs)", "ranking",
                                               metavar="E")
    # ---- fine-tuning
    top_k: int = _setting(5, "candidates to fine-tune", "fine-tuning", metavar="K")
    finetune_epochs: float = _setting(3.0, "fine-tuning epochs", "fine-tuning", metavar="E", identity=True)
    finetune_lr: float = _setting(0.05, "fine-tuning peak learning rate (0.02 suits fine-tunes of about 1 "
                                  "epoch)", "fine-tuning", metavar="LR", identity=True)
    finetune_batch_size: int = _setting(64, "images per fine-tuning step", "fine-tuning", metavar="B",
                                        identity=True)
    finetune_metric: str = _setting("acc", "fine-tune trial value", "fine-tuning", identity=True,
                                    choices={name: name for name in FINETUNE_METRICS})
    pick: str | None = _setting(None, "what best.json reports (default: rank with the ranker or short training "
                                "on one objective, else finetuned)", "fine-tuning", choices=PICKS)
    # ---- storage and workers
    storage: str | None = _setting(None, "Optuna storage URL (default $NAS_STORAGE, else sqlite:///OUT/campaign.db)",
                                   "storage and workers", metavar="URL")
    study: str | None = _setting(None, "campaign name (default SPACE-DATASET)", "storage and workers",
                                 metavar="NAME")
    heartbeat_interval: int = _setting(30, "seconds between heartbeats of running trials", "storage and workers",
                                       metavar="S")
    grace_period: int = _setting(120, "seconds without heartbeat after which a worker counts as dead",
                                 "storage and workers", metavar="S")
    # ---- output
    out: str = _setting("runs/campaign", "output folder (tables, plots, best architecture, default storage)",
                        "output", metavar="DIR")
    seed: int = _setting(0, "seed of the sampler, the ranker's labels, fine-tuning and the self-check", "output",
                         metavar="S")
    device: str = _setting("cpu", "cpu or cuda", "output", metavar="DEVICE")
    progress: bool = _setting(True, "show progress bars", "output")

    def __post_init__(self) -> None:
        set_ = object.__setattr__  # frozen: normalise in place once
        _string("space", self.space)
        if not isinstance(self.space_args, Mapping) or not all(isinstance(k, str) for k in self.space_args):
            raise ValueError(f"`space_args` must be a dict of settings by name, but got {self.space_args!r}.")
        set_(self, "space_args", dict(self.space_args))
        _string("dataset", self.dataset)
        check_seed("data_seed", self.data_seed)
        _optional_path("ghn", self.ghn)
        if self.ghn is not None:
            set_(self, "ghn", str(self.ghn))
        if self.ghn_steps is not None:
            _positive_int("ghn_steps", self.ghn_steps)
        if self.rank_by is not None:
            set_(self, "rank_by", resolve_rank_by(self.rank_by))
        if self.ranker is not None:
            if self.rank_by not in (None, "ranker"):
                raise ValueError(
                    f"`ranker` is used only when `rank_by` is 'ranker', but `rank_by` is {self.rank_by!r}."
                )
            several = isinstance(self.ranker, (list, tuple))
            paths = list(self.ranker) if several else [self.ranker]
            if not paths or not all(isinstance(p, (str, Path)) and str(p).strip() for p in paths):
                raise ValueError(
                    "`ranker` must be the path of a ranker checkpoint, a list of them or None, "
                    f"but got {self.ranker!r}."
                )
            set_(self, "ranker", [str(p) for p in paths] if several else str(paths[0]))
        if _int("ranker_labels", self.ranker_labels) < MIN_RANKER_LABELS:
            raise ValueError(
                f"`ranker_labels` must be an int of at least {MIN_RANKER_LABELS}, but got {self.ranker_labels!r}."
            )
        _positive_int("ranker_k", self.ranker_k)
        if self.label_batch == 0:
            set_(self, "label_batch", None)
        if self.label_batch is not None:
            _positive_int("label_batch", self.label_batch)
        for name in ("label_margin", "label_seconds"):
            if getattr(self, name) is not None:
                check_non_negative(name, getattr(self, name))
        _positive_int("label_workers", self.label_workers)
        if not isinstance(self.queue_labels, bool):
            raise ValueError(f"`queue_labels` must be true or false, but got {self.queue_labels!r}.")

        _positive_int("trials", self.trials)
        if self.refine is not None and _int("refine", self.refine) < 0:
            raise ValueError(f"`refine` must be a non-negative int, but got {self.refine!r}.")
        if self.refine_trials is not None:
            _positive_int("refine_trials", self.refine_trials)
        if not isinstance(self.sampler, str) or self.sampler.strip().lower() not in SAMPLERS:
            raise ValueError(f"`sampler` must be one of {', '.join(SAMPLERS)}, but got {self.sampler!r}.")
        set_(self, "sampler", self.sampler.strip().lower())
        resolve_objectives(self.objectives)
        text = self.objectives if isinstance(self.objectives, str) else ",".join(map(str, self.objectives))
        set_(self, "objectives", ",".join(part.strip().lower() for part in text.split(",")))
        _positive_int("batch_size", self.batch_size)
        _positive_int("latency_pool", self.latency_pool)
        _positive_int("latency_batch_size", self.latency_batch_size)
        if _int("self_check", self.self_check) < 0 or 0 < self.self_check < 3:
            raise ValueError(f"`self_check` must be 0 or an int of at least 3, but got {self.self_check!r}.")
        if self.self_check_epochs is not None:
            set_(self, "self_check_epochs", _positive_float("self_check_epochs", self.self_check_epochs))
        _positive_int("top_k", self.top_k)
        set_(self, "finetune_epochs", _positive_float("finetune_epochs", self.finetune_epochs))
        set_(self, "finetune_lr", _positive_float("finetune_lr", self.finetune_lr))
        _positive_int("finetune_batch_size", self.finetune_batch_size)
        if self.finetune_metric not in FINETUNE_METRICS:
            raise ValueError(
                f"`finetune_metric` must be one of {', '.join(FINETUNE_METRICS)}, but got {self.finetune_metric!r}."
            )
        if self.pick is not None and self.pick not in PICKS:
            raise ValueError(f"`pick` must be one of {', '.join(PICKS)} or None, but got {self.pick!r}.")
        if self.storage is not None:
            _string("storage", self.storage)
        if self.study is not None and (not isinstance(self.study, str) or not self.study.strip()):
            raise ValueError(f"`study` must be a non-empty name, but got {self.study!r}.")
        _positive_int("heartbeat_interval", self.heartbeat_interval)
        _positive_int("grace_period", self.grace_period)
        if self.grace_period <= self.heartbeat_interval:
            raise ValueError(
                f"`grace_period` ({self.grace_period}) must exceed `heartbeat_interval` ({self.heartbeat_interval})."
            )
        _optional_path("out", self.out)
        if self.out is None:
            raise ValueError("`out` must be a folder path, but got None.")
        set_(self, "out", str(self.out))
        check_seed("seed", self.seed)
        _string("device", self.device)
        if not isinstance(self.progress, bool):
            raise ValueError(f"`progress` must be true or false, but got {self.progress!r}.")

    # ------------------------------------------------------------ derived

    def replace(self, **changes: Any) -> CampaignConfig:
        """A copy with ``changes`` applied (and validated).

        Raises:
            ValueError: An unknown setting, or a value out of range.
        """
        unknown = sorted(set(changes) - set(setting_names()))
        if unknown:
            raise ValueError(
                f"unknown campaign setting {unknown[0]!r}; the settings are: {', '.join(setting_names())}."
            )
        return dataclasses.replace(self, **changes)

    def resolved(self) -> CampaignConfig:
        """A copy whose ``None`` defaults that depend on other settings are filled in.

        ``rank_by`` becomes ``"short"`` when no ``ranker`` is given and ``trials``
        is at most ``ranker_labels`` (training each candidate for ``ranker_k``
        steps then costs no more than the ranker's labels), else ``"ranker"``;
        ``refine`` becomes ``top_k`` when ranking by the ranker (else 0),
        ``refine_trials`` becomes ``trials``, ``self_check_epochs`` becomes
        ``finetune_epochs`` and ``pick`` becomes ``"rank"`` when ranking by the
        ranker or by short training on one objective (else ``"finetuned"``).
        """
        rank_by = self.rank_by
        if rank_by is None:  # each candidate trained for k steps costs what one ranker label costs
            rank_by = "ranker" if self.ranker is not None or self.trials > self.ranker_labels else "short"
        ranker_one = rank_by in ("ranker", "short") and "," not in self.objectives
        return self.replace(
            rank_by=rank_by,
            refine=self.refine if self.refine is not None else (self.top_k if rank_by == "ranker" else 0),
            refine_trials=self.refine_trials if self.refine_trials is not None else self.trials,
            self_check_epochs=self.self_check_epochs if self.self_check_epochs is not None else self.finetune_epochs,
            pick=self.pick or ("rank" if ranker_one else "finetuned"),
        )

    def identity(self) -> dict[str, Any]:
        """The settings that must agree for a process to join a stored campaign (see :data:`IDENTITY_KEYS`).

        The ranker's labels belong to it only when the campaign ranks by the ranker;
        their steps (``ranker_k``) also set short training's.
        """
        values = {name: getattr(self, name) for name in IDENTITY_KEYS}
        if self.rank_by != "ranker":
            values["ranker_labels"] = None
        if self.rank_by not in ("ranker", "short"):
            values["ranker_k"] = None
        return _normalise(values)

    # ------------------------------------------------------------ serialisation

    def to_dict(self) -> dict[str, Any]:
        """The settings as plain JSON/TOML values, every field included (``None`` for unset ones)."""
        return _normalise({name: getattr(self, name) for name in setting_names()})

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> CampaignConfig:
        """Build a configuration from :meth:`to_dict` output; missing settings take their defaults.

        Settings that older versions stored and this one no longer has (:data:`REMOVED_SETTINGS`)
        are dropped, whatever their value, so a campaign stored by such a version (or a TOML file
        it printed) still reads.

        Raises:
            ValueError: An unknown setting, or a value out of range.
        """
        if not isinstance(values, Mapping):
            raise ValueError(f"campaign settings must be a mapping, but got {type(values).__name__}.")
        return cls().replace(**{name: value for name, value in values.items() if name not in REMOVED_SETTINGS})

    def to_toml(self) -> str:
        """The settings as a TOML document (``None`` settings are left out: TOML has no null)."""
        values = self.to_dict()
        lines = ["# nas search --config FILE: settings of a search campaign (nas.campaign.CampaignConfig)"]
        tables: list[str] = []
        for group in GROUPS:
            names = [f.name for f in dataclasses.fields(self) if f.metadata["group"] == group]
            lines.append(f"\n# {group}")
            for name in names:
                value = values[name]
                if value is None:
                    lines.append(f"# {name}: unset ({dataclasses.fields(self)[_INDEX[name]].metadata['help']})")
                elif isinstance(value, dict):
                    tables.append(f"\n[{name}]")
                    tables.extend(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in sorted(value.items()))
                else:
                    lines.append(f"{name} = {_toml_value(value)}")
        return "\n".join(lines + tables) + "\n"

    @classmethod
    def from_toml(cls, text: str) -> CampaignConfig:
        """Parse a TOML document written by :meth:`to_toml` (or by hand).

        Raises:
            ValueError: The text is not TOML, names an unknown setting, or holds a value out of range.
        """
        try:
            values = tomllib.loads(text)
        except tomllib.TOMLDecodeError as err:
            raise ValueError(f"campaign settings are not valid TOML: {err}.") from None
        return cls.from_dict(values)

    @classmethod
    def read(cls, path: str | Path) -> CampaignConfig:
        """Read a TOML file of settings.

        Raises:
            FileNotFoundError: No such file.
            ValueError: Its content is not valid (the message names the file).
        """
        file = Path(path)
        if not file.is_file():
            raise FileNotFoundError(f"`config`: no such file {str(path)!r}.")
        try:
            return cls.from_toml(file.read_text())
        except ValueError as err:
            raise ValueError(f"{str(path)!r}: {err}") from None


def setting_names() -> tuple[str, ...]:
    """The names of the settings of :class:`CampaignConfig`, in declaration order."""
    return tuple(f.name for f in dataclasses.fields(CampaignConfig))


_INDEX = {f.name: i for i, f in enumerate(dataclasses.fields(CampaignConfig))}

#: Settings stored by older versions that :meth:`CampaignConfig.from_dict` drops on read, each with why.
REMOVED_SETTINGS: dict[str, str] = {
    "ranker_calibration": "architectures trained for the fine-tuning budget to choose the fitted ranker's "
    "FLOPs-prior weight; removed, as the ranking suite (round 3) found no benefit over the fixed weight",
}

#: Settings that must agree for a process to join an existing campaign. The search space is compared
#: by its built description (``SearchSpace.describe()``: its class and settings), not by ``space`` and
#: ``space_args``, which name the same space in several ways (a name, ``module:attr``, an object).
IDENTITY_KEYS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(CampaignConfig) if f.metadata["identity"])


def _normalise(value: Any) -> Any:
    return json.loads(json.dumps(value, sort_keys=True, default=str))


def _int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"`{name}` must be an int, but got {value!r}.")
    return value


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"`{name}` must be positive, but got {value!r}.")
    return value


def _positive_float(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"`{name}` must be positive, but got {value!r}.")
    return float(value)


def _string(name: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"`{name}` must be a non-empty string, but got {value!r}.")
    return value


def _optional_path(name: str, value: Any) -> None:
    if value is not None and (not isinstance(value, (str, Path)) or not str(value).strip()):
        raise ValueError(f"`{name}` must be a path, but got {value!r}.")


_BARE_KEY = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")


def _toml_key(key: str) -> str:
    return key if key and set(key) <= _BARE_KEY else json.dumps(key)


def _toml_value(value: Any) -> str:
    """One TOML value: a bool, int, float, string, or an array of those."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a TOML basic string
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise ValueError(f"a campaign setting cannot be written to TOML: {value!r} ({type(value).__name__}).")
