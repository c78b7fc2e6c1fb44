"""Rank-agreement metrics between a predicted ranking and trained ground truth.

Every metric compares a *score* (higher = predicted better) with a *truth*
(higher = actually better; pass ``-val_loss`` for a loss). Each has a point
estimate and a paired, seeded percentile bootstrap confidence interval over
candidates (:func:`scipy.stats.bootstrap`, 1000 resamples by default): the
candidates are resampled with replacement and the score and truth of a
candidate always travel together.

Examples:
    >>> import numpy as np
    >>> kendall([1, 2, 3, 4], [10, 20, 30, 40]).value
    1.0
    >>> top_k_precision([4, 3, 2, 1], [1, 2, 3, 4], fraction=0.25).value
    0.0
"""

from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np
from numpy.typing import ArrayLike
from scipy import stats

__all__ = [
    "Estimate",
    "ranking_scores",
    "bootstrap_ci",
    "kendall",
    "spearman",
    "top_k_precision",
    "noise_ceiling",
    "kendall_difference",
]

#: Default number of bootstrap resamples.
N_RESAMPLES = 1000


class Estimate(NamedTuple):
    """A point estimate with its bootstrap confidence interval.

    Attributes:
        value: The statistic on the full sample (``nan`` when undefined, e.g. a
            constant ranking).
        lo: Lower end of the confidence interval.
        hi: Upper end of the confidence interval.
    """

    value: float
    lo: float
    hi: float


def ranking_scores(score: ArrayLike) -> np.ndarray:
    """Scores as float64 with ``nan`` (a candidate the scorer could not score) mapped to ``-inf``: ranked last."""
    s = np.asarray(score, dtype=np.float64).copy()
    s[np.isnan(s)] = -np.inf
    return s


