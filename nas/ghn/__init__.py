"""The graph hypernetwork (GHN): parameters for unseen architectures in one forward pass.

A GHN-2-style model (Knyazev et al., "Parameter Prediction for Unseen Deep
Architectures", NeurIPS 2021) built on PyTorch Geometric. It reads a batch of
:class:`~nas.graph.ArchGraph` candidates and predicts every parameter tensor
of their compiled :class:`~nas.network.Network`, so that candidates can be
ranked by their accuracy with predicted weights, without training each one.

Modules, in the order data flows through them:

* ``pyg``: graph -> node and edge tensors (:func:`~nas.ghn.pyg.graph_tensors`), and a plain PyG
  ``Data`` of a graph for any PyG model (:func:`to_pyg`);
* ``_graphs``: graph -> PyG ``Data`` as the GHN reads it (op indices into its
  vocabulary, virtual edges) + parameter list, cached;
* ``_encoder``: node embeddings (op + parameter shape + numeric features);
* ``_message_passing``: direction-aware gated message passing (``GatedDAGConv``);
* ``_decoder``: node state -> parameter tensors of any shape, normalised per op;
* ``_model``: :class:`GHN`, :class:`GHNConfig`, prediction and checkpoints;
* ``_predicted``: running networks with predicted weights (batch-norm statistics
  from training images, see that module's docstring);
* ``_meta_train``: :class:`MetaTrainConfig`, :func:`meta_train`;
* ``_default``: :func:`default_ghn_path`, :func:`ensure_ghn`, :func:`ensure_ranker` and the default label recipe;
* ``_ranker``: :class:`GHNRanker`, the GHN's graph network with a head that
  predicts short-training loss (:func:`short_training_labels`, :func:`fit_ranker`), plus a
  log-FLOPs capacity prior (:func:`with_flops_prior`);
* ``_ranker_ensemble``: :class:`RankerEnsemble`, several rankers scoring together;
* ``_identity``: what a GHN or ranker checkpoint was built for (:func:`identity`) and
  the check on load that it serves that space and dataset (:func:`check_identity`);
* ``_protocol``: :class:`Ranker`, what a campaign needs from a ranker.

Examples:
    >>> from nas.ghn import GHN, GHNConfig
    >>> ghn = GHN(GHNConfig(hidden=32, layers=2), space_info={})
"""

from __future__ import annotations

from nas.ghn._checkpoint import FORMAT as GHN_FORMAT
from nas.ghn._checkpoint import read_checkpoint
from nas.ghn._decoder import WeightDecoder
from nas.ghn._default import (
    LABEL_MARGIN,
    RANKER_K,
    RANKER_LABELS,
    default_ghn_path,
    ensure_ghn,
    ensure_ranker,
    untrained_ghn,
)
from nas.ghn._encoder import NodeEncoder, ShapeEncoder
from nas.ghn._identity import IDENTITY_KEYS, check_identity, identity
from nas.ghn._message_passing import GatedDAGConv
from nas.ghn._meta_train import MetaTrainConfig, meta_train, snapshot_path
from nas.ghn._model import GHN, GHNConfig
from nas.ghn._predicted import calibrate_batch_norm
from nas.ghn._protocol import Ranker
from nas.ghn._ranker import (
    RANKER_FORMAT,
    GHNRanker,
    RankerConfig,
    fit_ranker,
    label_seconds,
    log_flops,
    short_training_labels,
    tse_label,
    tse_scores,
    with_flops_prior,
)
from nas.ghn._ranker_ensemble import RankerEnsemble
from nas.ghn.pyg import NODE_FEATURES, to_pyg

__all__ = [
    "GHN",
    "GHNConfig",
    "GHNRanker",
    "GHN_FORMAT",
    "GatedDAGConv",
    "IDENTITY_KEYS",
    "MetaTrainConfig",
    "NODE_FEATURES",
    "RankerConfig",
    "RankerEnsemble",
    "NodeEncoder",
    "RANKER_FORMAT",
    "LABEL_MARGIN",
    "RANKER_K",
    "RANKER_LABELS",
    "Ranker",
    "ShapeEncoder",
    "WeightDecoder",
    "calibrate_batch_norm",
    "check_identity",
    "default_ghn_path",
    "ensure_ghn",
    "ensure_ranker",
    "fit_ranker",
    "identity",
    "label_seconds",
    "log_flops",
    "meta_train",
    "read_checkpoint",
    "short_training_labels",
    "tse_label",
    "tse_scores",
    "snapshot_path",
    "to_pyg",
    "untrained_ghn",
    "with_flops_prior",
]
