"""The campaign's ranker and its ablations as rows of ``nas correlate``.

``nas search`` ranks candidates by :meth:`nas.ghn.GHNRanker.score`: a graph
network fitted to the short-training loss (TSE after ``k`` SGD steps) of
``labels`` architectures sampled from the space, with an optional log-FLOPs
capacity prior. :func:`ranker_methods` builds that score, with labels sampled from the
space *excluding* the evaluated candidates, and the ablations that say what
each part contributes. Each is one row of a correlation run:

============================  ==============================================================
``ghn``                       the ranker fitted from random weights, default prior (the campaign)
``ghn_w05``                   the same ranker with the prior at the fixed weight 0.5
``ghn_noprior``               the same ranker without the prior
``ghn_meta``                  the same network fitted from the meta-trained GHN's weights, default prior
``ghn_meta_noprior``          from the GHN's weights, without the prior
``opcount_ranker``            ridge regression on op counts, same labels, no prior
``opcount_ranker_flops``      the same with the prior
============================  ==============================================================

The prior's weight of the ``ghn``, ``ghn_meta`` and ``opcount_ranker_flops``
rows is the one :class:`nas.ghn.RankerConfig` fits a campaign's ranker with,
0 since round 3 of the ranking suite, so ``ghn`` and ``ghn_noprior`` then agree
(a ranker given to :func:`ranker_methods` keeps its own weight).

Only the ``ghn_meta`` rows need a meta-trained GHN; the ranker the campaign
uses starts from random weights (:class:`nas.ghn.RankerConfig`'s
``pretrained=False``), because GHN initialisation did not lift it in the
ranking suite (``experiments/results/suite/RESULTS.md``).

Labels are appended to ``OUT/ranker_labels_k<k>_s<seed>.csv`` as they finish
and fitted rankers saved under ``OUT/rankers/``, so a rerun trains nothing twice;
a larger label count reuses the smaller one's labels (the sample is nested).
:class:`RankerCost` says what the one-time work cost.

Examples:
    >>> scorers, cost = ranker_methods(space, data, ghn=ghn, methods=["ghn", "ghn_meta"],
    ...                                out="runs/corr", exclude=[g.key for g in graphs])  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nas.evaluation.ghn_variants import GHNRankerScorer, LabelRegressorScorer
from nas.evaluation.scorers import Scorer
from nas.training import check_non_negative

if TYPE_CHECKING:
    from nas.data import Dataset
    from nas.space import SearchSpace

__all__ = ["DEFAULT_KIND", "RANKER_METHODS", "LabelRecipe", "RankerCost", "ranker_methods"]

logger = logging.getLogger(__name__)

#: Method name -> (what is fitted, its FLOPs prior). Kinds: ``"scratch"`` (the graph network from
#: random weights: the campaign's ranker), ``"ghn"`` (from the meta-trained GHN's weights), ``"opcount"``.
#: Prior: ``True`` the ranker's own weight, ``False`` none, a number a fixed weight.
RANKER_METHODS: dict[str, tuple[str, bool | float]] = {
    "ghn": ("scratch", True),
    "ghn_w05": ("scratch", 0.5),
    "ghn_noprior": ("scratch", False),
    "ghn_meta": ("ghn", True),
    "ghn_meta_noprior": ("ghn", False),
    "opcount_ranker": ("opcount", False),
    "opcount_ranker_flops": ("opcount", True),
}

#: The kind of the ``ghn`` row: what :class:`nas.ghn.RankerConfig` fits by default.
DEFAULT_KIND = RANKER_METHODS["ghn"][0]


@dataclasses.dataclass(frozen=True, kw_only=True)
class LabelRecipe:
    """Which labels a ranker is fitted on.

    Args:
        labels: Architectures labelled (at least 4; the first ``labels`` of the seed's sample); with
            ``batch``, the most that are bought.
        k: SGD steps per label (TSE after ``k`` steps).
        seed: Seed of the label sample and of every label's training.
        batch: Labels bought at a time until the campaign's ranker stops improving
            (:func:`nas.ghn.ensure_ranker`); ``None`` labels exactly ``labels``.
        margin: The least lift of the ranker's cross-validated tau for which another batch is bought.
    """

    labels: int
    k: int
    seed: int = 1
    batch: int | None = None
    margin: float = 0.02

    def __post_init__(self) -> None:
        if isinstance(self.labels, bool) or not isinstance(self.labels, int) or self.labels < 4:
            raise ValueError(f"`labels` must be an int of at least 4, but got {self.labels!r}.")
        if isinstance(self.k, bool) or not isinstance(self.k, int) or self.k < 1:
            raise ValueError(f"`k` must be a positive int, but got {self.k!r}.")
        if self.batch is not None and (isinstance(self.batch, bool) or not isinstance(self.batch, int)
                                       or self.batch < 1):
            raise ValueError(f"`batch` must be a positive int or None, but got {self.batch!r}.")
        check_non_negative("margin", self.margin)

    @classmethod
    def default(cls, seed: int = 1) -> LabelRecipe:
        """The recipe ``nas search`` uses: :data:`nas.ghn.RANKER_LABELS` labels of :data:`nas.ghn.RANKER_K`
        steps, bought at once (purchases, ``batch``, are a setting: they did not pass the few-label study's bar)."""
        from nas.ghn import RANKER_K, RANKER_LABELS

        return cls(labels=RANKER_LABELS, k=RANKER_K, seed=seed)


@dataclasses.dataclass
class RankerCost:
    """One-time CPU-seconds (one torch thread) of the ranker rows.

    Attributes:
        labels: Architectures asked for.
        labelled: Those whose short training finished (the rest diverged).
        k: SGD steps per label.
        seed: Label sample seed.
        label_seconds: Training time of the labels used (from the label cache).
        label_seconds_estimated: Labels whose time was not recorded and counted at the mean.
        fit_seconds: Fitting time per fitted kind (``"ghn"``, ``"scratch"``, ``"opcount"``).
        ghn_seconds: Meta-training time of the GHN the ``ghn_meta`` rankers start from
            (``None`` when not recorded or not needed).
    """

    labels: int
    labelled: int
    k: int
    seed: int
    label_seconds: float
    label_seconds_estimated: int = 0
    fit_seconds: dict[str, float] = dataclasses.field(default_factory=dict)
    ghn_seconds: float | None = None

    def one_time_seconds(self, method: str) -> float:
        """Labels + fit (+ GHN meta-training for ``ghn_meta`` rows)."""
        kind, _ = RANKER_METHODS[method]
        total = self.label_seconds + self.fit_seconds.get(kind, math.nan)
        if kind == "ghn":
            total += self.ghn_seconds if self.ghn_seconds is not None else math.nan
        return total

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, with ``one_time_seconds`` per fitted kind."""
        out = dataclasses.asdict(self)
        out["label_seconds"] = _finite(self.label_seconds)
        out["fit_seconds"] = {kind: _finite(v) for kind, v in self.fit_seconds.items()}
        out["one_time_seconds"] = {
            name: _finite(self.one_time_seconds(name)) for name in RANKER_METHODS
            if RANKER_METHODS[name][0] in self.fit_seconds
        }
        return out


def _finite(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def labels_cache(out: str | Path, recipe: LabelRecipe) -> Path:
    """Where :func:`ranker_methods` keeps the labels of ``recipe`` (shared by every label count)."""
    return Path(out) / f"ranker_labels_k{recipe.k}_s{recipe.seed}.csv"


def ranker_path(out: str | Path, kind: str, recipe: LabelRecipe) -> Path:
    """Where :func:`ranker_methods` keeps a fitted ranker (``..._b<batch>`` for a ranker that buys its labels)."""
    bought = f"_b{recipe.batch}m{recipe.margin:g}" if recipe.batch is not None else ""
    return Path(out) / "rankers" / f"{kind}_n{recipe.labels}_k{recipe.k}_s{recipe.seed}{bought}.pt"


def _fit_or_load(kind: str, path: Path, ghn: Any, graphs: list, targets: Any, recipe: LabelRecipe,
                 *, progress: bool) -> Any:
    from nas.exceptions import CheckpointError
    from nas.ghn import GHNRanker, RankerConfig, fit_ranker

    if path.exists():
        try:
            ranker = GHNRanker.load(path, map_location=ghn.device)
        except CheckpointError as err:
            logger.warning("%s; fitting it again", err)
        else:
            if ranker.label_info.get("labelled") == len(graphs):
                return ranker
            logger.warning("%s was fitted on other labels; fitting it again", path)
    label_info = {"target": "tse", "k": recipe.k, "n": recipe.labels, "labelled": len(graphs), "seed": recipe.seed}
    ranker = fit_ranker(ghn, graphs, targets, RankerConfig(pretrained=kind == "ghn"), label_info=label_info,
                        progress=progress)
    ranker.save(path)
    return ranker


def ranker_methods(
    space: SearchSpace,
    data: Dataset,
    *,
    ghn: Any,
    methods: Sequence[str],
    out: str | Path,
    exclude: Sequence[str],
    recipe: LabelRecipe | None = None,
    ranker: Any = None,
    suffix: str = "",
    workers: int = 1,
    progress: bool = True,
) -> tuple[list[Scorer], RankerCost | None]:
    """Label, fit (or load) and wrap the ranker rows ``methods`` as scorers.

    Args:
        space: The search space.
        data: The dataset (its training split trains the labels).
        ghn: A meta-trained GHN: the start of the ``ghn_meta`` rankers. ``None``
            when no ``ghn_meta`` row is asked for: the other rankers take the graph
            conversion and settings of :func:`nas.ghn.untrained_ghn`.
        methods: Names from :data:`RANKER_METHODS`.
        out: Folder of the label cache and the fitted rankers.
        exclude: Canonical keys never to label (the evaluated candidates).
        recipe: The labels (default :meth:`LabelRecipe.default`).
        ranker: A ready ranker for the ``ghn`` and ``ghn_noprior`` rows (then
            nothing is labelled for them, and it keeps its own prior weight;
            other rows still need labels).
        suffix: Appended to every scorer name (e.g. ``"_n100"``).
        workers: Processes training labels in parallel.
        progress: Show progress bars.

    Returns:
        The scorers, in the order of ``methods``, and the one-time cost
        (``None`` when nothing was labelled).

    Raises:
        ValueError: An unknown method, or ``ghn`` missing for a ``ghn_meta`` row.
    """
    unknown = [m for m in methods if m not in RANKER_METHODS]
    if unknown:
        raise ValueError(f"`methods` has unknown ranker methods {unknown}; valid: {', '.join(RANKER_METHODS)}.")
    recipe = recipe or LabelRecipe.default()
    kinds = {RANKER_METHODS[m][0] for m in methods}
    if ranker is not None:
        kinds.discard(DEFAULT_KIND)
    fitted: dict[str, Any] = {DEFAULT_KIND: ranker} if ranker is not None else {}
    cost = None
    if kinds:
        from nas.ghn import label_seconds, short_training_labels, untrained_ghn

        if ghn is None:
            if "ghn" in kinds:
                meta = sorted(m for m in methods if RANKER_METHODS[m][0] == "ghn")
                raise ValueError(f"ranker methods {meta} start from a meta-trained GHN, but got `ghn=None`.")
            ghn = untrained_ghn(space, data)

        cache = labels_cache(out, recipe)
        count = recipe.labels
        if recipe.batch is not None and DEFAULT_KIND in kinds:
            # The campaign's ranker buys labels until it stops improving; the other rows fit on what it bought.
            from nas.ghn import RankerConfig, ensure_ranker

            fitted[DEFAULT_KIND] = ensure_ranker(
                space, data, None, path=ranker_path(out, DEFAULT_KIND, recipe), ranker_labels=recipe.labels,
                ranker_k=recipe.k, seed=recipe.seed, exclude=exclude, labels_cache=cache, workers=workers,
                config=RankerConfig(), label_batch=recipe.batch, label_margin=recipe.margin, progress=progress)
            count = int(fitted[DEFAULT_KIND].label_info["n"])
        graphs, targets = short_training_labels(
            space, data, count, k=recipe.k, seed=recipe.seed, exclude=exclude, cache=cache,
            workers=workers, progress=progress,
        )
        seconds, estimated = label_seconds(cache, [g.key for g in graphs])
        cost = RankerCost(labels=count, labelled=len(graphs), k=recipe.k, seed=recipe.seed,
                          label_seconds=seconds, label_seconds_estimated=estimated)
        state = getattr(ghn, "training_state", None) or {}
        if "ghn" in kinds and state.get("elapsed") is not None:
            cost.ghn_seconds = float(state["elapsed"])
        for kind in sorted(kinds):
            if kind == "opcount":
                continue  # fitted inside each scorer, in milliseconds
            if kind in fitted:  # bought its labels above; its fit time is every purchase's
                cost.fit_seconds[kind] = float(fitted[kind].label_info.get("fit_seconds", math.nan))
                continue
            fitted[kind] = _fit_or_load(kind, ranker_path(out, kind, recipe), ghn, graphs, targets, recipe,
                                        progress=progress)
            cost.fit_seconds[kind] = float(fitted[kind].label_info.get("fit_seconds", math.nan))
        if "opcount" in kinds:
            cost.fit_seconds["opcount"] = 0.0
    from nas.ghn import RankerConfig

    scorers: list[Scorer] = []
    for method in methods:
        kind, prior = RANKER_METHODS[method]
        name = method + suffix
        if prior is True and not (kind == "scratch" and ranker is not None):
            # Today's default weight, also for a ranker cached under OUT/rankers/ with an older default;
            # a ranker given by the caller keeps its own.
            prior = RankerConfig().flops_weight
        if kind == "opcount":
            scorers.append(LabelRegressorScorer(graphs, targets, flops_weight=float(prior), name=name))
        else:
            scorers.append(GHNRankerScorer(fitted[kind], prior=prior, name=name))
    return scorers, cost
