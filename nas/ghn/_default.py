"""Where the default GHN of a space and dataset lives, and getting one; getting a ranker the same way.

Both are one-time costs per space and dataset: :func:`ensure_ghn` meta-trains
a GHN and :func:`ensure_ranker` labels architectures by short training and
fits a :class:`~nas.ghn.GHNRanker`, each into a file that every later call
(and every later campaign given the file) reuses.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nas._cache import cache_dir
from nas.exceptions import CheckpointError
from nas.ghn._identity import check_identity, identity
from nas.ghn._meta_train import MetaTrainConfig, meta_train
from nas.ghn._model import GHN, GHNConfig
from nas.ghn._ranker import GHNRanker, RankerConfig, fit_ranker, label_seconds, short_training_labels
from nas.graph import ArchGraph
from nas.training import check_non_negative

if TYPE_CHECKING:
    from nas.data import Dataset
    from nas.space import SearchSpace

__all__ = [
    "LABEL_MARGIN", "RANKER_K", "RANKER_LABELS", "default_ghn_path", "ensure_ghn", "ensure_ranker",
    "untrained_ghn",
]

#: Architectures labelled to fit a ranker by default. On nb201 / mnist5k, rankers on about 700 labels
#: put a top-1% architecture first for GHN builds where 150 labels left it out of the top 10
#: (``git show 7aab067768:bench/RESULTS.md``, "More labels per build").
RANKER_LABELS = 700
#: SGD steps of each label's short training by default (its TSE sums the first ``RANKER_K`` losses).
RANKER_K = 30

logger = logging.getLogger(__name__)


def default_ghn_path(space: SearchSpace | dict[str, Any], dataset_name: str, data_seed: int | None = 0) -> Path:
    """Path of the auto-trained default GHN for a space and a dataset split.

    The file lives in ``$NAS_CACHE_DIR`` (else ``$XDG_CACHE_HOME/ghn-nas``,
    else ``~/.cache/ghn-nas``) and its name carries the space name, the
    dataset and a hash of ``space.describe()`` and the split seed, so every
    space setting, input shape, class count and split gets its own file.

    Args:
        space: The search space, or its ``describe()`` dict.
        dataset_name: Name the dataset was loaded by.
        data_seed: Seed of the dataset split (seed 0 keeps the file name of
            caches written before the seed was part of it).

    Returns:
        The path (which may not exist yet).
    """
    info = space if isinstance(space, dict) else space.describe()
    key: dict[str, Any] = {"space": info, "dataset": dataset_name}
    if data_seed not in (0, None):
        key["data_seed"] = data_seed
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:12]
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{info.get('space', 'space')}-{dataset_name}").strip("_")
    return cache_dir() / f"ghn-{slug}-{digest}.pt"


def ensure_ghn(
    space: SearchSpace,
    data: Dataset,
    *,
    path: str | Path | None = None,
    config: MetaTrainConfig | None = None,
    ghn_config: GHNConfig | None = None,
    progress: bool = True,
    held_out: Sequence[ArchGraph] = (),
    device: str | None = None,
) -> GHN:
    """Load the GHN at ``path`` if it fits ``space`` and ``data``; else meta-train one there.

    A finished, compatible checkpoint is loaded as is. An unfinished
    meta-training checkpoint (a killed run) is resumed. An unreadable one, or
    one that did not hold out every graph of ``held_out``, is logged and
    replaced by a fresh run of the default recipe (or ``config``). One built for
    another space, space settings, dataset or split is refused
    (:func:`~nas.ghn._identity.check_identity`), never replaced.

    Args:
        space: The search space.
        data: The dataset.
        path: Checkpoint file (default :func:`default_ghn_path`).
        config: Meta-training settings (default :class:`MetaTrainConfig`).
        ghn_config: Model settings (default :class:`GHNConfig`).
        progress: Show progress bars while meta-training.
        held_out: Architectures that must never have been sampled for meta-training.
        device: Device to load onto and train on (default ``config.device``).

    Returns:
        The GHN, in eval mode.

    Raises:
        CheckpointError: The checkpoint at ``path`` was built for another space or dataset.
    """
    config = config or MetaTrainConfig()
    if device is not None:
        config = dataclasses.replace(config, device=device)
    path = Path(path) if path is not None else default_ghn_path(space, data.name, data.split_seed)
    resume = True
    if path.exists():
        try:
            ghn = GHN.load(path, map_location=config.device)
        except CheckpointError as err:  # unreadable: replaced
            logger.warning("%s; meta-training a new GHN at %s", err, path)
            resume = False
        else:
            # a GHN of another space or dataset is another run's result: refused, never replaced
            check_identity(ghn.space_info, space, data, where=f"GHN checkpoint {str(path)!r}")
            ghn.check_compatible(space)
            missing = {g.key for g in held_out} - set(ghn.held_out_keys)
            state = ghn.training_state
            if missing:
                logger.warning(
                    "GHN checkpoint %r did not hold out %d of the %d given architectures; meta-training a new GHN "
                    "there", str(path), len(missing), len(held_out),
                )
                resume = False
            elif state is None or state.get("step", 0) >= state.get("steps", 0):
                logger.info("using the GHN at %s", path)
                return ghn.eval()
            else:
                logger.info("resuming the unfinished meta-training at %s", path)
    else:
        logger.info("no GHN at %s; meta-training the default recipe (this takes a while)", path)
    try:
        return meta_train(
            space, data, config, ghn_config=ghn_config, out=path, resume=resume, progress=progress, held_out=held_out
        )
    except CheckpointError as err:
        if not resume:
            raise
        logger.warning("%s; starting the meta-training over", err)
        return meta_train(
            space, data, config, ghn_config=ghn_config, out=path, resume=False, progress=progress, held_out=held_out
        )


def untrained_ghn(space: SearchSpace, data: Dataset, *, device: str | Any = "cpu") -> GHN:
    """A GHN of the default settings with random weights, for ``space`` and ``data``.

    It is what a ranker fitted from random weights (``RankerConfig(pretrained=False)``)
    needs from a GHN: the graph conversion, the settings of its graph network and
    the space's description. Nothing is meta-trained.
    """
    return GHN(GHNConfig(), space_info=identity(space, data)).to(device)


#: A purchase that lifts the ranker's cross-validated Kendall tau by less than this ends the buying.
LABEL_MARGIN = 0.02


def ensure_ranker(
    space: SearchSpace,
    data: Dataset,
    ghn: GHN | None,
    *,
    path: str | Path,
    ranker_labels: int = RANKER_LABELS,
    ranker_k: int = RANKER_K,
    seed: int = 0,
    exclude: Sequence[str] = (),
    labels_cache: str | Path | None = None,
    workers: int = 1,
    config: RankerConfig | None = None,
    label_batch: int | None = None,
    label_margin: float = LABEL_MARGIN,
    label_seconds: float | None = None,
    extend: bool = True,
    progress: bool = True,
    queue: Any = None,
) -> GHNRanker:
    """Load the ranker at ``path`` if it fits ``space``; else buy labels and fit one there.

    By default all ``ranker_labels`` are bought at once. With ``label_batch``, labels
    are bought in purchases of ``label_batch`` architectures sampled from
    ``space`` (seed ``seed``, never one of ``exclude``; the sample is nested, so each
    purchase adds to the last), each trained for ``ranker_k`` SGD steps. After each
    purchase the ranker is fitted (extending the last fit: :func:`fit_ranker`'s
    ``init``) and saved; buying stops when a purchase lifts its cross-validated
    Kendall tau (:attr:`GHNRanker.cv_tau`) by less than ``label_margin``, when
    ``ranker_labels`` are labelled, or when the labels' CPU-seconds reach
    ``label_seconds``. ``label_info["history"]`` records each purchase (labels,
    cross-validated tau, label and fit seconds) and ``label_info["stopped"]`` why
    buying ended. Finished labels are appended to ``labels_cache`` as they come and
    the ranker is saved after every purchase, so a killed run resumes; a ranker that
    stopped at a smaller count or CPU budget than a later call allows is extended
    with more labels. A loaded ranker keeps its FLOPs-prior weight (``config``
    applies to a new fit).

    Args:
        space: The search space.
        data: The dataset (its training split trains the labels).
        ghn: The meta-trained GHN whose graph network the ranker starts from;
            ``None`` when ``config.pretrained`` is false (then nothing waits for
            meta-training: :func:`untrained_ghn` supplies the graph network's settings).
        path: Ranker checkpoint to load or write.
        ranker_labels: The most architectures to label (at least 4); a count, unlike
            :func:`fit_ranker`'s ``labels`` (the label values).
        ranker_k: SGD steps per label.
        seed: Seed of the label sample, of every label's training and of the fit
            (unless ``config`` sets its own).
        exclude: Canonical keys never to label (e.g. candidates kept to check the ranking).
        labels_cache: CSV of finished labels (default: ``<path stem>_labels_k<ranker_k>.csv`` next to ``path``).
        workers: Processes training labels in parallel.
        config: Fitting settings (default :class:`RankerConfig` seeded with ``seed``).
        label_batch: Labels per purchase; ``None`` (the default) buys all ``ranker_labels`` at once. In the
            few-label study (``experiments/results/few_labels/RESULTS.md``) purchases of 50 cut the labels'
            CPU by 77% on ten space / dataset pairs but lowered the ranking's mean Kendall tau by 0.048.
        label_margin: The least lift of the cross-validated tau for which another purchase is made.
        label_seconds: CPU-seconds of labels after which no more are bought (``None``: no such limit).
        extend: Extend a saved ranker that stopped at a smaller budget than this call allows; ``False``
            returns it as saved (a campaign whose candidates it scored keeps it), unless its purchases were
            cut short by a kill.
        progress: Show progress bars.
        queue: A :class:`nas.campaign.QueuedLabels` to label through an Optuna
            storage (``nas worker`` processes on other machines label too).

    Returns:
        The ranker, in eval mode on ``ghn``'s device.

    Raises:
        ValueError: ``ranker_labels`` is under 4, ``ranker_k`` / ``workers`` / ``label_batch`` is not
            positive, ``label_margin`` or ``label_seconds`` is negative, or ``ghn`` is ``None`` while
            ``config.pretrained`` asks to start from its weights.
        CheckpointError: The ranker at ``path`` was fitted on other labels
            (``ranker_k`` or ``seed``), or ``path`` cannot be written.
    """
    if isinstance(ranker_labels, bool) or not isinstance(ranker_labels, int) or ranker_labels < 4:
        raise ValueError(f"`ranker_labels` must be an int of at least 4, but got {ranker_labels!r}.")
    if label_batch is not None and (isinstance(label_batch, bool) or not isinstance(label_batch, int)
                                    or label_batch < 1):
        raise ValueError(f"`label_batch` must be a positive int or None, but got {label_batch!r}.")
    for name, value in (("label_margin", label_margin), ("label_seconds", label_seconds)):
        if value is not None:
            check_non_negative(name, value)
    config = config or RankerConfig(seed=seed)
    if ghn is None:
        if config.pretrained:
            raise ValueError("`ghn` is None, but the ranker starts from the GHN's weights (`config.pretrained`); "
                             "pass a meta-trained GHN or RankerConfig(pretrained=False).")
        ghn = untrained_ghn(space, data)
    path = Path(path)
    cache = Path(labels_cache) if labels_cache is not None else path.with_name(f"{path.stem}_labels_k{ranker_k}.csv")
    ranker = None
    if path.exists():
        try:
            ranker = GHNRanker.load(path, map_location=ghn.device)
        except CheckpointError as err:  # unreadable (a killed write of an old version): replaced
            logger.warning("%s; fitting a new ranker at %s", err, path)
        else:
            # another space's or dataset's ranker is another campaign's result: refused, never replaced
            check_identity(ranker.space_info, space, data, where=f"ranker checkpoint {str(path)!r}")
            ranker.check_compatible(space, source=path)
            fitted = {name: ranker.label_info.get(name) for name in ("k", "seed")}
            asked = {"k": ranker_k, "seed": seed}
            if any(fitted[name] is not None and fitted[name] != asked[name] for name in asked):
                raise CheckpointError(
                    f"ranker checkpoint {str(path)!r} was fitted on labels {fitted}, not the requested {asked}; "
                    "write the new ranker to another path or delete this one."
                )
            if ranker.config.flops_weight != config.flops_weight:
                logger.info("the ranker at %s keeps the FLOPs-prior weight it was saved with, %g (not %g)", path,
                            ranker.config.flops_weight, config.flops_weight)
            if not _wants_more(ranker.label_info, ranker_labels, label_seconds, extend=extend):
                logger.info("using the ranker at %s (%s labels)", path, ranker.label_info.get("labelled", "?"))
                return ranker
            logger.info("extending the ranker at %s beyond its %s labels", path, ranker.label_info.get("labelled"))
            config = ranker.config
    return _buy_labels(space, data, ghn, ranker, path=path, cache=cache, most=ranker_labels, k=ranker_k, seed=seed,
                       exclude=exclude, workers=workers, config=config, batch=label_batch, margin=label_margin,
                       max_seconds=label_seconds, progress=progress, queue=queue)


def _wants_more(info: dict[str, Any], most: int, max_seconds: float | None, *, extend: bool) -> bool:
    """Whether a saved ranker's labels fall short of what this call allows (it is then extended)."""
    stopped = info.get("stopped", "budget")  # a ranker saved before purchases existed was fitted on its count
    bought = int(info.get("n", info.get("labelled", 0)))  # labels asked for (some may have failed to train)
    if stopped is None:  # killed between purchases
        return True
    if not extend:
        return False
    if stopped == "budget":
        return bought < most
    if stopped == "seconds":
        return bought < most and (max_seconds is None or info.get("label_seconds", 0.0) < max_seconds)
    return False  # "plateau": more labels did not help


def _buy_labels(space: SearchSpace, data: Dataset, ghn: GHN, ranker: GHNRanker | None, *, path: Path, cache: Path,
                most: int, k: int, seed: int, exclude: Sequence[str], workers: int, config: RankerConfig,
                batch: int | None, margin: float, max_seconds: float | None, progress: bool,
                queue: Any) -> GHNRanker:
    """The purchase loop of :func:`ensure_ranker`, from ``ranker`` (a saved fit to extend) or from nothing."""
    history: list[dict[str, Any]] = list(ranker.label_info.get("history", [])) if ranker is not None else []
    if ranker is not None and not history:  # saved before purchases existed: its fit is the first purchase
        info = ranker.label_info
        history = [{"labels": int(info.get("n", 0)), "labelled": int(info.get("labelled", 0)),
                    "cv_tau": ranker.cv_tau, "label_seconds": None, "fit_seconds": info.get("fit_seconds")}]
    n = history[-1]["labels"] if history else 0
    step = batch or most
    while True:
        n = min(n + step, most) if n < most else n
        logger.info("ranker labels: short training (k=%d) of %d architectures into %s", k, n, cache)
        graphs, targets = short_training_labels(space, data, n, k=k, seed=seed, exclude=exclude, cache=cache,
                                                workers=workers, progress=progress, queue=queue)
        spent, _ = label_seconds(cache, [g.key for g in graphs])
        warm = ranker is not None and len(ranker.members) == config.ensemble and \
            ranker.members[0].ghn.config == ghn.config  # the last fit can start this one
        label_info = {"target": "tse", "k": k, "n": n, "labelled": len(graphs), "seed": seed, "dataset": data.name,
                      "labels": str(cache.resolve())}
        ranker = fit_ranker(ghn, graphs, targets, config, init=ranker if warm else None, label_info=label_info,
                            progress=progress)
        gain = ranker.cv_tau - history[-1]["cv_tau"] if history else math.nan
        history.append({"labels": n, "labelled": len(graphs), "cv_tau": ranker.cv_tau, "label_seconds": spent,
                        "fit_seconds": ranker.label_info["fit_seconds"]})
        stopped = None
        if n >= most:
            stopped = "budget"
        elif max_seconds is not None and spent >= max_seconds:
            stopped = "seconds"
        elif history[:-1] and not gain >= margin:  # nan (too few held out to tell) buys on
            stopped = "plateau" if math.isfinite(gain) else None
        ranker.label_info.update(history=history, stopped=stopped, label_seconds=spent, cv_tau=ranker.cv_tau,
                                 fit_seconds=sum(h["fit_seconds"] or 0.0 for h in history))
        ranker.save(path)
        logger.info("ranker at %d labels: cross-validated tau %.3f%s", len(graphs), ranker.cv_tau,
                    f"; stopped ({stopped})" if stopped else "")
        if stopped:
            logger.info("ranker saved to %s", path)
            return ranker

