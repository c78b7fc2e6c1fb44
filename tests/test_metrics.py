"""Rank-agreement metrics on small hand-made rankings."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from nas.evaluation.metrics import (
    kendall,
    noise_ceiling,
    ranking_scores,
    spearman,
    top_k_precision,
)


def test_perfect_ranking() -> None:
    truth = np.arange(12.0)
    score = 3.0 * truth + 1.0  # any increasing map
    for metric in (kendall, spearman):
        est = metric(score, truth)
        assert est.value == pytest.approx(1.0)
        assert est.lo == pytest.approx(1.0) and est.hi == pytest.approx(1.0)


def test_reversed_ranking() -> None:
    truth = np.arange(12.0)
    assert kendall(-truth, truth).value == pytest.approx(-1.0)
    assert spearman(-truth, truth).value == pytest.approx(-1.0)
    assert top_k_precision(-truth, truth, fraction=0.25).value == 0.0


def test_ties_follow_tau_b_and_average_ranks() -> None:
    score = [1.0, 1.0, 2.0, 3.0]
    truth = [1.0, 2.0, 3.0, 4.0]
    # 5 concordant pairs, 0 discordant, 1 pair tied in score only:
    # tau_b = 5 / sqrt((6 - 1) * (6 - 0)).
    assert kendall(score, truth).value == pytest.approx(5 / math.sqrt(30))
    # average ranks (1.5, 1.5, 3, 4) vs (1, 2, 3, 4): rho = 4.5 / sqrt(4.5 * 5).
    assert spearman(score, truth).value == pytest.approx(4.5 / math.sqrt(4.5 * 5))


def test_constant_score_has_no_correlation_but_chance_precision() -> None:
    truth = np.arange(20.0)
    score = np.zeros(20)
    assert math.isnan(kendall(score, truth).value)
    assert math.isnan(spearman(score, truth).value)
    # All tie for first: the predicted set is everyone, precision = k / n.
    assert top_k_precision(score, truth, fraction=0.1).value == pytest.approx(2 / 20)


def test_top_k_precision_cases() -> None:
    truth = np.arange(20.0)  # item 19 best, then 18, ...
    # k = 2. Predicted top two: 19 (right) and 5 (wrong).
    score = truth.copy()
    score[5], score[18] = 100.0, 0.5
    assert top_k_precision(score, truth, fraction=0.1).value == pytest.approx(0.5)
    # Ties at the boundary join the set: three items share the best score.
    score = np.zeros(20)
    score[[19, 3, 4]] = 1.0
    assert top_k_precision(score, truth, fraction=0.05).value == pytest.approx(1 / 3)


def test_top_k_count_is_exact_for_round_fractions() -> None:
    # n = 100, 10% -> k = 10 (0.1 * 100 is 10.000000000000002 in floats).
    truth = np.arange(100.0)
    score = truth.copy()
    score[89], score[90] = score[90], score[89]  # swap the 10th and 11th best
    assert top_k_precision(score, truth, fraction=0.1).value == pytest.approx(0.9)


def test_ci_contains_point_estimate_and_is_seeded() -> None:
    rng = np.random.default_rng(0)
    truth = rng.normal(size=60)
    score = truth + rng.normal(size=60)
    for metric in (kendall, spearman, top_k_precision):
        est = metric(score, truth, seed=1)
        assert est.lo <= est.value <= est.hi
        assert metric(score, truth, seed=1) == est
    tau = kendall(score, truth)
    assert 0.2 < tau.value < 0.8 and tau.hi - tau.lo > 0.05


def test_unscored_items_rank_last() -> None:
    score = ranking_scores([np.nan, 1.0, 2.0, 3.0])
    assert score[0] == -np.inf
    assert kendall(score, [0.0, 1.0, 2.0, 3.0]).value == pytest.approx(1.0)
    with pytest.raises(ValueError, match="score"):
        kendall([np.nan, 1.0, 2.0], [0.0, 1.0, 2.0])


def test_bad_inputs_raise() -> None:
    with pytest.raises(ValueError, match="same length"):
        kendall([1, 2, 3], [1, 2])
    with pytest.raises(ValueError, match="truth"):
        spearman([1, 2, 3], [1, np.nan, 2])
    with pytest.raises(ValueError, match="fraction"):
        top_k_precision([1, 2], [1, 2], fraction=0.0)


def test_noise_ceiling() -> None:
    rng = np.random.default_rng(0)
    base = rng.normal(size=30)
    seeds = np.stack([base + 0.5 * rng.normal(size=30) for _ in range(3)], axis=1)
    two = noise_ceiling(seeds[:, :2], n_resamples=200)
    assert two["kendall"].value == pytest.approx(stats.kendalltau(seeds[:, 0], seeds[:, 1]).statistic)
    assert two["spearman"].value == pytest.approx(stats.spearmanr(seeds[:, 0], seeds[:, 1]).statistic)
    three = noise_ceiling(seeds, n_resamples=200)
    pairs = [(0, 1), (0, 2), (1, 2)]
    expected = np.mean([stats.kendalltau(seeds[:, a], seeds[:, b]).statistic for a, b in pairs])
    assert three["kendall"].value == pytest.approx(expected)
    assert three["kendall"].value != pytest.approx(two["kendall"].value)
    assert three["kendall"].lo <= three["kendall"].value <= three["kendall"].hi
    assert math.isnan(noise_ceiling(seeds[:, :1])["kendall"].value)
    with pytest.raises(ValueError, match="2-d"):
        noise_ceiling(base)
