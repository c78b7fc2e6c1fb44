"""Stage 1: rank candidates by a cheap score: predicted, or measured after a few SGD steps.

Each trial of the ``<name>-rank`` study builds a candidate through the search
space (define-by-run) and is told its *rank score* (lower is better), one of
:data:`RANK_BY`:

* ``"ranker"`` (the default of a campaign that scores more candidates than
  the ranker has labels): :meth:`nas.ghn.GHNRanker.score`, the short-training
  loss (TSE, the sum of the first ``k`` SGD losses from random initialisation)
  that the ranker predicts from the graph alone, with its capacity prior
  (log-FLOPs) subtracted; a few milliseconds per candidate and no image touched;
* ``"loss"``: the validation loss of the network with the GHN's predicted
  weights, no SGD (about 0.6 s per candidate on a CPU core);
* ``"short"`` (the default of a campaign that scores no more candidates than
  the ranker has labels): the candidate's own short-training loss, the quantity
  the ranker predicts, measured (:class:`ShortTrainingScore`; one ranker label's
  cost per candidate, about 1 s on a CPU core for 30 steps on digits).

Trials are asked in batches, so one call of the scorer (``ranker.score``,
``ShortTrainingScore.score`` or ``ghn.evaluate``) scores many graphs; a candidate whose canonical key was
scored before (by any worker) is not scored again: its trial is told the
stored score. The score is stored in the trial's user attribute
``rank_score``; ranking by ``"loss"`` also stores ``ghn_loss`` and ``ghn_acc``
(older campaigns stored only those).

With a ranker, the sampler runs on an in-memory copy of the study and each
result is stored as one finished trial (one storage transaction instead of
about 20 round trips; see :class:`_Mirror`). Without one, each trial is asked
and told in the storage and stays visible as running, with heartbeats, while
its candidate is scored.

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

from nas.campaign._storage import CAMPAIGN_ATTR, HEARTBEAT_ATTR, WORKER_ATTR, Heartbeat, reap_stale_trials

__all__ = [
    "OBJECTIVES",
    "RANK_BY",
    "SAMPLERS",
    "SHORT_TRAINING_FILE",
    "RankStats",
    "ShortTrainingScore",
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
    "short": "short-training loss of the candidate itself (TSE of ranker_k SGD steps)",
    "ranker": "short-training loss predicted by the GHN ranker (minus its log-FLOPs prior, if any)",
    "loss": "validation loss of the GHN-predicted weights",
}


#: File in the campaign's folder that caches the short trainings of ``rank_by="short"``.
SHORT_TRAINING_FILE = "rank_tse.csv"


class ShortTrainingScore:
    """The rank score of ``rank_by="short"``: each candidate's own TSE after ``k`` SGD steps.

    The quantity the ranker predicts, measured instead: training each candidate
    costs what one ranker label costs, so a campaign that scores fewer candidates
    than the ranker has labels pays less this way (:meth:`CampaignConfig.resolved`).
    A batch is trained by :func:`nas.ghn.tse_scores`: by ``workers`` processes or
    through ``queue``, each run appended to ``cache`` so that a killed campaign
    trains none of them twice.

    Args:
        data: The dataset (training split only is used).
        k: SGD steps per candidate.
        seed: Seed of every training run.
        cache: CSV of finished runs (``key, graph, tse, seconds``).
        workers: Processes training in parallel.
        queue: A :class:`~nas.campaign.QueuedLabels` (``queue_labels``), or ``None``.
        progress: Show a progress bar per batch.
    """

    #: What a non-finite score means, in a failed trial's ``error``.
    score_name = "short-training loss"

    def __init__(self, data: Any, *, k: int, seed: int, cache: Any, workers: int = 1, queue: Any = None,
                 progress: bool = False) -> None:
        self.data, self.k, self.seed, self.cache = data, int(k), int(seed), cache
        self.workers, self.queue, self.progress = int(workers), queue, bool(progress)

    def score(self, graphs: Sequence[ArchGraph]) -> list[float]:
        """TSE of each graph (``[len(graphs)]``, lower is better; ``nan`` where training failed)."""
        from nas.ghn import tse_scores

        return tse_scores(graphs, self.data, k=self.k, seed=self.seed, cache=self.cache, workers=self.workers,
                          progress=self.progress, queue=self.queue).tolist()


def resolve_rank_by(rank_by: str) -> str:
    """Check a ``rank_by`` name.

    Args:
        rank_by: ``"short"``, ``"ranker"`` or ``"loss"`` (see :data:`RANK_BY`).

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
    if isinstance(settings, dict) and isinstance(settings.get("config"), dict):
        settings = settings["config"]  # format 2: the CampaignConfig; format 1: one key per setting
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
#: rank score of the campaign's ``rank_by``. ``loss,latency`` searches on FLOPs, which cost
#: nothing to count, and measures latency only for the pool its Pareto front is drawn from
#: (:mod:`nas.latency`; ``CampaignConfig.latency_pool``).
OBJECTIVES: dict[str, tuple[str, ...]] = {
    "loss": ("rank_score",),
    "loss,params": ("rank_score", "num_params"),
    "loss,flops": ("rank_score", "flops"),
    "loss,latency": ("rank_score", "flops"),
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


@dataclass
class _Outcome:
    """What one asked trial is told: its state, its values and its user attributes.

    ``copy_of`` names the key of an earlier trial of the same batch that this
    one duplicates; its ``duplicate_of`` attribute is filled in once that
    trial's number is known.
    """

    trial: optuna.Trial
    state: TrialState
    attrs: dict[str, Any]
    values: list[float] | None = None
    copy_of: str | None = None


def _evaluate(
    trials: list[optuna.Trial],
    space: SearchSpace,
    ghn: Any,
    data: Any,
    *,
    known: Mapping[str, FrozenTrial],
    objectives: Sequence[str],
    device: str,
    stats: RankStats,
    ranker: Any = None,
) -> list[_Outcome]:
    """Build, deduplicate and score (one scorer call) one batch of asked trials; store nothing."""
    outcomes: list[_Outcome] = []
    built: list[tuple[optuna.Trial, ArchGraph]] = []
    for trial in trials:
        try:
            graph = space.build(trial)
            if not isinstance(graph, ArchGraph):
                raise SpaceError(
                    f"search space {space.name!r} build() returned {type(graph).__name__}, not an ArchGraph."
                )
        except (GraphError, SpaceError) as err:
            outcomes.append(_Outcome(trial, TrialState.FAIL, {"error": " ".join(str(err).split())}))
            stats.failed += 1
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
            scores[graph.key] = {  # the graph itself is not stored: the trial's choices rebuild it
                "num_params": int(graph.num_params()),
                "flops": int(graph.flops()),
                **result,
            }

    seen: set[str] = set()
    for trial, graph in built:
        key = graph.key
        if key in known or key in seen:
            source = known[key].user_attrs if key in known else scores[key]
            if key in known:
                state = known[key].state
            else:
                state = TrialState.COMPLETE if math.isfinite(scores[key]["rank_score"]) else TrialState.FAIL
            attrs = {"key": key, **_duplicate_attrs(source)}
            if key in known:
                attrs["duplicate_of"] = int(known[key].number)
            values = _values(source, objectives) if state == TrialState.COMPLETE else None
            outcomes.append(_Outcome(trial, state, attrs, values, copy_of=None if key in known else key))
            stats.duplicates += 1
            stats.failed += state == TrialState.FAIL
            continue
        seen.add(key)
        attrs = {"key": key, **scores[key]}
        if math.isfinite(attrs["rank_score"]):
            outcomes.append(_Outcome(trial, TrialState.COMPLETE, attrs, _values(attrs, objectives)))
        else:
            what = getattr(ranker, "score_name", "ranker prediction") if ranker is not None else "predicted-weight loss"
            attrs["error"] = f"{what} is not finite ({attrs['rank_score']})"
            outcomes.append(_Outcome(trial, TrialState.FAIL, attrs))
            stats.failed += 1
    stats.told += len(outcomes)
    return outcomes


def _duplicate_attrs(source: Mapping[str, Any]) -> dict[str, Any]:
    """The user attributes a duplicate trial copies from the trial that scored its key."""
    attrs = {name: source[name] for name in ("num_params", "flops", "ghn_loss", "ghn_acc") if name in source}
    attrs["rank_score"] = rank_score(source)
    return attrs


def _tell(study: optuna.Study, outcomes: list[_Outcome]) -> None:
    """Store a batch of outcomes on the trials asked from ``study`` itself (attributes, then ``tell``)."""
    first = {o.attrs["key"]: o.trial.number for o in outcomes if "key" in o.attrs and o.copy_of is None}
    for outcome in outcomes:
        if outcome.copy_of is not None:
            outcome.attrs["duplicate_of"] = first[outcome.copy_of]
        for name, value in outcome.attrs.items():
            outcome.trial.set_user_attr(name, value)
        if outcome.values is not None:
            study.tell(outcome.trial, outcome.values if len(outcome.values) > 1 else outcome.values[0])
        else:
            study.tell(outcome.trial, state=TrialState.FAIL)


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
    """Build, deduplicate, score (one scorer call) and tell one batch of trials asked from ``study``."""
    outcomes = _evaluate(trials, space, ghn, data, known=known_scores(study), objectives=objectives, device=device,
                         stats=stats, ranker=ranker)
    _tell(study, outcomes)


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
    local_sampling: bool | None = None,
) -> RankStats:
    """Run the rank study until it holds ``n_trials`` complete trials, then refine its best.

    Several processes may run this on one study at once; each asks only what
    is still missing, and all wait until the running trials are told. With
    local sampling, batches in flight are not stored, so workers that start a
    batch at the same moment can overshoot ``n_trials`` by up to a batch each.

    Args:
        study: The ``<name>-rank`` study (directions: one ``minimize`` per objective).
        space: The search space.
        ghn: A GHN with ``evaluate(graphs, data, split=, device=)`` (unused with a ``ranker``).
        data: The dataset scored on (its validation split; unused with a ``ranker``).
        n_trials: Complete trials the study must hold at the end (fewer when every candidate of a
            space of known size is scored before: more could only repeat them).
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
        local_sampling: Ask the sampler on an in-memory copy of the study and
            store each result as one finished trial (:class:`_Mirror`), instead
            of asking, filling and telling each trial in the storage. Default:
            with a ``ranker`` (milliseconds per candidate, so the storage's
            round trips would dominate), not without one (a candidate's trial
            then stays visible as running, with heartbeats, while it is scored).

    Returns:
        What this process did.
    """
    stats = RankStats()
    if local_sampling is None:
        local_sampling = ranker is not None
    mirror = _Mirror(study, worker) if local_sampling else None

    def step(count: int, refine_params: list[dict[str, Any]] | None = None, *, stored: bool = False) -> None:
        """Score ``count`` new trials, or one per ``refine_params``, and store the results.

        ``stored=True`` asks the storage's own trials (the enqueued ones first)
        even on the ranker's path, to take up what an earlier run left queued.
        """
        if refine_params is not None:
            count = len(refine_params)
        if mirror is not None and not stored:
            mirror.step(count, evaluate, refine_params)
            return
        for params in refine_params or []:
            study.enqueue_trial(params, user_attrs={REFINE_ATTR: True}, skip_if_exists=False)
        _ask_and_score(study, count, lambda asked: _tell(study, evaluate(asked, known_scores(study))), worker,
                       heartbeat_interval)

    def evaluate(asked: list[optuna.Trial], known: Mapping[str, FrozenTrial]) -> list[_Outcome]:
        return _evaluate(asked, space, ghn, data, known=known, objectives=objectives, device=device, stats=stats,
                         ranker=ranker)

    reap_stale_trials(study, grace_period=grace_period)
    if mirror is not None:
        # Trials an earlier run left queued (a re-queued trial of a dead worker) are scored as they are.
        while waiting := len(study.get_trials(deepcopy=False, states=(TrialState.WAITING,))):
            step(min(batch_size, waiting), stored=True)
    done, running = _count(study)
    desc = "rank (ranker)" if ranker is not None else "rank (GHN loss)"
    bar = tqdm(total=n_trials, initial=min(done, n_trials), desc=desc, unit="trial", disable=not progress)
    size = space.size()
    with bar:
        while True:
            done, running = _count(study)
            bar.n = min(done, n_trials)
            bar.refresh()
            if size is not None and size < n_trials and done >= size and len(known_scores(study)) >= size:
                # More trials could only repeat scored candidates (a small space sampled past its size).
                logger.info("all %d candidates of search space %r are scored; the rank stage stops at %d of %d "
                            "trials", size, space.name, done, n_trials)
                break
            missing = n_trials - done - running
            if missing <= 0:
                if done >= n_trials:
                    break
                # Other workers hold the last trials: wait for them, or for them to die.
                if reap_stale_trials(study, grace_period=grace_period):
                    continue
                time.sleep(poll_interval)
                continue
            step(min(batch_size, missing))
            bar.set_postfix(scored=stats.evaluated, dup=stats.duplicates, refresh=False)
            _check_failures(stats, n_trials, space)
    if refine > 0:
        budget = n_trials if refine_trials is None else refine_trials
        _refine(study, top=refine, budget=budget, batch_size=batch_size, step=step, grace_period=grace_period,
                poll_interval=poll_interval, stats=stats, progress=progress)
        _check_failures(stats, n_trials, space)
    return stats


