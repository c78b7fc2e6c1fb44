"""Evaluation: how well do cheap scorers rank candidates, compared with training them?

The flow: sample candidates -> train each from scratch (cached ground truth,
:mod:`~nas.evaluation.ground_truth`; or read it from a table of trained
architectures, :mod:`~nas.evaluation.table`) -> score them with every method
(:mod:`~nas.evaluation.scorers`, zero-cost :mod:`~nas.evaluation.proxies`, the
GHN) -> rank agreement with confidence intervals (:mod:`~nas.evaluation.metrics`)
-> tables (:mod:`~nas.evaluation.correlate`) -> figures (:mod:`~nas.evaluation.plots`).

The plotting functions are imported from :mod:`~nas.evaluation.plots` on
first use (PEP 562), so that importing the package (as a spawned ground-truth
training worker does) does not pay for matplotlib.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from nas.evaluation.correlate import (
    DEFAULT_METHODS,
    GHN_METHODS,
    REPORTED_METHODS,
    CorrelationResult,
    correlate,
    sample_candidates,
    summarize,
    write_results,
)
from nas.evaluation.table import TableGroundTruth, read_ground_truth
from nas.evaluation.ground_truth import (
    GroundTruthCache,
    GroundTruthRecord,
    budget_key,
    dataset_key,
    train_candidate,
)
from nas.evaluation.ghn_variants import GHNRankerScorer, LabelRegressorScorer
from nas.evaluation.metrics import Estimate, kendall, noise_ceiling, ranking_scores, spearman, top_k_precision
from nas.evaluation.proxies import (
    PROXIES,
    ProxyScorer,
    grad_norm,
    jacob_cov,
    naswot,
    prunable_weights,
    snip,
    synflow,
)
from nas.evaluation.ranker_methods import RANKER_METHODS, LabelRecipe, RankerCost, ranker_methods
from nas.evaluation.scorers import (
    FlopsScorer,
    GHNScorer,
    ParamsScorer,
    RandomScorer,
    Scorer,
    ShortTrainingScorer,
    build_scorers,
    get_scorer,
    register_scorer,
    scorer_names,
)

#: Names imported on first use.
_LAZY: dict[str, str] = dict.fromkeys(
    ("plot_method_bars", "plot_score_vs_truth", "save_figure"), "nas.evaluation.plots"
)

__all__ = [
    "CorrelationResult",
    "DEFAULT_METHODS",
    "Estimate",
    "FlopsScorer",
    "GHNRankerScorer",
    "GHNScorer",
    "GHN_METHODS",
    "GroundTruthCache",
    "GroundTruthRecord",
    "LabelRecipe",
    "LabelRegressorScorer",
    "PROXIES",
    "ParamsScorer",
    "ProxyScorer",
    "RANKER_METHODS",
    "REPORTED_METHODS",
    "RankerCost",
    "RandomScorer",
    "Scorer",
    "ShortTrainingScorer",
    "budget_key",
    "build_scorers",
    "correlate",
    "read_ground_truth",
    "TableGroundTruth",
    "dataset_key",
    "get_scorer",
    "grad_norm",
    "jacob_cov",
    "kendall",
    "naswot",
    "noise_ceiling",
    "plot_method_bars",
    "plot_score_vs_truth",
    "prunable_weights",
    "ranker_methods",
    "ranking_scores",
    "register_scorer",
    "sample_candidates",
    "save_figure",
    "scorer_names",
    "snip",
    "spearman",
    "summarize",
    "synflow",
    "top_k_precision",
    "train_candidate",
    "write_results",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'nas.evaluation' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


if TYPE_CHECKING:  # pragma: no cover
    from nas.evaluation.plots import plot_method_bars, plot_score_vs_truth, save_figure
