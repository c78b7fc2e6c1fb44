"""Stage 1: rank candidates by a score computed without training them.

Each trial of the ``<name>-rank`` study builds a candidate through the search
space (define-by-run) and is told its *rank score* (lower is better), one of
:data:`RANK_BY`:

* ``"ranker"`` (the default of a campaign): :meth:`nas.ghn.GHNRanker.score`,
  the short-training loss (TSE, the sum of the first ``k`` SGD losses from
  random initialisation) that the ranker predicts from the graph alone, with
  its capacity prior (log-FLOPs) subtracted; a few milliseconds per candidate
  and no image touched;
* ``"loss"``: the validation loss of the network with the GHN's predicted
  weights, no SGD (about 0.6 s per candidate on a CPU core).

Trials are asked in batches, so one call of the scorer (``ranker.score`` or
``ghn.evaluate``) scores many graphs; a candidate whose canonical key was
scored before (by any worker) is not scored again: its trial is told the
stored score. The score is stored in the trial's user attribute
``rank_score``; ranking by ``"loss"`` also stores ``ghn_loss`` and ``ghn_acc``
(older campaigns stored only those).

With ``refine > 0``, the sampler's trials are followed by a local search
(:func:`refinement_params`): every change of one choice of the ``refine`` best
candidates is enqueued and scored, until those best no longer change or the
refinement budget is spent. Refinement trials carry the user attribute
``refine`` and do not count towards ``n_trials``.
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.samplers import BaseSampler
from optuna.trial import FrozenTrial, TrialState
from tqdm.auto import tqdm

from nas.exceptions import GraphError, SpaceError
from nas.graph import ArchGraph
from nas.space import SearchSpace

from nas.campaign._storage import CAMPAIGN_ATTR, Heartbeat, reap_stale_trials

__all__ = [
    "OBJECTIVES",
    "RANK_BY",
    "SAMPLERS",
    "RankStats",
    "rank_by_of",
    "rank_score",
    "refinement_params",
    "resolve_objectives",
    "resolve_rank_by",
    "resolve_sampler",
    "run_rank_stage",
]

logger = logging.getLogger(__name__)


def _tpe(seed: int | None) -> BaseSampler:
    # The constant liar keeps the trials of one batch (asked before any is told) apart.
    return optuna.samplers.TPESampler(seed=seed, constant_liar=True)


def _random(seed: int | None) -> BaseSampler:
    return optuna.samplers.RandomSampler(seed=seed)


def _gp(seed: int | None) -> BaseSampler:
    return optuna.samplers.GPSampler(seed=seed)


def _nsga2(seed: int | None) -> BaseSampler:
    return optuna.samplers.NSGAIISampler(seed=seed)


#: Sampler names accepted by :func:`resolve_sampler` (and ``nas search --sampler``).
SAMPLERS: dict[str, Callable[[int | None], BaseSampler]] = {
    "tpe": _tpe,
    "random": _random,
    "gp": _gp,
    "nsga2": _nsga2,
}


def resolve_sampler(sampler: str | BaseSampler, *, seed: int | None = None) -> BaseSampler:
    """Turn a sampler name into an Optuna sampler (instances pass through).

    Args:
        sampler: ``"tpe"`` (default of a campaign), ``"random"``, ``"gp"``,
            ``"nsga2"``, or any :class:`optuna.samplers.BaseSampler`.
        seed: Seed of a sampler built from a name.

    Returns:
        The sampler.

    Raises:
        ValueError: Unknown name; the message lists the valid ones.
    """
    if isinstance(sampler, BaseSampler):
        return sampler
    if not isinstance(sampler, str) or sampler.strip().lower() not in SAMPLERS:
        raise ValueError(f"`sampler` must be one of {', '.join(SAMPLERS)}, but got {sampler!r}.")
    return SAMPLERS[sampler.strip().lower()](seed)


#: What ranks the candidates (``Campaign(rank_by=...)``, ``nas search --rank-by``) -> what the rank score is.
RANK_BY: dict[str, str] = {
    "ranker": "short-training loss predicted by the GHN ranker, with its log-FLOPs prior",
    "loss": "validation loss of the GHN-predicted weights",
}


def resolve_rank_by(rank_by: str) -> str:
    """Check a ``rank_by`` name.

    Args:
        rank_by: ``"ranker"`` or ``"loss"`` (see :data:`RANK_BY`).

    Returns:
        The name, lower-cased.

    Raises:
        ValueError: Unknown name; the message lists the valid ones.
    """
    if not isinstance(rank_by, str) or rank_by.strip().lower() not in RANK_BY:
        raise ValueError(f"`rank_by` must be one of {', '.join(RANK_BY)}, but got {rank_by!r}.")
    return rank_by.strip().lower()


def rank_by_of(study: optuna.Study) -> str:
    """The ``rank_by`` a campaign's rank study was created with (``"loss"`` for campaigns older than the ranker)."""
    settings = study.user_attrs.get(CAMPAIGN_ATTR)
    value = settings.get("rank_by") if isinstance(settings, dict) else None
    return value if value in RANK_BY else "loss"


