"""Results of a campaign: tables from the studies, plots from the tables, files on disk.

Reporting comes in two steps, as in :mod:`optuna.visualization.matplotlib`:
pure functions turn studies into :class:`pandas.DataFrame` tables, and plotting
functions take a table, draw on an ``Axes`` and return it. :func:`write_report`
writes everything to the output folder, each file atomically (a temporary file
then ``os.replace``), so a reader never sees half a file.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pandas as pd
from optuna.trial import TrialState

from nas import _atomic
from nas.campaign._rank import RANK_BY, rank_by_of, rank_score
from nas.exceptions import GraphError, SpaceError
from nas.space import SearchSpace

__all__ = [
    "CANDIDATE_COLUMNS",
    "FINETUNED_COLUMNS",
    "PICKS",
    "best_record",
    "candidates_frame",
    "finetuned_frame",
    "plot_history",
    "plot_pareto",
    "plot_score_vs_finetuned",
    "plot_self_check",
    "rank_score_label",
    "rank_trials_frame",
    "write_report",
]

logger = logging.getLogger(__name__)


#: Leading columns of :func:`candidates_frame` (then one column per choice, then ``choices`` and ``graph``).
CANDIDATE_COLUMNS: tuple[str, ...] = (
    "rank",
    "trial",
    "key",
    "num_params",
    "flops",
    "rank_by",
    "rank_score",
    "ghn_loss",
    "ghn_acc",
    "n_trials",
    "pareto",
    "finetuned",
)

#: What a campaign reports as its best (``best.json``): name -> what it means.
PICKS: dict[str, str] = {
    "rank": "the first fine-tuned candidate in the ranking's order",
    "finetuned": "the candidate with the best fine-tuned validation result",
}

#: Leading columns of :func:`finetuned_frame` (then one column per choice, then ``choices`` and ``graph``).
FINETUNED_COLUMNS: tuple[str, ...] = (
    "rank",
    "trial",
    "rank_trial",
    "queue_position",
    "key",
    "num_params",
    "flops",
    "rank_by",
    "rank_score",
    "ghn_loss",
    "ghn_acc",
    "val_loss",
    "val_acc",
    "test_loss",
    "test_acc",
    "train_loss",
    "steps",
    "wall_time",
    "failed",
    "error",
    "worker",
    "weights",
)

_TAIL = ("choices", "graph")


def _choice_columns(rows: Sequence[Mapping[str, Any]], reserved: Sequence[str]) -> dict[str, str]:
    """Choice name -> column name (``choice_<name>`` when the name clashes with a fixed column)."""
    names: dict[str, None] = {}
    for row in rows:
        for name in row["_choices"]:
            names.setdefault(name, None)
    taken = set(reserved) | set(_TAIL)
    return {name: (f"choice_{name}" if name in taken else name) for name in names}


def _graph_json(space: SearchSpace | None, row: Mapping[str, Any], choices: Mapping[str, Any]) -> str | None:
    """The candidate's graph JSON: rebuilt from its choices (checked against its key), or as an older
    campaign stored it on the trial."""
    if row.get("graph"):
        return row["graph"]
    if space is None:
        return None
    try:
        graph = space.from_params(dict(choices))
    except (GraphError, SpaceError, ValueError, KeyError) as err:
        logger.warning("candidate %s: its choices do not rebuild a graph (%s)", str(row.get("key"))[:12], err)
        return None
    if graph.key != row.get("key"):
        logger.warning("candidate %s: its choices rebuild another graph (%s); the space changed since it ran",
                       str(row.get("key"))[:12], graph.key[:12])
        return None
    return graph.to_json()


def _finish(rows: list[dict[str, Any]], columns: Sequence[str], space: SearchSpace | None = None) -> pd.DataFrame:
    mapping = _choice_columns(rows, columns)
    records = []
    for row in rows:
        choices = row.pop("_choices")
        rec = {col: row.get(col) for col in columns}
        for name, col in mapping.items():
            rec[col] = choices.get(name)
        rec["choices"] = json.dumps(choices, sort_keys=True)
        rec["graph"] = _graph_json(space, row, choices)
        records.append(rec)
    return pd.DataFrame.from_records(records, columns=[*columns, *mapping.values(), *_TAIL])


def _num(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


#: Score columns of ``candidates.csv`` written only when the campaign computed them.
OPTIONAL_SCORE_COLUMNS = ("ghn_loss", "ghn_acc")

#: Fewest rows a result plot is drawn with.
MIN_PLOT_POINTS = 3


def rank_score_label(rank_by: str) -> str:
    """Axis label of the rank score of ``rank_by`` (``"short"``, ``"ranker"`` or ``"loss"``)."""
    label = {
        "short": "short-training loss (sum of the first k SGD losses)",
        "ranker": "ranker score: z(predicted TSE) - w z(log FLOPs)",
        "loss": "predicted-weight validation loss",
    }.get(rank_by, RANK_BY.get(rank_by, str(rank_by)))
    return f"{label} (lower is better)"


def _frame_rank_by(frame: pd.DataFrame) -> str:
    """The ``rank_by`` of a table's rows (``"loss"`` for tables older than the ranker)."""
    if "rank_by" in frame.columns and len(frame):
        values = frame["rank_by"].dropna()
        if len(values):
            return str(values.iloc[0])
    return "loss"