def _pair(score: ArrayLike, truth: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(score, dtype=np.float64).ravel()
    t = np.asarray(truth, dtype=np.float64).ravel()
    if s.shape != t.shape:
        raise ValueError(f"`score` and `truth` must have the same length, but got {s.size} and {t.size}.")
    if np.isnan(t).any():
        raise ValueError("`truth` must not contain NaN; drop failed candidates first.")
    if np.isnan(s).any():
        raise ValueError("`score` must not contain NaN; map undefined scores to -inf first.")
    return s, t


def bootstrap_ci(
    statistic: Callable[..., float | np.ndarray],
    data: Sequence[np.ndarray],
    *,
    vectorized: bool = False,
    n_resamples: int = N_RESAMPLES,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Paired percentile bootstrap interval of ``statistic`` over the rows of ``data``.

    Args:
        statistic: ``statistic(*columns)`` (with ``axis=-1`` when ``vectorized``).
        data: Columns of equal length; resampled together (paired).
        vectorized: Whether ``statistic`` takes an ``axis`` keyword.
        n_resamples: Number of resamples.
        confidence: Confidence level in ``(0, 1)``.
        seed: Seed of the resampling generator.

    Returns:
        ``(lo, hi)``, the percentiles over the resamples where the statistic
        is defined (a resample with a constant column has no correlation);
        ``(nan, nan)`` with fewer than 3 rows or when most resamples are undefined.

    Raises:
        ValueError: ``n_resamples`` or ``confidence`` is out of range.
    """
    if n_resamples < 1:
        raise ValueError(f"`n_resamples` must be positive, but got {n_resamples}.")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"`confidence` must be in (0, 1), but got {confidence}.")
    if len(data[0]) < 3:
        return math.nan, math.nan
    with warnings.catch_warnings():
        # Resamples whose score or truth is constant make a correlation
        # undefined (nan); they are dropped below. Silence scipy's
        # degenerate-data chatter about them.
        warnings.simplefilter("ignore")
        result = stats.bootstrap(
            tuple(data),
            statistic,
            paired=True,
            vectorized=vectorized,
            n_resamples=n_resamples,
            confidence_level=confidence,
            method="percentile",
            rng=np.random.default_rng(seed),
        )
    # Percentile interval over the resamples where the statistic is defined;
    # undefined when more than half are not.
    distribution = np.asarray(result.bootstrap_distribution, dtype=np.float64)
    defined = distribution[np.isfinite(distribution)]
    if defined.size * 2 < distribution.size:
        return math.nan, math.nan
    alpha = (1.0 - confidence) / 2.0
    lo, hi = np.percentile(defined, [100.0 * alpha, 100.0 * (1.0 - alpha)])
    return float(lo), float(hi)


def _kendall_stat(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return stats.kendalltau(x, y, axis=axis).statistic


def _spearman_stat(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
    # Spearman's rho is Pearson's r of the (average) ranks.
    rx = stats.rankdata(x, axis=axis)
    ry = stats.rankdata(y, axis=axis)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return stats.pearsonr(rx, ry, axis=axis).statistic


def kendall(
    score: ArrayLike, truth: ArrayLike, *, n_resamples: int = N_RESAMPLES, seed: int = 0
) -> Estimate:
    """Kendall's tau-b (ties counted as in :func:`scipy.stats.kendalltau`) with a bootstrap CI.

    Args:
        score: Predicted quality, higher is better (``-inf`` allowed for failures).
        truth: True quality, higher is better.
        n_resamples: Bootstrap resamples.
        seed: Bootstrap seed.

    Returns:
        The estimate; ``nan`` when either side is constant or has fewer than 2 items.

    Raises:
        ValueError: The lengths differ or a value is NaN.
    """
    s, t = _pair(score, truth)
    value = float(_kendall_stat(s, t)) if s.size >= 2 else math.nan
    lo, hi = bootstrap_ci(_kendall_stat, (s, t), vectorized=True, n_resamples=n_resamples, seed=seed)
    return Estimate(value, lo, hi)


def spearman(
    score: ArrayLike, truth: ArrayLike, *, n_resamples: int = N_RESAMPLES, seed: int = 0
) -> Estimate:
    """Spearman's rho (Pearson correlation of average ranks) with a bootstrap CI.

    Args:
        score: Predicted quality, higher is better.
        truth: True quality, higher is better.
        n_resamples: Bootstrap resamples.
        seed: Bootstrap seed.

    Returns:
        The estimate; ``nan`` when either side is constant or has fewer than 2 items.

    Raises:
        ValueError: The lengths differ or a value is NaN.
    """
    s, t = _pair(score, truth)
    value = float(stats.spearmanr(s, t).statistic) if s.size >= 2 and np.ptp(s) > 0 and np.ptp(t) > 0 else math.nan
    lo, hi = bootstrap_ci(_spearman_stat, (s, t), vectorized=True, n_resamples=n_resamples, seed=seed)
    return Estimate(value, lo, hi)


def _top_set(values: np.ndarray, k: int, axis: int = -1) -> np.ndarray:
    """Boolean mask of the items ranked in the top ``k``; ties at the boundary all join."""
    # rank 1 = best; tied items share the best (lowest) rank of their group.
    ranks = stats.rankdata(-values, method="min", axis=axis)
    return ranks <= k


def _top_k_count(fraction: float, n: int) -> int:
    # round() first so that 0.1 * 100 = 10.000000000000002 gives 10, not 11.
    return max(1, math.ceil(round(fraction * n, 9)))


def _top_k_stat(fraction: float) -> Callable[..., np.ndarray]:
    def statistic(s: np.ndarray, t: np.ndarray, axis: int = -1) -> np.ndarray:
        k = _top_k_count(fraction, s.shape[axis])
        predicted = _top_set(s, k, axis)
        true = _top_set(t, k, axis)
        return np.sum(predicted & true, axis=axis) / np.sum(predicted, axis=axis)

    return statistic


def top_k_precision(
    score: ArrayLike,
    truth: ArrayLike,
    *,
    fraction: float = 0.1,
    n_resamples: int = N_RESAMPLES,
    seed: int = 0,
) -> Estimate:
    """Share of the predicted top ``fraction`` that is in the true top ``fraction``.

    ``k = ceil(fraction * n)`` (at least 1). Ties are handled by rank: an item
    is in a top set when its rank (``scipy.stats.rankdata(..., method="min")``
    on the descending values) is at most ``k``, so every item tied at the
    boundary joins and a set can exceed ``k``. The precision is
    ``|predicted ∩ true| / |predicted|``; a constant score puts every item in
    the predicted set and scores the chance level ``|true| / n``.

    Args:
        score: Predicted quality, higher is better.
        truth: True quality, higher is better.
        fraction: Size of the top set as a fraction of the candidates, in ``(0, 1]``.
        n_resamples: Bootstrap resamples.
        seed: Bootstrap seed.

    Returns:
        The estimate, in ``[0, 1]``.

    Raises:
        ValueError: ``fraction`` is out of range, the lengths differ or a value is NaN.
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"`fraction` must be in (0, 1], but got {fraction}.")
    s, t = _pair(score, truth)
    if s.size == 0:
        return Estimate(math.nan, math.nan, math.nan)
    statistic = _top_k_stat(fraction)
    lo, hi = bootstrap_ci(statistic, (s, t), vectorized=True, n_resamples=n_resamples, seed=seed)
    return Estimate(float(statistic(s, t)), lo, hi)


def noise_ceiling(
    seed_truths: ArrayLike, *, n_resamples: int = N_RESAMPLES, seed: int = 0
) -> dict[str, Estimate]:
    """Rank agreement of the ground truth with itself across training seeds.

    With two seeds this is the correlation between the rankings that seed 0 and
    seed 1 give; with more, the mean over all seed pairs. It shows how well any
    predictor could agree with a *single* training run. (The mean over seeds,
    which the correlations are computed against, is somewhat less noisy than one
    seed, so a predictor can slightly exceed it.)

    Args:
        seed_truths: ``[n, S]`` array: candidate ``i``'s result under seed ``j``
            (higher or lower is better, consistently: rank correlation is
            invariant to a common sign flip).
        n_resamples: Bootstrap resamples (over candidates, all seeds together).
        seed: Bootstrap seed.

    Returns:
        ``{"kendall": Estimate, "spearman": Estimate}``; ``nan`` values with
        fewer than two seeds.

    Raises:
        ValueError: ``seed_truths`` is not 2-d or holds NaN.
    """
    values = np.asarray(seed_truths, dtype=np.float64)
    if values.ndim != 2:
        raise ValueError(f"`seed_truths` must be a 2-d [candidates, seeds] array, but got shape {values.shape}.")
    if np.isnan(values).any():
        raise ValueError("`seed_truths` must not contain NaN; drop failed candidates first.")
    n, S = values.shape  # candidates, training seeds
    nan = Estimate(math.nan, math.nan, math.nan)
    if S < 2 or n < 2:
        return {"kendall": nan, "spearman": nan}
    pairs = list(itertools.combinations(range(S), 2))
    out: dict[str, Estimate] = {}
    for name, stat in (("kendall", _kendall_stat), ("spearman", _spearman_stat)):

        def mean_pairwise(*columns: np.ndarray, axis: int = -1, _stat=stat) -> np.ndarray:
            return np.mean([_stat(columns[a], columns[b], axis=axis) for a, b in pairs], axis=0)

        columns = [values[:, j] for j in range(S)]
        value = float(mean_pairwise(*columns))
        lo, hi = bootstrap_ci(mean_pairwise, columns, vectorized=True, n_resamples=n_resamples, seed=seed)
        out[name] = Estimate(value, lo, hi)
    return out


def kendall_difference(
    scores_a: Sequence[ArrayLike],
    scores_b: Sequence[ArrayLike],
    truth: ArrayLike,
    *,
    n_resamples: int = N_RESAMPLES,
    seed: int = 0,
) -> Estimate:
    """Mean Kendall tau of rankings ``a`` minus that of rankings ``b``, with a paired bootstrap CI.

    ``scores_a[i]`` and ``scores_b[i]`` are a pair of rankings made with the
    same inputs (e.g. two rankers fitted on the labels of label seed ``i``). The
    statistic is the mean over pairs of ``tau(a_i) - tau(b_i)``; every resample
    draws one set of candidates and applies it to every pair, so candidate
    sampling noise is shared and the interval is of the difference itself.

    Args:
        scores_a: One score array per pair, higher is better (``-inf`` for failures).
        scores_b: The other member of each pair.
        truth: True quality, higher is better.
        n_resamples: Bootstrap resamples.
        seed: Bootstrap seed.

    Returns:
        The estimate.

    Raises:
        ValueError: No pairs, pairs of different counts, or a length mismatch or NaN.
    """
    if not scores_a or len(scores_a) != len(scores_b):
        raise ValueError(
            f"`scores_a` and `scores_b` must hold the same positive number of rankings, "
            f"but got {len(scores_a)} and {len(scores_b)}."
        )
    t = np.asarray(truth, dtype=np.float64).ravel()
    a = np.stack([_pair(x, t)[0] for x in scores_a])  # [P, N]
    b = np.stack([_pair(x, t)[0] for x in scores_b])  # [P, N]

    def statistic(idx: np.ndarray, axis: int = -1) -> np.ndarray:
        idx = np.asarray(idx, dtype=np.int64)  # [..., N] resampled candidate indices
        tt = t[idx]
        diffs = [_kendall_stat(a[p][idx], tt, axis=-1) - _kendall_stat(b[p][idx], tt, axis=-1) for p in range(len(a))]
        return np.mean(diffs, axis=0)

    index = np.arange(t.size, dtype=np.float64)
    value = float(statistic(index[None, :])[0]) if t.size >= 2 else math.nan
    lo, hi = bootstrap_ci(statistic, (index,), vectorized=True, n_resamples=n_resamples, seed=seed)
    return Estimate(value, lo, hi)

