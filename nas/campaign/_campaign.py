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
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
import pandas as pd
import torch
from optuna.samplers import BaseSampler

from nas._atomic import atomic_write_bytes, one_line
from nas.data import Dataset, load_dataset
from nas.exceptions import CheckpointError, StorageError
from nas.space import SearchSpace, builtin_spaces, load_space
from nas.training import TrainConfig

from nas.campaign._config import IDENTITY_KEYS, MIN_RANKER_LABELS, CampaignConfig
from nas.campaign._finetune import (
    FinetuneStats,
    directions_for,
    enqueue_candidates,
    run_finetune_worker,
    select_candidates,
    wait_for_running,
)
from nas.campaign._rank import (
    RANK_BY,
    SAMPLERS,
    SHORT_TRAINING_FILE,
    RankStats,
    ShortTrainingScore,
    resolve_objectives,
    resolve_sampler,
    run_rank_stage,
)
from nas.campaign._report import (
    PICKS,
    best_record,
    candidates_frame,
    finetuned_frame,
    rank_trials_frame,
    write_report,
)
from nas.campaign._selfcheck import SelfCheck, run_self_check, self_check_candidates
from nas.campaign._storage import CAMPAIGN_ATTR, default_storage_url, mask_url, open_storage, worker_session

if TYPE_CHECKING:
    from nas.ghn import GHN, MetaTrainConfig, Ranker, RankerConfig

__all__ = ["Campaign", "CampaignResult", "CAMPAIGN_ATTR", "IDENTITY_KEYS", "stored_campaign_config"]

logger = logging.getLogger(__name__)