def rank_trials_frame(study: optuna.Study) -> pd.DataFrame:
    """One row per finished rank trial that built a candidate (duplicates included).

    Args:
        study: The ``<name>-rank`` study.

    Returns:
        Columns ``trial``, ``state``, ``key``, ``duplicate_of`` (trial number or
        ``<NA>``), ``num_params``, ``flops``, ``rank_by`` (what scored it, see
        :data:`~nas.campaign.RANK_BY`), ``rank_score`` (lower is better),
        ``ghn_loss``, ``ghn_acc`` (``nan`` unless ``rank_by`` is ``"loss"``),
        ``value`` (first objective value; ``nan`` when failed), ``datetime_complete``;
        sorted by trial number.
    """
    rank_by = rank_by_of(study)
    rows = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.FAIL)):
        if "key" not in t.user_attrs:
            continue
        a = t.user_attrs
        rows.append({
            "trial": t.number,
            "state": t.state.name,
            "key": a["key"],
            "duplicate_of": a.get("duplicate_of"),
            "num_params": a.get("num_params"),
            "flops": a.get("flops"),
            "rank_by": rank_by,
            "rank_score": rank_score(a),
            "ghn_loss": _num(a.get("ghn_loss")),
            "ghn_acc": _num(a.get("ghn_acc")),
            "value": float(t.values[0]) if t.values else math.nan,
            "datetime_complete": t.datetime_complete,
        })
    frame = pd.DataFrame(
        rows,
        columns=[
            "trial", "state", "key", "duplicate_of", "num_params", "flops", "rank_by", "rank_score", "ghn_loss",
            "ghn_acc", "value", "datetime_complete",
        ],
    )
    frame["duplicate_of"] = frame["duplicate_of"].astype("Int64")
    return frame.sort_values("trial", kind="stable").reset_index(drop=True)


