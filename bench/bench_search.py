"""Benchmark: compute the GHN campaign needs to find a top architecture, against search with training.

Three searches on the same space and dataset, each judged by the same
referee: an architecture's *ground truth* is its validation accuracy after
the ground-truth budget (``--epochs`` from scratch, training seed 0), cached
in ``--cache`` (a :class:`nas.evaluation.GroundTruthCache`).

* ``tpe``: an Optuna TPE study whose every trial trains its candidate for the
  ground-truth budget (its value is that accuracy).
* ``random``: the same with Optuna's random sampler.
* ``campaign``: :class:`nas.campaign.Campaign` with its two stages. Its
  one-time costs are paid once (``run_one_time``): the GHN is meta-trained
  and the ranker is labelled and fitted into ``<work>/one_time/``, and the
  CPU-seconds of each are recorded in ``<out>/search_one_time.csv``. Every
  campaign seed then ranks ``--campaign-trials`` candidates with that ranker
  and fine-tunes the ``--top-k`` best from their predicted weights, in the
  order of their stage-1 scores. Each seed's total cost includes the one-time
  costs; its *marginal* cost leaves them out (what a further campaign on the
  same space and dataset pays). The campaign "has" an architecture once it has
  fine-tuned it; the referee trains it from scratch to judge it, and that
  judging is not charged to the campaign.
* ``tpe-sh``, ``tpe-hb``, ``random-sh``, ``random-hb``: multi-fidelity search,
  TPE or random sampling with Optuna's successive-halving or Hyperband
  pruner; each trial reports its validation accuracy after 6, 18 and 54 of the
  budget's SGD steps (:func:`rung_steps`) and a pruned trial stops there. A
  run stops after ``--max-cpu`` CPU-seconds.
* ``zc-screen``: score ``--zc-pool`` uniform candidates with a zero-cost proxy
  (``--zc-proxy``) and train the ``--zc-top`` best for the full budget.
* ``bananas``: predictor-guided search in the manner of BANANAS: the
  project's graph-network ranker refitted on the fully trained candidates
  every ``--bananas-batch`` trainings picks the next ones from
  ``--zc-pool`` fresh uniform candidates; stops after ``--max-cpu``.
* ``campaign-short-journal``: a campaign ranked by each candidate's own short
  training (``rank_by="short"``, what ``nas search`` does up to 700 trials):
  its only one-time cost is the GHN.
* ``campaign-journal``: the same campaign stored in Optuna's journal file
  instead of the default SQLite database; it proposes the same candidates
  (the sampler is seeded), so the difference is what the storage costs.

Thresholds come from a trained reference sample (``--reference``, by default
the 100 candidates of ``nas correlate``'s sample seed 0, the nb201 / mnist5k
pair of ``experiments/suite.py``, whose seed-0 results share the referee's budget): top 5% = its 0.95 quantile of
validation accuracy, top 1% = its 0.99 quantile. ``--reference-sample-seeds
0 1 2`` unites three such samples (``--reference-archs`` each) into a larger
reference, less the ranker's label architectures (summary files get the
suffix ``_refsample012``). For every run the benchmark
reports the CPU-seconds spent until an architecture at or above each
threshold was first found (``--strict``: above it; accuracies are quantised,
so an architecture can sit exactly at a quantile), and the best ground truth reached within the
campaign's compute. The same is reported on test accuracy (``*_test``
columns, thresholds from the reference's test accuracy): search with
training selects on the validation accuracy it is judged by, so its
validation figures carry a winner's curse that the test figures do not.
Having fine-tuned or trained a top architecture is not the same as handing
it to the user: ``cpu_to_*_reported`` (validation) and
``cpu_to_*_reported_test`` judge only the architecture each method would
itself report as its best so far (best validation accuracy it saw for search
with training, best fine-tuned accuracy for the campaign).
A run that never reaches a level counts in the expected cost with restarts
(:func:`expected_cost`, ``search_expected_cost.csv``, levels ``top1_val``,
``top1_test``, ``top1_reported_val``, ...): the CPU of all runs
until their first hit (all of it for a miss) divided by the hits.
Random search also gets its expectation from the reference sample (``1/q`` trainings for the top ``q``).

Every process runs torch on one thread, so a process's CPU-seconds are its
wall seconds on an unshared core; CPU time is measured with
:func:`time.process_time` (children included for label workers via
:mod:`resource`). A candidate a search proposes twice is trained once; a
candidate another run already trained is charged the CPU time recorded
with it (column ``cached``).

Each run appends to its own trace CSV in ``--out`` (so runs can go in
parallel processes), and every invocation rewrites the summary from all the
traces found there. It measures; it asserts nothing.

Variants and replicates. ``--variant NAME`` runs a campaign method with other
settings under the name ``<method>-NAME`` (e.g. ``--finetune-epochs 3
--variant ft3``). ``--one-time-seed S`` in another ``--work`` and ``--out``
meta-trains another GHN and fits another ranker on another label sample:
a replicate of the whole one-time pipeline. With ``--reference-labels`` (the
first run's label file: the same reference) and ``--baseline`` (the first
run's ``--out``: its TPE and random traces) its report compares against the
same thresholds and the same search with training.

Usage::

    python bench/bench_search.py --methods campaign --seeds 0 1 2 3 4 &
    python bench/bench_search.py --methods tpe random --seeds 0 1 --trials 60 &
    wait; python bench/bench_search.py --report
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pandas as pd
import torch

TRACE_COLUMNS = [
    "method", "seed", "step", "phase", "key", "val_acc", "test_acc", "finetuned_acc", "cpu_s", "cum_cpu_s",
    "one_time", "cached",
]


def _row(method: str, seed: int, step: int, phase: str, cpu: float, cum: float, **values: Any) -> dict[str, Any]:
    """One trace row (:data:`TRACE_COLUMNS`): the unset accuracies ``nan``, not one-time, not cached."""
    return {"method": method, "seed": seed, "step": step, "phase": phase, "key": None, "val_acc": math.nan,
            "test_acc": math.nan, "finetuned_acc": math.nan, "cpu_s": cpu, "cum_cpu_s": cum, "one_time": False,
            "cached": False, **values}


def _cpu_now() -> float:
    """CPU-seconds of this process and its finished children."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def _timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    start = _cpu_now()
    value = fn()
    return value, _cpu_now() - start


class Referee:
    """The ground truth of a candidate: ``epochs`` from scratch with seed 0, trained once and cached."""

    def __init__(self, cache_path: Path, data: Any, epochs: float, *, reference: Path | None = None) -> None:
        from nas.evaluation import GroundTruthCache
        from nas.training import TrainConfig

        self.cache = GroundTruthCache(cache_path)
        self.reference = GroundTruthCache(reference) if reference is not None and reference.exists() else None
        self.data = data
        self.budget = TrainConfig(epochs=epochs)

    def get(self, graph: Any, seed: int = 0) -> Any:
        """The stored ground truth of training seed ``seed`` (this cache first, then the reference's), or ``None``."""
        for cache in (self.cache, self.reference):
            record = cache.get(graph, self.data, self.budget, seed=seed) if cache is not None else None
            if record is not None:
                return record
        return None

    def graph(self, key: str) -> Any:
        """The architecture of a canonical key any cache holds a result of, or ``None``."""
        import sqlite3

        from nas.graph import ArchGraph

        for cache in (self.cache, self.reference):
            if cache is None:
                continue
            with sqlite3.connect(cache.path) as db:
                row = db.execute("SELECT graph FROM results WHERE arch_key = ? LIMIT 1", (key,)).fetchone()
            if row is not None:
                return ArchGraph.from_json(row[0])
        return None

    def judge_seeds(self, graphs: list[Any], seeds: list[int], *, workers: int = 1,
                    train: bool = True) -> pd.DataFrame:
        """Mean validation and test accuracy over ``seeds`` of each graph, training the missing runs first.

        With ``train=False`` a missing run is an error instead (exit with a message naming the cache).

        Returns:
            Columns ``key``, ``val_acc``, ``test_acc`` (one row per distinct key).
        """
        graphs = list({g.key: g for g in graphs}.values())
        for seed in seeds:
            missing = [g for g in graphs if self.get(g, seed) is None]
            if missing and not train:
                raise SystemExit(f"error: {len(missing)} architectures lack a run of training seed {seed} in "
                                 f"{self.cache.path}; train them first (bench/bench_search.py --report "
                                 "--referee-seeds ...)")
            if missing:
                print(f"referee: training {len(missing)} architectures with seed {seed}", flush=True)
                self.cache.train_missing(missing, self.data, self.budget, seeds=[seed], workers=workers)
        rows = []
        for g in graphs:
            records = [self.get(g, seed) for seed in seeds]
            rows.append({"key": g.key, "val_acc": float(np.mean([r.val_acc for r in records])),
                         "test_acc": float(np.mean([r.test_acc for r in records]))})
        return pd.DataFrame(rows, columns=["key", "val_acc", "test_acc"])

    def judge(self, graph: Any) -> tuple[Any, float, bool]:
        """Return ``(record, cpu_s, cached)``: cpu_s is this training's CPU time, or the stored one."""
        record = self.get(graph)
        if record is not None:
            return record, float(record.wall_time), True
        start = time.process_time()
        self.cache.train_missing([graph], self.data, self.budget, seeds=[0], workers=1, progress=False)
        cpu = time.process_time() - start
        record = self.cache.get(graph, self.data, self.budget, seed=0)
        assert record is not None
        return record, cpu, False