def rank_score(attrs: Mapping[str, Any]) -> float:
    """The rank score stored in a trial's user attributes (``ghn_loss`` in campaigns older than the ranker).

    Returns:
        The score, or ``nan`` when the trial holds none.
    """
    value = attrs.get("rank_score", attrs.get("ghn_loss"))
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


#: User attribute that marks a trial of the local refinement (see :func:`refinement_params`).
REFINE_ATTR = "refine"


def _has_score(attrs: Mapping[str, Any]) -> bool:
    return "rank_score" in attrs or "ghn_loss" in attrs


#: Objective specs: the trial values of the rank study, each minimised. ``loss`` is the
#: rank score of the campaign's ``rank_by``.
OBJECTIVES: dict[str, tuple[str, ...]] = {
    "loss": ("rank_score",),
    "loss,params": ("rank_score", "num_params"),
    "loss,flops": ("rank_score", "flops"),
}


def resolve_objectives(objectives: str | Sequence[str]) -> tuple[str, ...]:
    """Normalise an objective spec to the trial-value columns it names.

    Args:
        objectives: ``"loss"``, ``"loss,params"``, ``"loss,flops"`` or the same
            as a sequence (``("loss", "params")``).

    Returns:
        The names of the values the rank study minimises, e.g. ``("rank_score", "num_params")``.

    Raises:
        ValueError: Unknown spec; the message lists the valid ones.
    """
    text = objectives if isinstance(objectives, str) else ",".join(str(o) for o in objectives)
    spec = ",".join(part.strip().lower() for part in text.split(","))
    if spec not in OBJECTIVES:
        raise ValueError(f"`objectives` must be one of {', '.join(OBJECTIVES)}, but got {objectives!r}.")
    return OBJECTIVES[spec]


def objectives_spec(names: Sequence[str]) -> str:
    """The spec string (``"loss,params"``) of resolved objective names."""
    for spec, value in OBJECTIVES.items():
        if tuple(names) == value:
            return spec
    raise ValueError(f"`objectives` {tuple(names)!r} is not a known objective combination.")


@dataclass
class RankStats:
    """What one process did in the rank stage.

    Attributes:
        told: Trials this process finished (complete or failed).
        evaluated: Graphs this process scored (distinct keys).
        duplicates: Trials answered from an earlier score of the same key.
        failed: Trials whose candidate could not be built or scored.
        score_calls: Calls of the scorer, ``ranker.score`` or ``ghn.evaluate`` (one per batch).
        refined: Refinement trials this process finished (included in ``told``).
    """

    told: int = 0
    evaluated: int = 0
    duplicates: int = 0
    failed: int = 0
    score_calls: int = 0
    refined: int = 0

    @property
    def ghn_calls(self) -> int:
        """Former name of :attr:`score_calls`."""
        return self.score_calls


def _values(attrs: Mapping[str, Any], objectives: Sequence[str]) -> list[float]:
    return [rank_score(attrs) if name == "rank_score" else float(attrs[name]) for name in objectives]


def known_scores(study: optuna.Study) -> dict[str, FrozenTrial]:
    """Map each scored canonical key to the first trial that scored it (complete or failed)."""
    known: dict[str, FrozenTrial] = {}
    for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.FAIL)):
        key = trial.user_attrs.get("key")
        if key is None or not _has_score(trial.user_attrs) or "duplicate_of" in trial.user_attrs:
            continue
        if key not in known or trial.number < known[key].number:
            known[key] = trial
    return known


def _count(study: optuna.Study) -> tuple[int, int]:
    """Complete and running trials of the sampler (refinement trials left out)."""
    trials = [
        t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.RUNNING))
        if REFINE_ATTR not in t.user_attrs
    ]
    done = sum(t.state == TrialState.COMPLETE for t in trials)
    return done, len(trials) - done