def candidates_frame(
    study: optuna.Study, *, finetuned_keys: Sequence[str] = (), space: SearchSpace | None = None
) -> pd.DataFrame:
    """One row per distinct candidate the rank stage scored, best rank score first.

    Args:
        study: The ``<name>-rank`` study.
        finetuned_keys: Keys of fine-tuned candidates (fills the ``finetuned`` column).
        space: The campaign's space: its ``from_params`` rebuilds each candidate's ``graph`` column
            from the stored choices (trials store the key, not the graph). Without it the column holds
            what older campaigns stored, else ``None``.

    Returns:
        Columns :data:`CANDIDATE_COLUMNS`: ``rank`` (1 = lowest ``rank_score``;
        ``<NA>`` when the score is not finite), ``trial`` (the trial that scored
        it), ``key``, ``num_params``, ``flops``, ``rank_by`` (what scored it:
        ``"ranker"`` or ``"loss"``), ``rank_score`` (the score that ranked it,
        lower is better: :meth:`nas.ghn.GHNRanker.score`, the z-scored
        predicted short-training loss minus the weighted z-scored log FLOPs,
        or the predicted-weight validation loss), ``ghn_loss``, ``ghn_acc`` (the
        predicted-weight validation loss and accuracy; ``nan`` unless
        ``rank_by`` is ``"loss"``), ``n_trials`` (trials that proposed it),
        ``pareto`` (on the Pareto front of a multi-objective study; ``False``
        otherwise), ``finetuned``; then one column per choice of the search
        space, ``choices`` (JSON of the choices) and ``graph`` (the graph JSON).
    """
    trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.FAIL))
    front: set[str] = set()
    if len(study.directions) > 1:
        front = {t.user_attrs.get("key") for t in study.best_trials}
    rank_by = rank_by_of(study)
    counts: dict[str, int] = {}
    firsts: dict[str, Any] = {}
    for t in trials:
        key = t.user_attrs.get("key")
        if key is None or not ({"rank_score", "ghn_loss"} & set(t.user_attrs)):
            continue
        counts[key] = counts.get(key, 0) + 1
        if "duplicate_of" not in t.user_attrs and (key not in firsts or t.number < firsts[key].number):
            firsts[key] = t
    done = set(finetuned_keys)
    rows = []
    for key, t in firsts.items():
        a = t.user_attrs
        rows.append({
            "trial": t.number,
            "key": key,
            "num_params": a.get("num_params"),
            "flops": a.get("flops"),
            "rank_by": rank_by,
            "rank_score": rank_score(a),
            "ghn_loss": _num(a.get("ghn_loss")),
            "ghn_acc": _num(a.get("ghn_acc")),
            "n_trials": counts[key],
            "pareto": key in front,
            "finetuned": key in done,
            "graph": a.get("graph"),
            "_choices": dict(t.params),
        })
    frame = _finish(rows, CANDIDATE_COLUMNS, space)
    frame = frame.sort_values(["rank_score", "trial"], kind="stable", na_position="last").reset_index(drop=True)
    finite = frame["rank_score"].map(math.isfinite) if len(frame) else frame["rank_score"]
    rank = pd.Series(pd.NA, index=frame.index, dtype="Int64")
    rank[finite.astype(bool)] = np.arange(1, int(finite.sum()) + 1)
    frame["rank"] = rank
    for col in ("trial", "num_params", "flops", "n_trials"):
        frame[col] = frame[col].astype("Int64")
    frame["pareto"] = frame["pareto"].astype(bool)
    frame["finetuned"] = frame["finetuned"].astype(bool)
    return frame


def finetuned_frame(
    study: optuna.Study, *, metric: str = "acc", space: SearchSpace | None = None
) -> pd.DataFrame:
    """One row per fine-tuned candidate, best first.

    Args:
        study: The ``<name>-finetune`` study.
        metric: ``"acc"`` (sort by ``val_acc`` descending) or ``"loss"`` (``val_loss`` ascending).
        space: As for :func:`candidates_frame` (the ``graph`` column).

    Returns:
        Columns :data:`FINETUNED_COLUMNS`: ``rank`` (1 = best; ``<NA>`` for
        diverged runs), ``trial`` (fine-tune trial), ``rank_trial`` (the rank
        trial that scored it), ``key``, ``num_params``, ``flops``, ``rank_by``,
        ``rank_score`` (as in :func:`candidates_frame`), ``rerank_score``
        (the zero-cost proxy that ordered the shortlist, when the campaign
        reranks; higher is better), ``ghn_loss``, ``ghn_acc``, the training
        results ``val_loss``, ``val_acc``, ``test_loss``, ``test_acc``, ``train_loss``, ``steps``, ``wall_time``,
        ``failed``, ``error``, ``worker`` (who trained it), ``weights`` (path of
        its state_dict on that worker); then one column per choice,
        ``choices`` and ``graph``.
    """
    rows = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.FAIL)):
        a = t.user_attrs
        if "key" not in a or "val_loss" not in a or (t.state == TrialState.FAIL and not a.get("failed")):
            continue  # not fine-tuned, or a dead worker's trial (its candidate was re-queued)
        rows.append({
            "trial": t.number,
            "rank_trial": a.get("rank_trial"),
            "queue_position": a.get("queue_position"),
            "key": a["key"],
            "num_params": a.get("num_params"),
            "flops": a.get("flops"),
            "rank_by": a.get("rank_by", "loss"),
            "rank_score": rank_score(a),
            "ghn_loss": _num(a.get("ghn_loss")),
            "ghn_acc": _num(a.get("ghn_acc")),
            "val_loss": _num(a.get("val_loss")),
            "val_acc": _num(a.get("val_acc")),
            "test_loss": _num(a.get("test_loss")),
            "test_acc": _num(a.get("test_acc")),
            "train_loss": _num(a.get("train_loss")),
            "steps": a.get("steps"),
            "wall_time": _num(a.get("wall_time")),
            "failed": bool(a.get("failed", t.state == TrialState.FAIL)),
            "error": a.get("error"),
            "worker": a.get("nas_worker_done", a.get("nas_worker")),
            "weights": a.get("weights"),
            "graph": a.get("graph"),
            "_choices": dict(a.get("choices") or t.params),
        })
    frame = _finish(rows, FINETUNED_COLUMNS, space)
    by, ascending = ("val_acc", False) if metric == "acc" else ("val_loss", True)
    frame = frame.sort_values([by, "trial"], ascending=[ascending, True], kind="stable", na_position="last")
    frame = frame.reset_index(drop=True)
    ok = ~frame["failed"].astype(bool) & frame[by].map(math.isfinite) if len(frame) else frame["failed"]
    rank = pd.Series(pd.NA, index=frame.index, dtype="Int64")
    rank[ok.astype(bool)] = np.arange(1, int(ok.sum()) + 1)
    frame["rank"] = rank
    for col in ("trial", "rank_trial", "queue_position", "num_params", "flops", "steps"):
        frame[col] = frame[col].astype("Int64")
    frame["failed"] = frame["failed"].astype(bool)
    return frame