#: Layout of the settings stored in the rank study (1: before :class:`CampaignConfig`; 2: its ``to_dict``).
_FORMAT = 2


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
        rank_by: What ranked the candidates (``"short"``, ``"ranker"`` or ``"loss"``, see
            :data:`~nas.campaign.RANK_BY`); the tables' ``rank_score`` is its score.
        ranker: What the ranker was fitted on and its FLOPs-prior weight
            (``labelled``, ``k``, ``seed``, ``flops_weight``), its labels' and fits'
            CPU-seconds (``label_seconds``, ``fit_seconds``), the label counts after each
            purchase (``purchases``) and why buying stopped (``stopped``: ``"plateau"``,
            ``"budget"`` or ``"seconds"``), ``cv_tau`` (Kendall tau of its out-of-fold
            predictions of the labels) and ``held_out_tau``, the mean Kendall tau of its
            members on the labels each held out (``None`` when too few were), when this
            process ranked with a :class:`~nas.ghn.GHNRanker`; else ``None``.
        short_training: With ``rank_by="short"``: the candidates trained (``trained``),
            their SGD steps (``k``), the CPU-seconds of those runs (``seconds``) and the
            labels a ranker would have needed (``labels``); else ``None``.
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
    ranker: dict[str, Any] | None = None
    short_training: dict[str, Any] | None = None

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
            table = self.finetuned[cols].head(rows)  # the tables' own column names
            table["key"] = table["key"].str[:10]
            lines.append(table.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
        if self.best is not None:
            m = self.best["metrics"]
            lines.append(
                f"best: rank trial {self.best['rank_trial']}, key {self.best['key'][:10]}, "
                f"{self.best['num_params']} params, val acc {m['val_acc']:.4f}, test acc {m['test_acc']:.4f} "
                f"({PICKS[self.best.get('pick', 'finetuned')]})"
            )
        if self.ranker is not None:
            r = self.ranker
            cv = r.get("cv_tau")
            fit = f"; cross-validated Kendall tau {cv:.2f} on its labels" if cv is not None else ""
            bought = ""
            if r.get("purchases"):
                why = {"plateau": "the last purchase lifted its tau by less than the margin",
                       "budget": "the label budget was reached", "seconds": "the label CPU budget was reached"}
                bought = (f", bought in {len(r['purchases'])} purchase(s) ({', '.join(map(str, r['purchases']))}; "
                          f"stopped: {why.get(r.get('stopped'), r.get('stopped'))})")
            cost = ""
            if r.get("label_seconds") is not None:
                cost = f"; {r['label_seconds']:.0f} CPU-s of labels, {r.get('fit_seconds') or 0:.0f} CPU-s of fitting"
            lines.append(f"ranker: {r.get('labelled', '?')} labels of {r.get('k', '?')} SGD steps{bought}{cost}; "
                         f"FLOPs-prior weight {r['flops_weight']:g}{fit}")
        if self.short_training is not None:
            st = self.short_training
            lines.append(f"short training: {st['trained']} candidates trained for {st['k']} SGD steps each, "
                         f"{st['seconds']:.0f} CPU-s in all; no ranker labels bought")
        if "latency_ms" in self.candidates.columns:
            lat = self.candidates["latency_ms"].astype(float)
            front = self.candidates[self.candidates["pareto"]]
            lines.append(f"latency: measured for {int(lat.notna().sum())} candidates (median {lat.median():.3g} ms per "
                         f"batch, from {lat.min():.3g} to {lat.max():.3g} ms); {len(front)} on the front of rank "
                         "score and latency (pareto.png)")
        if self.self_check is not None:
            lines.append(self.self_check.message)
        if self.out is not None:
            lines.append(f"results in {self.out}")
        return "\n".join(lines)


def _ranker_summary(ranker: Any) -> dict[str, Any] | None:
    """:attr:`CampaignResult.ranker` of a loaded ranker (``None`` for another kind or none)."""
    from nas.ghn import GHNRanker

    if not isinstance(ranker, GHNRanker):
        return None
    info = {k: ranker.label_info.get(k) for k in ("labelled", "k", "seed", "stopped", "label_seconds", "fit_seconds")}
    taus = [t for t in ranker.member_tau if math.isfinite(t)]
    held_out = float(sum(taus) / len(taus)) if taus else None
    cv = ranker.cv_tau if math.isfinite(ranker.cv_tau) else None
    purchases = [h["labels"] for h in ranker.label_info.get("history", [])]
    return {**info, "flops_weight": ranker.config.flops_weight, "held_out_tau": held_out, "cv_tau": cv,
            "purchases": purchases}


def _short_training_summary(path: Path, config: CampaignConfig, keys: Any) -> dict[str, Any]:
    """:attr:`CampaignResult.short_training` from the runs of the rank candidates ``keys`` cached in ``path``.

    The self-check's candidates, trained briefly too to score them, are not counted.
    """
    runs = pd.read_csv(path) if path.is_file() and path.stat().st_size else pd.DataFrame(columns=["key", "seconds"])
    runs = runs[runs["key"].isin(set(keys))]
    return {"trained": len(runs), "k": config.ranker_k, "seconds": float(pd.to_numeric(runs["seconds"]).sum()),
            "labels": config.ranker_labels}


def _normalise(value: Any) -> Any:
    return json.loads(json.dumps(value, sort_keys=True, default=str))


def _is_ranker(value: Any) -> bool:
    """Whether ``value`` implements :class:`nas.ghn.Ranker` (``score`` and ``check_compatible``)."""
    from nas.ghn import Ranker

    return isinstance(value, Ranker)


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

    The settings are one :class:`~nas.campaign.CampaignConfig`; the campaign
    holds the resources (search space, dataset, GHN, ranker, sampler) and runs
    the stages.

    Stage 1 (study ``<study>-rank``): an Optuna sampler proposes candidates
    through the search space and each gets a rank score (minimised). With
    ``rank_by="ranker"`` (the default) the score is
    :meth:`nas.ghn.GHNRanker.score`: the short-training loss (TSE: the sum of
    the first ``ranker_k`` SGD losses from random initialisation) that the
    ranker predicts from the graph alone, with a log-FLOPs capacity prior.
    Without a given ranker, one is fitted once per campaign into
    ``<out>/ranker.pt``: ``ranker_labels`` architectures sampled from the space
    (never the self-check's) are trained for ``ranker_k`` steps
    (``<out>/ranker_labels.csv``, resumable), then a graph network of the
    GHN's design is fitted to those labels from random weights, so ranking
    waits for no meta-training (the GHN is meta-trained when fine-tuning first
    needs its predicted weights). With ``rank_by="loss"`` the score is the
    validation loss of the GHN-predicted weights. Candidates are scored in
    batches, and a candidate seen before (same canonical key) reuses its
    stored score. With two objectives, the second (parameters or FLOPs) is
    minimised too and fine-tuning candidates come from the Pareto front.

    Stage 2 (study ``<study>-finetune``): the ``top_k`` best distinct candidates
    are enqueued once; workers (this process and any ``nas worker``) claim them,
    initialise each from its predicted weights and fine-tune it for
    ``finetune_epochs``; the trial value is the validation accuracy (or loss).

    Running the same campaign again resumes it: finished trials are kept, the
    trials of dead workers are re-queued, nothing is scored or trained twice.

    Args:
        config: The settings (default: :class:`~nas.campaign.CampaignConfig` ``()``).
        space: A :class:`~nas.space.SearchSpace` to search instead of
            ``config.space``, or a space name (then a setting).
        dataset: A loaded :class:`~nas.data.Dataset` instead of
            ``config.dataset``, or a dataset name (then a setting).
        ghn: A trained GHN instead of ``config.ghn``, or a checkpoint path (then a setting).
        ranker: A fitted :class:`~nas.ghn.Ranker`, or a list of rankers and
            checkpoint paths (ranked by their mean, a :class:`nas.ghn.RankerEnsemble`),
            instead of ``config.ranker``; or a path, or a list of paths (then a setting).
        sampler: An Optuna sampler instead of ``config.sampler``, or a sampler name (then a setting).
        meta_train: A :class:`nas.ghn.MetaTrainConfig` for the GHN meta-trained
            when there is none (default: the recipe with ``config.ghn_steps`` on ``config.device``).
        ranker_config: A :class:`nas.ghn.RankerConfig` for the ranker fitted
            when there is none (default: the recipe, seeded with ``config.seed``).
        **settings: Settings that override those of ``config`` (the fields of
            :class:`~nas.campaign.CampaignConfig`).

    Raises:
        ValueError: A setting is out of range (the message names it).

    Examples:
        >>> campaign = Campaign(CampaignConfig(trials=300, top_k=5, out="runs/x"))  # doctest: +SKIP
        >>> result = campaign.run()  # doctest: +SKIP
        >>> result.best["metrics"]["val_acc"]  # doctest: +SKIP
    """

    def __init__(
        self,
        config: CampaignConfig | None = None,
        *,
        space: str | SearchSpace | None = None,
        dataset: str | Dataset | None = None,
        ghn: str | Path | GHN | None = None,
        ranker: str | Path | Ranker | Sequence[str | Path | Ranker] | None = None,
        sampler: str | BaseSampler | None = None,
        meta_train: MetaTrainConfig | None = None,
        ranker_config: RankerConfig | None = None,
        **settings: Any,
    ) -> None:
        if config is not None and not isinstance(config, CampaignConfig):
            raise ValueError(f"`config` must be a CampaignConfig or None, but got {config!r}.")
        settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in settings.items()}
        self._space_in: SearchSpace | None = None
        self._dataset_in: Dataset | None = None
        self._ghn_in: GHN | None = None
        self._ranker_in: Ranker | list[Any] | None = None
        self._sampler_in: BaseSampler | None = None
        if isinstance(space, SearchSpace):
            self._space_in = space
            settings["space"] = _space_spec(space) or space.name
        elif space is not None:
            settings["space"] = space
        if dataset is not None and not isinstance(dataset, str):
            self._dataset_in = dataset
            settings["dataset"] = dataset.name
        elif dataset is not None:
            settings["dataset"] = dataset
        if ghn is not None and not isinstance(ghn, (str, Path)):
            self._ghn_in = ghn
        elif ghn is not None:
            settings["ghn"] = str(ghn)
        if ranker is not None:
            several = list(ranker) if isinstance(ranker, (list, tuple)) else [ranker]
            if several and all(isinstance(r, (str, Path)) for r in several):
                settings["ranker"] = ranker if isinstance(ranker, (str, Path)) else [str(r) for r in several]
            elif not several or not all(isinstance(r, (str, Path)) or _is_ranker(r) for r in several):
                raise ValueError(
                    "`ranker` must be a ranker (with score and check_compatible), the path of a ranker checkpoint, "
                    f"a list of those (an ensemble) or None, but got {ranker!r}."
                )
            else:
                self._ranker_in = several if isinstance(ranker, (list, tuple)) else ranker
                rank_by = settings.get("rank_by", (config or CampaignConfig()).rank_by)
                if rank_by not in (None, "ranker"):
                    raise ValueError(
                        f"`ranker` is used only when `rank_by` is 'ranker', but `rank_by` is {rank_by!r}."
                    )
                settings["rank_by"] = "ranker"
        if isinstance(sampler, BaseSampler):
            self._sampler_in = sampler
        elif sampler is not None:
            settings["sampler"] = sampler
        #: The settings, with the defaults that depend on other settings filled in.
        self.config: CampaignConfig = (config or CampaignConfig()).replace(**settings).resolved()
        self.device = _check_device(self.config.device)
        self.out = Path(self.config.out)
        self.storage_url = self.config.storage if self.config.storage is not None else default_storage_url(self.out)
        self.objectives = resolve_objectives(self.config.objectives)
        self.meta_train_config = meta_train
        self.ranker_config = ranker_config
        self._ranker: Ranker | None = None
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
        return self.config.dataset

    @property
    def data(self) -> Dataset:
        """The dataset (loaded on first use)."""
        if self._data is None:
            if self._dataset_in is None:
                self._data = load_dataset(self.config.dataset, seed=self.config.data_seed)
            else:
                self._data = self._dataset_in
        return self._data

    @property
    def space(self) -> SearchSpace:
        """The search space, shaped to the dataset (built on first use)."""
        if self._space is None:
            data = self.data
            space = load_space(
                self._space_in if self._space_in is not None else self.config.space,
                input_shape=data.input_shape,
                num_classes=data.num_classes,
                **self.config.space_args,
            )
            # A space whose build() fails, or that a study would refuse later, is refused before any storage is
            # touched or one-time cost paid.
            space.check_choices(seed=self.config.seed)
            size = space.size()
            if size is not None and size < self.config.top_k:
                raise ValueError(
                    f"`top_k` is {self.config.top_k}, but search space {space.name!r} has only {size} candidates; "
                    "lower --top-k."
                )
            self._space = space
        return self._space

    @property
    def study_name(self) -> str:
        if self.config.study is not None:
            return self.config.study.strip()
        space_name = self._space_in.name if self._space_in is not None else self.config.space
        name = f"{Path(str(space_name)).stem.split(':')[-1]}-{self.dataset_name}"
        return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)

    @property
    def ghn(self) -> Any:
        """The GHN (loaded or meta-trained on first use), checked against the space."""
        if self._ghn is None:
            self._ghn = self._resolve_ghn()
        return self._ghn

    def _ghn_path(self) -> Path | None:
        """The GHN's checkpoint path (``<out>/ghn.pt`` when meta-trained here), ``None`` for a GHN object."""
        if self._ghn_in is not None:
            return None
        if self.config.ghn is None:
            return (self.out / "ghn.pt").resolve()
        return _checkpoint_path(self.config.ghn)

    def _meta_train(self) -> MetaTrainConfig:
        """The meta-training recipe of a GHN trained here."""
        from nas.ghn import MetaTrainConfig

        if self.meta_train_config is not None:
            return self.meta_train_config
        steps = self.config.ghn_steps
        if steps is None:
            return MetaTrainConfig(device=self.device)
        default = MetaTrainConfig()
        return MetaTrainConfig(
            steps=steps,
            device=self.device,
            warmup_steps=min(default.warmup_steps, steps),
            eval_every=min(default.eval_every, steps),
        )

    def _resolve_ghn(self) -> Any:
        import nas.ghn as ghn_mod

        ghn: Any = self._ghn_in
        if ghn is None and self.config.ghn is None:
            path = self._ghn_path()
            assert path is not None
            ghn = ghn_mod.ensure_ghn(self.space, self.data, path=path, config=self._meta_train(),
                                     progress=self.config.progress)
        elif ghn is None:
            path = Path(self.config.ghn).expanduser()
            if not path.is_file():
                raise CheckpointError(
                    f"GHN checkpoint {str(path)!r} does not exist (a worker on another machine: pass --ghn PATH)."
                )
            ghn = ghn_mod.GHN.load(path, map_location=self.device)
        if hasattr(ghn, "space_info"):
            from nas.ghn import check_identity

            path = self._ghn_path()
            where = f"GHN checkpoint {str(path)!r}" if path is not None else "the GHN"
            check_identity(ghn.space_info, self.space, self.data, where=where)
        if hasattr(ghn, "check_compatible"):
            ghn.check_compatible(self.space)
        if isinstance(ghn, torch.nn.Module):
            ghn.to(self.device)
        return ghn

    @property
    def ranker(self) -> Ranker | None:
        """The GHN ranker (loaded or fitted on first use), checked against the space.

        ``None`` when the campaign ranks by the predicted-weight loss (``rank_by="loss"``).
        """
        if self.config.rank_by != "ranker":
            return None
        if self._ranker is None:
            self._ranker = self._resolve_ranker()
        return self._ranker

    def short_training(self) -> ShortTrainingScore:
        """The scorer of ``rank_by="short"``: each candidate's TSE after ``ranker_k`` steps (``OUT/rank_tse.csv``).

        Trained by ``label_workers`` processes, or through the labels' queue with ``queue_labels``.
        """
        config = self.config
        return ShortTrainingScore(self.data, k=config.ranker_k, seed=config.seed, cache=self.out / SHORT_TRAINING_FILE,
                                  workers=config.label_workers, queue=self._label_queue(), progress=config.progress)

    def _ranker_sources(self) -> list[Any] | Any | None:
        """The ranker as given: an object or path, a list of those (an ensemble), or ``None`` (fit one here)."""
        if self._ranker_in is not None:
            return self._ranker_in
        return self.config.ranker

    def _ranker_setting(self) -> str | list[str] | None:
        """The ranker as stored: its path, the members' paths of an ensemble, or ``None`` for a ranker object."""
        if self.config.rank_by != "ranker":
            return None
        given = self._ranker_sources()
        if given is None:
            return str((self.out / "ranker.pt").resolve())
        several = given if isinstance(given, list) else [given]
        paths = [_checkpoint_path(r) for r in several]
        if any(path is None for path in paths):
            return None
        if isinstance(given, list):
            return [str(path) for path in paths]
        return str(paths[0])

    def _resolve_ranker(self) -> Ranker:
        from nas.ghn import RankerEnsemble

        given = self._ranker_sources()
        if given is None:
            return self._ensure_ranker()
        if isinstance(given, list):
            ranker: Any = RankerEnsemble([self._load_ranker(r) for r in given])
        else:
            ranker = self._load_ranker(given)
        if isinstance(ranker, torch.nn.Module):
            ranker.to(self.device)
        return ranker

    def _load_ranker(self, ranker: Any) -> Ranker:
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
        _check_ranker(ranker, self.space, self.data, source=source)
        return ranker

    def _ensure_ranker(self) -> Ranker:
        """Load ``<out>/ranker.pt``, or label architectures and fit the ranker there."""
        from nas.ghn import RankerConfig, ensure_ranker

        path = (self.out / "ranker.pt").resolve()
        space, config = self.space, self.config
        # The self-check compares the ranking with training: its candidates must not be labels.
        exclude = sorted({c.graph.key for c in self_check_candidates(space, config.self_check, seed=config.seed)})
        n = config.ranker_labels
        size = space.size()
        if size is not None and size - len(exclude) < n:
            n = size - len(exclude)
            if n < MIN_RANKER_LABELS:
                raise ValueError(
                    f"`ranker_labels`: search space {space.name!r} has only {size} candidates "
                    f"({len(exclude)} kept for the self-check), too few to fit a ranker on {MIN_RANKER_LABELS}; "
                    "rank by the predicted-weight loss (rank_by='loss') instead."
                )
            logger.info("labelling all %d candidates of search space %r outside the self-check", n, space.name)
        # A resumed campaign keeps the ranker its candidates were scored with (``extend=False`` below), even
        # when more trials now allow more labels.
        if n > max(config.trials, MIN_RANKER_LABELS):
            # Labels never cost more than training each of the search's candidates as briefly would.
            n = max(config.trials, MIN_RANKER_LABELS)
            logger.info("buying at most %d ranker labels: no more than the %d rank trials", n, config.trials)
        fit = self.ranker_config or RankerConfig(seed=config.seed)
        # A ranker fitted from random weights needs no meta-trained GHN: ranking does not wait for one.
        ranker = ensure_ranker(
            space, self.data, self.ghn if fit.pretrained else None, path=path, ranker_labels=n,
            ranker_k=config.ranker_k, seed=config.seed, exclude=exclude, labels_cache=self.out / "ranker_labels.csv",
            workers=config.label_workers, config=fit, label_batch=config.label_batch, label_margin=config.label_margin,
            label_seconds=config.label_seconds, extend=False, progress=config.progress, queue=self._label_queue(),
        )
        _check_ranker(ranker, space, self.data, source=path)
        return ranker

    def _label_queue(self) -> Any:
        """The labels' queue in the campaign's storage (``queue_labels``), or ``None``."""
        if not self.config.queue_labels:
            return None
        if self._dataset_in is not None:
            raise ValueError("`queue_labels` needs a dataset that workers can load by name; pass `dataset` as a name, "
                             "not a Dataset object.")
        from nas.campaign._queue import QueuedLabels

        self.open()  # the storage holds the campaign before its workers are told to join it
        return QueuedLabels(self.storage_url, self.study_name,
                            dataset={"name": self.config.dataset, "seed": self.config.data_seed, "max_train": None},
                            heartbeat_interval=self.config.heartbeat_interval, grace_period=self.config.grace_period)

    # ------------------------------------------------------------ storage

    def stored_config(self) -> CampaignConfig:
        """The configuration as stored: checkpoint paths and the output folder resolved, objects as ``None``.

        A GHN or ranker given as an object is stored as ``None``, and so is a
        space object that cannot be imported by name (``space`` then holds its name).
        The storage URL is stored with its password masked: a process joining the
        campaign names the storage itself (:meth:`from_storage`).
        """
        ghn_path = self._ghn_path()
        storage = self.config.storage
        return self.config.replace(
            ghn=str(ghn_path) if ghn_path is not None else None,
            ranker=self._ranker_setting(),
            out=str(self.out.resolve()),
            sampler=self.config.sampler,
            storage=mask_url(storage) if storage is not None else None,
        )

    def settings(self) -> dict[str, Any]:
        """The campaign's settings as stored in the rank study (user attribute ``nas_campaign``).

        ``config`` holds :meth:`stored_config` (:meth:`CampaignConfig.to_dict`),
        ``space`` the space's import spec (``None`` for a space object that
        cannot be imported by name), ``space_info`` the built space's
        description and ``sampler`` the sampler's class for a sampler object.
        """
        return _normalise({
            "format": _FORMAT,
            "config": self.stored_config().to_dict(),
            "space": _space_spec(self._space_in) if self._space_in is not None else self.config.space,
            "space_info": self.space.describe(),
            "sampler": type(self._sampler_in).__name__ if self._sampler_in is not None else self.config.sampler,
        })

    def open(self) -> tuple[optuna.Study, optuna.Study]:
        """Open (creating or joining) the two studies of the campaign.

        Returns:
            ``(rank_study, finetune_study)``.

        Raises:
            StorageError: Bad storage URL, or a study of this name exists with
                different settings (the identity settings of
                :class:`~nas.campaign.CampaignConfig`, see :data:`IDENTITY_KEYS`).
            ValueError: ``out`` holds another campaign's results (:func:`claim_output_folder`).
        """
        if self._rank_study is not None and self._ft_study is not None:
            return self._rank_study, self._ft_study
        self.out.mkdir(parents=True, exist_ok=True)
        claim_output_folder(self.out, self.study_name)
        config = self.config
        self._storage = open_storage(
            self.storage_url, heartbeat_interval=config.heartbeat_interval, grace_period=config.grace_period
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
        seed = config.seed if created else config.seed + os.getpid() + len(rank.trials)
        rank.sampler = resolve_sampler(self._sampler_in or config.sampler, seed=seed)
        ft, _ = _create_or_load(
            self._storage, f"{name}-finetune", list(directions_for(config.finetune_metric)), self.storage_url
        )
        _name_metrics(rank, list(self.objectives))
        _name_metrics(ft, [config.finetune_metric])
        self._rank_study, self._ft_study = rank, ft
        return rank, ft

    # ------------------------------------------------------------ stages

    def rank(self, *, worker: str | None = None) -> RankStats:
        """Stage 1: run the rank study up to ``trials`` complete trials (scored by ``rank_by``)."""
        rank, _ = self.open()
        ranker = self.short_training() if self.config.rank_by == "short" else self.ranker
        ghn = None if ranker is not None else self.ghn  # the ranker and short training need no predicted weights
        space, data = self.space, self.data
        with worker_session() as fresh:
            self.rank_stats = run_rank_stage(
                rank,
                space,
                ghn,
                data,
                n_trials=self.config.trials,
                batch_size=self.config.batch_size,
                objectives=self.objectives,
                ranker=ranker,
                device=self.device,
                worker=worker or fresh,
                heartbeat_interval=self.config.heartbeat_interval,
                grace_period=self.config.grace_period,
                progress=self.config.progress,
                refine=self.config.refine,
                refine_trials=self.config.refine_trials,
            )
        return self.rank_stats

    def enqueue(self) -> list[str]:
        """Enqueue the top-k distinct candidates for fine-tuning (each key once per campaign).

        Raises:
            ValueError: Fewer distinct scored candidates than ``top_k``.
        """
        rank, ft = self.open()
        if self.config.objectives == "loss,latency":
            candidates = self.with_latency(candidates_frame(rank, space=self.space), measure=True)
        else:
            candidates = candidates_frame(rank)
        pareto = len(self.objectives) > 1
        return enqueue_candidates(rank, ft, select_candidates(candidates, self.config.top_k, pareto=pareto))

    def with_latency(self, candidates: pd.DataFrame, *, measure: bool) -> pd.DataFrame:
        """Candidates with measured latency and the Pareto front of rank score and latency (``loss,latency``).

        The pool measured is the ``latency_pool`` best candidates by rank score
        plus the rank study's own (rank score, FLOPs) front; measurements are
        cached in ``OUT/latency.csv`` per key, device and batch size, so a resumed
        campaign measures nothing twice.

        Args:
            candidates: :func:`~nas.campaign.candidates_frame` output (with ``graph``).
            measure: Measure the pool's missing latencies; ``False`` only reads the cache.

        Returns:
            A copy with ``latency_ms`` and ``latency_iqr_ms`` (``nan`` outside the
            pool) and ``pareto`` recomputed on (``rank_score``, ``latency_ms``).
        """
        from nas.graph import ArchGraph
        from nas.latency import LatencyCache, pareto_front

        frame = candidates.copy()
        finite = frame["rank_score"].map(math.isfinite).astype(bool) if len(frame) else frame["rank_score"]
        scored = frame[finite & frame["graph"].notna()]
        best = scored.sort_values(["rank_score", "trial"], kind="stable").head(self.config.latency_pool)
        pool = pd.concat([best, scored[scored["pareto"]]]).drop_duplicates("key")
        cache = LatencyCache(self.out / "latency.csv")
        device, batch = str(self.device), self.config.latency_batch_size
        if measure:
            graphs = [ArchGraph.from_json(g) if isinstance(g, str) else ArchGraph.from_dict(g) for g in pool["graph"]]
            self.out.mkdir(parents=True, exist_ok=True)
            table = cache.measure_missing(graphs, device=device, batch_size=batch, progress=self.config.progress)
        else:
            table = cache.lookup(list(pool["key"]), device=device, batch_size=batch)
        by_key = table.set_index("key")
        frame["latency_ms"] = frame["key"].map(by_key["latency_ms"]).astype(float)
        frame["latency_iqr_ms"] = frame["key"].map(by_key["latency_iqr_ms"]).astype(float)
        frame["pareto"] = pareto_front(frame["rank_score"].astype(float).tolist(), frame["latency_ms"].tolist())
        return frame

    def train_config(self) -> TrainConfig:
        """The fine-tuning settings."""
        return TrainConfig(
            epochs=self.config.finetune_epochs,
            lr=self.config.finetune_lr,
            batch_size=self.config.finetune_batch_size,
            seed=self.config.seed,
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
                    metric=self.config.finetune_metric,
                    weights_dir=self.out / "weights",
                    worker=worker or fresh,
                    heartbeat_interval=self.config.heartbeat_interval,
                    grace_period=self.config.grace_period,
                    progress=self.config.progress,
                )
                total.finetuned += stats.finetuned
                total.failed += stats.failed
                total.skipped += stats.skipped
                if not wait or not wait_for_running(ft, grace_period=self.config.grace_period):
                    break
        self.finetune_stats = total
        return total

    def run_self_check(self) -> SelfCheck | None:
        """Train ``self_check`` random candidates, compare with their rank score (cached in ``ground_truth.sqlite``)."""
        if self.config.self_check == 0:
            return None
        ranker = self.short_training() if self.config.rank_by == "short" else self.ranker
        return run_self_check(
            self.space,
            None if ranker is not None else self.ghn,
            self.data,
            ranker=ranker,
            rank_by=self.config.rank_by,
            n=self.config.self_check,
            epochs=self.config.self_check_epochs,
            seed=self.config.seed,
            device=self.device,
            cache=self.out / "ground_truth.sqlite",
            progress=self.config.progress,
        )

    def report(self, *, self_check: SelfCheck | None = None, write: bool = True) -> CampaignResult:
        """Build the result tables from the studies and (by default) write the output files."""
        rank, ft = self.open()
        finetuned = finetuned_frame(ft, metric=self.config.finetune_metric, space=self.space)
        candidates = candidates_frame(rank, finetuned_keys=list(finetuned["key"]), space=self.space)
        if self.config.objectives == "loss,latency":
            candidates = self.with_latency(candidates, measure=False)
        trials = rank_trials_frame(rank)
        extra = {"space": self.space.describe(), "dataset": self.dataset_name, "study": self.study_name}
        best = best_record(finetuned, pick=self.config.pick, extra=extra)
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
            if self.config.objectives == "loss,latency":
                cost = "latency_ms"
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
            summary = _ranker_summary(self._ranker)
            if summary is not None:  # what the ranker's labels were and cost, beside the tables
                summary["history"] = [{k: None if isinstance(v, float) and not math.isfinite(v) else v
                                        for k, v in h.items()} for h in self._ranker.label_info.get("history", [])]
                path = self.out / "ranker.json"
                atomic_write_bytes(path, (json.dumps(_normalise(summary), indent=2) + "\n").encode())
                files.append(path)
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
            rank_by=self.config.rank_by,
            ranker=_ranker_summary(self._ranker),
            short_training=_short_training_summary(self.out / SHORT_TRAINING_FILE, self.config, candidates["key"])
            if self.config.rank_by == "short" else None,
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
        _ = self.space  # validate the space (and load the data) before anything is written or paid for
        if self._ghn_in is not None or self.config.ghn is not None:
            _ = self.ghn  # a given checkpoint is checked before the storage is touched
        if self._ranker_sources() is not None:
            _ = self.ranker  # so is a given ranker
        self.open()
        # The GHN is meta-trained when first needed: by `rank_by="loss"`, by a ranker fitted from its
        # weights, and by fine-tuning from predicted weights (after ranking, with a ranker from random weights).
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
        ghn: str | Path | GHN | None = None,
        ranker: str | Path | Ranker | Sequence[str | Path | Ranker] | None = None,
        device: str | None = None,
        progress: bool = True,
        heartbeat_interval: int | None = None,
        grace_period: int | None = None,
    ) -> Campaign:
        """Rebuild a campaign from the configuration stored by the process that started it.

        Args:
            storage: The campaign's storage URL.
            study: The campaign name.
            out: Output folder of this worker (default: the campaign's own
                folder when it exists on this machine, else ``runs/<study>``).
            ghn: GHN (or checkpoint path) to use instead of the stored path.
            ranker: Ranker (or checkpoint path) to use instead of the stored
                path, for a campaign ranked by the ranker. It is loaded when
                the campaign ranks or self-checks; fine-tuning does not need it.
            device: Device (default: the stored one).
            progress: Show progress bars.
            heartbeat_interval: Seconds between heartbeats (default: the stored setting).
            grace_period: Seconds after which a silent worker counts as dead (default: the stored setting).

        Raises:
            StorageError: No such campaign in the storage, or its settings are unreadable.
            CheckpointError: The campaign was started with a GHN (or ranker)
                object, not a file, and none is given.
            ValueError: ``ranker`` is given for a campaign ranked by the predicted-weight loss.
        """
        handle = open_storage(
            storage,
            heartbeat_interval=heartbeat_interval or CampaignConfig.heartbeat_interval,
            grace_period=grace_period or CampaignConfig.grace_period,
        )
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
        try:
            stored = stored_campaign_config(info)
        except (ValueError, KeyError, TypeError):
            stored = None
        if stored is None:
            raise StorageError(f"study {study!r}-rank in {mask_url(storage)!r} holds no readable campaign settings.")
        if info.get("space") is None:
            raise StorageError(
                f"campaign {study!r} was started with a search space object that cannot be imported by name; "
                "run the worker through the Python API with Campaign(space=...)."
            )
        if ghn is None and stored.ghn is None:
            raise CheckpointError(
                f"campaign {study!r} was started with a GHN object, not a checkpoint file; pass --ghn PATH."
            )
        if stored.rank_by == "ranker" and ranker is None and stored.ranker is None:
            raise CheckpointError(
                f"campaign {study!r} was started with a ranker object, not a checkpoint file; pass --ranker PATH."
            )
        if stored.rank_by != "ranker" and ranker is not None:
            raise ValueError(f"campaign {study!r} ranks by {stored.rank_by!r}, not by a ranker: drop `ranker`.")
        stored_out = Path(stored.out)
        if out is None:
            out = stored_out if stored_out.is_dir() else Path("runs") / study
        config = stored.replace(
            space=info["space"],
            out=str(out),
            storage=storage,
            study=study,
            device=device or stored.device,
            progress=progress,
            heartbeat_interval=heartbeat_interval or stored.heartbeat_interval,
            grace_period=grace_period or stored.grace_period,
        )
        return cls(config, ghn=ghn, ranker=ranker)

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


def _name_metrics(study: optuna.Study, names: list[str]) -> None:
    """Name the study's objectives (optuna-dashboard shows them instead of "Objective 0"), once."""
    if study.metric_names == names:
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names(names)


#: The file naming the campaign whose results an output folder holds.
OUTPUT_MANIFEST = "nas-campaign.json"


def claim_output_folder(out: Path, study: str) -> None:
    """Refuse to write campaign ``study``'s results into a folder that holds another campaign's.

    A campaign's folder holds one campaign's ranker, labels, tables and
    ``best.json``; a second campaign there would reuse the first one's ranker and
    overwrite its results. The first run writes :data:`OUTPUT_MANIFEST` naming
    its study; a run of another study is refused before anything is written.
    (A folder written before the manifest existed is claimed by the next run.)

    Raises:
        ValueError: ``out`` belongs to another study, or its manifest is unreadable.
    """
    path = out / OUTPUT_MANIFEST
    if path.exists():
        try:
            owner = json.loads(path.read_text())["study"]
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise ValueError(f"output folder {str(out)!r}: {OUTPUT_MANIFEST} cannot be read ({one_line(err)}); "
                             "it names the campaign whose results the folder holds.") from None
        if owner != study:
            raise ValueError(
                f"output folder {str(out)!r} holds the results of campaign {owner!r}; campaign {study!r} would "
                f"reuse its ranker and overwrite its tables and best.json: use another --out folder, or "
                f"--study {owner} to resume that campaign."
            )
        return
    atomic_write_bytes(path, (json.dumps({"study": study, "written_by": "ghn-nas"}, indent=2) + "\n").encode())


def _check_ranker(ranker: Ranker, space: SearchSpace, data: Dataset, *, source: Any = None) -> None:
    """Refuse a ranker built for another space, settings or dataset split, or one that cannot score the space.

    The identity (:func:`~nas.ghn.check_identity`) of a ranker with a
    ``space_info`` (and of each member of an ensemble) is checked first, then
    :meth:`Ranker.check_compatible`.
    """
    from nas.ghn import check_identity

    members = getattr(ranker, "rankers", None) or [ranker]
    sources = source if isinstance(source, (list, tuple)) else [source] * len(members)
    for member, path in zip(members, sources, strict=False):
        if hasattr(member, "space_info"):
            where = f"ranker checkpoint {str(path)!r}" if path is not None else "the ranker"
            check_identity(member.space_info, space, data, where=where)
    ranker.check_compatible(space, source=source)


def stored_campaign_config(info: Any) -> CampaignConfig | None:
    """The :class:`CampaignConfig` stored in a rank study's ``nas_campaign`` attribute, or ``None``.

    Reads the current layout (``format`` 2: the configuration under ``config``;
    settings that older versions stored and this one no longer has are dropped,
    see :data:`nas.campaign._config.REMOVED_SETTINGS`) and the layout of campaigns
    stored before :class:`CampaignConfig` existed (``format`` 1: one key per
    setting, fine-tuning and label settings nested;
    campaigns older than ``rank_by`` ranked by the predicted-weight loss).

    Raises:
        ValueError: A stored setting is out of range.
    """
    if not isinstance(info, dict):
        return None
    if info.get("format") == _FORMAT:
        return CampaignConfig.from_dict(info["config"])
    if info.get("format") != 1:
        return None
    space_info = info.get("space_info") or {}
    finetune = info.get("finetune") or {}
    labels = info.get("ranker_labels") or {}
    rank_by = info.get("rank_by", "loss")
    ranker = info.get("ranker") if rank_by == "ranker" else None
    if isinstance(ranker, list) and None in ranker:
        ranker = None  # an ensemble with an object member
    optional = {
        key: info[key]
        for key in ("data_seed", "ghn", "label_workers", "out", "trials", "refine", "refine_trials", "top_k", "seed",
                    "self_check", "self_check_epochs", "device")
        if info.get(key) is not None
    }
    return CampaignConfig.from_dict({
        **optional,
        "space": info.get("space") or space_info.get("name", "custom"),
        "space_args": dict(space_info.get("settings", {})),
        "dataset": info["dataset"],
        "objectives": info["objectives"],
        "finetune_epochs": float(finetune["epochs"]),
        "finetune_lr": float(finetune["lr"]),
        "finetune_batch_size": int(finetune["batch_size"]),
        "finetune_metric": finetune["metric"],
        "rank_by": rank_by,
        "ranker": ranker,
        "ranker_labels": int(labels.get("n", CampaignConfig.ranker_labels)),
        "ranker_k": int(labels.get("k", CampaignConfig.ranker_k)),
        "sampler": info.get("sampler") if info.get("sampler") in SAMPLERS else CampaignConfig.sampler,
    })


def _identity(config: CampaignConfig, space_info: Any) -> dict[str, Any]:
    return {"space_info": _normalise(space_info), **config.identity()}


def _check_identity(stored: dict[str, Any], settings: dict[str, Any], name: str, url: str) -> None:
    try:
        stored_config = stored_campaign_config(stored)
    except (ValueError, KeyError, TypeError):
        stored_config = None
    if stored_config is None:
        raise StorageError(f"campaign {name!r} in {mask_url(url)!r} holds no readable campaign settings.")
    old = _identity(stored_config, stored.get("space_info"))
    new = _identity(CampaignConfig.from_dict(settings["config"]), settings["space_info"])
    diffs = [key for key in new if old.get(key) != new[key]]
    if diffs:
        detail = "; ".join(f"{k}: stored {old.get(k)!r}, requested {new[k]!r}" for k in diffs)
        raise StorageError(
            f"campaign {name!r} in {mask_url(url)!r} exists with different settings ({detail}); "
            "use another --study name or --out folder, or repeat the original settings."
        )