def _score_batch(
    study: optuna.Study,
    trials: list[optuna.Trial],
    space: SearchSpace,
    ghn: Any,
    data: Any,
    *,
    objectives: Sequence[str],
    device: str,
    stats: RankStats,
    ranker: Any = None,
) -> None:
    """Build, deduplicate, score (one scorer call) and tell one batch of asked trials."""
    known = known_scores(study)
    built: list[tuple[optuna.Trial, ArchGraph]] = []
    for trial in trials:
        try:
            graph = space.build(trial)
            if not isinstance(graph, ArchGraph):
                raise SpaceError(
                    f"search space {space.name!r} build() returned {type(graph).__name__}, not an ArchGraph."
                )
        except (GraphError, SpaceError) as err:
            trial.set_user_attr("error", " ".join(str(err).split()))
            study.tell(trial, state=TrialState.FAIL)
            stats.failed += 1
            stats.told += 1
            logger.warning("rank trial %d: candidate cannot be built: %s", trial.number, err)
            continue
        built.append((trial, graph))

    fresh: dict[str, ArchGraph] = {}
    for trial, graph in built:
        if graph.key not in known and graph.key not in fresh:
            fresh[graph.key] = graph
    scores: dict[str, dict[str, Any]] = {}
    if fresh:
        graphs = list(fresh.values())
        results = _score(graphs, ghn, data, ranker=ranker, device=device)
        stats.score_calls += 1
        stats.evaluated += len(graphs)
        for graph, result in zip(graphs, results):
            scores[graph.key] = {
                "graph": graph.to_json(),
                "num_params": int(graph.num_params()),
                "flops": int(graph.flops()),
                **result,
            }

    first_in_batch: dict[str, int] = {}
    for trial, graph in built:
        key = graph.key
        trial.set_user_attr("key", key)
        if key in known:
            source = known[key]
            _tell_duplicate(study, trial, source.number, source.user_attrs, source.state, objectives)
            stats.duplicates += 1
            stats.failed += source.state == TrialState.FAIL
        elif key in first_in_batch:
            attrs = scores[key]
            state = TrialState.COMPLETE if math.isfinite(attrs["rank_score"]) else TrialState.FAIL
            _tell_duplicate(study, trial, first_in_batch[key], attrs, state, objectives)
            stats.duplicates += 1
            stats.failed += state == TrialState.FAIL
        else:
            attrs = scores[key]
            first_in_batch[key] = trial.number
            for name, value in attrs.items():
                trial.set_user_attr(name, value)
            if math.isfinite(attrs["rank_score"]):
                values = _values(attrs, objectives)
                study.tell(trial, values if len(values) > 1 else values[0])
            else:
                what = "ranker prediction" if ranker is not None else "predicted-weight loss"
                trial.set_user_attr("error", f"{what} is not finite ({attrs['rank_score']})")
                study.tell(trial, state=TrialState.FAIL)
                stats.failed += 1
        stats.told += 1


def _score(graphs: list[ArchGraph], ghn: Any, data: Any, *, ranker: Any, device: str) -> list[dict[str, float]]:
    """The user attributes that score ``graphs``: one call of ``ranker.predict`` or of ``ghn.evaluate``."""
    if ranker is not None:
        predicted = ranker.score(graphs)
        if len(predicted) != len(graphs):
            raise RuntimeError(f"ranker.score returned {len(predicted)} scores for {len(graphs)} graphs.")
        return [{"rank_score": float(v)} for v in predicted]
    results = ghn.evaluate(graphs, data, split="val", device=device)
    if len(results) != len(graphs):
        raise RuntimeError(f"ghn.evaluate returned {len(results)} results for {len(graphs)} graphs.")
    return [
        {"ghn_loss": float(r["loss"]), "ghn_acc": float(r["acc"]), "rank_score": float(r["loss"])} for r in results
    ]


def _tell_duplicate(
    study: optuna.Study,
    trial: optuna.Trial,
    source: int,
    attrs: Mapping[str, Any],
    state: TrialState,
    objectives: Sequence[str],
) -> None:
    trial.set_user_attr("duplicate_of", int(source))
    for name in ("num_params", "flops", "ghn_loss", "ghn_acc"):
        if name in attrs:
            trial.set_user_attr(name, attrs[name])
    trial.set_user_attr("rank_score", rank_score(attrs))
    if state == TrialState.COMPLETE:
        values = _values(attrs, objectives)
        study.tell(trial, values if len(values) > 1 else values[0])
    else:
        study.tell(trial, state=TrialState.FAIL)