def best_record(finetuned: pd.DataFrame, *, pick: str = "finetuned",
                extra: Mapping[str, Any] | None = None) -> dict[str, Any] | None:
    """The campaign's pick among its fine-tuned candidates, as a plain dict (for ``best.json``).

    Args:
        finetuned: :func:`finetuned_frame` output.
        pick: ``"finetuned"`` (the best fine-tuned result, the first row) or
            ``"rank"`` (the first candidate in the fine-tune queue, i.e. the
            ranking's order, that fine-tuned without diverging); see :data:`PICKS`.
        extra: More entries to include (space description, dataset, ...).

    Returns:
        ``{"key", "trial", "rank_trial", "rank_by", "pick", "choices", "graph",
        "num_params", "flops", "metrics": {...}, "weights", "worker",
        ...extra}``, or ``None`` when no candidate was fine-tuned successfully.
        ``metrics`` holds ``rank_score``, ``ghn_loss`` and ``ghn_acc`` (when
        the GHN scored it) and the fine-tuning results.

    Raises:
        ValueError: ``pick`` is not one of :data:`PICKS`.
    """
    if pick not in PICKS:
        raise ValueError(f"`pick` must be one of {', '.join(PICKS)}, but got {pick!r}.")
    ok = finetuned[finetuned["rank"].notna()] if len(finetuned) else finetuned
    if not len(ok):
        return None
    if pick == "rank":
        # Queue order; a campaign stored before queue positions were recorded falls back to trial order.
        position = ok["queue_position"].astype("Float64").fillna(math.inf)
        ok = ok.assign(_position=position).sort_values(["_position", "trial"], kind="stable")
    row = ok.iloc[0]
    names = ("rank_score", "ghn_loss", "ghn_acc", "val_loss", "val_acc", "test_loss", "test_acc", "train_loss")
    metrics = {name: float(row[name]) for name in names if name in row}
    for name in ("ghn_loss", "ghn_acc"):  # the GHN did not score a candidate that the ranker ranked
        if not math.isfinite(metrics.get(name, math.nan)):
            metrics.pop(name, None)
    record: dict[str, Any] = {
        "key": row["key"],
        "rank_by": row["rank_by"] if "rank_by" in row else "loss",
        "pick": pick,
        "trial": int(row["trial"]),
        "rank_trial": None if pd.isna(row["rank_trial"]) else int(row["rank_trial"]),
        "choices": json.loads(row["choices"]),
        "graph": json.loads(row["graph"]) if isinstance(row["graph"], str) else None,
        "num_params": None if pd.isna(row["num_params"]) else int(row["num_params"]),
        "flops": None if pd.isna(row["flops"]) else int(row["flops"]),
        "metrics": metrics,
        "weights": row["weights"],
        "worker": row["worker"],
    }
    record.update(dict(extra or {}))
    return record


