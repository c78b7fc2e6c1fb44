"""GHN-based ranking signals beyond the plain predicted-weight loss.

The plain score of a graph hypernetwork, the validation loss of the weights it
predicts, tends to erase the differences a ranking needs: a GHN that fits
every candidate well hands them all a good solution. This module holds the
variants measured against it (each is one row of ``nas correlate``):

* :class:`GHNEnsembleScorer`: the predicted-weight loss averaged over several
  checkpoints of one meta-training run. ``reduce="mean"`` over late
  checkpoints is a checkpoint ensemble (it averages out the checkpoint-to-
  checkpoint swings of the plain score); over checkpoints spread along the
  whole run it is a *meta-training speed* estimate, the GHN analogue of the
  training-speed estimate of Ru et al. (NeurIPS 2021): the area under each
  candidate's predicted-weight loss curve while the GHN learns.
* :func:`ghn_embeddings` and :func:`cross_validated_scores`: GHN-2's property
  prediction (Knyazev et al., NeurIPS 2021, Sec. 5): a ridge regressor on
  mean-pooled GHN node embeddings, fitted on trained candidates and scored
  out of fold; :func:`op_count_features` gives the plain baseline the same
  regressor must beat.
* :class:`GHNRankerScorer`: a :class:`nas.ghn.GHNRanker`, the GHN's graph
  network fine-tuned to predict the short-training loss of architectures
  sampled from the space (never the candidates); and
  :class:`LabelRegressorScorer`, the same labels fitted by a ridge regressor
  on op counts, the ablation the ranker must beat.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from nas.data import Dataset
from nas.evaluation.scorers import Scorer, register_scorer
from nas.graph import ArchGraph
from nas.ops import op_names

__all__ = [
    "GHNEnsembleScorer",
    "GHNRankerScorer",
    "LabelRegressorScorer",
    "ghn_embeddings",
    "op_count_features",
    "cross_validated_scores",
]


class GHNEnsembleScorer(Scorer):
    """Negative predicted-weight loss, combined over several GHN checkpoints.

    Args:
        ghns: Checkpoints of one meta-training run (loaded :class:`nas.ghn.GHN`).
        name: Name of the scorer.
        reduce: ``"mean"`` of the losses or ``"mean_rank"`` (average of the
            per-checkpoint ranks, robust to checkpoints whose loss scale differs).
        split: Split to score on.
        chunk: Graphs per ``evaluate`` call.

    Raises:
        ValueError: ``ghns`` is empty or ``reduce`` is unknown.
    """

    name = "ghn_ensemble"

    def __init__(
        self,
        ghns: Sequence[Any],
        *,
        name: str = "ghn_ensemble",
        reduce: str = "mean",
        split: str = "val",
        chunk: int = 64,
    ) -> None:
        if not ghns:
            raise ValueError("`ghns` must hold at least one GHN checkpoint, but got none.")
        if reduce not in ("mean", "mean_rank"):
            raise ValueError(f"`reduce` must be 'mean' or 'mean_rank', but got {reduce!r}.")
        self.ghns = list(ghns)
        self.name = name
        self.reduce = reduce
        self.split = split
        self.chunk = chunk

    def losses(self, graphs: Sequence[ArchGraph], data: Dataset) -> np.ndarray:
        """Predicted-weight loss of every graph under every checkpoint, ``[K, B]``."""
        out = np.empty((len(self.ghns), len(graphs)))
        for k, ghn in enumerate(self.ghns):
            for start in range(0, len(graphs), self.chunk):
                part = list(graphs[start : start + self.chunk])
                results = ghn.evaluate(part, data, split=self.split)
                out[k, start : start + len(part)] = [r["loss"] for r in results]
        return out

    def score(self, graphs: Sequence[ArchGraph], data: Dataset) -> list[float]:
        losses = self.losses(graphs, data)  # [K, B]
        if self.reduce == "mean":
            return (-losses.mean(axis=0)).tolist()
        from scipy.stats import rankdata

        ranks = np.stack([rankdata(row) for row in losses])  # low loss -> low rank
        return (-ranks.mean(axis=0)).tolist()


@torch.no_grad()
def ghn_embeddings(ghn: Any, graphs: Sequence[ArchGraph], *, chunk: int = 128) -> np.ndarray:
    """Mean-pooled GHN node embeddings, one row per graph.

    Args:
        ghn: A :class:`nas.ghn.GHN`.
        graphs: The architectures.
        chunk: Graphs per forward pass.

    Returns:
        Array ``[B, hidden]``.
    """
    from torch_geometric.data import Batch
    from torch_geometric.utils import scatter

    rows = []
    for start in range(0, len(graphs), chunk):
        part = list(graphs[start : start + chunk])
        batch = Batch.from_data_list([ghn.entry(g).data for g in part]).to(ghn.device)
        h = ghn(batch)  # [N, hidden] node states
        rows.append(scatter(h, batch.batch, dim=0, dim_size=len(part), reduce="mean").float().cpu())
    return torch.cat(rows).numpy()


def op_count_features(graphs: Sequence[ArchGraph]) -> np.ndarray:
    """How often each op occurs, plus log parameter count: the plain baseline features ``[B, F]``."""
    names = op_names()
    return np.array(
        [[g.op_counts()[n] for n in names] + [np.log(g.num_params() + 1)] for g in graphs], dtype=np.float64
    )


def cross_validated_scores(
    features: np.ndarray, target: np.ndarray, *, folds: int = 5, seed: int = 0
) -> np.ndarray:
    """Out-of-fold predictions of a ridge regressor, negated (higher = better).

    Each candidate's score comes from a model fitted on the other folds only,
    so no candidate's own trained result enters its score.

    Args:
        features: ``[B, F]`` features.
        target: ``[B]`` trained loss (lower is better).
        folds: Number of folds (``B`` for leave-one-out).
        seed: Seed of the fold assignment.

    Returns:
        ``[B]`` scores, ``-predicted loss``.

    Raises:
        ValueError: Fewer than 2 folds or more folds than candidates.
    """
    from sklearn.linear_model import RidgeCV
    from sklearn.model_selection import KFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    n = len(target)
    if not 2 <= folds <= n:
        raise ValueError(f"`folds` must be in 2..{n}, but got {folds}.")
    pred = np.empty(n)
    for train_idx, test_idx in KFold(folds, shuffle=True, random_state=seed).split(features):
        model = make_pipeline(StandardScaler(), RidgeCV(alphas=np.logspace(-3, 3, 13)))
        model.fit(features[train_idx], target[train_idx])
        pred[test_idx] = model.predict(features[test_idx])
    return -pred


class GHNRankerScorer(Scorer):
    """Negative score of a :class:`nas.ghn.GHNRanker`: its prediction, or its rank score.

    One forward pass of the ranker's graph networks per batch of candidates;
    no image is used, so ``data`` is ignored.

    Args:
        ranker: A fitted ranker (see :func:`nas.ghn.fit_ranker`).
        prior: ``True`` scores by :meth:`~nas.ghn.GHNRanker.score` (predicted
            TSE with the log-FLOPs prior at the ranker's own weight, what a
            campaign ranks by); ``False`` by the predicted TSE alone; a number
            by the predicted TSE with the prior at that fixed weight.
        name: Name of the scorer.
    """

    name = "ghn_ranker"

    def __init__(self, ranker: Any, *, prior: bool | float = False, name: str = "ghn_ranker") -> None:
        self.ranker = ranker
        self.prior = prior
        self.name = name

    def score(self, graphs: Sequence[ArchGraph], data: Dataset) -> list[float]:
        from nas.ghn import with_flops_prior

        graphs = list(graphs)
        if self.prior is True:
            return (-self.ranker.score(graphs)).tolist()
        if self.prior is False:
            return (-self.ranker.predict(graphs)).tolist()
        z = self.ranker.standardised(graphs)
        return (-with_flops_prior(z, graphs, weight=float(self.prior), mean=self.ranker.flops_mean,
                                  std=self.ranker.flops_std)).tolist()


class LabelRegressorScorer(Scorer):
    """Ridge regression from graph features to labels of *other* architectures.

    The ablation of :class:`GHNRankerScorer`: the same labelled architectures
    and labels, with op counts (:func:`op_count_features`) in place of the
    GHN's graph network.

    Args:
        graphs: Labelled architectures (never the candidates).
        labels: Their labels, lower is better.
        features: Graphs -> ``[B, F]`` features (default :func:`op_count_features`).
        flops_weight: Weight of the same log-FLOPs prior as
            :meth:`nas.ghn.GHNRanker.score` (standardised over the labelled
            architectures); ``0`` scores by the regression alone.
        name: Name of the scorer.
    """

    name = "opcount_ranker"

    def __init__(
        self,
        graphs: Sequence[ArchGraph],
        labels: Sequence[float],
        *,
        features: Any = None,
        flops_weight: float = 0.0,
        name: str = "opcount_ranker",
    ) -> None:
        from sklearn.linear_model import RidgeCV
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        from nas.ghn import log_flops

        graphs = list(graphs)
        y = np.asarray(labels, dtype=np.float64)
        self.features = features or op_count_features
        self.name = name
        self.model = make_pipeline(StandardScaler(), RidgeCV(alphas=np.logspace(-3, 3, 13)))
        self.model.fit(self.features(graphs), y)
        self.flops_weight = float(flops_weight)
        flops = log_flops(graphs)
        self._stats = (float(y.mean()), float(y.std()) or 1.0, float(flops.mean()), float(flops.std()) or 1.0)

    def score(self, graphs: Sequence[ArchGraph], data: Dataset) -> list[float]:
        from nas.ghn import with_flops_prior

        graphs = list(graphs)
        y_mean, y_std, f_mean, f_std = self._stats
        z = (self.model.predict(self.features(graphs)) - y_mean) / y_std
        return (-with_flops_prior(z, graphs, weight=self.flops_weight, mean=f_mean, std=f_std)).tolist()


def _ghn_ranker_factory(ghn: Any = None) -> Scorer:
    """``ghn``: what ``nas search`` ranks by, the ranker's score with its FLOPs prior."""
    if ghn is None or not callable(getattr(ghn, "score", None)):
        raise ValueError(
            "scorer 'ghn' ranks by the campaign's ranker: pass a fitted nas.ghn.GHNRanker for it "
            f"(e.g. `ghn={{'ghn': ranker}}`), but got {type(ghn).__name__}; the predicted-weight loss is 'ghn_plain'."
        )
    return GHNRankerScorer(ghn, prior=True, name="ghn")


register_scorer("ghn", _ghn_ranker_factory)