class _Mirror:
    """An in-memory copy of the rank study that the sampler asks from (the ranker's path).

    The ranker scores a candidate in milliseconds, while every ask, parameter,
    attribute and tell of a trial is a round trip to the storage: about 20
    commits, 50-70 ms of CPU per trial on SQLite. So with a ranker the sampler
    runs on an in-memory study that holds copies of the stored trials, and each
    result is stored as one finished trial (``Study.add_trial``: one
    transaction). Nothing of it is stored as running: a process killed in the
    middle of a batch loses that batch's scores (milliseconds of work), and a
    rerun asks again. Other workers' trials are copied in before each batch.
    """

    def __init__(self, study: optuna.Study, worker: str) -> None:
        self.study = study
        self.worker = worker
        self.local = optuna.create_study(directions=study.directions, sampler=study.sampler)
        self._copied: set[int] = set()

    def sync(self) -> None:
        """Copy the finished trials that other workers (or earlier runs) stored since the last call."""
        for trial in self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.FAIL)):
            # This mirror's own results are in the local study already. They are the trials of this
            # worker without a heartbeat; one it asked and told in the storage (a re-queued trial) has one.
            own = trial.user_attrs.get(WORKER_ATTR) == self.worker and HEARTBEAT_ATTR not in trial.user_attrs
            if trial.number in self._copied or own:
                continue
            self._copied.add(trial.number)
            self.local.add_trial(trial)

    def step(self, count: int, evaluate: Callable[[list[optuna.Trial], Mapping[str, FrozenTrial]], list[_Outcome]],
             refine_params: list[dict[str, Any]] | None = None) -> None:
        """Ask ``count`` trials locally (``refine_params`` fixes their choices), score them, store the results."""
        self.sync()
        for params in refine_params or []:
            self.local.enqueue_trial(params, skip_if_exists=False)
        asked = [self.local.ask() for _ in range(count)]
        try:
            outcomes = evaluate(asked, known_scores(self.study))
        except BaseException:
            for trial in asked:
                self.local.tell(trial, state=TrialState.FAIL)
            raise
        extra = {WORKER_ATTR: self.worker, **({REFINE_ATTR: True} if refine_params is not None else {})}
        firsts = [o for o in outcomes if o.copy_of is None]
        copies = [o for o in outcomes if o.copy_of is not None]
        self.study.add_trials([_frozen(o, extra) for o in firsts])
        if copies:
            known = known_scores(self.study)
            for outcome in copies:
                outcome.attrs["duplicate_of"] = int(known[outcome.copy_of].number)
            self.study.add_trials([_frozen(o, extra) for o in copies])
        for outcome in outcomes:
            if outcome.values is not None:
                self.local.tell(outcome.trial, outcome.values if len(outcome.values) > 1 else outcome.values[0])
            else:
                self.local.tell(outcome.trial, state=TrialState.FAIL)