# ---------------------------------------------------------------- plots


def _axes(ax: Any) -> Any:
    if ax is not None:
        return ax
    import matplotlib.pyplot as plt

    _, ax = plt.subplots(figsize=(6, 4))
    return ax


def plot_history(trials: pd.DataFrame, ax: Any = None) -> Any:
    """Rank-stage optimisation history: each trial's rank score and the best so far.

    Args:
        trials: :func:`rank_trials_frame` output.
        ax: Axes to draw on (a new figure when ``None``).

    Returns:
        The matplotlib ``Axes``.
    """
    ax = _axes(ax)
    rank_by = _frame_rank_by(trials)
    ok = trials[trials["rank_score"].map(math.isfinite)] if len(trials) else trials
    dup = ok["duplicate_of"].notna() if len(ok) else ok["trial"].astype(bool)
    ax.scatter(ok.loc[~dup, "trial"], ok.loc[~dup, "rank_score"], s=10, color="tab:blue", label="scored")
    if dup.any():
        ax.scatter(
            ok.loc[dup, "trial"], ok.loc[dup, "rank_score"], s=10, color="tab:gray", alpha=0.5, label="duplicate"
        )
    if len(ok):
        ax.step(ok["trial"], ok["rank_score"].cummin(), where="post", color="tab:red", label="best so far")
    ax.set_xlabel("rank trial")
    ax.set_ylabel(rank_score_label(rank_by))
    ax.set_title(f"Stage 1: ranking history (rank_by={rank_by})")
    ax.legend(loc="upper right", fontsize="small")
    return ax


def plot_score_vs_finetuned(finetuned: pd.DataFrame, ax: Any = None, *, metric: str = "val_acc") -> Any:
    """Rank score against the fine-tuned result of each fine-tuned candidate.

    Args:
        finetuned: :func:`finetuned_frame` output.
        ax: Axes to draw on (a new figure when ``None``).
        metric: Fine-tune column on the y axis (``"val_acc"``, ``"val_loss"``, ``"test_acc"``, ...).

    Returns:
        The matplotlib ``Axes``.
    """
    from scipy.stats import kendalltau

    ax = _axes(ax)
    rank_by = _frame_rank_by(finetuned)
    ok = finetuned[~finetuned["failed"]] if len(finetuned) else finetuned
    ax.scatter(ok["rank_score"], ok[metric], color="tab:blue")
    for _, row in ok.iterrows():
        ax.annotate(
            f"trial {row['rank_trial']}",
            (row["rank_score"], row[metric]),
            fontsize="x-small",
            xytext=(3, 3),
            textcoords="offset points",
        )
    title = f"Rank score ({rank_by}) vs fine-tuned {metric}"
    if len(ok) >= 3:
        tau = kendalltau(ok["rank_score"], ok[metric]).statistic
        title += f" (Kendall tau {tau:.2f}, n={len(ok)})"
    ax.set_title(title, fontsize="medium")
    ax.set_xlabel(f"{rank_score_label(rank_by)} (stage 1)")
    ax.set_ylabel(f"{metric} after fine-tuning (stage 2)")
    return ax


#: Axis labels of the Pareto plot's cost.
_COST_LABELS = {"num_params": "parameters (lower is better)", "flops": "FLOPs (lower is better)",
                "latency_ms": "measured latency per batch, ms (median; lower is better)"}


