"""Scorers: anything that ranks candidate architectures without training them fully.

A scorer subclasses :class:`Scorer` and implements one method,
:meth:`Scorer.score`, returning one number per graph, **higher = predicted
better**. Scorers are named; :func:`get_scorer` resolves a name (from the CLI
or a config) to an instance and :func:`register_scorer` adds a new one. A new
scorer is a short subclass:

Examples:
    >>> class Depth(Scorer):
    ...     name = "depth"
    ...     def score(self, graphs, data):
    ...         return [float(len(g.nodes)) for g in graphs]
    >>> register_scorer("depth", Depth)
    >>> get_scorer("depth").name
    'depth'

Built-in scorers: ``params``, ``flops``, ``latency`` (measured; opt-in), ``random``, ``ghn`` and
``ghn_plain`` (:class:`GHNScorer`), ``short_training`` and its variants
``short_training_{tse,val}_k{10,30,100}`` (:class:`ShortTrainingScorer`), and
the zero-cost proxies of :mod:`nas.evaluation.proxies` (``synflow``, ``snip``,
``grad_norm``, ``jacob_cov``, ``naswot``).
"""

from __future__ import annotations

import abc
import dataclasses
import inspect
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from nas.data import Dataset
from nas.graph import ArchGraph
from nas.training import Split, TrainConfig, train_graph

__all__ = [
    "Scorer",
    "ParamsScorer",
    "FlopsScorer",
    "RandomScorer",
    "GHNScorer",
    "ShortTrainingScorer",
    "register_scorer",
    "get_scorer",
    "scorer_names",
    "build_scorers",
    "SHORT_TRAINING_STEPS",
    "DEFAULT_SHORT_TRAINING",
]


class Scorer(abc.ABC):
    """Base class of candidate scorers.

    Subclasses set :attr:`name` and implement :meth:`score`. The evaluation
    pipeline measures the cost of a scorer as the wall-clock seconds of one
    :meth:`score` call divided by the number of graphs.

    Attributes:
        name: Name of the scorer in tables and figures.
        cost: Seconds per candidate of the last :meth:`score` call made by
            :func:`nas.evaluation.correlate` (``None`` before).
    """

    name: str = "scorer"
    cost: float | None = None

    @abc.abstractmethod
    def score(self, graphs: Sequence[ArchGraph], data: Dataset) -> list[float]:
        """Score each graph; higher means predicted better.

        Args:
            graphs: The candidates.
            data: The dataset the candidates will be trained on.

        Returns:
            One float per graph, in order. ``nan`` marks a candidate the scorer
            could not score (ranked last by the pipeline).
        """

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


# --------------------------------------------------------------------------- registry

_REGISTRY: dict[str, Callable[..., Scorer]] = {}


def register_scorer(name: str, factory: Callable[..., Scorer], *, overwrite: bool = False) -> None:
    """Make ``get_scorer(name, **kwargs)`` return ``factory(**kwargs)``.

    Args:
        name: The scorer name.
        factory: A :class:`Scorer` subclass or a function returning a scorer.
        overwrite: Replace an existing registration instead of raising.

    Raises:
        ValueError: ``name`` is already registered (and not ``overwrite``) or empty.
    """
    if not name or not isinstance(name, str):
        raise ValueError(f"`name` must be a non-empty string, but got {name!r}.")
    if name in _REGISTRY and not overwrite:
        raise ValueError(f"scorer {name!r} is already registered; pass overwrite=True to replace it.")
    _REGISTRY[name] = factory


def scorer_names() -> list[str]:
    """Names of every registered scorer, sorted."""
    return sorted(_REGISTRY)


def get_scorer(name: str | Scorer, **kwargs: Any) -> Scorer:
    """Resolve a scorer name to an instance.

    Args:
        name: A registered name (see :func:`scorer_names`) or a ready scorer,
            returned unchanged.
        **kwargs: Passed to the scorer's factory (e.g. ``ghn=...``, ``seed=...``).

    Returns:
        The scorer; its ``name`` is ``name``.

    Raises:
        ValueError: Unknown name (the message lists the valid ones), or
            arguments the scorer does not accept or needs.
    """
    if isinstance(name, Scorer):
        return name
    if name not in _REGISTRY:
        raise ValueError(f"unknown scorer {name!r}; valid scorers: {', '.join(scorer_names())}.")
    try:
        scorer = _REGISTRY[name](**kwargs)
    except TypeError as err:
        raise ValueError(f"scorer {name!r} rejects its arguments {sorted(kwargs)}: {err}") from None
    scorer.name = name
    return scorer


def _accepted(factory: Callable[..., Any], context: Mapping[str, Any]) -> dict[str, Any]:
    params = inspect.signature(factory).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return dict(context)
    return {k: v for k, v in context.items() if k in params}


