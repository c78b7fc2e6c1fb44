"""The :class:`Campaign`: rank with the GHN ranker, fine-tune the best, report.

Both stages are Optuna studies in one storage (``<name>-rank`` and
``<name>-finetune``), so a campaign resumes where it stopped and several
processes or machines can work on it at once. The ranker (``<out>/ranker.pt``)
and its training labels (``<out>/ranker_labels.csv``) are files next to the
GHN's checkpoint and are reused the same way.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
import torch
from optuna.samplers import BaseSampler

from nas.data import Dataset, load_dataset
from nas.exceptions import CheckpointError, StorageError
from nas.space import SearchSpace, builtin_spaces, load_space
from nas.training import TrainConfig

from nas.campaign._finetune import (
    FINETUNE_METRICS,
    FinetuneStats,
    directions_for,
    enqueue_candidates,
    rerank_candidates,
    run_finetune_worker,
    scored_candidates,
    select_candidates,
    wait_for_running,
)
from nas.campaign._rank import (
    RANK_BY,
    RankStats,
    objectives_spec,
    resolve_objectives,
    resolve_rank_by,
    resolve_sampler,
    run_rank_stage,
)
from nas.campaign._report import (
    PICKS,
    RANK_SCORE_NAMES,
    best_record,
    candidates_frame,
    finetuned_frame,
    rank_trials_frame,
    write_report,
)
from nas.campaign._selfcheck import SelfCheck, run_self_check, self_check_candidates
from nas.campaign._storage import CAMPAIGN_ATTR, default_storage_url, mask_url, open_storage, worker_session

__all__ = ["Campaign", "CampaignResult", "CAMPAIGN_ATTR", "IDENTITY_KEYS"]

logger = logging.getLogger(__name__)

#: Settings that must agree for a process to join an existing campaign.
IDENTITY_KEYS: tuple[str, ...] = (
    "space_info", "dataset", "data_seed", "objectives", "finetune", "rank_by", "ranker_labels",
)

#: Identity settings of campaigns stored before they existed (those ranked by the predicted-weight loss).
_IDENTITY_DEFAULTS: dict[str, Any] = {"rank_by": "loss", "ranker_labels": None}

#: Fewest labelled architectures :func:`nas.ghn.fit_ranker` accepts.
_MIN_LABELS = 4

_FORMAT = 1


@dataclass
class CampaignResult:
    """What :meth:`Campaign.run` returns.

    Attributes:
        candidates: One row per distinct ranked candidate
            (:func:`~nas.campaign.candidates_frame`), best rank score first.
        finetuned: One row per fine-tuned candidate
            (:func:`~nas.campaign.finetuned_frame`), best first.
        best: The campaign's pick (as in ``best.json``; its ``pick`` entry says
            by which rule, see :data:`~nas.campaign.PICKS`), or ``None``.
        trials: One row per rank trial (:func:`~nas.campaign.rank_trials_frame`).
        self_check: The self-check, when one was run.
        rank_stats: What this process did in stage 1.
        finetune_stats: What this process did in stage 2.
        out: The output folder.
        files: The files written.
        storage: The storage URL, password masked.
        study: The campaign name (studies ``<study>-rank`` and ``<study>-finetune``).
        rank_by: What ranked the candidates (``"ranker"`` or ``"loss"``, see
            :data:`~nas.campaign.RANK_BY`); the tables' ``rank_score`` is its score.
    """

    candidates: pd.DataFrame
    finetuned: pd.DataFrame
    best: dict[str, Any] | None
    trials: pd.DataFrame
    self_check: SelfCheck | None = None
    rank_stats: RankStats | None = None
    finetune_stats: FinetuneStats | None = None
    out: Path | None = None
    files: list[Path] = field(default_factory=list)
    storage: str = ""
    study: str = ""
    rank_by: str = "loss"

    @property
    def pareto(self) -> pd.DataFrame:
        """The candidates on the Pareto front (empty for a single objective)."""
        return self.candidates[self.candidates["pareto"]]

    def summary(self, rows: int = 10) -> str:
        """A plain-text table of the fine-tuned candidates and the verdict of the self-check."""
        lines = [
            f"campaign {self.study!r}: {len(self.trials)} rank trials, {len(self.candidates)} distinct candidates, "
            f"{len(self.finetuned)} fine-tuned; ranked by {self.rank_by}: "
            f"{RANK_BY.get(self.rank_by, self.rank_by)} (lower is better)"
        ]
        if len(self.finetuned):
            cols = ["rank", "rank_trial", "key", "num_params", "flops", "rank_score", "val_acc", "test_acc", "failed"]
            score = RANK_SCORE_NAMES.get(self.rank_by, "rank_score")
            table = self.finetuned[cols].head(rows).rename(columns={"rank_score": score})
            table["key"] = table["key"].str[:10]
            lines.append(table.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
        if self.best is not None:
            m = self.best["metrics"]
            lines.append(
                f"best: rank trial {self.best['rank_trial']}, key {self.best['key'][:10]}, "
                f"{self.best['num_params']} params, val acc {m['val_acc']:.4f}, test acc {m['test_acc']:.4f} "
                f"({PICKS[self.best.get('pick', 'finetuned')]})"
            )
        if self.self_check is not None:
            lines.append(self.self_check.message)
        if self.out is not None:
            lines.append(f"results in {self.out}")
        return "\n".join(lines)


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"`{name}` must be a positive int, but got {value!r}.")
    return value


def _positive_float(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"`{name}` must be a positive number, but got {value!r}.")
    return float(value)


def _normalise(value: Any) -> Any:
    return json.loads(json.dumps(value, sort_keys=True, default=str))


def _checkpoint_path(value: Any) -> Path | None:
    """The resolved path of a checkpoint given by its path; ``None`` for one given as an object."""
    return Path(value).expanduser().resolve() if isinstance(value, (str, Path)) else None


def _space_spec(space: str | SearchSpace) -> str | None:
    """A string that :func:`load_space` resolves back to the same space class."""
    if isinstance(space, str):
        return space
    cls = type(space)
    for name, builtin in builtin_spaces().items():
        if builtin is cls:
            return name
    module = cls.__module__
    if module == "__main__" or "<locals>" in cls.__qualname__ or module.startswith("_nas_user_space_"):
        return None
    return f"{module}:{cls.__qualname__}"


class Campaign:
    """A two-stage architecture search: ranking without training, then fine-tuning of the top-k.

    Stage 1 (study ``<study>-rank``): an Optuna sampler proposes candidates
    through the search space and each gets a rank score (minimised). With
    ``rank_by="ranker"`` (the default) the score is
    :meth:`nas.ghn.GHNRanker.score`: the short-training loss (TSE: the sum of
    the first ``ranker_k`` SGD losses from random initialisation) that the
    ranker predicts from the graph alone, with a log-FLOPs capacity prior. Without a given ``ranker``, one is fitted once per campaign into
    ``<out>/ranker.pt``: ``ranker_labels`` architectures sampled from the space
    (never the self-check's) are trained for ``ranker_k`` steps
    (``<out>/ranker_labels.csv``, resumable), then the GHN's graph network is
    fine-tuned on those labels. With ``rank_by="loss"`` the score is the
    validation loss of the GHN-predicted weights (about 0.6 s per candidate on
    a CPU core, and on nb201 / mnist5k a much weaker ranking than the ranker's).
    Candidates are scored in batches, and a candidate seen before (same
    canonical key) reuses its stored score. With two objectives, the second
    (parameters or FLOPs) is minimised too and fine-tuning candidates come
    from the Pareto front.

    Stage 2 (study ``<study>-finetune``): the ``top_k`` best distinct candidates
    are enqueued once; workers (this process and any ``nas worker``) claim them,
    initialise each from its predicted weights and fine-tune it for
    ``finetune_epochs``; the trial value is the validation accuracy (or loss).

    Running the same campaign again resumes it: finished trials are kept, the
    trials of dead workers are re-queued, nothing is scored or trained twice.

    Args:
        space: A built-in space name (``"nb201"``), ``"module:attr"``,
            ``"path/file.py:attr"`` or a :class:`~nas.space.SearchSpace`.
        dataset: A dataset name for :func:`nas.data.load_dataset` or a loaded
            :class:`~nas.data.Dataset`.
        ghn: A trained GHN, the path of a GHN checkpoint, or ``None`` to
            meta-train the default recipe into ``<out>/ghn.pt`` (reused when there).
            Fine-tuning starts from its predicted weights whatever ``rank_by`` is.
        rank_by: What scores a candidate in stage 1: ``"ranker"`` or ``"loss"``
            (see :data:`~nas.campaign.RANK_BY`). Part of the campaign's identity.
        ranker: With ``rank_by="ranker"``: a fitted :class:`nas.ghn.GHNRanker`,
            the path of a ranker checkpoint (checked before the storage is
            touched), a list of those (ranked by their mean, a
            :class:`nas.ghn.RankerEnsemble`), or ``None`` to fit one into
            ``<out>/ranker.pt`` (reused when there).
        ranker_labels: Architectures labelled by short training to fit the
            ranker when ``ranker`` is ``None`` (at least 4; at most the size of
            a smaller space).
        ranker_k: SGD steps of each label's short training.
        label_workers: Processes training labels in parallel.
        ranker_config: A :class:`nas.ghn.RankerConfig` for the ranker fitted
            when ``ranker`` is ``None`` (default: the default recipe, seeded with ``seed``).
        trials: Complete rank trials the study must hold (sampler trials).
        refine: After the sampler's trials, score every one-step change of
            the ``refine`` best candidates (one choice changed), and repeat
            with the new best until they stop changing: a local search on
            the rank score. ``0`` skips it; ``None`` (default) refines the
            ``top_k`` best when ranking by the ranker (milliseconds per
            candidate) and skips it when ranking by the predicted-weight loss.
        refine_trials: Most refinement trials (default: ``trials``).
        rerank: A zero-cost proxy of :data:`nas.evaluation.PROXIES` (e.g.
            ``"grad_norm"``) that reorders the ``rerank_pool`` best candidates
            of the rank stage before the ``top_k`` best of them are
            fine-tuned, in the proxy's order; ``"ranker+PROXY"`` orders them
            by the sum of their rank-score and proxy ranks instead; ``None``
            (default) fine-tunes the rank stage's ``top_k`` best. Each proxy
            score costs one forward and backward pass on one minibatch
            (0.01-0.05 CPU-s for nb201 on mnist5k).
        rerank_pool: How many of the rank stage's best candidates the proxy
            reorders (at least ``top_k``).
        top_k: Distinct candidates to fine-tune.
        finetune_epochs: Fine-tuning budget per candidate (epochs, may be fractional).
        sampler: ``"tpe"``, ``"random"``, ``"gp"``, ``"nsga2"`` or an Optuna sampler.
        objectives: ``"loss"``, ``"loss,params"`` or ``"loss,flops"``.
        out: Output folder (tables, plots, best architecture, default storage).
        storage: Optuna storage URL; default ``sqlite:///<out>/campaign.db``.
        study: Campaign name; default ``<space>-<dataset>``.
        device: ``"cpu"`` or ``"cuda"``.
        seed: Seed of the sampler, fine-tuning and self-check.
        batch_size: Candidates scored per GHN forward pass.
        self_check: Random candidates to train from scratch for the self-check
            (0 = none, else at least 3).
        self_check_epochs: Their training budget (default ``finetune_epochs``).
        space_args: Settings of the search space (e.g. ``{"C": 16}``).
        finetune_metric: ``"acc"`` (maximise validation accuracy) or ``"loss"``.
        pick: What the campaign reports as its best (``best.json``, ``best.pt``):
            ``"rank"``, the first fine-tuned candidate in the ranking's order, or
            ``"finetuned"``, the best fine-tuned result by ``finetune_metric``
            (:data:`~nas.campaign.PICKS`). ``None`` (default): ``"rank"`` when
            ranking by the ranker on one objective, else ``"finetuned"``. On
            nb201 / mnist5k a 1-epoch fine-tune from predicted weights does not
            order the ranker's top candidates, and its first is the better pick
            (README, search benchmark). Not part of the campaign's identity.
        finetune_lr: Peak learning rate of fine-tuning.
        finetune_batch_size: Images per fine-tuning step.
        data_seed: Seed of the dataset split (must match the GHN's meta-training split).
        heartbeat_interval: Seconds between heartbeats of running trials.
        grace_period: Seconds without heartbeat after which a worker counts as dead.
        progress: Show tqdm progress bars.
        meta_train: A :class:`nas.ghn.MetaTrainConfig` for the GHN meta-trained
            when ``ghn`` is ``None`` (default: the default recipe on ``device``).

    Raises:
        ValueError: A setting is out of range (the message names it).

    Example:
        >>> campaign = Campaign(space="nb201", dataset="mnist5k", trials=300, top_k=5,
        ...                     out="runs/x")  # doctest: +SKIP
        >>> result = campaign.run()  # doctest: +SKIP
        >>> result.best["metrics"]["val_acc"]  # doctest: +SKIP
    """

    def __init__(
        self,
        *,
        space: str | SearchSpace = "nb201",
        dataset: str | Dataset = "mnist5k",
        ghn: Any = None,
        trials: int = 300,
        top_k: int = 5,
        finetune_epochs: float = 3,
        sampler: str | BaseSampler = "tpe",
        objectives: str | tuple[str, ...] = "loss",
        out: str | Path = "runs/campaign",
        storage: str | None = None,
        study: str | None = None,
        device: str = "cpu",
        seed: int = 0,
        batch_size: int = 32,
        self_check: int = 0,
        self_check_epochs: float | None = None,
        space_args: dict[str, Any] | None = None,
        finetune_metric: str = "acc",
        pick: str | None = None,
        finetune_lr: float = 0.05,
        finetune_batch_size: int = 64,
        data_seed: int = 0,
        heartbeat_interval: int = 30,
        grace_period: int = 120,
        progress: bool = True,
        meta_train: Any = None,
        rank_by: str = "ranker",
        ranker: Any = None,
        ranker_labels: int = 700,  # nas.ghn.RANKER_LABELS (nas.ghn is imported when needed)
        ranker_k: int = 30,  # nas.ghn.RANKER_K
        label_workers: int = 1,
        ranker_config: Any = None,
        refine: int | None = None,
        refine_trials: int | None = None,
        rerank: str | None = None,
        rerank_pool: int = 30,
    ) -> None:
        self.trials = _positive_int("trials", trials)
        if refine is not None and (isinstance(refine, bool) or not isinstance(refine, int) or refine < 0):
            raise ValueError(f"`refine` must be a non-negative int, but got {refine!r}.")
        self.refine_trials = self.trials if refine_trials is None else _positive_int("refine_trials", refine_trials)
        self.top_k = _positive_int("top_k", top_k)
        if rerank is not None:
            from nas.evaluation.proxies import PROXIES

            if not isinstance(rerank, str) or rerank.removeprefix("ranker+") not in PROXIES:
                raise ValueError(
                    f"`rerank` must be one of {', '.join(PROXIES)}, 'ranker+' and one of them, or None, "
                    f"but got {rerank!r}."
                )
            if _positive_int("rerank_pool", rerank_pool) < self.top_k:
                raise ValueError(f"`rerank_pool` ({rerank_pool}) must be at least `top_k` ({self.top_k}).")
        self.rerank = rerank
        self.rerank_pool = rerank_pool
        self.finetune_epochs = _positive_float("finetune_epochs", finetune_epochs)
        self.batch_size = _positive_int("batch_size", batch_size)
        if isinstance(self_check, bool) or not isinstance(self_check, int) or self_check < 0 or 0 < self_check < 3:
            raise ValueError(f"`self_check` must be 0 or an int of at least 3, but got {self_check!r}.")
        self.self_check_n = self_check
        self.self_check_epochs = (
            self.finetune_epochs
            if self_check_epochs is None
            else _positive_float("self_check_epochs", self_check_epochs)
        )
        if finetune_metric not in FINETUNE_METRICS:
            raise ValueError(
                f"`finetune_metric` must be one of {', '.join(FINETUNE_METRICS)}, but got {finetune_metric!r}."
            )
        self.finetune_metric = finetune_metric
        self.finetune_lr = _positive_float("finetune_lr", finetune_lr)
        self.finetune_batch_size = _positive_int("finetune_batch_size", finetune_batch_size)
        self.objectives = resolve_objectives(objectives)
        self.sampler_spec = sampler
        if isinstance(sampler, str):
            resolve_sampler(sampler, seed=seed)  # fail now on a bad name
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise ValueError(f"`seed` must be an int, but got {seed!r}.")
        self.seed = seed
        self.data_seed = data_seed
        self.device = _check_device(device)
        if study is not None and (not isinstance(study, str) or not study.strip()):
            raise ValueError(f"`study` must be a non-empty name, but got {study!r}.")
        self.out = Path(out)
        self.storage_url = storage if storage is not None else default_storage_url(self.out)
        self.heartbeat_interval = heartbeat_interval
        self.grace_period = grace_period
        self.progress = progress
        self.space_args = dict(space_args or {})
        self.rank_by = resolve_rank_by(rank_by)
        self.refine = refine if refine is not None else (self.top_k if self.rank_by == "ranker" else 0)
        if pick is not None and pick not in PICKS:
            raise ValueError(f"`pick` must be one of {', '.join(PICKS)} or None, but got {pick!r}.")
        self.pick = pick or ("rank" if self.rank_by == "ranker" and len(self.objectives) == 1 else "finetuned")
        if ranker is not None:
            if self.rank_by != "ranker":
                raise ValueError(f"`ranker` is used only when `rank_by` is 'ranker', but `rank_by` is {rank_by!r}.")
            several = ranker if isinstance(ranker, (list, tuple)) else [ranker]
            if not several or any(
                not isinstance(r, (str, Path)) and not callable(getattr(r, "score", None)) for r in several
            ):
                raise ValueError(
                    "`ranker` must be a GHNRanker, the path of a ranker checkpoint, a list of those (an "
                    f"ensemble) or None, but got {ranker!r}."
                )
        if isinstance(ranker_labels, bool) or not isinstance(ranker_labels, int) or ranker_labels < _MIN_LABELS:
            raise ValueError(f"`ranker_labels` must be an int of at least {_MIN_LABELS}, but got {ranker_labels!r}.")
        self.ranker_labels = ranker_labels
        self.ranker_k = _positive_int("ranker_k", ranker_k)
        self.label_workers = _positive_int("label_workers", label_workers)
        self.ranker_config = ranker_config
        self._ranker_in = ranker
        self._ranker: Any = None
        self._space_in = space
        self._dataset_in = dataset
        self._ghn_in = ghn
        self.meta_train_config = meta_train
        self._study_in = study
        self._space: SearchSpace | None = None
        self._data: Dataset | None = None
        self._ghn: Any = None
        self._storage: Any = None
        self._rank_study: optuna.Study | None = None
        self._ft_study: optuna.Study | None = None
        self.rank_stats: RankStats | None = None
        self.finetune_stats: FinetuneStats | None = None
        self._joined = False

    # ------------------------------------------------------------ resources

    @property
    def dataset_name(self) -> str:
        return self._dataset_in if isinstance(self._dataset_in, str) else self._dataset_in.name

    @property
    def data(self) -> Dataset:
        """The dataset (loaded on first use)."""
        if self._data is None:
            if isinstance(self._dataset_in, str):
                self._data = load_dataset(self._dataset_in, seed=self.data_seed)
            else:
                self._data = self._dataset_in
        return self._data

    @property
    def space(self) -> SearchSpace:
        """The search space, shaped to the dataset (built on first use)."""
        if self._space is None:
            data = self.data
            space = load_space(
                self._space_in, input_shape=data.input_shape, num_classes=data.num_classes, **self.space_args
            )
            space.sample(self.seed)  # a space whose build() fails is refused before any storage is touched
            size = space.size()
            if size is not None and size < self.top_k:
                raise ValueError(
                    f"`top_k` is {self.top_k}, but search space {space.name!r} has only {size} candidates; "
                    "lower --top-k."
                )
            self._space = space
        return self._space

    @property
    def study_name(self) -> str:
        if self._study_in is not None:
            return self._study_in.strip()
        space_name = self._space_in if isinstance(self._space_in, str) else self._space_in.name
        name = f"{Path(str(space_name)).stem.split(':')[-1]}-{self.dataset_name}"
        return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)

    @property
    def ghn(self) -> Any:
        """The GHN (loaded or meta-trained on first use), checked against the space."""
        if self._ghn is None:
            self._ghn = self._resolve_ghn()
        return self._ghn

    def _ghn_path(self) -> Path | None:
        if self._ghn_in is None:
            return (self.out / "ghn.pt").resolve()
        return _checkpoint_path(self._ghn_in)

    def _resolve_ghn(self) -> Any:
        import nas.ghn as ghn_mod

        ghn = self._ghn_in
        if ghn is None:
            path = self._ghn_path()
            assert path is not None
            config = self.meta_train_config or ghn_mod.MetaTrainConfig(device=self.device)
            ghn = ghn_mod.ensure_ghn(self.space, self.data, path=path, config=config, progress=self.progress)
        elif isinstance(ghn, (str, Path)):
            path = Path(ghn).expanduser()
            if not path.is_file():
                raise CheckpointError(
                    f"GHN checkpoint {str(path)!r} does not exist (a worker on another machine: pass --ghn PATH)."
                )
            ghn = ghn_mod.GHN.load(path, map_location=self.device)
        if hasattr(ghn, "check_compatible"):
            ghn.check_compatible(self.space)
        trained_on = getattr(ghn, "space_info", {}).get("dataset")
        if trained_on and trained_on != self.dataset_name:
            logger.warning(
                "the GHN was meta-trained on %r, the campaign searches on %r: its ranking may be poor",
                trained_on,
                self.dataset_name,
            )
        if isinstance(ghn, torch.nn.Module):
            ghn.to(self.device)
        return ghn

    @property
    def ranker(self) -> Any:
        """The GHN ranker (loaded or fitted on first use), checked against the space.

        ``None`` when the campaign ranks by the predicted-weight loss (``rank_by="loss"``).
        """
        if self.rank_by != "ranker":
            return None
        if self._ranker is None:
            self._ranker = self._resolve_ranker()
        return self._ranker

    def _ranker_path(self) -> Path | None:
        if self.rank_by != "ranker":
            return None
        if self._ranker_in is None:
            return (self.out / "ranker.pt").resolve()
        return _checkpoint_path(self._ranker_in)

    def _ranker_setting(self) -> str | list[str | None] | None:
        """The ranker as stored in the settings: its path, the members' paths of an ensemble, or ``None``."""
        if self.rank_by == "ranker" and isinstance(self._ranker_in, (list, tuple)):
            paths = [_checkpoint_path(r) for r in self._ranker_in]
            return [str(path) if path is not None else None for path in paths]
        path = self._ranker_path()
        return str(path) if path is not None else None

    def _resolve_ranker(self) -> Any:
        from nas.ghn import RankerEnsemble

        ranker = self._ranker_in
        if ranker is None:
            return self._ensure_ranker()
        if isinstance(ranker, (list, tuple)):
            ranker = RankerEnsemble([self._load_ranker(r) for r in ranker])
        else:
            ranker = self._load_ranker(ranker)
        if isinstance(ranker, torch.nn.Module):
            ranker.to(self.device)
        return ranker

    def _load_ranker(self, ranker: Any) -> Any:
        """A ranker object, or the checkpoint at a path, checked against the space."""
        from nas.ghn import GHNRanker

        source = None
        if isinstance(ranker, (str, Path)):
            source = Path(ranker).expanduser()
            if not source.is_file():
                raise CheckpointError(
                    f"ranker checkpoint {str(source)!r} does not exist "
                    "(a worker on another machine: pass --ranker PATH)."
                )
            ranker = GHNRanker.load(source, map_location=self.device)
        _check_ranker(ranker, self.space, self.dataset_name, source=source)
        return ranker

    def _ensure_ranker(self) -> Any:
        """Load ``<out>/ranker.pt``, or label architectures and fit the ranker there."""
        from nas.ghn import RankerConfig, ensure_ranker

        path = self._ranker_path()
        assert path is not None
        space = self.space
        # The self-check compares the ranking with training: its candidates must not be labels.
        exclude = sorted({c.graph.key for c in self_check_candidates(space, self.self_check_n, seed=self.seed)})
        n = self.ranker_labels
        size = space.size()
        if size is not None and size - len(exclude) < n:
            n = size - len(exclude)
            if n < _MIN_LABELS:
                raise ValueError(
                    f"`ranker_labels`: search space {space.name!r} has only {size} candidates "
                    f"({len(exclude)} kept for the self-check), too few to fit a ranker on {_MIN_LABELS}; "
                    "rank by the predicted-weight loss (rank_by='loss') instead."
                )
            logger.info("labelling all %d candidates of search space %r outside the self-check", n, space.name)
        ranker = ensure_ranker(
            space, self.data, self.ghn, path=path, labels=n, k=self.ranker_k, seed=self.seed, exclude=exclude,
            labels_cache=self.out / "ranker_labels.csv", workers=self.label_workers,
            config=self.ranker_config or RankerConfig(seed=self.seed), progress=self.progress,
        )
        _check_ranker(ranker, space, self.dataset_name, source=path)
        return ranker

    # ------------------------------------------------------------ storage

    def settings(self) -> dict[str, Any]:
        """The campaign's settings as stored in the rank study (user attribute ``nas_campaign``)."""
        ghn_path = self._ghn_path()
        return _normalise({
            "format": _FORMAT,
            "space": _space_spec(self._space_in),
            "space_info": self.space.describe(),
            "dataset": self.dataset_name,
            "data_seed": self.data_seed,
            "objectives": objectives_spec(self.objectives),
            "finetune": {
                "epochs": self.finetune_epochs,
                "lr": self.finetune_lr,
                "batch_size": self.finetune_batch_size,
                "metric": self.finetune_metric,
            },
            "ghn": str(ghn_path) if ghn_path is not None else None,
            "rank_by": self.rank_by,
            "ranker": self._ranker_setting(),
            "ranker_labels": {"n": self.ranker_labels, "k": self.ranker_k} if self.rank_by == "ranker" else None,
            "label_workers": self.label_workers,
            "out": str(self.out.resolve()),
            "trials": self.trials,
            "refine": self.refine,
            "refine_trials": self.refine_trials,
            "rerank": {"proxy": self.rerank, "pool": self.rerank_pool} if self.rerank else None,
            "top_k": self.top_k,
            "seed": self.seed,
            "sampler": self.sampler_spec if isinstance(self.sampler_spec, str) else type(self.sampler_spec).__name__,
            "self_check": self.self_check_n,
            "self_check_epochs": self.self_check_epochs,
            "device": self.device,
        })

    def open(self) -> tuple[optuna.Study, optuna.Study]:
        """Open (creating or joining) the two studies of the campaign.

        Returns:
            ``(rank_study, finetune_study)``.

        Raises:
            StorageError: Bad storage URL, or a study of this name exists with
                different settings (space, dataset, objectives, fine-tuning,
                ``rank_by`` and ranker labels: see :data:`IDENTITY_KEYS`).
        """
        if self._rank_study is not None and self._ft_study is not None:
            return self._rank_study, self._ft_study
        self.out.mkdir(parents=True, exist_ok=True)
        self._storage = open_storage(
            self.storage_url, heartbeat_interval=self.heartbeat_interval, grace_period=self.grace_period
        )
        settings = self.settings()
        name = self.study_name
        rank, created = _create_or_load(
            self._storage, f"{name}-rank", ["minimize"] * len(self.objectives), self.storage_url
        )
        self._joined = not created
        stored = rank.user_attrs.get(CAMPAIGN_ATTR)
        if stored is None:
            rank.set_user_attr(CAMPAIGN_ATTR, settings)
        else:
            _check_identity(stored, settings, name, self.storage_url)
        seed = self.seed if created else self.seed + os.getpid() + len(rank.trials)
        rank.sampler = resolve_sampler(self.sampler_spec, seed=seed)
        ft, _ = _create_or_load(
            self._storage, f"{name}-finetune", list(directions_for(self.finetune_metric)), self.storage_url
        )
        self._rank_study, self._ft_study = rank, ft
        return rank, ft

    # ------------------------------------------------------------ stages

    def rank(self, *, worker: str | None = None) -> RankStats:
        """Stage 1: run the rank study up to ``trials`` complete trials (scored by ``rank_by``)."""
        rank, _ = self.open()
        ranker = self.ranker
        ghn = None if ranker is not None else self.ghn  # the ranker needs no predicted weights
        space, data = self.space, self.data
        with worker_session() as fresh:
            self.rank_stats = run_rank_stage(
                rank,
                space,
                ghn,
                data,
                n_trials=self.trials,
                batch_size=self.batch_size,
                objectives=self.objectives,
                ranker=ranker,
                device=self.device,
                worker=worker or fresh,
                heartbeat_interval=self.heartbeat_interval,
                grace_period=self.grace_period,
                progress=self.progress,
                refine=self.refine,
                refine_trials=self.refine_trials,
            )
        return self.rank_stats

    def enqueue(self) -> list[str]:
        """Enqueue the top-k distinct candidates for fine-tuning (each key once per campaign).

        Raises:
            ValueError: Fewer distinct scored candidates than ``top_k``.
        """
        rank, ft = self.open()
        candidates = candidates_frame(rank)
        pareto = len(self.objectives) > 1
        if self.rerank is None:
            return enqueue_candidates(rank, ft, select_candidates(candidates, self.top_k, pareto=pareto))
        from nas.evaluation.proxies import ProxyScorer

        pool = max(self.top_k, min(self.rerank_pool, len(scored_candidates(candidates))))
        shortlist = select_candidates(candidates, pool, pareto=pareto)
        proxy = self.rerank.removeprefix("ranker+")
        scorer = ProxyScorer(proxy, seed=self.seed, device=self.device)
        blend = proxy != self.rerank
        return enqueue_candidates(rank, ft, rerank_candidates(shortlist, self.top_k, scorer, self.data, blend=blend))

    def train_config(self) -> TrainConfig:
        """The fine-tuning settings."""
        return TrainConfig(
            epochs=self.finetune_epochs,
            lr=self.finetune_lr,
            batch_size=self.finetune_batch_size,
            seed=self.seed,
            device=self.device,
        )

    def finetune(self, *, wait: bool = True, worker: str | None = None) -> FinetuneStats:
        """Stage 2: fine-tune queued candidates until the queue is empty.

        Args:
            wait: Then wait for trials other workers still run (re-queued
                candidates of dead workers are fine-tuned here).
            worker: Worker identity (a fresh one by default).
        """
        _, ft = self.open()
        ghn, space, data = self.ghn, self.space, self.data
        total = FinetuneStats()
        with worker_session() as fresh:
            while True:
                stats = run_finetune_worker(
                    ft,
                    space,
                    ghn,
                    data,
                    config=self.train_config(),
                    metric=self.finetune_metric,
                    weights_dir=self.out / "weights",
                    worker=worker or fresh,
                    heartbeat_interval=self.heartbeat_interval,
                    grace_period=self.grace_period,
                    progress=self.progress,
                )
                total.finetuned += stats.finetuned
                total.failed += stats.failed
                total.skipped += stats.skipped
                if not wait or not wait_for_running(ft, grace_period=self.grace_period):
                    break
        self.finetune_stats = total
        return total

    def run_self_check(self) -> SelfCheck | None:
        """Train ``self_check`` random candidates, compare with their rank score (cached in ``ground_truth.sqlite``)."""
        if self.self_check_n == 0:
            return None
        ranker = self.ranker
        return run_self_check(
            self.space,
            None if ranker is not None else self.ghn,
            self.data,
            ranker=ranker,
            n=self.self_check_n,
            epochs=self.self_check_epochs,
            seed=self.seed,
            device=self.device,
            cache=self.out / "ground_truth.sqlite",
            progress=self.progress,
        )

    def report(self, *, self_check: SelfCheck | None = None, write: bool = True) -> CampaignResult:
        """Build the result tables from the studies and (by default) write the output files."""
        rank, ft = self.open()
        finetuned = finetuned_frame(ft, metric=self.finetune_metric)
        candidates = candidates_frame(rank, finetuned_keys=list(finetuned["key"]))
        trials = rank_trials_frame(rank)
        extra = {"space": self.space.describe(), "dataset": self.dataset_name, "study": self.study_name}
        best = best_record(finetuned, pick=self.pick, extra=extra)
        files: list[Path] = []
        if write:
            best_state, best_graph = None, None
            if best is not None:
                from nas.graph import ArchGraph

                best_graph = ArchGraph.from_dict(best["graph"]) if best["graph"] else None
                weights = best.get("weights")
                if weights and Path(weights).is_file():
                    best_state = torch.load(weights, map_location="cpu", weights_only=True)
                else:
                    logger.warning(
                        "best.pt not written: the weights of fine-tune trial %d are not on this machine (%s, by %s)",
                        best["trial"],
                        weights,
                        best.get("worker"),
                    )
            cost = self.objectives[-1] if len(self.objectives) > 1 else None
            files = write_report(
                self.out,
                trials=trials,
                candidates=candidates,
                finetuned=finetuned,
                best=best,
                best_state=best_state,
                best_graph=best_graph,
                self_check=self_check.table if self_check is not None else None,
                multi_objective_cost=cost,
            )
        return CampaignResult(
            candidates=candidates,
            finetuned=finetuned,
            best=best,
            trials=trials,
            self_check=self_check,
            rank_stats=self.rank_stats,
            finetune_stats=self.finetune_stats,
            out=self.out,
            files=files,
            storage=mask_url(self.storage_url),
            study=self.study_name,
            rank_by=self.rank_by,
        )

    def run(self) -> CampaignResult:
        """Run (or resume) the whole campaign and write its results into ``out``.

        Returns:
            The tables, the best architecture and the self-check.

        Raises:
            StorageError: Bad storage, or a conflicting study of the same name.
            CheckpointError: A given GHN or ranker checkpoint is missing, corrupt
                or does not fit the space (raised before the storage is touched).
            ValueError: ``top_k`` exceeds the distinct candidates found.
        """
        self.out.mkdir(parents=True, exist_ok=True)
        _ = self.space  # validate the space (and load the data) before anything slow
        if self._ghn_in is not None:
            _ = self.ghn  # a given checkpoint is checked before the storage is touched
        if self._ranker_in is not None:
            _ = self.ranker  # so is a given ranker
        self.open()
        _ = self.ghn
        _ = self.ranker  # loads <out>/ranker.pt, or labels architectures and fits it there
        self.rank()
        self.enqueue()
        self.finetune(wait=True)
        check = self.run_self_check()
        return self.report(self_check=check)

    # ------------------------------------------------------------ workers

    @classmethod
    def from_storage(
        cls,
        storage: str,
        study: str,
        *,
        out: str | Path | None = None,
        ghn: Any = None,
        ranker: Any = None,
        device: str | None = None,
        progress: bool = True,
        heartbeat_interval: int = 30,
        grace_period: int = 120,
    ) -> Campaign:
        """Rebuild a campaign from the settings stored by the process that started it.

        Args:
            storage: The campaign's storage URL.
            study: The campaign name.
            out: Output folder of this worker (default: the campaign's own
                folder when it exists on this machine, else ``runs/<study>``).
            ghn: GHN (or checkpoint path) to use instead of the stored path.
            ranker: Ranker (or checkpoint path) to use instead of the stored
                path, for a campaign ranked by the ranker. It is loaded when
                the campaign ranks or self-checks; fine-tuning does not need it.
            device: Device (default: the stored one, CPU when CUDA is missing).
            progress: Show progress bars.
            heartbeat_interval: Seconds between heartbeats.
            grace_period: Seconds after which a silent worker counts as dead.

        Raises:
            StorageError: No such campaign in the storage, or its settings are unreadable.
            CheckpointError: The campaign was started with a GHN (or ranker)
                object, not a file, and none is given.
            ValueError: ``ranker`` is given for a campaign ranked by the predicted-weight loss.
        """
        handle = open_storage(storage, heartbeat_interval=heartbeat_interval, grace_period=grace_period)
        try:
            rank = optuna.load_study(study_name=f"{study}-rank", storage=handle)
        except KeyError:
            names = sorted(
                s.study_name[: -len("-rank")]
                for s in optuna.get_all_study_summaries(handle, include_best_trial=False)
                if s.study_name.endswith("-rank")
            )
            raise StorageError(
                f"no campaign {study!r} in storage {mask_url(storage)!r}; campaigns there: "
                f"{', '.join(names) or 'none'}. Start one with `nas search`."
            ) from None
        info = rank.user_attrs.get(CAMPAIGN_ATTR)
        if not isinstance(info, dict) or info.get("format") != _FORMAT:
            raise StorageError(f"study {study!r}-rank in {mask_url(storage)!r} holds no readable campaign settings.")
        if info.get("space") is None:
            raise StorageError(
                f"campaign {study!r} was started with a search space object that cannot be imported by name; "
                "run the worker through the Python API with Campaign(space=...)."
            )
        if ghn is None and info.get("ghn") is None:
            raise CheckpointError(
                f"campaign {study!r} was started with a GHN object, not a checkpoint file; pass --ghn PATH."
            )
        rank_by = info.get("rank_by", "loss")
        stored_ranker = info.get("ranker")
        if rank_by == "ranker" and ranker is None and (
            stored_ranker is None or (isinstance(stored_ranker, list) and None in stored_ranker)
        ):
            raise CheckpointError(
                f"campaign {study!r} was started with a ranker object, not a checkpoint file; pass --ranker PATH."
            )
        if rank_by != "ranker" and ranker is not None:
            raise ValueError(f"campaign {study!r} ranks by {rank_by!r}, not by a ranker: drop `ranker`.")
        labels = info.get("ranker_labels") or {}
        space_info = info["space_info"]
        stored_out = Path(info["out"])
        if out is None:
            out = stored_out if stored_out.is_dir() else Path("runs") / study
        ft = info["finetune"]
        return cls(
            space=info["space"],
            dataset=info["dataset"],
            ghn=ghn if ghn is not None else info.get("ghn"),
            trials=int(info["trials"]),
            top_k=int(info["top_k"]),
            finetune_epochs=float(ft["epochs"]),
            sampler=info.get("sampler") if info.get("sampler") in ("tpe", "random", "gp", "nsga2") else "tpe",
            objectives=info["objectives"],
            out=out,
            storage=storage,
            study=study,
            device=device or (info.get("device") or "cpu"),
            seed=int(info["seed"]),
            space_args=dict(space_info.get("settings", {})),
            finetune_metric=ft["metric"],
            finetune_lr=float(ft["lr"]),
            finetune_batch_size=int(ft["batch_size"]),
            data_seed=int(info["data_seed"]),
            heartbeat_interval=heartbeat_interval,
            grace_period=grace_period,
            progress=progress,
            rank_by=rank_by,
            ranker=(ranker if ranker is not None else info.get("ranker")) if rank_by == "ranker" else None,
            ranker_labels=int(labels.get("n", 300)),
            ranker_k=int(labels.get("k", 30)),
            label_workers=int(info.get("label_workers", 1)),
            refine=int(info.get("refine", 0)),
            refine_trials=int(info["refine_trials"]) if info.get("refine_trials") else None,
            rerank=(info.get("rerank") or {}).get("proxy"),
            rerank_pool=int((info.get("rerank") or {}).get("pool", 30)),
        )

    def work(self) -> FinetuneStats:
        """Fine-tune what is queued and return (the job of ``nas worker``); does not rank or wait."""
        self.open()
        return self.finetune(wait=False)


def _check_device(device: str) -> str:
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"`device` must be a torch device such as 'cpu' or 'cuda', but got {device!r}.") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"`device` is {device!r}, but CUDA is not available on this machine.")
    return str(device)


def _create_or_load(storage: Any, name: str, directions: list[str], url: str) -> tuple[optuna.Study, bool]:
    try:
        return optuna.create_study(storage=storage, study_name=name, directions=directions), True
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(study_name=name, storage=storage)
    Direction = optuna.study.StudyDirection  # noqa: N806
    want = [Direction.MINIMIZE if d == "minimize" else Direction.MAXIMIZE for d in directions]
    if list(study.directions) != want:
        raise StorageError(
            f"study {name!r} in {mask_url(url)!r} exists with directions "
            f"{[d.name.lower() for d in study.directions]}, not {directions}; use another --study name."
        )
    return study, False


def _check_ranker(ranker: Any, space: SearchSpace, dataset: str, *, source: Path | None = None) -> None:
    """Refuse a ranker that cannot score the space (:meth:`GHNRanker.check_compatible`); warn on another dataset."""
    if callable(getattr(ranker, "check_compatible", None)):
        ranker.check_compatible(space, source=source)
    info = getattr(ranker, "space_info", None) or {}
    if info.get("dataset") not in (None, dataset):
        logger.warning(
            "the ranker was fitted with a GHN of dataset %r, the campaign searches on %r", info.get("dataset"), dataset
        )


def _check_identity(stored: dict[str, Any], settings: dict[str, Any], name: str, url: str) -> None:
    stored = {**_IDENTITY_DEFAULTS, **stored}
    diffs = [key for key in IDENTITY_KEYS if _normalise(stored.get(key)) != settings.get(key)]
    if diffs:
        detail = "; ".join(f"{k}: stored {stored.get(k)!r}, requested {settings.get(k)!r}" for k in diffs)
        raise StorageError(
            f"campaign {name!r} in {mask_url(url)!r} exists with different settings ({detail}); "
            "use another --study name or --out folder, or repeat the original settings."
        )