def plot_pareto(candidates: pd.DataFrame, ax: Any = None, *, cost: str = "num_params") -> Any:
    """Rank score against a cost column, the Pareto front highlighted.

    Args:
        candidates: :func:`candidates_frame` output.
        ax: Axes to draw on (a new figure when ``None``).
        cost: ``"num_params"``, ``"flops"`` or ``"latency_ms"`` (measured; only the
            candidates with a measurement are drawn, with their interquartile range).

    Returns:
        The matplotlib ``Axes``.
    """
    ax = _axes(ax)
    ok = candidates[candidates["rank_score"].map(math.isfinite)] if len(candidates) else candidates
    if cost == "latency_ms":  # measured only for the pool the front is drawn from
        ok = ok[ok[cost].astype(float).map(math.isfinite)]
    front = ok[ok["pareto"]].sort_values(cost)
    if cost == "latency_ms" and "latency_iqr_ms" in ok.columns:
        half = ok["latency_iqr_ms"].astype(float) / 2
        ax.errorbar(ok[cost], ok["rank_score"], xerr=half, fmt="none", ecolor="tab:gray", alpha=0.5,
                    elinewidth=0.8, label="interquartile range")
    ax.scatter(ok[cost], ok["rank_score"], s=10, color="tab:gray", alpha=0.6,
               label="candidates measured" if cost == "latency_ms" else "candidates")
    ax.plot(front[cost], front["rank_score"], "o-", color="tab:red", label="Pareto front")
    values = ok[cost].astype(float)
    if len(values) and values.min() > 0 and values.max() / values.min() > 10:
        ax.set_xscale("log")  # counts spanning orders of magnitude
    ax.set_xlabel(_COST_LABELS.get(cost, cost))
    ax.set_ylabel(rank_score_label(_frame_rank_by(candidates)))
    ax.set_title("Stage 1: Pareto front")
    ax.legend(fontsize="small")
    return ax


def plot_self_check(table: pd.DataFrame, ax: Any = None) -> Any:
    """Self-check: rank score against the trained loss of random candidates.

    Args:
        table: The self-check table (columns ``rank_by``, ``rank_score``, ``val_loss``).
        ax: Axes to draw on (a new figure when ``None``).

    Returns:
        The matplotlib ``Axes``.
    """
    from scipy.stats import kendalltau

    ax = _axes(ax)
    rank_by = _frame_rank_by(table)
    ok = table[table["val_loss"].map(math.isfinite) & table["rank_score"].map(math.isfinite)]
    ax.scatter(ok["rank_score"], ok["val_loss"], color="tab:green")
    title = f"Self-check: rank score ({rank_by}) vs trained loss"
    if len(ok) >= 3:
        title += f" (Kendall tau {kendalltau(ok['rank_score'], ok['val_loss']).statistic:.2f}, n={len(ok)})"
    ax.set_title(title, fontsize="medium")
    ax.set_xlabel(rank_score_label(rank_by))
    ax.set_ylabel("validation loss after training from scratch")
    return ax


# ---------------------------------------------------------------- files