def run_rank_stage(
    study: optuna.Study,
    space: SearchSpace,
    ghn: Any,
    data: Any,
    *,
    n_trials: int,
    batch_size: int = 32,
    objectives: Sequence[str] = ("rank_score",),
    ranker: Any = None,
    device: str = "cpu",
    worker: str,
    heartbeat_interval: float = 30.0,
    grace_period: float = 120.0,
    poll_interval: float = 2.0,
    progress: bool = True,
    refine: int = 0,
    refine_trials: int | None = None,
) -> RankStats:
    """Run the rank study until it holds ``n_trials`` complete trials, then refine its best.

    Several processes may run this on one study at once; each asks only what
    is still missing, and all wait until the running trials are told.

    Args:
        study: The ``<name>-rank`` study (directions: one ``minimize`` per objective).
        space: The search space.
        ghn: A GHN with ``evaluate(graphs, data, split=, device=)`` (unused with a ``ranker``).
        data: The dataset scored on (its validation split; unused with a ``ranker``).
        n_trials: Complete trials the study must hold at the end.
        batch_size: Trials asked, built and scored together.
        objectives: Names of the trial values (see :data:`OBJECTIVES`).
        ranker: A :class:`nas.ghn.GHNRanker` (anything with ``predict(graphs)``):
            the rank score is its prediction and ``ghn`` is not called. ``None``
            scores by the predicted-weight validation loss.
        device: Device of the GHN evaluation.
        worker: This process's worker identity.
        heartbeat_interval: Seconds between heartbeats of held trials.
        grace_period: Seconds after which another worker's silent trial is dead.
        poll_interval: Seconds between checks while waiting for other workers.
        progress: Show a tqdm bar.
        refine: After the sampler, score the one-step neighbours of this many
            best candidates until they stop changing (:func:`refinement_params`); ``0`` skips it.
        refine_trials: Most refinement trials (default ``n_trials``).

    Returns:
        What this process did.
    """
    stats = RankStats()

    def score(asked: list[optuna.Trial]) -> None:
        _score_batch(study, asked, space, ghn, data, objectives=objectives, device=device, stats=stats, ranker=ranker)

    reap_stale_trials(study, grace_period=grace_period)
    done, running = _count(study)
    desc = "rank (ranker)" if ranker is not None else "rank (GHN loss)"
    bar = tqdm(total=n_trials, initial=min(done, n_trials), desc=desc, unit="trial", disable=not progress)
    with bar:
        while True:
            done, running = _count(study)
            bar.n = min(done, n_trials)
            bar.refresh()
            missing = n_trials - done - running
            if missing <= 0:
                if done >= n_trials:
                    break
                # Other workers hold the last trials: wait for them, or for them to die.
                if reap_stale_trials(study, grace_period=grace_period):
                    continue
                time.sleep(poll_interval)
                continue
            _ask_and_score(study, min(batch_size, missing), score, worker, heartbeat_interval)
            bar.set_postfix(scored=stats.evaluated, dup=stats.duplicates, refresh=False)
            _check_failures(stats, n_trials, space)
    if refine > 0:
        budget = n_trials if refine_trials is None else refine_trials
        _refine(study, top=refine, budget=budget, batch_size=batch_size, score=score, worker=worker,
                heartbeat_interval=heartbeat_interval, grace_period=grace_period, poll_interval=poll_interval,
                stats=stats, progress=progress)
        _check_failures(stats, n_trials, space)
    return stats


def _check_failures(stats: RankStats, n_trials: int, space: SearchSpace) -> None:
    if stats.failed > max(10, n_trials) and stats.failed > stats.told // 2:
        raise SpaceError(
            f"{stats.failed} of {stats.told} candidates of search space {space.name!r} could not be "
            "built or scored; see the warnings above."
        )


def _ask_and_score(
    study: optuna.Study, count: int, score: Callable[[list[optuna.Trial]], None], worker: str,
    heartbeat_interval: float,
) -> None:
    """Ask ``count`` trials (enqueued ones first), then build, score and tell them as one batch."""
    with warnings.catch_warnings():
        # Heartbeats are recorded by our own thread (Heartbeat) for ask/tell trials.
        warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used")
        asked = [study.ask() for _ in range(count)]
    try:
        with Heartbeat(asked, worker, interval=heartbeat_interval):
            score(asked)
    except BaseException:
        _abandon(study, asked)
        raise