def _append(path: Path, rows: list[dict[str, Any]], columns: list[str] = TRACE_COLUMNS) -> None:
    frame = pd.DataFrame(rows, columns=columns)
    frame.to_csv(path, mode="a", header=not path.exists(), index=False)


def run_trained_search(
    method: str, seed: int, *, space: Any, referee: Referee, trials: int, trace: Path
) -> None:
    """TPE or random search where each trial trains its candidate (resumes a partial trace)."""
    done = pd.read_csv(trace) if trace.exists() else pd.DataFrame(columns=TRACE_COLUMNS)
    sampler = (
        optuna.samplers.TPESampler(seed=seed) if method == "tpe" else optuna.samplers.RandomSampler(seed=seed)
    )
    study = optuna.create_study(direction="maximize", sampler=sampler)
    seen: dict[str, float] = {}
    cum = 0.0
    # Replay the trace into the study so the sampler continues where the killed run stopped.
    for row in done.itertuples():
        trial = study.ask()
        graph = space.build(trial)
        if graph.key != row.key:
            raise RuntimeError(f"trace {trace} does not replay (trial {row.step}); delete it to start over")
        study.tell(trial, float(row.val_acc))
        seen[graph.key] = float(row.val_acc)
        cum = float(row.cum_cpu_s)
    for step in range(len(done), trials):
        trial = study.ask()
        graph = space.build(trial)
        cached = graph.key in seen
        if cached:
            record, cpu = referee.get(graph), 0.0
        else:
            record, cpu, cached = referee.judge(graph)
        study.tell(trial, float(record.val_acc))
        seen[graph.key] = float(record.val_acc)
        cum += cpu
        _append(trace, [_row(method, seed, step, "train", cpu, cum, key=graph.key, val_acc=record.val_acc,
                             test_acc=record.test_acc, cached=cached)])
        print(f"{method} seed {seed} trial {step + 1}/{trials}: val_acc {record.val_acc:.4f}, "
              f"{cpu:.1f} CPU-s, total {cum:.0f} CPU-s", flush=True)


#: Multi-fidelity searches: name -> (sampler, pruner). Rungs are SGD steps of the ground-truth budget.
PRUNED = {f"{sampler}-{pruner}": (sampler, pruner) for sampler in ("tpe", "random") for pruner in ("sh", "hb")}
#: A multi-fidelity trace also keeps each trial's intermediate validation accuracies (``rungs``, JSON), so a
#: killed run replays its study, pruner included.
PRUNED_TRACE_COLUMNS = [*TRACE_COLUMNS, "rungs"]