def build_scorers(
    names: Sequence[str | Scorer],
    *,
    ghn: Any = None,
    **context: Any,
) -> list[Scorer]:
    """Resolve several scorers, giving each the shared settings it accepts.

    Args:
        names: Scorer names or instances.
        ghn: A GHN for the GHN-based scorers, or a mapping ``{scorer name: GHN}``
            (e.g. ``{"ghn": ghn, "ghn_plain": plain}``).
        **context: Shared settings, passed to each factory that has a parameter
            of that name (e.g. ``seed``, ``device``, ``batch_size``,
            ``train_config``); others ignore them.

    Returns:
        The scorers, in order.

    Raises:
        ValueError: An unknown name, or a duplicate name.
    """
    out: list[Scorer] = []
    for name in names:
        if isinstance(name, Scorer):
            out.append(name)
            continue
        if name not in _REGISTRY:
            raise ValueError(f"unknown scorer {name!r}; valid scorers: {', '.join(scorer_names())}.")
        shared = dict(context)
        shared["ghn"] = ghn.get(name) if isinstance(ghn, Mapping) else ghn
        out.append(get_scorer(name, **_accepted(_REGISTRY[name], shared)))
    seen = [s.name for s in out]
    dupes = sorted({n for n in seen if seen.count(n) > 1})
    if dupes:
        raise ValueError(f"`names` lists scorers more than once: {dupes}.")
    return out


# --------------------------------------------------------------------------- simple scorers


class ParamsScorer(Scorer):
    """Number of trainable parameters (bigger predicted better)."""

    name = "params"

    def score(self, graphs: Sequence[ArchGraph], data: Dataset) -> list[float]:
        return [float(g.num_params()) for g in graphs]


class FlopsScorer(Scorer):
    """Forward FLOPs of one example, :meth:`ArchGraph.flops` (bigger predicted better)."""

    name = "flops"

    def score(self, graphs: Sequence[ArchGraph], data: Dataset) -> list[float]:
        return [float(g.flops()) for g in graphs]


class LatencyScorer(Scorer):
    """Measured inference latency on the scoring device (:func:`nas.latency.measure_latency`; slower predicted better).

    A cost baseline beside ``params`` and ``flops``: how far do the candidates' run
    times alone order their trained quality? Each candidate costs about 0.2 s of
    timing. Opt-in (``--methods ...,latency``), as its time is that of the machine.

    Args:
        device: Torch device to time on.
        batch_size: Images per timed forward pass.
    """

    name = "latency"

    def __init__(self, device: str | None = None, batch_size: int = 1) -> None:
        self.device = device or "cpu"
        self.latency_batch_size = int(batch_size)

    def score(self, graphs: Sequence[ArchGraph], data: Dataset) -> list[float]:
        from nas.latency import measure_latency

        return [measure_latency(g, device=self.device, batch_size=self.latency_batch_size).median_ms for g in graphs]


class RandomScorer(Scorer):
    """Uniform random scores from a fixed seed: the chance baseline.

    Args:
        seed: Seed of the generator; the same seed gives the same scores.
    """

    name = "random"

    def __init__(self, seed: int = 0) -> None:
        self.seed = int(seed)

    def score(self, graphs: Sequence[ArchGraph], data: Dataset) -> list[float]:
        return np.random.default_rng(self.seed).random(len(graphs)).tolist()


class GHNScorer(Scorer):
    """Negative loss of the weights a graph hypernetwork predicts (no training).

    Scores each candidate with ``-ghn.evaluate(graphs, data)[i]["loss"]`` on the
    validation split, in chunks of ``chunk`` graphs per forward pass.

    Reference:
        Boris Knyazev, Michal Drozdzal, Graham W. Taylor and Adriana
        Romero-Soriano. "Parameter Prediction for Unseen Deep Architectures."
        NeurIPS 2021.

    Args:
        ghn: A trained :class:`nas.ghn.GHN`.
        name: Name of the scorer.
        split: Split to score on (``"val"`` or ``"test"``).
        chunk: Graphs per :meth:`GHN.evaluate` call.
        device: Device to evaluate on (``None``: the GHN's device).

    Raises:
        ValueError: ``ghn`` is missing or ``chunk`` is not positive.
    """

    name = "ghn"

    def __init__(
        self,
        ghn: Any = None,
        *,
        name: str = "ghn",
        split: str = "val",
        chunk: int = 64,
        device: str | torch.device | None = None,
    ) -> None:
        if ghn is None:
            raise ValueError(f"scorer {name!r} needs a trained GHN, but got `ghn=None`.")
        if chunk < 1:
            raise ValueError(f"`chunk` must be positive, but got {chunk}.")
        self.ghn = ghn
        self.name = name
        self.split = split
        self.chunk = chunk
        self.device = device

    def score(self, graphs: Sequence[ArchGraph], data: Dataset) -> list[float]:
        out: list[float] = []
        for start in range(0, len(graphs), self.chunk):
            results = self.ghn.evaluate(
                list(graphs[start : start + self.chunk]), data, split=self.split, device=self.device
            )
            out.extend(-float(r["loss"]) for r in results)
        return out