def _frozen(outcome: _Outcome, extra: Mapping[str, Any]) -> FrozenTrial:
    """The finished trial that stores ``outcome`` (its choices, values and attributes plus ``extra``)."""
    return optuna.trial.create_trial(
        state=outcome.state,
        params=outcome.trial.params,
        distributions=outcome.trial.distributions,
        values=outcome.values,
        user_attrs={**outcome.attrs, **extra},
    )


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
    step: Callable[..., None],
    grace_period: float,
    poll_interval: float,
    stats: RankStats,
    progress: bool,
) -> None:
    """Local search after the sampler: score the untried neighbours of the ``top`` best until none is left.

    Each round takes the neighbours (:func:`refinement_params`) of the current
    best and scores them in batches, as trials marked with
    :data:`REFINE_ATTR`; a better neighbour joins the best and its own
    neighbours come next round. It ends when the best have no untried
    neighbour, or when the study holds ``budget`` refinement trials (counted
    over all workers and reruns).
    """
    bar = tqdm(desc="refine", unit="trial", disable=not progress)
    with bar:
        while True:
            trials = study.get_trials(deepcopy=False)
            marked = [t for t in trials if REFINE_ATTR in t.user_attrs]
            pending = sum(t.state in (TrialState.WAITING, TrialState.RUNNING) for t in marked)
            left = budget - len(marked)
            todo = refinement_params(study, top)[:left] if left > 0 and pending == 0 else []
            if not todo:
                if pending == 0:
                    break
                # Trials enqueued by another worker, or held by one: their scores may change the best.
                if any(t.state == TrialState.WAITING for t in marked):
                    before = stats.told
                    step(min(batch_size, sum(t.state == TrialState.WAITING for t in marked)), stored=True)
                    stats.refined += stats.told - before
                    bar.update(stats.told - before)
                elif not reap_stale_trials(study, grace_period=grace_period):
                    time.sleep(poll_interval)
                continue
            for start in range(0, len(todo), batch_size):
                before = stats.told
                step(0, todo[start : start + batch_size])
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
