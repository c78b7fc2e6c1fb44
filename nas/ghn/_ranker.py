"""GHN ranker: the GHN's graph network with a head that predicts short-training loss.

A GHN's predicted weights say how well the GHN can parameterise an
architecture, and a GHN that fits every candidate well erases the differences
a ranking needs (the ranking suite, ``experiments/results/suite/RESULTS.md``:
the plain predicted-weight loss ranks nb201 / mnist5k candidates at Kendall
tau 0.17 against 3-epoch training). The ranker asks the GHN a different question: *how fast
will SGD train this architecture?*

It is trained once per search space, before any candidate is scored:

1. :func:`short_training_labels` trains ``n`` architectures sampled from the
   space (never the candidates) for ``k`` SGD steps from random
   initialisation and records the training-speed estimate (TSE, the sum of
   the ``k`` minibatch losses; Ru et al., NeurIPS 2021) of each;
2. :func:`fit_ranker` builds the GHN's encoder and message passing from
   random weights (``RankerConfig(pretrained=True)`` copies a meta-trained
   GHN's instead), adds a small head on the mean- and max-pooled node states,
   and fits both to predict those labels (several members, each with early
   stopping on Kendall tau of its own held-out split, averaged). In the
   ranking suite the meta-trained weights did not lift the ranking, so the
   default needs no meta-training.

Scoring a candidate is then one forward pass of the graph network: about a
millisecond, no image is touched.

:meth:`GHNRanker.score`, the score a campaign ranks by, is the predicted TSE
standardised over the labelled architectures; ``flops_weight`` > 0 subtracts
that many standardised log-FLOPs as a capacity prior. Short training measures
how fast an architecture starts to learn; a longer budget also rewards what it
can reach, which grows with its compute. The prior lifts Kendall tau against
3-epoch training on nb201 / mnist5k and macro / digits but lowers it on the
other eight pairs of the ranking suite, so it is off by default.

The labels cost ``n`` short trainings once; from then on any number of candidates is ranked for free, and because the
predictor pools what it learned from similar architectures, it smooths the
seed noise of each single short training.

Examples:
    >>> from nas.ghn import GHN, GHNConfig, RankerConfig, fit_ranker
    >>> from nas.graph import GraphBuilder
    >>> b = GraphBuilder((1, 8, 8))
    >>> g = b.build(b.add("linear", b.add("global_avg_pool", b.input), out_features=10))
    >>> ghn = GHN(GHNConfig(hidden=8, layers=1), space_info={})
    >>> ranker = fit_ranker(ghn, [g] * 4, [1.0, 2.0, 3.0, 4.0], RankerConfig(epochs=1, ensemble=1), progress=False)
    >>> ranker.predict([g]).shape
    (1,)
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import hashlib
import logging
import math
import os
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy.stats import kendalltau
from torch import Tensor, nn
from torch_geometric.data import Batch
from torch_geometric.utils import scatter
from tqdm.auto import tqdm

from nas._atomic import atomic_write
from nas.exceptions import CheckpointError
from nas.ghn._checkpoint import read_checkpoint, write_checkpoint
from nas.ghn._model import GHN, GHNConfig
from nas.graph import ArchGraph

if TYPE_CHECKING:
    from nas.data import Dataset
    from nas.space import SearchSpace

__all__ = [
    "GHNRanker", "RankerConfig", "fit_ranker", "label_seconds", "log_flops", "short_training_labels",
    "with_flops_prior",
]

logger = logging.getLogger(__name__)

#: ``format`` of a ranker checkpoint (a GHN checkpoint has another).
RANKER_FORMAT = "ghn-nas/ranker"
RANKER_VERSION = 1


@dataclasses.dataclass(kw_only=True)
class RankerConfig:
    """Settings of :func:`fit_ranker` (the defaults are the nb201 / mnist5k recipe).

    Args:
        epochs: Passes over the labelled architectures per member.
        batch_size: Graphs per optimisation step.
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay.
        head_hidden: Width of the head's hidden layer.
        ensemble: Members fitted (each on its own train / validation split) and averaged.
        val_fraction: Labelled architectures each member keeps out for early stopping.
        pretrained: Start each member's graph network from the meta-trained
            GHN's weights. Off by default: in the ranking suite the GHN's weights
            did not lift the ranker over random ones (at 100 labels, over 3 label
            seeds), so ranking does not wait for meta-training.
        flops_weight: Weight of the capacity prior in :meth:`GHNRanker.score`
            (standardised log-FLOPs subtracted from the standardised predicted
            TSE); ``0``, the default, scores by the predicted TSE alone. Round 3
            of the ranking suite chose 0 over 0.5 (mean Kendall tau 0.795 against
            0.755 over ten space / dataset pairs; 0.5 ranks better on nb201 / mnist5k).
        seed: Seed of splits, initialisation and batch order.
    """

    epochs: int = 60
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-4
    head_hidden: int = 64
    ensemble: int = 3
    val_fraction: float = 0.2
    pretrained: bool = False
    flops_weight: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "head_hidden", "ensemble"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"`{name}` must be a positive int, but got {value!r}.")
        if isinstance(self.flops_weight, bool) or not isinstance(self.flops_weight, (int, float)) or not (
            math.isfinite(self.flops_weight) and self.flops_weight >= 0
        ):
            raise ValueError(f"`flops_weight` must be a non-negative number, but got {self.flops_weight!r}.")
        for name in ("lr", "weight_decay"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value < (0 if name != "lr" else 1e-12):
                raise ValueError(f"`{name}` must be a {'positive' if name == 'lr' else 'non-negative'} number, "
                                 f"but got {value!r}.")
        if not 0 <= self.val_fraction < 1:
            raise ValueError(f"`val_fraction` must be in [0, 1), but got {self.val_fraction!r}.")


class _Member(nn.Module):
    """One graph network (a GHN without its decoder's use) plus a regression head."""

    def __init__(self, ghn: GHN, head_hidden: int) -> None:
        super().__init__()
        self.ghn = ghn
        hidden = ghn.config.hidden
        self.head = nn.Sequential(nn.Linear(2 * hidden, head_hidden), nn.ReLU(), nn.Linear(head_hidden, 1))

    def forward(self, batch: Batch) -> Tensor:
        h = self.ghn(batch)  # [N, hidden] node states
        B = int(batch.num_graphs)  # graphs
        pooled = torch.cat(
            [scatter(h, batch.batch, 0, dim_size=B, reduce="mean"), scatter(h, batch.batch, 0, dim_size=B, reduce="max")],
            dim=1,
        )  # [B, 2 * hidden]
        return self.head(pooled).squeeze(1)  # [B]


class GHNRanker(nn.Module):
    """Predicts the short-training loss (TSE) of architectures; lower is better.

    Build it with :func:`fit_ranker`; save and load it with :meth:`save` /
    :meth:`load` (``torch.load(weights_only=True)``).

    Args:
        ghn_config: Settings of the members' graph networks.
        space_info: The GHN's ``space_info`` (search space and dataset).
        config: The fitting settings.
        label_mean: Mean of the labels (predictions are returned in label units).
        label_std: Standard deviation of the labels.
        label_info: What the labels are (``{"target": "tse", "k": 30, "n": 600, ...}``).
        flops_mean: Mean log-FLOPs of the labelled architectures (for :meth:`score`).
        flops_std: Their standard deviation.

    Shapes:
        - :meth:`predict`: ``B`` graphs -> ``[B]`` predicted labels.
        - :meth:`score`: ``B`` graphs -> ``[B]`` rank scores.
    """

    def __init__(
        self,
        ghn_config: GHNConfig,
        *,
        space_info: dict[str, Any],
        config: RankerConfig,
        label_mean: float = 0.0,
        label_std: float = 1.0,
        label_info: dict[str, Any] | None = None,
        flops_mean: float = 0.0,
        flops_std: float = 1.0,
    ) -> None:
        super().__init__()
        self.config = config
        self.flops_mean = float(flops_mean)
        self.flops_std = float(flops_std)
        self.space_info = dict(space_info)
        self.label_mean = float(label_mean)
        self.label_std = float(label_std)
        self.label_info: dict[str, Any] = dict(label_info or {})
        #: Kendall tau of each member on its held-out labels (``nan`` without a split).
        self.member_tau: list[float] = []
        #: Kendall tau of the out-of-fold predictions: every label some member held out, scored by the mean of
        #: those members' predictions (``nan`` when fewer than 3 labels were held out).
        self.cv_tau: float = math.nan
        self.members = nn.ModuleList(
            _Member(GHN(ghn_config, space_info=space_info), config.head_hidden) for _ in range(config.ensemble)
        )

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @torch.no_grad()
    def predict(self, graphs: Sequence[ArchGraph], *, chunk: int = 512) -> np.ndarray:
        """Predicted short-training loss of each graph (label units; lower is better).

        Args:
            graphs: The architectures.
            chunk: Graphs per forward pass.

        Returns:
            Array ``[B]``.

        Raises:
            CheckpointError: A graph has an op the GHN cannot read.
        """
        graphs = list(graphs)
        self.eval()
        out = np.zeros(len(graphs))
        for start in range(0, len(graphs), chunk):
            part = graphs[start : start + chunk]
            total = torch.zeros(len(part), dtype=torch.float64)
            # The members share one graph network config, so one conversion serves them all.
            batch = Batch.from_data_list([self.members[0].ghn.entry(g).data for g in part]).to(self.device)
            for member in self.members:
                total += member(batch).double().cpu()
            out[start : start + len(part)] = (total / len(self.members)).numpy()
        return out * self.label_std + self.label_mean

    def score(self, graphs: Sequence[ArchGraph], *, chunk: int = 512) -> np.ndarray:
        """Rank score of each graph; lower is better (the score a campaign ranks by).

        ``z(predicted TSE) - flops_weight * z(log FLOPs)``, where ``z``
        standardises with the mean and standard deviation over the labelled
        architectures (no candidate's result is used).

        Args:
            graphs: The architectures.
            chunk: Graphs per forward pass.

        Returns:
            Array ``[B]``.
        """
        graphs = list(graphs)
        z = self.standardised(graphs, chunk=chunk)
        return with_flops_prior(z, graphs, weight=self.config.flops_weight, mean=self.flops_mean, std=self.flops_std)

    def standardised(self, graphs: Sequence[ArchGraph], *, chunk: int = 512) -> np.ndarray:
        """Predicted TSE standardised over the labelled architectures, lower is better; ``[B]``.

        This is :meth:`score` without the capacity prior.
        """
        return (self.predict(graphs, chunk=chunk) - self.label_mean) / self.label_std

    def check_compatible(self, space: SearchSpace, *, source: str | Path | None = None) -> None:
        """Refuse a space this ranker cannot score.

        Args:
            space: The search space.
            source: The checkpoint the ranker came from (named in the error).

        Raises:
            CheckpointError: The ranker was fitted for another input shape or
                number of classes, or a sampled candidate has an op outside its
                GHN's vocabulary.
        """
        where = f"ranker checkpoint {str(source)!r}" if source is not None else "the ranker"
        info = self.space_info or {}
        for key, mine in (("input_shape", list(space.input_shape)), ("num_classes", space.num_classes)):
            theirs = info.get(key)
            if theirs is not None and (list(theirs) if key == "input_shape" else theirs) != mine:
                raise CheckpointError(f"{where} was fitted for {key} {theirs}, but space {space.name!r} has {mine}.")
        vocabulary = self.members[0].ghn.config.ops
        for cand in space.sample_many(64, seed=0, unique=False):
            unknown = sorted({node.op for node in cand.graph.nodes} - set(vocabulary))
            if unknown:
                raise CheckpointError(
                    f"{where} cannot read op {unknown[0]!r} of space {space.name!r}: "
                    f"its vocabulary is {', '.join(vocabulary)}."
                )

    # ------------------------------------------------------------------ checkpoints

    def save(self, path: str | Path) -> None:
        """Write the ranker to ``path`` atomically."""
        write_checkpoint(path, {
            "format": RANKER_FORMAT,
            "version": RANKER_VERSION,
            "ghn_config": dataclasses.asdict(self.members[0].ghn.config),
            "config": dataclasses.asdict(self.config),
            "space_info": self.space_info,
            "label_mean": self.label_mean,
            "label_std": self.label_std,
            "label_info": self.label_info,
            "flops_mean": self.flops_mean,
            "flops_std": self.flops_std,
            "member_tau": list(self.member_tau),
            "cv_tau": self.cv_tau,
            "state_dict": {k: v.detach().cpu() for k, v in self.state_dict().items()},
        }, what="ranker checkpoint")

    @classmethod
    def load(cls, path: str | Path, *, map_location: str | torch.device = "cpu") -> GHNRanker:
        """Load a ranker saved by :meth:`save` (``torch.load(weights_only=True)``).

        Raises:
            CheckpointError: Missing, corrupt or foreign file, or weights that do
                not fit the settings (one line naming the path).
        """
        payload = read_checkpoint(path, map_location="cpu", expected_format=RANKER_FORMAT, what="ranker checkpoint")
        try:
            config = dict(payload["config"])
            if "flops_mean" not in payload:  # written before the capacity prior existed
                config["flops_weight"] = 0.0
            ranker = cls(
                GHNConfig(**payload["ghn_config"]),
                space_info=payload["space_info"],
                config=RankerConfig(**config),
                label_mean=payload["label_mean"],
                label_std=payload["label_std"],
                label_info=payload.get("label_info", {}),
                flops_mean=payload.get("flops_mean", 0.0),
                flops_std=payload.get("flops_std", 1.0),
            )
            ranker.load_state_dict(payload["state_dict"])
        except (KeyError, TypeError, ValueError, RuntimeError) as err:
            first = " ".join(str(err).split())[:200]
            raise CheckpointError(f"ranker checkpoint {str(path)!r} is invalid: {first}") from None
        ranker.member_tau = [float(t) for t in payload.get("member_tau", [])]
        ranker.cv_tau = float(payload.get("cv_tau", math.nan))
        return ranker.to(map_location)


def log_flops(graphs: Sequence[ArchGraph]) -> np.ndarray:
    """Natural log of each graph's forward FLOPs (:meth:`ArchGraph.flops`, cached per graph); ``[B]``."""
    return np.log(np.array([max(g.flops(), 1) for g in graphs], dtype=np.float64))


def with_flops_prior(z: np.ndarray, graphs: Sequence[ArchGraph], *, weight: float, mean: float,
                     std: float) -> np.ndarray:
    """``z - weight * (log_flops(graphs) - mean) / std``: the capacity prior of :meth:`GHNRanker.score`.

    Args:
        z: Standardised scores of ``graphs``, lower is better; ``[B]``.
        graphs: The architectures.
        weight: Weight of the prior (``0`` returns ``z`` unchanged, without counting FLOPs).
        mean: Mean log-FLOPs of the reference architectures (the labelled ones).
        std: Their standard deviation.

    Returns:
        Array ``[B]``.
    """
    if not weight:
        return z
    return z - weight * (log_flops(graphs) - mean) / std


def _per_graph(graphs: Sequence[ArchGraph], values: Sequence[float], *, name: str, minimum: int,
               what: str) -> tuple[list[ArchGraph], np.ndarray]:
    """``graphs`` as a list and ``values`` as a float array ``[B]``, checked: one finite value per graph.

    Raises:
        ValueError: A length mismatch, fewer than ``minimum`` graphs, or a value that is not finite
            (naming ``name``, the argument, and ``what`` the graphs are).
    """
    graphs = list(graphs)
    y = np.asarray(values, dtype=np.float64)
    if len(graphs) != len(y):
        raise ValueError(f"`{name}` must have one value per graph ({len(graphs)}), but got {len(y)}.")
    if len(graphs) < minimum:
        raise ValueError(f"`graphs` must hold at least {minimum} {what} architectures, but got {len(graphs)}.")
    if not np.isfinite(y).all():
        raise ValueError(f"`{name}` must be finite, but {int((~np.isfinite(y)).sum())} are not.")
    return graphs, y


def _tau(pred: np.ndarray, target: np.ndarray) -> float:
    if len(target) < 3:
        return math.nan
    return float(kendalltau(pred, target).statistic)


def _held_out(keys: Sequence[str], member: int, config: RankerConfig) -> np.ndarray:
    """Which labels member ``member`` holds out for early stopping: ``[B]`` bool.

    A label is held out when a seeded hash of its key falls below ``val_fraction``, so each
    member holds out about that share, and a label stays on its side when labels are added:
    an extended ranker (:func:`fit_ranker`'s ``init``) never validates on a label it trained on.
    """
    out = np.zeros(len(keys), dtype=bool)
    for i, key in enumerate(keys):
        digest = hashlib.sha256(f"{config.seed}/{member}/{key}".encode()).digest()
        out[i] = int.from_bytes(digest[:8], "big") / 2.0**64 < config.val_fraction
    return out


def fit_ranker(
    ghn: GHN,
    graphs: Sequence[ArchGraph],
    labels: Sequence[float],
    config: RankerConfig | None = None,
    *,
    label_info: dict[str, Any] | None = None,
    init: GHNRanker | None = None,
    progress: bool = True,
) -> GHNRanker:
    """Fine-tune copies of ``ghn``'s graph network to predict ``labels``.

    Each member standardises the labels, holds out about ``val_fraction`` of the
    graphs (its own seeded split, by a hash of each graph's key), trains the graph
    network and a head with AdamW on the mean squared error, and keeps the epoch
    whose Kendall tau on its held-out graphs is highest (the last epoch when fewer
    than 3 are held out). The out-of-fold predictions give :attr:`GHNRanker.cv_tau`.

    Args:
        ghn: A meta-trained GHN (its weights are copied, not changed).
        graphs: Labelled architectures (never the candidates to be ranked).
        labels: One finite label per graph, lower is better (e.g. TSE).
        config: Settings (default :class:`RankerConfig`).
        label_info: Stored in the ranker, e.g. ``{"target": "tse", "k": 30}``.
        init: A ranker fitted on some of these labels with the same members and graph network: each
            member starts from its weights (the ranker is extended with more labels, not fitted from scratch).
        progress: Show a progress bar.

    Returns:
        The fitted :class:`GHNRanker` (in eval mode, on ``ghn``'s device).

    Raises:
        ValueError: Fewer than 4 graphs, a length mismatch, a label that is not finite, or an ``init``
            with other members or graph network settings.
    """
    config = config or RankerConfig()
    started = time.perf_counter()
    graphs, y = _per_graph(graphs, labels, name="labels", minimum=4, what="labelled")
    if init is not None and (len(init.members) != config.ensemble or init.members[0].ghn.config != ghn.config):
        raise ValueError("`init` was fitted with other members or graph network settings than `config` and `ghn`.")
    mean, std = float(y.mean()), float(y.std()) or 1.0
    flops = log_flops(graphs)
    ranker = GHNRanker(
        ghn.config, space_info=ghn.space_info, config=config, label_mean=mean, label_std=std, label_info=label_info,
        flops_mean=float(flops.mean()), flops_std=float(flops.std()) or 1.0,
    ).to(ghn.device)
    target = torch.tensor((y - mean) / std, dtype=torch.float32, device=ghn.device)
    data = [ghn.entry(g).data for g in graphs]
    keys = [g.key for g in graphs]
    oof_sum, oof_count = np.zeros(len(graphs)), np.zeros(len(graphs))  # out-of-fold predictions, per label
    bar = tqdm(total=config.ensemble * config.epochs, desc="fit ranker", unit="epoch", disable=not progress,
               dynamic_ncols=True)
    for m, member in enumerate(ranker.members):
        gen = torch.Generator().manual_seed(config.seed * 1000 + m)
        if config.pretrained:
            member.ghn.load_state_dict(ghn.state_dict())
        else:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(config.seed * 1000 + m)
                member.ghn = GHN(ghn.config, space_info=ghn.space_info).to(ghn.device)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed * 1000 + m)
            for layer in member.head:
                if isinstance(layer, nn.Linear):
                    layer.reset_parameters()
        if init is not None:
            member.load_state_dict(init.members[m].state_dict())
        held = _held_out(keys, m, config)
        if held.all():
            held[:] = False
        val_idx, train_idx = torch.from_numpy(np.flatnonzero(held)), torch.from_numpy(np.flatnonzero(~held))
        params = [p for name, p in member.named_parameters() if ".decoder." not in f".{name}"]
        opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
        best_tau, best_state, best_pred = -math.inf, None, None
        for _ in range(config.epochs):
            member.train()
            order = train_idx[torch.randperm(len(train_idx), generator=gen)]
            for start in range(0, len(order), config.batch_size):
                idx = order[start : start + config.batch_size].tolist()
                batch = Batch.from_data_list([data[i] for i in idx]).to(ghn.device)
                loss = F.mse_loss(member(batch), target[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            if len(val_idx) >= 3:
                member.eval()
                with torch.no_grad():
                    batch = Batch.from_data_list([data[i] for i in val_idx.tolist()]).to(ghn.device)
                    pred = member(batch).cpu().numpy()
                    tau = _tau(pred, y[val_idx.numpy()])
                if tau > best_tau:
                    best_tau, best_state, best_pred = tau, copy.deepcopy(member.state_dict()), pred
            bar.update(1)
        if best_state is not None:
            member.load_state_dict(best_state)
        ranker.member_tau.append(best_tau if best_state is not None else math.nan)
        if best_pred is not None:
            np.add.at(oof_sum, val_idx.numpy(), best_pred)
            np.add.at(oof_count, val_idx.numpy(), 1)
        bar.set_postfix(val_tau=f"{best_tau:.3f}" if best_state is not None else "n/a")
    bar.close()
    held = oof_count > 0
    ranker.cv_tau = _tau(oof_sum[held] / oof_count[held], y[held])
    ranker.label_info["fit_seconds"] = time.perf_counter() - started
    logger.info("ranker fitted on %d graphs; cross-validated tau %.3f (members %s)", len(graphs), ranker.cv_tau,
                ", ".join(f"{t:.3f}" for t in ranker.member_tau))
    return ranker.eval()


# --------------------------------------------------------------------------- labels


def _one_thread() -> None:
    """Initialiser of a label worker process: one torch thread (the workers share the cores)."""
    torch.set_num_threads(1)


def _short_training_loss(args: tuple[str, Any, int, int]) -> tuple[float, float]:
    """TSE of one label and the seconds its training took."""
    graph_json, data, k, seed = args
    from nas.training import TrainConfig, train_graph

    graph = ArchGraph.from_json(graph_json)
    config = TrainConfig(steps=k, schedule="constant", seed=seed, progress=False)
    start = time.perf_counter()
    result = train_graph(graph, data, config, evaluate_on=())
    seconds = time.perf_counter() - start
    return (math.nan if result.failed else float(sum(result.train_losses))), seconds


def tse_label(graph: ArchGraph, data: Dataset, k: int, seed: int) -> tuple[float, float]:
    """One ranker label: the TSE after ``k`` SGD steps from the seed-``seed`` initialisation, and its seconds.

    What :func:`short_training_labels` measures for each architecture (``nan`` when training failed).
    """
    return _short_training_loss((graph.to_json(), data, int(k), int(seed)))


def _drop_torn_tail(path: Path) -> None:
    """Cut a last line that a killed process left half-written (it has no newline yet).

    Rows are appended whole and flushed one by one, so only the last one can be
    torn; its label is trained again.
    """
    with path.open("rb+") as f:
        data = f.read()
        if data and not data.endswith(b"\n"):
            logger.warning("%s: dropping a half-written last row (an interrupted run)", path)
            f.truncate(data.rfind(b"\n") + 1)


def label_seconds(cache: str | Path, keys: Sequence[str]) -> tuple[float, int]:
    """Training seconds of the labels ``keys`` recorded in a label cache.

    Args:
        cache: A CSV written by :func:`short_training_labels`.
        keys: Canonical keys of the labels to count.

    Returns:
        ``(seconds, estimated)``: the total, where labels without a recorded
        time (rows written before times were kept) count at the mean of every
        timed row of the cache; ``estimated`` is how many were counted so. The
        total is ``nan`` when some are untimed and no row of the cache is timed.
    """
    with Path(cache).open(newline="") as f:
        times = {row["key"]: row.get("seconds") for row in csv.DictReader(f)}
    timed = {k: float(v) for k, v in times.items() if v not in (None, "")}
    known = [timed[k] for k in keys if k in timed]
    missing = len(keys) - len(known)
    if not missing:
        return float(sum(known)), 0
    mean = float(np.mean(list(timed.values()))) if timed else math.nan
    return float(sum(known)) + missing * mean, missing


def short_training_labels(
    space: SearchSpace,
    data: Dataset,
    n: int,
    *,
    k: int = 30,
    seed: int = 0,
    exclude: Sequence[str] = (),
    cache: str | Path | None = None,
    workers: int = 1,
    progress: bool = True,
    queue: Any = None,
) -> tuple[list[ArchGraph], np.ndarray]:
    """Sample ``n`` architectures and measure the TSE of each after ``k`` SGD steps.

    TSE is the sum of the ``k`` minibatch training losses from random
    initialisation (seed ``seed``; the trainer's default settings with a
    constant learning rate), the same quantity as the ``short_training`` scorer
    of :mod:`nas.evaluation`. Architectures whose training fails are dropped.

    Args:
        space: The search space.
        data: The dataset (training split only is used).
        n: Architectures to label (distinct canonical keys).
        k: SGD steps per architecture.
        seed: Seed of the sample and of every training run.
        exclude: Canonical keys never to label (the candidates to be ranked).
        cache: CSV file of finished labels (``key, graph, tse, seconds``); appended as
            labels finish, so an interrupted run resumes where it stopped (a
            row left half-written by a kill is dropped and trained again).
        workers: Processes training in parallel (one torch thread each); ``1``
            trains in this process, with its own thread setting.
        progress: Show a progress bar.
        queue: A :class:`nas.campaign.QueuedLabels`: the labels not in ``cache``
            are queued in its Optuna storage and trained by this process and any
            ``nas worker`` (``workers`` is then not used); they land in ``cache`` as well.

    Returns:
        ``(graphs, labels)`` of the architectures that trained.

    Raises:
        ValueError: ``n``, ``k`` or ``workers`` is not positive.
    """
    for name, value in (("n", n), ("k", k), ("workers", workers)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"`{name}` must be a positive int, but got {value!r}.")
    graphs = _sample(space, n, seed=seed, exclude=exclude)
    return _measure(graphs, _short_training_loss, data, k, seed, cache=cache, column="tse", workers=workers,
                    desc=f"TSE labels (k={k})", progress=progress, queue=queue)


def tse_scores(
    graphs: Sequence[ArchGraph],
    data: Dataset,
    *,
    k: int = 30,
    seed: int = 0,
    cache: str | Path | None = None,
    workers: int = 1,
    progress: bool = True,
    queue: Any = None,
) -> np.ndarray:
    """The TSE after ``k`` SGD steps of each of ``graphs``: what a ranker label measures, for given graphs.

    The same training as :func:`short_training_labels` (and the ``short_training``
    scorer of :mod:`nas.evaluation`), of the architectures given rather than of a sample.

    Args:
        graphs: The architectures.
        data: The dataset (training split only is used).
        k: SGD steps per architecture.
        seed: Seed of every training run.
        cache: CSV of finished runs (``key, graph, tse, seconds``), appended as runs
            finish, so an interrupted call resumes; a graph found there is not trained again.
        workers: Processes training in parallel (one torch thread each).
        progress: Show a progress bar.
        queue: A :class:`nas.campaign.QueuedLabels` that trains them instead (see
            :func:`short_training_labels`).

    Returns:
        ``[len(graphs)]`` TSE per graph, in order; ``nan`` where training failed.

    Raises:
        ValueError: ``k`` or ``workers`` is not a positive int.
    """
    for name, value in (("k", k), ("workers", workers)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"`{name}` must be a positive int, but got {value!r}.")
    unique = list({g.key: g for g in graphs}.values())
    kept, values = _measure(unique, _short_training_loss, data, k, seed, cache=cache, column="tse", workers=workers,
                            desc=f"short training (k={k})", progress=progress, queue=queue)
    by_key = {g.key: float(v) for g, v in zip(kept, values)}
    return np.array([by_key.get(g.key, math.nan) for g in graphs], dtype=np.float64)


def _sample(space: SearchSpace, n: int, *, seed: int, exclude: Sequence[str]) -> list[ArchGraph]:
    """The first ``n`` distinct architectures of ``space``'s seeded sample that are not in ``exclude``."""
    excluded = set(exclude)
    pool = [c.graph for c in space.sample_many(n + len(excluded), seed=seed, unique=True)]
    return [g for g in pool if g.key not in excluded][:n]


def _measure(
    graphs: list[ArchGraph],
    job: Any,
    data: Dataset,
    budget: float,
    seed: int,
    *,
    cache: str | Path | None,
    column: str,
    workers: int,
    desc: str,
    progress: bool,
    queue: Any = None,
) -> tuple[list[ArchGraph], np.ndarray]:
    """Run ``job((graph_json, data, budget, seed)) -> (value, seconds)`` on every graph not yet in ``cache``.

    With ``queue`` (an object with ``measure(graphs, data, budget, seed, progress=) ->
    {key: (value, seconds)}``), the missing graphs are measured through it instead.

    The cache is a CSV (``key, graph, <column>, seconds``) appended and flushed
    row by row; a row torn by a kill is dropped and measured again.

    Returns:
        ``(graphs, values)`` of the graphs whose value is finite, in sample order.
    """
    done: dict[str, float] = {}
    path = Path(cache) if cache is not None else None
    if path is not None and path.exists():
        _drop_torn_tail(path)
        with path.open(newline="") as f:
            reader = csv.DictReader(f)
            rows = list(reader)
            untimed = reader.fieldnames is not None and "seconds" not in reader.fieldnames
            if reader.fieldnames is not None and column not in reader.fieldnames:
                raise ValueError(f"cache {str(path)!r} has no {column!r} column (columns: "
                                 f"{', '.join(reader.fieldnames)}); it holds other measurements.")
        for row in rows:
            done[row["key"]] = float(row[column])
        if untimed:  # written before label times were kept: add the column (empty for those rows) once

            def upgrade(tmp: Path) -> None:
                with tmp.open("w", newline="") as f:
                    writer = csv.writer(f)
                    writer.writerow(["key", "graph", column, "seconds"])
                    writer.writerows([row["key"], row["graph"], row[column], ""] for row in rows)

            atomic_write(path, upgrade)
    todo = [g for g in graphs if g.key not in done]
    writer_file = None
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        new = not path.exists() or path.stat().st_size == 0
        writer_file = path.open("a", newline="")
        writer = csv.writer(writer_file)
        if new:
            writer.writerow(["key", "graph", column, "seconds"])
    jobs = [(g.to_json(), data, budget, seed) for g in todo]
    if queue is not None and todo:
        measured = queue.measure(todo, data, int(budget), seed, progress=progress)
        jobs = [(g.to_json(), measured[g.key]) for g in todo]  # (graph, (value, seconds)) in sample order
        job, workers = (lambda item: item[1]), 1
    try:
        with tqdm(total=len(graphs), initial=len(graphs) - len(todo), desc=desc, unit="arch",
                  disable=not progress, dynamic_ncols=True) as bar:
            if workers == 1:
                results = map(job, jobs)
                executor = None
            else:
                executor = ProcessPoolExecutor(max_workers=workers, initializer=_one_thread)
                results = executor.map(job, jobs, chunksize=4)
            try:
                for g, (value, seconds) in zip(todo, results):
                    done[g.key] = value
                    if writer_file is not None:
                        writer.writerow([g.key, g.to_json(), value, seconds])
                        writer_file.flush()
                        os.fsync(writer_file.fileno())
                    bar.update(1)
            finally:
                if executor is not None:
                    executor.shutdown(cancel_futures=True)
    finally:
        if writer_file is not None:
            writer_file.close()
    keep = [g for g in graphs if math.isfinite(done.get(g.key, math.nan))]
    return keep, np.array([done[g.key] for g in keep])