def training_steps(data: Any, epochs: float) -> int:
    """SGD steps of a ``TrainConfig(epochs=epochs)`` training on ``data``, as :func:`nas.training.train` counts them."""
    from nas.training import TrainConfig

    return math.ceil(epochs * max(1, data.x_train.shape[0] // TrainConfig().batch_size))


def rung_steps(total_steps: int, min_steps: int = 6, factor: int = 3) -> list[int]:
    """The steps at which a multi-fidelity trial reports: ``min_steps * factor**i`` below ``total_steps``.

    >>> rung_steps(162)
    [6, 18, 54]
    """
    if min_steps < 1 or factor < 2 or total_steps <= min_steps:
        raise ValueError(f"no rung below {total_steps} steps from {min_steps} steps by factor {factor}")
    rungs, step = [], min_steps
    while step < total_steps:
        rungs.append(step)
        step *= factor
    return rungs


def make_pruner(kind: str, rungs: list[int], total_steps: int, factor: int = 3) -> optuna.pruners.BasePruner:
    """Optuna's successive halving (``"sh"``) or Hyperband (``"hb"``) pruner on rungs in SGD steps."""
    if kind == "sh":
        return optuna.pruners.SuccessiveHalvingPruner(
            min_resource=rungs[0], reduction_factor=factor, min_early_stopping_rate=0)
    if kind == "hb":
        return optuna.pruners.HyperbandPruner(min_resource=rungs[0], max_resource=total_steps, reduction_factor=factor)
    raise ValueError(f"unknown pruner {kind!r}; expected 'sh' or 'hb'")


def run_pruned_search(
    method: str, seed: int, *, space: Any, data: Any, epochs: float, max_cpu: float, trace: Path
) -> None:
    """TPE or random search with a successive-halving or Hyperband pruner (resumes a partial trace).

    Each trial trains its candidate with training seed 0 for the ground-truth
    budget and reports its validation accuracy after each rung of
    :func:`rung_steps`; the pruner stops it there or lets it go on. A trial that
    runs the whole budget is had, with the accuracy search saw (training seed 0,
    as the referee's own run); a pruned one is charged what it ran (rungs'
    evaluations included) and never counts as found. The run stops once it
    has spent ``max_cpu`` CPU-seconds.
    """
    from nas.training import TrainConfig, evaluate, train_graph

    sampler_kind, pruner_kind = PRUNED[method]
    config = TrainConfig(epochs=epochs)
    total_steps = training_steps(data, epochs)
    rungs = rung_steps(total_steps)
    sampler = (optuna.samplers.TPESampler(seed=seed) if sampler_kind == "tpe"
               else optuna.samplers.RandomSampler(seed=seed))
    study = optuna.create_study(direction="maximize", sampler=sampler,
                                pruner=make_pruner(pruner_kind, rungs, total_steps))
    done = pd.read_csv(trace) if trace.exists() else pd.DataFrame(columns=PRUNED_TRACE_COLUMNS)
    cum = 0.0
    for row in done.itertuples():  # replay, so the sampler and the pruner continue where a killed run stopped
        trial = study.ask()
        graph = space.build(trial)
        if graph.key != row.key:
            raise RuntimeError(f"trace {trace} does not replay (trial {row.step}); delete it to start over")
        for step, acc in json.loads(row.rungs).items():
            trial.report(float(acc), int(step))
        if row.phase == "pruned":
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        else:
            study.tell(trial, float(row.val_acc))
        cum = float(row.cum_cpu_s)
    step = len(done)
    while cum < max_cpu:
        trial = study.ask()
        graph = space.build(trial)
        reported: dict[int, float] = {}

        def hook(steps: int, model: torch.nn.Module) -> bool:
            if steps not in rungs:
                return False
            reported[steps] = evaluate(model, data.x_val, data.y_val)[1]
            trial.report(reported[steps], steps)
            return trial.should_prune()

        start = time.process_time()
        result = train_graph(graph, data, config, on_step=hook)
        cpu = time.process_time() - start
        cum += cpu
        pruned = result.stopped or result.failed
        if pruned:
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        else:
            study.tell(trial, float(result.val_acc))
        _append(trace, [_row(method, seed, step, "pruned" if pruned else "train", cpu, cum, key=graph.key,
                             val_acc=math.nan if pruned else result.val_acc,
                             test_acc=math.nan if pruned else result.test_acc, rungs=json.dumps(reported))],
                columns=PRUNED_TRACE_COLUMNS)
        what = f"pruned after {result.steps} steps" if pruned else f"val_acc {result.val_acc:.4f}"
        print(f"{method} seed {seed} trial {step + 1}: {what}, {cpu:.1f} CPU-s, total {cum:.0f} CPU-s", flush=True)
        step += 1


def run_proxy_screen(seed: int, *, space: Any, data: Any, referee: Referee, pool: int, top: int, proxy: str,
                     trace: Path) -> None:
    """Zero-cost-proxy screen: score ``pool`` uniform candidates with ``proxy``, train the ``top`` best in order.

    The pool is ``sample_candidates(space, pool, seed=1000 + seed)`` (seeds
    apart from the reference samples'); the proxy scores each at a
    seed-``seed`` initialisation on one minibatch. Scoring is charged as one
    step, then each training as search with training is (cached runs at their
    recorded CPU). Not resumable: a partial trace is started over.
    """
    from nas.evaluation.correlate import sample_candidates
    from nas.evaluation.proxies import ProxyScorer

    if trace.exists():
        trace.unlink()
    graphs = sample_candidates(space, pool, seed=1000 + seed)
    scores, cpu = _timed(lambda: ProxyScorer(proxy, seed=seed).score(graphs, data))
    order = np.argsort(-np.nan_to_num(np.asarray(scores, dtype=float), nan=-np.inf), kind="stable")[:top]
    rows = [_row("zc-screen", seed, 0, "score", cpu, cpu)]
    cum = cpu
    print(f"zc-screen seed {seed}: {proxy} scored {pool} candidates in {cpu:.1f} CPU-s", flush=True)
    for i in order:
        record, cost, cached = referee.judge(graphs[i])
        cum += cost
        rows.append(_row("zc-screen", seed, len(rows), "train", cost, cum, key=graphs[i].key,
                         val_acc=record.val_acc, test_acc=record.test_acc, cached=cached))
        print(f"zc-screen seed {seed}: trained #{len(rows) - 1} ({proxy} {scores[i]:.3g}): val_acc "
              f"{record.val_acc:.4f}, total {cum:.0f} CPU-s", flush=True)
    _append(trace, rows)


def run_predictor_search(seed: int, *, space: Any, data: Any, referee: Referee, max_cpu: float, start: int,
                         batch: int, pool: int, trace: Path) -> None:
    """BANANAS-style search: a graph-network predictor refitted on what has been fully trained, every ``batch``.

    ``start`` uniform candidates are trained first; then, until ``max_cpu``
    CPU-seconds are spent: the project's graph-network ranker
    (:func:`nas.ghn.fit_ranker`, from random weights, default settings, seeded
    ``seed``) is fitted on every trained candidate's validation accuracy (the
    accuracy search saw, training seed 0), scores ``pool`` fresh uniform
    candidates, and the ``batch`` best are trained for the full budget in score
    order. Fits and scoring are charged (phase ``fit``) beside the trainings.
    Not resumable: a partial trace is started over.
    """
    from nas.evaluation.correlate import sample_candidates
    from nas.ghn import GHN, GHNConfig, RankerConfig, fit_ranker, identity

    if trace.exists():
        trace.unlink()
    ghn = GHN(GHNConfig(), space_info=identity(space, data))  # its weights are never used (pretrained=False)
    seen: dict[str, float] = {}
    graphs: dict[str, Any] = {}
    rows: list[dict[str, Any]] = []
    cum = 0.0

    def add(phase: str, cpu: float, **values: Any) -> None:
        nonlocal cum
        cum += cpu
        rows.append(_row("bananas", seed, len(rows), phase, cpu, cum, **values))

    def train(graph: Any, note: str) -> None:
        record, cost, cached = referee.judge(graph)
        seen[graph.key], graphs[graph.key] = float(record.val_acc), graph
        add("train", cost, key=graph.key, val_acc=record.val_acc, test_acc=record.test_acc, cached=cached)
        print(f"bananas seed {seed}: trained #{len(seen)} ({note}): val_acc {record.val_acc:.4f}, "
              f"total {cum:.0f} CPU-s", flush=True)

    for graph in sample_candidates(space, start, seed=2000 + seed):
        if cum < max_cpu:
            train(graph, "uniform start")
    rounds = 0
    while cum < max_cpu:
        keys = [k for k in seen if math.isfinite(seen[k])]

        def fit_and_score() -> tuple[list[Any], np.ndarray]:
            ranker = fit_ranker(ghn, [graphs[k] for k in keys], [-seen[k] for k in keys],
                                RankerConfig(seed=seed), progress=False)
            fresh = [g for g in sample_candidates(space, pool, seed=3000 + 1000 * seed + rounds) if g.key not in seen]
            return fresh, ranker.score(fresh)

        (fresh, scores), cpu = _timed(fit_and_score)
        add("fit", cpu)
        print(f"bananas seed {seed}: fitted on {len(keys)} and scored {len(fresh)} in {cpu:.1f} CPU-s", flush=True)
        rounds += 1
        for i in np.argsort(scores, kind="stable")[:batch]:  # lower predicted -accuracy first
            if cum >= max_cpu:
                break
            train(fresh[i], f"round {rounds}")
    _append(trace, rows)


ONE_TIME_COLUMNS = ["phase", "cpu_s", "wall_s", "path"]


def run_one_time(args: argparse.Namespace, *, space: Any, data: Any, out: Path, ranker: bool = True) -> pd.DataFrame:
    """Meta-train the GHN and fit the ranker once, recording the CPU-seconds of each (resumable).

    With ``ranker=False`` (only short-ranked campaigns) the ranker is left unfitted.

    Both go into ``<work>/one_time/`` and every campaign seed reuses them. A
    finished phase is recorded in ``<out>/search_one_time.csv`` and skipped
    on the next call; an artifact found without its recorded CPU is refused,
    since its cost would be unknown.
    """
    from nas.ghn import MetaTrainConfig, RankerConfig, ensure_ghn, ensure_ranker

    record = out / "search_one_time.csv"
    done = pd.read_csv(record) if record.exists() else pd.DataFrame(columns=ONE_TIME_COLUMNS)
    folder = Path(args.work) / "one_time"
    folder.mkdir(parents=True, exist_ok=True)
    ghn_path, ranker_path = folder / "ghn.pt", folder / "ranker.pt"

    def phase(name: str, path: Path, fn: Callable[[], Any]) -> Any:
        nonlocal done
        if name in set(done["phase"]):
            return fn()  # loads the finished artifact
        if path.exists():
            raise SystemExit(f"error: {path} exists but its CPU time is not in {record}; delete it to measure again")
        start_cpu, start_wall = _cpu_now(), time.perf_counter()
        value = fn()
        row = {"phase": name, "cpu_s": _cpu_now() - start_cpu, "wall_s": time.perf_counter() - start_wall,
               "path": str(path)}
        done = pd.concat([done, pd.DataFrame([row])], ignore_index=True)
        done.to_csv(record, index=False)
        print(f"one-time {name}: {row['cpu_s']:.0f} CPU-s", flush=True)
        return value

    seed = args.one_time_seed
    ghn = phase("meta_train", ghn_path, lambda: ensure_ghn(
        space, data, path=ghn_path, config=MetaTrainConfig(steps=args.ghn_steps, seed=seed),
        progress=not args.no_progress))
    exclude: list[str] = []
    if args.exclude_reference:
        # Every reference sample: the labels never hold an architecture that sets the thresholds.
        exclude = [g.key for g in reference_graphs(space, args.reference_archs, args.reference_sample_seeds)[0]]
    if not ranker:
        return done
    phase("ranker", ranker_path, lambda: ensure_ranker(
        space, data, ghn, path=ranker_path, ranker_labels=args.ranker_labels, ranker_k=args.ranker_k, seed=seed,
        exclude=exclude, workers=args.label_workers, config=RankerConfig(seed=seed), progress=not args.no_progress))
    return done


def run_campaign(seed: int, *, args: argparse.Namespace, space: Any, data: Any, referee: Referee, trace: Path,
                 one_time: pd.DataFrame, method: str = "campaign", name: str | None = None) -> None:
    """One campaign seed with the shared GHN and ranker, charged their one-time CPU; stage by stage.

    ``method`` ``"campaign"`` keeps the campaign's default storage (SQLite);
    ``"campaign-journal"`` stores the same campaign in Optuna's journal file.
    ``"campaign-refine"`` and ``"campaign-refine-journal"`` add the local
    refinement of the ``--refine`` best candidates after the sampler's trials.
    The ``enqueue`` step is charged its CPU (milliseconds; traces of the removed ``-rerank`` and
    ``-blend`` methods charged a zero-cost proxy's scores there, ``git show 7aab067768:bench/RESULTS.md``).
    ``name`` (default ``method``) names the run in its trace and work folder, e.g.
    ``"campaign-refine-journal-ft3"`` for the same method with other settings (``--variant``).
    """
    from nas.campaign import Campaign
    from nas.graph import ArchGraph

    name = name or method
    out = Path(args.work) / f"{name}_s{seed}"
    if (out / "campaign.db").exists() or (out / "campaign.log").exists():
        # A campaign resumes from its storage, so a rerun would charge only what is left (nothing when done).
        raise SystemExit(f"error: {out} holds a campaign already, whose CPU time cannot be measured again; "
                         "delete that folder to rerun this seed")
    if trace.exists():
        trace.unlink()
    folder = Path(args.work) / "one_time"
    short = "-short" in method  # today's default below 700 trials: each candidate's own short training ranks
    rankers = [folder / "ranker.pt", *args.extra_rankers] if args.extra_rankers else folder / "ranker.pt"
    campaign = Campaign(
        space=space, dataset=data, ghn=folder / "ghn.pt", trials=args.campaign_trials,
        ranker=None if short else rankers, rank_by="short" if short else "ranker",
        top_k=args.top_k, finetune_epochs=args.finetune_epochs, finetune_lr=args.finetune_lr, out=out,
        storage=(f"journal:///{(out / 'campaign.log').resolve()}"
                 if method.endswith("-journal") else None),
        seed=seed, ranker_labels=args.ranker_labels, ranker_k=args.ranker_k, progress=not args.no_progress,
        refine=args.refine if "-refine" in method else 0,
    )
    rows: list[dict[str, Any]] = []
    cum = 0.0

    def add(phase: str, cpu: float, one_time_row: bool, **values: Any) -> None:
        nonlocal cum
        cum += cpu
        rows.append(_row(name, seed, len(rows), phase, cpu, cum, one_time=one_time_row, **values))

    for row in one_time.itertuples():
        if not (short and str(row.phase).startswith("ranker")):  # a short-ranked campaign fits no ranker
            add(str(row.phase), float(row.cpu_s), True)
    _ = campaign.ghn, campaign.ranker  # loading the checkpoints is not charged
    campaign.open()
    _, rank_cpu = _timed(campaign.rank)
    add("rank", rank_cpu, False)
    print(f"{name} seed {seed}: rank {rank_cpu:.1f} CPU-s", flush=True)
    _, enqueue_cpu = _timed(campaign.enqueue)
    add("enqueue", enqueue_cpu, False)
    _, finetune_cpu = _timed(lambda: campaign.finetune(wait=True))
    # The order the candidates were fine-tuned in (the order of their stage-1 scores), not their result.
    finetuned = campaign.report(write=True).finetuned.sort_values("trial")
    # Charge each fine-tune its own wall time, scaled so that they add up to the stage's measured CPU.
    scale = finetune_cpu / max(float(finetuned["wall_time"].sum()), 1e-9)
    for row in finetuned.itertuples():
        graph = ArchGraph.from_dict(json.loads(row.graph) if isinstance(row.graph, str) else row.graph)
        record, _, _ = referee.judge(graph)
        add("finetune", float(row.wall_time) * scale, False, key=graph.key, val_acc=record.val_acc,
            test_acc=record.test_acc, finetuned_acc=row.val_acc)
        print(f"{name} seed {seed}: fine-tuned #{row.trial} (rank trial {row.rank_trial}): ground truth "
              f"{record.val_acc:.4f} val / {record.test_acc:.4f} test, fine-tuned {row.val_acc:.4f}", flush=True)
    _append(trace, rows)


def reference_graphs(space: Any, archs: int, sample_seeds: list[int] | None = None,
                     exclude: set[str] | None = None) -> tuple[list[Any], int]:
    """The reference sample: ``archs`` uniform candidates per seed of ``sample_seeds`` (default ``[0]``).

    Returns:
        The union by key, less the keys in ``exclude``, and how many were left out.
    """
    from nas.evaluation.correlate import sample_candidates

    pool = {g.key: g for s in (sample_seeds or [0]) for g in sample_candidates(space, archs, seed=s)}
    graphs = [g for key, g in pool.items() if key not in (exclude or set())]
    return graphs, len(pool) - len(graphs)


def report_suffix(referee_seeds: list[int], sample_seeds: list[int], *, strict: bool = False) -> str:
    """The ending of a report's file names.

    ``_ref<seeds>`` for a judge other than seed 0, ``_refsample<seeds>`` for a
    united reference, ``_strict`` with ``--strict``; empty for the defaults.
    """
    suffix = "" if referee_seeds == [0] else "_ref" + "".join(map(str, referee_seeds))
    if sample_seeds != [0]:
        suffix += "_refsample" + "".join(map(str, sample_seeds))
    return suffix + ("_strict" if strict else "")


def thresholds(referee: Referee, space: Any, archs: int, seeds: list[int] | None = None, *,
               workers: int = 1, strict: bool = False, sample_seeds: list[int] | None = None,
               exclude: set[str] | None = None) -> dict[str, Any]:
    """The top-5% and top-1% validation (and test) accuracies of the trained reference sample.

    The reference is :func:`reference_graphs` (by default the held-out list
    of ``experiments/suite.py``'s nb201 / mnist5k pair; ``exclude``: e.g. the ranker's
    label architectures); any run the caches lack is trained first. Each
    candidate's accuracy is its mean over the referee's ``seeds``. With
    ``strict``, a level is reached only above the quantile, not at it.
    """
    seeds = seeds or [0]
    graphs, excluded = reference_graphs(space, archs, sample_seeds, exclude)
    judged = referee.judge_seeds(graphs, seeds, workers=workers)
    records = [referee.get(g) for g in graphs]
    levels: dict[str, Any] = {"reference_n": len(records), "reference_excluded": excluded,
                              "referee_seeds": len(seeds), "judge": "+".join(map(str, seeds)), "strict": strict}
    for metric in ("val_acc", "test_acc"):
        acc = judged[metric].to_numpy()
        q5, q1 = np.quantile(acc, 0.95), np.quantile(acc, 0.99)
        if strict:  # accuracies are quantised, so an architecture can sit exactly at the quantile
            q5, q1 = q5 + 1e-6, q1 + 1e-6
        levels.update({
            f"{metric}_top5": float(q5), f"{metric}_top1": float(q1), f"{metric}_mean": float(acc.mean()),
            f"{metric}_p_top5": float((acc >= q5).mean()), f"{metric}_p_top1": float((acc >= q1).mean()),
        })
    levels["reference_train_s"] = float(np.median([r.wall_time for r in records]))
    return levels


def _cost(run: pd.DataFrame, *, marginal: bool) -> pd.Series:
    """CPU-seconds of each step; with ``marginal``, one-time steps (GHN, ranker) cost nothing."""
    return run["cpu_s"].where(~run["one_time"], 0.0) if marginal else run["cpu_s"]


def _first_cost(run: pd.DataFrame, values: np.ndarray, level: float, *, marginal: bool) -> float:
    """CPU-seconds up to and including the first step whose ``values`` (one per step) reach ``level``."""
    hit = values >= level - 1e-12
    return float(_cost(run, marginal=marginal).cumsum()[hit].iloc[0]) if hit.any() else math.nan


def _first_reach(run: pd.DataFrame, level: float, *, marginal: bool, metric: str = "val_acc") -> float:
    """CPU-seconds up to and including the first step whose ground truth ``metric`` reaches ``level``."""
    return _first_cost(run, run[metric].to_numpy(), level, marginal=marginal)


def _reported(run: pd.DataFrame, metric: str) -> pd.Series:
    """Ground truth ``metric`` of the architecture the method itself would report as best, step by step.

    Search with training reports its best validation accuracy; the campaign its
    best fine-tuned accuracy (it never sees the referee's ground truth).
    """
    own = run["seen_acc"] if "seen_acc" in run else run["val_acc"]
    visible = run["finetuned_acc"] if run["method"].str.startswith("campaign").all() else own
    best_at = visible.fillna(-np.inf).cummax()
    reported, current = [], math.nan
    for v, b, gt in zip(visible.to_numpy(), best_at.to_numpy(), run[metric].to_numpy()):
        if np.isfinite(v) and v >= b:
            current = gt
        reported.append(current)
    return pd.Series(reported, index=run.index)


def _best_within(run: pd.DataFrame, budget: float, *, marginal: bool = False) -> float:
    within = run[_cost(run, marginal=marginal).cumsum() <= budget + 1e-9]
    return float(within["val_acc"].max()) if within["val_acc"].notna().any() else math.nan


#: Level of :func:`expected_cost` (``top1_val``, ``top5_reported_test``, ...) -> the per-run summary column
#: of the CPU-seconds to its first hit (a campaign's marginal cost is that column with the prefix ``marginal_``).
LEVELS: dict[str, str] = {
    f"{q}{kind}{tag or '_val'}": f"cpu_to_{q}{kind}{tag}"
    for kind in ("", "_reported") for tag in ("", "_test") for q in ("top5", "top1")
}


def _ert(reach: np.ndarray, spent: np.ndarray) -> np.ndarray:
    """ERT of runs, along the last axis: CPU up to each hit (all of ``spent`` for a miss) / hits; inf without hits."""
    hits = np.isfinite(reach).sum(axis=-1)
    total = np.where(np.isfinite(reach), reach, spent).sum(axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(hits > 0, total / np.maximum(hits, 1), np.inf)


def expected_cost(summary: pd.DataFrame, *, resamples: int = 10_000, seed: int = 0) -> pd.DataFrame:
    """Expected CPU-seconds to reach each level, restarting failed runs with a new seed (ERT).

    ERT = (CPU of every run up to its first hit, or all its CPU when it never
    hits) / (runs that hit): the expected running time with independent
    restarts, as in COCO benchmarking (Hansen et al., 2021). A campaign restart
    reuses the one-time GHN and ranker, so a campaign's ERT is its one-time
    cost plus the ERT of its marginal costs; ``marginal_ert_cpu_s`` leaves the
    one-time cost out. ``nan`` when no run hits.

    How much the ratio to TPE owes to which seeds ran is estimated by a
    bootstrap over runs: each of ``resamples`` draws resamples the runs of the
    method and, independently, TPE's, with replacement, and recomputes both
    ERTs (a draw without a hit has an infinite ERT). Each method's draws come
    from a stream seeded by ``seed`` and its name alone.

    Args:
        summary: The per-run table of :func:`summarize` (without ``random_expected``).
        resamples: Bootstrap draws.
        seed: Seed of the bootstrap.

    Returns:
        One row per method and level (``top5_val``, ``top1_test``, ...; with
        ``_reported``: judged by the architecture the method reports as its
        best): runs, hits, ``ert_cpu_s``, ``marginal_ert_cpu_s``,
        ``tpe_over_ert`` (TPE's ERT divided by this one),
        ``tpe_over_marginal_ert``, its bootstrap 5% and 95% quantiles
        (``..._q05``, ``..._q95``) and the share of draws where it is at least
        20 (``p_marginal_ratio_ge_20``).
    """
    rows, draws = [], {}
    for method, runs in summary[summary["seed"] >= 0].groupby("method"):
        campaign = str(method).startswith("campaign")
        one_time = float(runs["one_time_cpu_s"].mean()) if campaign else 0.0
        spent = (runs["cpu_s"] - runs["one_time_cpu_s"]).to_numpy(float)  # what a restart pays
        # Each method draws from its own stream, so adding a method to the folder leaves the others' intervals.
        rng = np.random.default_rng([seed, zlib.crc32(str(method).encode())])
        pick = rng.integers(0, len(runs), size=(resamples, len(runs)))  # [resamples, runs], shared by the levels
        for level, column in LEVELS.items():
            reach = (runs[f"marginal_{column}"] if campaign else runs[column]).to_numpy(float)
            ert = float(_ert(reach, spent))
            draws[method, level] = _ert(reach[pick], spent[pick])  # [resamples]
            rows.append({
                "method": method, "level": level, "runs": len(runs), "hits": int(np.isfinite(reach).sum()),
                "ert_cpu_s": one_time + ert if np.isfinite(ert) else math.nan,
                "marginal_ert_cpu_s": ert if np.isfinite(ert) else math.nan,
            })
    frame = pd.DataFrame(rows)
    tpe = frame[frame["method"] == "tpe"].set_index("level")["ert_cpu_s"]
    frame["tpe_over_ert"] = frame["level"].map(tpe) / frame["ert_cpu_s"]
    frame["tpe_over_marginal_ert"] = frame["level"].map(tpe) / frame["marginal_ert_cpu_s"]
    for name in ("tpe_over_marginal_ert_q05", "tpe_over_marginal_ert_q95", "p_marginal_ratio_ge_20"):
        frame[name] = math.nan
    for i, row in frame.iterrows():
        if ("tpe", row["level"]) not in draws or math.isnan(row["tpe_over_marginal_ert"]):
            continue  # no TPE run, or no hit of one of the two: no ratio to bootstrap
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = draws["tpe", row["level"]] / draws[row["method"], row["level"]]  # inf / inf -> nan
        ratio = np.where(np.isnan(ratio), 0.0, ratio)  # neither hit: no evidence of a speed-up
        frame.loc[i, ["tpe_over_marginal_ert_q05", "tpe_over_marginal_ert_q95"]] = np.quantile(
            ratio, [0.05, 0.95], method="inverted_cdf")
        frame.loc[i, "p_marginal_ratio_ge_20"] = float((ratio >= 20).mean())
    return frame


def trace_paths(out: Path, baseline: Path | None = None) -> list[Path]:
    """The traces of ``out``, plus the search-with-training ones (TPE, random) of ``baseline`` when given."""
    paths = sorted(out.glob("search_trace_*.csv"))
    if baseline is not None:
        if not baseline.is_dir():
            raise SystemExit(f"error: --baseline {baseline} is not a folder")
        paths += [p for p in sorted(baseline.glob("search_trace_*.csv"))
                  if not p.name.startswith("search_trace_campaign") and not (out / p.name).exists()]
    return paths


def campaign_traces(folders: list[Path]) -> pd.DataFrame:
    """The campaign traces of other folders (other builds), their seeds offset by 1000 per folder.

    Builds of one recipe then pool as one method: ``campaign-refine-journal``
    seed 2 of the second folder is seed 2002, so no two builds' runs merge.
    """
    frames = []
    for i, folder in enumerate(folders, start=1):
        if not folder.is_dir():
            raise SystemExit(f"error: --campaigns {folder} is not a folder")
        for path in sorted(folder.glob("search_trace_campaign*.csv")):
            trace = pd.read_csv(path)
            frames.append(trace.assign(seed=trace["seed"] + 1000 * i))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=TRACE_COLUMNS)


def summarize(out: Path, levels: dict[str, Any], *, judge: pd.DataFrame | None = None,
              suffix: str = "", baseline: Path | None = None, campaigns: list[Path] | None = None,
              budget_steps: int | None = None) -> pd.DataFrame:
    """One row per run: compute to the top 5% and 1%, best ground truth within the campaign's compute.

    Args:
        out: Folder of the traces; the summary files are written there.
        levels: The thresholds (:func:`thresholds`).
        judge: Ground truth per ``key`` (``val_acc``, ``test_acc``) that
            replaces the traces' seed-0 figures (e.g. means over two seeds);
            search with training still reports by the accuracy it saw itself.
        suffix: Added to the names of the files written.
        baseline: A folder whose TPE and random traces are read too (:func:`trace_paths`).
        campaigns: Folders whose campaign traces are read too (:func:`campaign_traces`).
        budget_steps: SGD steps of the ground-truth budget; with it the total-cost
            table and the cost model (:func:`total_cost`, :func:`cost_model`) are written too.
    """
    traces = trace_paths(out, baseline)
    if not traces:
        raise SystemExit(f"error: no search_trace_*.csv in {out}")
    frame = pd.concat([pd.read_csv(p) for p in traces] + [campaign_traces(campaigns or [])], ignore_index=True)
    frame["one_time"] = frame["one_time"].astype(bool)
    frame["seen_acc"] = frame["val_acc"]  # what search with training saw of its own trials
    if judge is not None:
        truth = judge.set_index("key")
        for metric in ("val_acc", "test_acc"):
            # A pruned trial was never had: it keeps no ground truth, whatever its key's.
            had = frame["key"].notna() & (frame["phase"] != "pruned")
            frame[metric] = frame["key"].map(truth[metric]).where(had, math.nan)
    runs = {key: run.sort_values("step") for key, run in frame.groupby(["method", "seed"])}
    campaign_budget = [run["cpu_s"].sum() for (m, _), run in runs.items() if m == "campaign"]
    campaign_marginal = [run.loc[~run["one_time"], "cpu_s"].sum() for (m, _), run in runs.items() if m == "campaign"]
    budget = float(np.mean(campaign_budget)) if campaign_budget else math.nan
    marginal = float(np.mean(campaign_marginal)) if campaign_marginal else math.nan
    rows = []
    for (method, seed), run in runs.items():
        is_campaign = method.startswith("campaign")
        row: dict[str, Any] = {
            "method": method, "seed": seed,
            "trained": int((run["phase"].isin(["train", "finetune"])).sum()),
            "cpu_s": float(run["cpu_s"].sum()),
            "one_time_cpu_s": float(run.loc[run["one_time"], "cpu_s"].sum()),
        }
        picks: dict[str, float] = {}
        for metric, tag in (("val_acc", ""), ("test_acc", "_test")):
            reported = _reported(run, metric)  # the pick the method would hand its user, step by step
            picks[f"reported{tag or '_val'}_acc"] = float(reported.iloc[-1])
            for q in ("top5", "top1"):
                level = levels[f"{metric}_{q}"]
                row[f"cpu_to_{q}{tag}"] = _first_reach(run, level, marginal=False, metric=metric)
                row[f"marginal_cpu_to_{q}{tag}"] = (
                    _first_reach(run, level, marginal=True, metric=metric) if is_campaign else math.nan
                )
                row[f"cpu_to_{q}_reported{tag}"] = _first_cost(run, reported.to_numpy(), level, marginal=False)
                row[f"marginal_cpu_to_{q}_reported{tag}"] = (
                    _first_cost(run, reported.to_numpy(), level, marginal=True) if is_campaign else math.nan
                )
        row.update({
            **picks,
            "best_val_acc": float(run["val_acc"].max()),
            "best_test_acc": float(run["test_acc"].max()),
            "best_within_campaign_cpu": _best_within(run, budget),
            "best_within_campaign_marginal_cpu": _best_within(run, marginal, marginal=is_campaign),
        })
        rows.append(row)
    train_s = float(frame.loc[(frame["phase"] == "train") & ~frame["cached"].astype(bool), "cpu_s"].median())
    if math.isnan(train_s):
        train_s = levels["reference_train_s"]
    rows.append({
        "method": "random_expected", "seed": -1, "trained": math.nan, "cpu_s": math.nan, "one_time_cpu_s": 0.0,
        **{f"cpu_to_{q}{tag}": train_s / levels[f"{metric}_p_{q}"] if levels[f"{metric}_p_{q}"] else math.inf
           for metric, tag in (("val_acc", ""), ("test_acc", "_test")) for q in ("top5", "top1")},
    })
    summary = pd.DataFrame(rows)
    summary.to_csv(out / f"search_summary{suffix}.csv", index=False)
    # Each table names its judge and reference, so readers (bench_judges.py) need not parse file names.
    expected_cost(summary[summary["seed"] >= 0]).assign(
        judge=levels["judge"], reference=levels["reference_n"], strict=levels["strict"],
    ).to_csv(out / f"search_expected_cost{suffix}.csv", index=False)
    (out / f"search_thresholds{suffix}.json").write_text(
        json.dumps({**levels, "train_cpu_s_median": train_s}, indent=2))
    _plot(summary, out, suffix=suffix)
    if budget_steps is not None:
        parts = cost_parts(runs, levels, step_cost(frame, budget_steps))
        total_cost(parts).assign(judge=levels["judge"]).to_csv(out / f"search_total_cost{suffix}.csv", index=False)
        model = cost_model(parts, budget_steps)
        model.to_csv(out / f"search_cost_model{suffix}.csv", index=False)
        _plot_cost_model(model, out, suffix=suffix, judge=levels["judge"])
    return summary


#: Trace phases that train a network: each costs a fixed overhead (building, evaluating) plus its SGD steps.
TRAINING_PHASES = ("train", "pruned", "finetune")
#: The levels the total-cost table and the cost model judge (the issue's bar).
COST_LEVELS = ("top1_val", "top1_test", "top5_val", "top5_test")


def step_cost(frame: pd.DataFrame, budget_steps: int) -> tuple[float, float]:
    """``(overhead_s, step_s)``: a training's CPU-seconds as ``overhead_s + steps * step_s``.

    Fitted by least squares on the multi-fidelity trials, whose steps are
    known (a pruned trial ran to its last rung, a completed one the whole
    budget); without them, no overhead and the median full training over
    ``budget_steps``.
    """
    pruned = frame[frame["rungs"].notna()] if "rungs" in frame else frame.iloc[:0]
    if len(pruned) >= 10 and (pruned["phase"] == "pruned").any() and (pruned["phase"] == "train").any():
        steps = [budget_steps if phase == "train" else max(int(k) for k in json.loads(r))
                 for phase, r in zip(pruned["phase"], pruned["rungs"])]
        step_s, overhead_s = np.polyfit(np.asarray(steps, float), pruned["cpu_s"].to_numpy(float), 1)
        return max(float(overhead_s), 0.0), float(step_s)
    full = frame.loc[(frame["phase"] == "train") & ~frame["cached"].astype(bool), "cpu_s"]
    return 0.0, float(full.median()) / budget_steps


def cost_parts(runs: dict[tuple[str, int], pd.DataFrame], levels: dict[str, Any],
               costs: tuple[float, float]) -> pd.DataFrame:
    """Each run's CPU up to its first hit of each level, split by how it grows with the training budget.

    ``fixed_s`` does not grow with the ground-truth budget (the rank stage's
    short trainings, proxy scoring, every training's overhead); ``scaled_s``
    grows in proportion to it (the SGD steps of every full training, pruned
    trial and fine-tune: rungs and fine-tunes are fixed fractions of the
    budget). ``one_time_s`` is the run's one-time cost, paid once however
    many campaigns follow. A run that never hits is charged all it spent.

    Returns:
        One row per run and level of :data:`COST_LEVELS`: ``method``, ``seed``,
        ``level``, ``hit``, ``one_time_s``, ``fixed_s``, ``scaled_s``, and
        ``overhead_s`` / ``step_s`` of ``costs``.
    """
    overhead_s, step_s = costs
    rows = []
    for (method, seed), run in runs.items():
        one_time = run["one_time"].to_numpy(bool)
        cpu = run["cpu_s"].to_numpy(float)
        training = run["phase"].isin(TRAINING_PHASES).to_numpy()
        fixed = np.where(one_time, 0.0, np.where(training, np.minimum(overhead_s, cpu), cpu))
        scaled = np.where(one_time | ~training, 0.0, cpu - fixed)
        for level in COST_LEVELS:
            q, metric = level.split("_")
            values = run["val_acc" if metric == "val" else "test_acc"].to_numpy(float)
            reach = np.flatnonzero(values >= levels[f"{'val_acc' if metric == 'val' else 'test_acc'}_{q}"] - 1e-12)
            end = reach[0] + 1 if len(reach) else len(run)
            rows.append({"method": method, "seed": seed, "level": level, "hit": bool(len(reach)),
                         "one_time_s": float(cpu[one_time].sum()), "fixed_s": float(fixed[:end].sum()),
                         "scaled_s": float(scaled[:end].sum()), "overhead_s": overhead_s, "step_s": step_s})
    return pd.DataFrame(rows)


def _ert_draws(parts: pd.DataFrame, scales: np.ndarray, amortise: float, pick: np.ndarray | None) -> np.ndarray:
    """ERT of one method and level at each budget scale, for each bootstrap draw (``pick``: [draws, runs]).

    Returns:
        ``[draws, scales]`` (one draw without ``pick``); ``inf`` where no run hits.
    """
    idx = pick if pick is not None else np.arange(len(parts))[None, :]
    hits = parts["hit"].to_numpy(float)[idx].sum(axis=1)  # [draws]
    fixed = parts["fixed_s"].to_numpy(float)[idx].sum(axis=1)
    scaled = parts["scaled_s"].to_numpy(float)[idx].sum(axis=1)
    one_time = parts["one_time_s"].to_numpy(float)[idx].mean(axis=1) / amortise
    with np.errstate(divide="ignore", invalid="ignore"):
        marginal = (fixed[:, None] + scaled[:, None] * scales[None, :]) / hits[:, None]
    return np.where(hits[:, None] > 0, one_time[:, None] + marginal, np.inf)


def _baselines(parts: pd.DataFrame) -> list[str]:
    return sorted(m for m in parts["method"].unique() if not str(m).startswith("campaign"))


def total_cost(parts: pd.DataFrame, *, resamples: int = 2000, seed: int = 0) -> pd.DataFrame:
    """ERT to each level with every one-time cost in it, and amortised over 3 and 10 campaigns.

    Each campaign is set against the best baseline (the method without
    one-time costs with the smallest ERT at that level): ``baseline_over_ert``
    is its ERT over the campaign's single-campaign ERT (above 1: the campaign
    is cheaper), with bootstrap 5% / 95% quantiles (runs of both resampled;
    the best baseline chosen again in each draw).
    """
    rows = []
    one = np.ones(1)
    for level, at_level in parts.groupby("level"):
        draws, erts = {}, {}
        for method, group in at_level.groupby("method"):
            rng = np.random.default_rng([seed, zlib.crc32(f"{method}/{level}".encode())])
            pick = rng.integers(0, len(group), size=(resamples, len(group)))
            draws[method] = _ert_draws(group, one, 1, pick)[:, 0]
            erts[method] = {n: float(_ert_draws(group, one, n, None)[0, 0]) for n in (1, 3, 10)}
        baselines = _baselines(at_level)
        best = min(baselines, key=lambda m: erts[m][1]) if baselines else None
        best_draw = np.min([draws[m] for m in baselines], axis=0) if baselines else None
        for method, group in at_level.groupby("method"):
            row = {"level": level, "method": method, "runs": len(group), "hits": int(group["hit"].sum()),
                   "one_time_cpu_s": float(group["one_time_s"].mean()),
                   **{f"ert_cpu_s{'' if n == 1 else f'_amortised_{n}'}": _finite(erts[method][n]) for n in (1, 3, 10)},
                   "best_baseline": best, "best_baseline_ert_cpu_s": _finite(erts[best][1]) if best else math.nan}
            if best is not None and str(method).startswith("campaign"):
                for n in (1, 3, 10):
                    row[f"baseline_over_ert{'' if n == 1 else f'_amortised_{n}'}"] = (
                        erts[best][1] / erts[method][n])
                with np.errstate(divide="ignore", invalid="ignore"):
                    ratio = np.nan_to_num(best_draw / draws[method], nan=0.0)
                row["baseline_over_ert_q05"], row["baseline_over_ert_q95"] = np.quantile(
                    ratio, [0.05, 0.95], method="inverted_cdf")
            rows.append(row)
    return pd.DataFrame(rows)


def _finite(value: float) -> float:
    return value if np.isfinite(value) else math.nan


def cost_model(parts: pd.DataFrame, budget_steps: int, *, budgets: np.ndarray | None = None,
               resamples: int = 2000, seed: int = 0) -> pd.DataFrame:
    """Each campaign's ERT over the best baseline's, as a function of the ground-truth budget.

    ERT(B) = one-time + (fixed + scaled * B / ``budget_steps``) / hits, from
    :func:`cost_parts` measured at ``budget_steps``; the numbers of trainings
    each method needs are assumed to stay what they were there. The best
    baseline is chosen at each budget and in each bootstrap draw.

    Returns:
        One row per campaign method, level (top 1%, validation and test) and
        budget: ``budget_steps``, ``ratio`` (campaign ERT / best baseline ERT;
        below 1 the campaign is cheaper), ``ratio_q05`` / ``ratio_q95``,
        ``ratio_amortised_10``, ``best_baseline``.
    """
    budgets = budgets if budgets is not None else np.unique(np.geomspace(budget_steps, budget_steps * 300, 61).round())
    scales = budgets / budget_steps
    rows = []
    for level in ("top1_val", "top1_test"):
        at_level = parts[parts["level"] == level]
        baselines = _baselines(at_level)
        if not baselines:
            continue
        point = {m: _ert_draws(g, scales, 1, None)[0] for m, g in at_level.groupby("method")}
        draws = {}
        for method, group in at_level.groupby("method"):
            rng = np.random.default_rng([seed, zlib.crc32(f"{method}/{level}/model".encode())])
            draws[method] = _ert_draws(group, scales, 1, rng.integers(0, len(group), size=(resamples, len(group))))
        best_point = np.min([point[m] for m in baselines], axis=0)  # [budgets]
        best_name = np.asarray(baselines)[np.argmin([point[m] for m in baselines], axis=0)]
        best_draw = np.min([draws[m] for m in baselines], axis=0)  # [draws, budgets]
        for method, group in at_level.groupby("method"):
            if not str(method).startswith("campaign"):
                continue
            amortised = _ert_draws(group, scales, 10, None)[0]
            with np.errstate(divide="ignore", invalid="ignore"):
                ratio = point[method] / best_point
                q05, q95 = np.quantile(np.nan_to_num(draws[method] / best_draw, nan=np.inf), [0.05, 0.95], axis=0)
            for i, b in enumerate(budgets):
                rows.append({"method": method, "runs": len(group), "level": level, "budget_steps": int(b),
                             "ratio": ratio[i],
                             "ratio_q05": q05[i], "ratio_q95": q95[i],
                             "ratio_amortised_10": amortised[i] / best_point[i], "best_baseline": best_name[i]})
    return pd.DataFrame(rows)


def _plot_cost_model(model: pd.DataFrame, out: Path, *, suffix: str = "", judge: str = "") -> None:
    """Campaign ERT / best baseline ERT against the training budget, one panel per level (PNG and PDF)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if model.empty:
        print("cost model: no campaign and baseline to compare; no figure", flush=True)
        return
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, (level, title) in zip(axes, (("top1_val", "validation top 1%"), ("top1_test", "test top 1%"))):
        for i, (method, rows) in enumerate(model[model["level"] == level].groupby("method")):
            color = f"C{i}"
            runs = int(rows["runs"].iloc[0])
            ax.plot(rows["budget_steps"], rows["ratio"], color=color, label=f"{method} ({runs} runs), one campaign")
            ax.fill_between(rows["budget_steps"], rows["ratio_q05"], rows["ratio_q95"], color=color, alpha=0.2,
                            label=f"{method}: bootstrap 5-95%")
            ax.plot(rows["budget_steps"], rows["ratio_amortised_10"], color=color, linestyle="--",
                    label=f"{method}, one-time cost over 10 campaigns")
        ax.axhline(1.0, color="k", linewidth=0.8, label="break-even")
        ax.axhline(1 / 3, color="k", linewidth=0.8, linestyle=":", label="goal: a third")
        ax.axvline(model["budget_steps"].min(), color="grey", linewidth=0.8, linestyle="-.",
                   label="measured budget")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("ground-truth training budget (SGD steps per architecture)")
        ax.set_title(f"ERT to the {title} (judge {judge})", fontsize=9)
        ax.grid(alpha=0.3, which="both")
    axes[0].set_ylabel("campaign ERT / best baseline ERT\n(lower is better; < 1: campaign cheaper)")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.tight_layout(rect=(0, 0.18, 1, 1))
    fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=7, frameon=False)
    for ext in ("png", "pdf"):
        fig.savefig(out / f"search_cost_model{suffix}.{ext}", dpi=200)
    plt.close(fig)


def plot_reach(summary: pd.DataFrame) -> Any:
    """Fraction of runs that have reached each level, against CPU-seconds (runtime ECDF, one panel per level).

    Each method is a step curve over its runs (a run that never reaches a
    level never counts); campaigns are drawn twice: every CPU-second counted
    (solid) and their one-time costs left out (dashed), as for a further
    campaign on the same space and dataset.

    Args:
        summary: The per-run table of :func:`summarize` (``random_expected`` is ignored).

    Returns:
        The matplotlib ``Figure`` (2 x 3 panels: validation / test by top 5%,
        top 1% and top 1% of the architecture each method reports as its best).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = summary[summary["seed"] >= 0]
    colors = {"campaign": "C0", "campaign-journal": "C4", "campaign-refine": "C3", "campaign-refine-journal": "C5",
              "campaign-refine-rerank": "C6", "campaign-refine-rerank-journal": "C7",
              "campaign-refine-blend-journal": "C8",
              "tpe": "C1", "random": "C2"}
    # Methods without a colour of their own (the multi-fidelity ones, zc-screen, ...) get tab20's colours that no
    # method of this figure uses yet, in turn.
    from matplotlib.colors import to_hex

    present = set(runs["method"])
    used = {to_hex(colors[m]) for m in present if m in colors}
    spare = [c for c in map(to_hex, plt.get_cmap("tab20").colors) if c not in used]
    others = {m: spare[i % len(spare)] for i, m in enumerate(sorted(present - set(colors)))}
    fig, axes = plt.subplots(2, 3, figsize=(10.5, 6.4), sharex=True, sharey=True)
    for row, (tag, judged) in enumerate((("", "validation"), ("_test", "test"))):
        for col, (q, kind) in enumerate((("top5", ""), ("top1", ""), ("top1", "_reported"))):
            ax = axes[row, col]
            for method, group in runs.groupby("method"):
                campaign = str(method).startswith("campaign")
                variants = [("cpu_to", "-", "")] + ([("marginal_cpu_to", "--", ", after one-time")] if campaign else [])
                for prefix, style, note in variants:
                    costs = np.sort(group[f"{prefix}_{q}{kind}{tag}"].dropna().to_numpy())
                    x = np.concatenate([[1.0], costs, [1e4]])
                    y = np.concatenate([[0.0], np.arange(1, len(costs) + 1), [len(costs)]]) / len(group)
                    ax.step(x, y, where="post", color=colors.get(str(method)) or others[str(method)], linestyle=style,
                            label=f"{method}{note} ({len(group)} runs)")
            ax.set_xscale("log")
            ax.set_xlim(2, 3000)
            ax.set_ylim(-0.02, 1.02)
            pick = "\nof the architecture each method reports" if kind else ""
            ax.set_title(f"reference {q[:3]} {q[3:]}%, {judged} accuracy{pick}", fontsize=9)
            ax.grid(alpha=0.3)
    for ax in axes[1]:
        ax.set_xlabel("CPU-seconds (log)")
    for ax in axes[:, 0]:
        ax.set_ylabel("fraction of runs there")
    # The legend goes below the panels, where it hides no curve.
    handles, labels = axes[0, 0].get_legend_handles_labels()
    legend_rows = math.ceil(len(labels) / 3)
    fig.set_figheight(6.4 + 0.16 * legend_rows)
    fig.tight_layout(rect=(0, 0.03 + 0.03 * legend_rows, 1, 1))
    fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=7, frameon=False)
    return fig


def _plot(summary: pd.DataFrame, out: Path, suffix: str = "") -> None:
    import matplotlib.pyplot as plt

    fig = plot_reach(summary)
    for ext in ("png", "pdf"):
        fig.savefig(out / f"search_curves{suffix}.{ext}", dpi=200)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--space", default="nb201")
    parser.add_argument("--dataset", default="mnist5k")
    parser.add_argument("--epochs", type=float, default=3, help="ground-truth budget (default 3)")
    parser.add_argument("--methods", nargs="*", default=[], choices=[
        "campaign", "campaign-journal", "campaign-refine", "campaign-refine-journal", "campaign-short-journal",
        "tpe", "random", *PRUNED, "zc-screen", "bananas"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--trials", type=int, default=60, help="trained trials of tpe / random (default 60)")
    parser.add_argument("--max-cpu", type=float, default=300,
                        help="CPU-seconds after which a multi-fidelity run (tpe-sh, random-hb, ...) stops "
                             "(default 300)")
    parser.add_argument("--zc-pool", type=int, default=300,
                        help="candidates the zc-screen scores, and bananas each round (default 300)")
    parser.add_argument("--bananas-start", type=int, default=10,
                        help="uniform candidates bananas trains before its first fit (default 10)")
    parser.add_argument("--bananas-batch", type=int, default=10,
                        help="candidates bananas trains between two fits (default 10)")
    parser.add_argument("--zc-top", type=int, default=10, help="best-scored candidates it trains (default 10)")
    parser.add_argument("--zc-proxy", default="snip", help="its zero-cost proxy (default snip)")
    parser.add_argument("--campaign-trials", type=int, default=300)
    parser.add_argument("--top-k", type=int, default=10)
    parser.add_argument("--refine", type=int, default=10,
                        help="best candidates refined by the campaign-refine methods (default 10)")
    parser.add_argument("--finetune-epochs", type=float, default=1)
    parser.add_argument("--variant", default="",
                        help="name campaign traces <method>-VARIANT: the same method with other settings "
                             "(e.g. --finetune-epochs 3 --variant ft3)")
    parser.add_argument("--finetune-lr", type=float, default=0.05, help="fine-tuning peak learning rate (default 0.05)")
    parser.add_argument("--ghn-steps", type=int, default=1200, help="meta-training steps (default: the recipe's 1200)")
    parser.add_argument("--ranker-labels", type=int, default=150)
    parser.add_argument("--ranker-k", type=int, default=30)
    parser.add_argument("--exclude-reference", action="store_true",
                        help="label only architectures outside the reference samples (--reference-sample-seeds) "
                             "that set the thresholds")
    parser.add_argument("--one-time-seed", type=int, default=0,
                        help="seed of the GHN's meta-training and of the ranker's label sample and fit (default 0); "
                             "another seed in another --work replicates the one-time artifacts")
    parser.add_argument("--reference-labels", type=Path, default=None,
                        help="label file whose architectures a united reference leaves out (default: "
                             "<work>/one_time/ranker_labels_k<K>.csv); a replicate names the first run's to keep "
                             "its reference")
    parser.add_argument("--extra-rankers", nargs="*", type=Path, default=[],
                        help="rankers of other builds that join the campaign's own (a nas.ghn.RankerEnsemble); "
                             "give their one-time costs with --extra-one-time")
    parser.add_argument("--extra-one-time", nargs="*", type=Path, default=[],
                        help="search_one_time.csv of each build of --extra-rankers: charged as one-time costs too")
    parser.add_argument("--baseline", type=Path, default=None,
                        help="folder whose tpe / random traces the report reads too (a replicate's --out holds "
                             "only its campaigns)")
    parser.add_argument("--campaigns", nargs="*", type=Path, default=[],
                        help="folders whose campaign traces the report reads too (other builds: their seeds are "
                             "offset by 1000 per folder, so the builds of one recipe pool as one method)")
    parser.add_argument("--label-workers", type=int, default=1, help="processes training the ranker's labels")
    parser.add_argument("--reference", type=Path,
                        default=Path("experiments/results/nb201-mnist5k/ground_truth.sqlite"))
    parser.add_argument("--reference-archs", type=int, default=100, help="reference candidates per sample seed")
    parser.add_argument("--reference-sample-seeds", nargs="+", type=int, default=[0],
                        help="seeds of the reference samples, united (default 0: the held-out 100); "
                             "a united reference leaves out the ranker's label architectures")
    parser.add_argument("--cache", type=Path, default=Path("bench/results/search_ground_truth.sqlite"))
    parser.add_argument("--work", type=Path, default=Path("runs/bench_search"))
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    parser.add_argument("--referee-seeds", nargs="+", type=int, default=[0],
                        help="judge by the mean over these training seeds (default 0: the runs' own seed); "
                             "missing runs are trained, and the files get the suffix _ref<seeds>")
    parser.add_argument("--referee-workers", type=int, default=1, help="processes training referee runs")
    parser.add_argument("--report", action="store_true", help="only rebuild the summary from the traces")
    parser.add_argument("--strict", action="store_true",
                        help="a level is reached only above its threshold, not at it (accuracies are quantised, "
                             "so ties happen); outputs get the suffix _strict")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args()

    torch.set_num_threads(1)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    from nas.data import load_dataset
    from nas.space import load_space

    data = load_dataset(args.dataset)
    space = load_space(args.space, input_shape=data.input_shape, num_classes=data.num_classes)
    referee = Referee(args.cache, data, args.epochs, reference=args.reference)
    labels = args.reference_labels or Path(args.work) / "one_time" / f"ranker_labels_k{args.ranker_k}.csv"
    if args.reference_labels is not None and not args.reference_labels.is_file():
        raise SystemExit(f"error: --reference-labels {args.reference_labels} not found")
    # The default reference stays the held-out 100 as earlier reports had it; a united one leaves the labels out.
    united = args.reference_sample_seeds != [0]
    levels = thresholds(referee, space, args.reference_archs, args.referee_seeds, workers=args.referee_workers,
                        strict=args.strict, sample_seeds=args.reference_sample_seeds,
                        exclude=set(pd.read_csv(labels)["key"]) if united and labels.exists() else None)
    args.out.mkdir(parents=True, exist_ok=True)
    if not args.report:
        campaigns = [m for m in args.methods if m.startswith("campaign")]
        ranked = [m for m in campaigns if "-short" not in m]
        one_time = (run_one_time(args, space=space, data=data, out=args.out, ranker=bool(ranked))
                    if campaigns else None)
        if campaigns and len(args.extra_one_time) != len(args.extra_rankers):
            raise SystemExit(f"error: {len(args.extra_rankers)} --extra-rankers but {len(args.extra_one_time)} "
                             "--extra-one-time records; give each build's search_one_time.csv")
        for record in args.extra_one_time if campaigns else []:
            extra = pd.read_csv(record)  # another build's GHN and ranker: charged once, like this build's
            one_time = pd.concat([one_time, extra.assign(phase=extra["phase"] + f" ({record.parent.name})")],
                                 ignore_index=True)
        for seed in args.seeds:
            for method in args.methods:
                named = f"{method}-{args.variant}" if args.variant and method.startswith("campaign") else method
                trace = args.out / f"search_trace_{named}_s{seed}.csv"
                if method.startswith("campaign"):
                    run_campaign(seed, args=args, space=space, data=data, referee=referee, trace=trace,
                                 one_time=one_time, method=method, name=named)
                elif method in PRUNED:
                    run_pruned_search(method, seed, space=space, data=data, epochs=args.epochs, max_cpu=args.max_cpu,
                                      trace=trace)
                elif method == "bananas":
                    run_predictor_search(seed, space=space, data=data, referee=referee, max_cpu=args.max_cpu,
                                         start=args.bananas_start, batch=args.bananas_batch, pool=args.zc_pool,
                                         trace=trace)
                elif method == "zc-screen":
                    run_proxy_screen(seed, space=space, data=data, referee=referee, pool=args.zc_pool,
                                     top=args.zc_top, proxy=args.zc_proxy, trace=trace)
                else:
                    run_trained_search(method, seed, space=space, referee=referee, trials=args.trials, trace=trace)
    judge = None
    if args.referee_seeds != [0]:
        keys = set()
        for trace in [pd.read_csv(p) for p in trace_paths(args.out, args.baseline)] + [campaign_traces(args.campaigns)]:
            keys |= set(trace.loc[trace["phase"] != "pruned", "key"].dropna())  # pruned trials are never judged
        graphs = [referee.graph(key) for key in sorted(keys)]
        judge = referee.judge_seeds([g for g in graphs if g is not None], args.referee_seeds,
                                    workers=args.referee_workers)
    suffix = report_suffix(args.referee_seeds, args.reference_sample_seeds, strict=args.strict)
    summary = summarize(args.out, levels, judge=judge, suffix=suffix, baseline=args.baseline,
                        campaigns=args.campaigns, budget_steps=training_steps(data, args.epochs))
    seeds_text = "seed 0" if args.referee_seeds == [0] else f"mean of seeds {', '.join(map(str, args.referee_seeds))}"
    print(f"reference: {levels['reference_n']} trained candidates, {levels['reference_excluded']} label "
          f"architectures left out ({args.epochs:g} epochs, {seeds_text}): "
          f"top 5% / 1% at validation accuracy {levels['val_acc_top5']:.4f} / {levels['val_acc_top1']:.4f}, "
          f"test accuracy {levels['test_acc_top5']:.4f} / {levels['test_acc_top1']:.4f}")
    shown = [
        "method", "seed", "trained", "cpu_s", "one_time_cpu_s", "cpu_to_top5", "cpu_to_top1", "marginal_cpu_to_top5",
        "marginal_cpu_to_top1", "cpu_to_top5_test", "cpu_to_top1_test", "cpu_to_top1_reported_test",
        "reported_test_acc", "best_within_campaign_marginal_cpu",
    ]
    with pd.option_context("display.width", 250, "display.max_columns", 30):
        print(summary[shown].round(4).to_string(index=False))
    ert = pd.read_csv(args.out / f"search_expected_cost{suffix}.csv")
    with pd.option_context("display.width", 250, "display.max_columns", 30):
        print("expected CPU-seconds to reach each level, failed runs restarted with a new seed (ERT):")
        print(ert.round(2).to_string(index=False))
    total = pd.read_csv(args.out / f"search_total_cost{suffix}.csv")
    shown = ["level", "method", "runs", "hits", "one_time_cpu_s", "ert_cpu_s", "ert_cpu_s_amortised_3",
             "ert_cpu_s_amortised_10", "best_baseline", "baseline_over_ert", "baseline_over_ert_q05",
             "baseline_over_ert_q95"]
    with pd.option_context("display.width", 250, "display.max_columns", 30):
        print("total cost: ERT with every one-time cost (one campaign), amortised over 3 and 10 campaigns, "
              "against the best baseline (baseline_over_ert > 1: the campaign is cheaper):")
        print(total[[c for c in shown if c in total]].round(2).to_string(index=False))
    print(f"all columns: {args.out / f'search_summary{suffix}.csv'}, {args.out / f'search_expected_cost{suffix}.csv'}, "
          f"{args.out / f'search_total_cost{suffix}.csv'}, {args.out / f'search_cost_model{suffix}.csv'}")


if __name__ == "__main__":
    main()