def atomic_write(path: Path, write: Callable[[Path], None]) -> Path:
    """Write ``path`` through ``write(tmp)`` and ``os.replace`` (the temporary keeps the suffix).

    Args:
        path: Target file (its folder is created).
        write: Writes the whole file to the path it is given.

    Returns:
        ``path``.

    Raises:
        OSError: The write failed (e.g. a full disk); the error names ``path``,
            no temporary file is left and a previous file is unchanged.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    return _atomic.atomic_write(path, write)


def _save_figure(
    draw: Callable[[Any], Any],
    out: Path,
    stem: str,
    size: tuple[float, float] = (6, 4),
    suffixes: Sequence[str] = (".png", ".pdf"),
) -> list[Path]:
    # A bare Figure (no pyplot): no GUI backend, no global figure registry.
    from matplotlib.figure import Figure

    fig = Figure(figsize=size)
    ax = fig.add_subplot()
    draw(ax)
    fig.tight_layout()
    return _atomic.save_figure(fig, out / stem, formats=suffixes)


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    return str(value)


def _relative(path: Any, folder: Path) -> Any:
    """``path`` relative to ``folder`` when it lies inside it (a weights file of this campaign), else as is."""
    if not isinstance(path, str) or not path:
        return path
    try:
        return str(Path(path).resolve().relative_to(folder.resolve()))
    except ValueError:  # elsewhere (another worker's machine): kept absolute
        return path


def write_report(
    out: str | Path,
    *,
    trials: pd.DataFrame,
    candidates: pd.DataFrame,
    finetuned: pd.DataFrame,
    best: Mapping[str, Any] | None,
    best_state: Mapping[str, Any] | None = None,
    best_graph: Any = None,
    self_check: pd.DataFrame | None = None,
    multi_objective_cost: str | None = None,
) -> list[Path]:
    """Write the campaign's tables, best architecture and plots into ``out``.

    Files: ``candidates.csv`` / ``.parquet``, ``finetuned.csv`` / ``.parquet``,
    ``best.json``, ``best.pt`` (when ``best_state`` is given), ``best.png``
    (when ``best_graph`` is given and :mod:`nas.draw` is available),
    ``history.png`` / ``.pdf``, ``score_vs_finetuned.png`` / ``.pdf``,
    ``pareto.png`` / ``.pdf`` (multi-objective), ``selfcheck.csv`` and
    ``selfcheck.png`` / ``.pdf`` (with a self-check). Each file is written
    atomically: a failed write leaves no temporary file and the previous file
    unchanged. Weights paths inside ``out`` are written relative to it.

    Args:
        out: Output folder.
        trials: :func:`rank_trials_frame` output.
        candidates: :func:`candidates_frame` output.
        finetuned: :func:`finetuned_frame` output.
        best: :func:`best_record` output.
        best_state: The best candidate's fine-tuned ``state_dict``.
        best_graph: The best candidate's :class:`~nas.graph.ArchGraph`.
        self_check: The self-check table.
        multi_objective_cost: ``"num_params"``, ``"flops"`` or ``"latency_ms"`` for a Pareto plot.

    Returns:
        The paths written.

    Raises:
        CheckpointError: ``best.pt`` cannot be written (e.g. a full disk).
        OSError: Another file cannot be written; the error names it.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    # Columns of a score the campaign did not compute (the GHN's loss when the ranker ranked) are left out.
    empty = [c for c in OPTIONAL_SCORE_COLUMNS if c in candidates.columns and candidates[c].isna().all()]
    candidates = candidates.drop(columns=empty) if len(candidates) else candidates
    if "weights" in finetuned.columns:  # paths inside the folder are written relative to it, so it can move
        finetuned = finetuned.assign(weights=finetuned["weights"].map(lambda w: _relative(w, out)))
    for name, frame in (("candidates", candidates), ("finetuned", finetuned)):
        written.append(atomic_write(out / f"{name}.csv", lambda p, f=frame: f.to_csv(p, index=False)))
        written.append(atomic_write(out / f"{name}.parquet", lambda p, f=frame: f.to_parquet(p, index=False)))
    if self_check is not None and len(self_check):
        written.append(atomic_write(out / "selfcheck.csv", lambda p: self_check.to_csv(p, index=False)))
    if best is not None:
        best = {**best, "weights": _relative(best.get("weights"), out)}
        text = json.dumps(dict(best), indent=2, default=_json_default)
        written.append(atomic_write(out / "best.json", lambda p: p.write_text(text + "\n")))
    if best_state is not None:
        state = {k: v.detach().cpu() for k, v in best_state.items()}
        written.append(_atomic.save_torch(state, out / "best.pt", what="best fine-tuned weights"))
    if best_graph is not None:
        try:
            from nas.draw import draw_graph
        except ImportError:
            logger.warning("best.png not written: nas.draw is not available")
        else:
            written.extend(_save_figure(lambda ax: draw_graph(best_graph, ax), out, "best", (8, 10)))
    plots = [
        ("history", trials, lambda ax: plot_history(trials, ax)),
        ("score_vs_finetuned", finetuned, lambda ax: plot_score_vs_finetuned(finetuned, ax)),
        ("pareto", candidates if multi_objective_cost is not None else None,
         lambda ax: plot_pareto(candidates, ax, cost=multi_objective_cost)),
        ("selfcheck", self_check, lambda ax: plot_self_check(self_check, ax)),
    ]
    for name, table, draw in plots:
        if table is None:
            continue
        if len(table) < MIN_PLOT_POINTS:  # a scatter of one or two points says nothing
            logger.info("%s.png not drawn: %d point(s), fewer than %d", name, len(table), MIN_PLOT_POINTS)
            continue
        written.extend(_save_figure(draw, out, name))
    return written