def _neighbour_values(dist: BaseDistribution, value: Any) -> list[Any]:
    """The values one step away from ``value``: every other choice, or one ``step`` down and up."""
    if isinstance(dist, CategoricalDistribution):
        return [c for c in dist.choices if c != value]
    if isinstance(dist, (IntDistribution, FloatDistribution)) and dist.step is not None and not dist.log:
        return [v for v in (value - dist.step, value + dist.step) if dist.low <= v <= dist.high]
    if isinstance(dist, IntDistribution) and dist.log:
        return [v for v in (value // 2, value * 2) if dist.low <= v <= dist.high and v != value]
    return []  # a continuous parameter has no neighbours to enumerate


def _params_key(params: Mapping[str, Any]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted((name, repr(value)) for name, value in params.items()))


def refinement_params(study: optuna.Study, top: int) -> list[dict[str, Any]]:
    """Choices one step away from the ``top`` best distinct candidates that no trial has tried yet.

    A step changes one parameter of a candidate's trial: another choice of a
    categorical parameter, or one ``step`` of a stepped int or float (a factor
    of 2 for a log-scaled int). Continuous parameters are kept. Candidates are
    ordered by their rank score (the first objective), best first, and each
    canonical key counts once.

    Args:
        study: The rank study.
        top: How many of the best candidates to take the neighbours of.

    Returns:
        Parameter dicts, best candidate's neighbours first, without repeats.
    """
    trials = study.get_trials(deepcopy=False)
    tried = {_params_key(t.params or t.system_attrs.get("fixed_params", {})) for t in trials}
    best: list[FrozenTrial] = []
    seen: set[str] = set()
    scored = [
        t for t in trials
        if t.state == TrialState.COMPLETE
        and "duplicate_of" not in t.user_attrs
        and math.isfinite(rank_score(t.user_attrs))
    ]
    for trial in sorted(scored, key=lambda t: (rank_score(t.user_attrs), t.number)):
        key = trial.user_attrs.get("key")
        if key in seen:
            continue
        seen.add(key)
        best.append(trial)
        if len(best) == top:
            break
    out: list[dict[str, Any]] = []
    for trial in best:
        for name, dist in trial.distributions.items():
            for value in _neighbour_values(dist, trial.params[name]):
                params = {**trial.params, name: value}
                key = _params_key(params)
                if key not in tried:
                    tried.add(key)
                    out.append(params)
    return out


def _refine(
    study: optuna.Study,
    *,
    top: int,
    budget: int,
    batch_size: int,
    score: Callable[[list[optuna.Trial]], None],
    worker: str,
    heartbeat_interval: float,
    grace_period: float,
    poll_interval: float,
    stats: RankStats,
    progress: bool,
) -> None:
    """Local search after the sampler: score the untried neighbours of the ``top`` best until none is left.

    Each round enqueues the neighbours (:func:`refinement_params`) of the
    current best, marked with :data:`REFINE_ATTR`, and scores them in batches;
    a better neighbour joins the best and its own neighbours come next round.
    It ends when the best have no untried neighbour, or when the study holds
    ``budget`` refinement trials (counted over all workers and reruns).
    """
    bar = tqdm(desc="refine", unit="trial", disable=not progress)
    with bar:
        while True:
            trials = study.get_trials(deepcopy=False)
            marked = [t for t in trials if REFINE_ATTR in t.user_attrs]
            waiting = sum(t.state == TrialState.WAITING for t in marked)
            running = sum(t.state == TrialState.RUNNING for t in marked)
            left = budget - len(marked)
            if waiting == 0 and left > 0:
                for params in refinement_params(study, top)[:left]:
                    study.enqueue_trial(params, user_attrs={REFINE_ATTR: True}, skip_if_exists=False)
                    waiting += 1
            if waiting == 0:
                if running == 0:
                    break
                # Another worker holds the last refinement trials; their scores may change the best.
                if not reap_stale_trials(study, grace_period=grace_period):
                    time.sleep(poll_interval)
                continue
            before = stats.told
            _ask_and_score(study, min(batch_size, waiting), score, worker, heartbeat_interval)
            stats.refined += stats.told - before
            bar.update(stats.told - before)
            bar.set_postfix(scored=stats.evaluated, dup=stats.duplicates, refresh=False)


def _abandon(study: optuna.Study, trials: Sequence[optuna.Trial]) -> None:
    """Fail and re-queue the trials of an interrupted batch, so a rerun scores them."""
    from nas.campaign._storage import requeue_trial

    for trial in trials:
        try:
            frozen = study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
        except Exception:  # the storage itself may be what failed
            continue
        if frozen.state == TrialState.FAIL and not ({"rank_score", "ghn_loss", "error"} & set(frozen.user_attrs)):
            try:
                requeue_trial(study, frozen)
            except Exception:
                pass