#: The ``k`` values of the registered ``short_training_*`` variants.
SHORT_TRAINING_STEPS: tuple[int, ...] = (10, 30, 100)

#: ``(target, k)`` of the plain ``short_training`` scorer.
DEFAULT_SHORT_TRAINING: tuple[str, int] = ("tse", 30)


class ShortTrainingScorer(Scorer):
    """Train each candidate for ``k`` SGD steps from random initialisation.

    ``target="tse"`` scores ``-TSE``, the negated sum of the ``k`` minibatch
    training losses (the training-speed estimate of Ru et al.: a network that
    trains faster early tends to generalise better); ``target="val"`` scores
    the negated validation loss after the ``k`` steps (early stopping, the
    classic baseline in the same paper).

    Training uses the ground truth's settings (``train_config``: batch size,
    learning rate, momentum, ...), but with a constant learning rate: the first
    ``k`` steps of a long cosine schedule are at the peak rate, whereas a cosine
    over only ``k`` steps would anneal to zero. Each candidate starts from the
    initialisation drawn with ``seed``.

    Reference:
        Binxin Ru, Clare Lyle, Lisa Schut, Miroslav Fil, Mark van der Wilk and
        Yarin Gal. "Speedy Performance Estimation for Neural Architecture
        Search." NeurIPS 2021.

    Args:
        k: Training steps.
        target: ``"tse"`` or ``"val"``.
        train_config: Base training settings (default ``TrainConfig()``).
        seed: Seed of the initialisation and batch order.
        device: Device to train on (default: ``train_config.device``).
        progress: Show a progress bar over candidates.

    Raises:
        ValueError: ``k`` is not positive or ``target`` is unknown.
    """

    name = "short_training"

    def __init__(
        self,
        *,
        k: int = DEFAULT_SHORT_TRAINING[1],
        target: str = DEFAULT_SHORT_TRAINING[0],
        train_config: TrainConfig | None = None,
        seed: int = 0,
        device: str | None = None,
        progress: bool = False,
    ) -> None:
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"`k` must be a positive int, but got {k!r}.")
        if target not in ("tse", "val"):
            raise ValueError(f"`target` must be 'tse' or 'val', but got {target!r}.")
        base = train_config or TrainConfig()
        self.k = k
        self.target = target
        self.seed = int(seed)
        self.config = dataclasses.replace(
            base, steps=k, schedule="constant", seed=self.seed, progress=False, device=device or base.device
        )
        self.progress = progress
        self.name = f"short_training_{target}_k{k}"

    def score(self, graphs: Sequence[ArchGraph], data: Dataset) -> list[float]:
        # Evaluation after training is part of `train`; shrink the splits whose
        # result is not used to one example so that it costs nothing.
        splits: tuple[Split, ...] = ("val",) if self.target == "val" else ()
        out: list[float] = []
        for graph in tqdm(graphs, desc=self.name, leave=False, disable=not self.progress):
            result = train_graph(graph, data, self.config, evaluate_on=splits)
            if result.failed:
                out.append(math.nan)
            elif self.target == "tse":
                out.append(-float(sum(result.train_losses)))
            else:
                out.append(-float(result.val_loss))
        return out


# --------------------------------------------------------------------------- registrations


def _ghn_plain_factory(ghn: Any = None, device: str | None = None) -> Scorer:
    return GHNScorer(ghn, name="ghn_plain", device=device)


def _short_training_factory(target: str, k: int) -> Callable[..., Scorer]:
    def factory(
        train_config: TrainConfig | None = None, seed: int = 0, device: str | None = None, progress: bool = False
    ) -> Scorer:
        return ShortTrainingScorer(
            k=k, target=target, train_config=train_config, seed=seed, device=device, progress=progress
        )

    return factory


register_scorer("params", ParamsScorer)
register_scorer("flops", FlopsScorer)
register_scorer("random", RandomScorer)
register_scorer("latency", lambda device=None: LatencyScorer(device=device))
register_scorer("ghn_plain", _ghn_plain_factory)
register_scorer("short_training", _short_training_factory(*DEFAULT_SHORT_TRAINING))
for _target in ("tse", "val"):
    for _k in SHORT_TRAINING_STEPS:
        register_scorer(f"short_training_{_target}_k{_k}", _short_training_factory(_target, _k))
