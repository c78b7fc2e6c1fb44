"""Several GHN rankers scoring together: :class:`RankerEnsemble`.

Each ranker comes from one build of the one-time pipeline: a GHN
meta-trained with some seed, labels sampled with some seed, a fit. Builds
that differ only in those seeds put very different architectures first. On
nb201 / mnist5k, five builds put their first validation top-1% architecture
1st, 5th, 1st, 1st and nowhere in their first ten (test: 8th, 8th, 1st, 1st,
nowhere). Averaging those five put a top-1% architecture first, but five
other builds averaged ranked like a weak single build (``git show 7aab067768:bench/RESULTS.md``,
"Builds of the GHN and ranker"): an ensemble is an option, not a cure. It
costs one build per member, once; scoring costs one forward pass per member
(graphs are converted once for members that convert alike).

Examples:
    >>> from nas.ghn import RankerEnsemble  # doctest: +SKIP
    >>> ranker = RankerEnsemble.load(["b0/ranker.pt", "b1/ranker.pt", "b2/ranker.pt"])  # doctest: +SKIP
    >>> scores = ranker.score(graphs)  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from nas.ghn._ranker import GHNRanker, with_flops_prior
from nas.graph import ArchGraph

__all__ = ["RankerEnsemble"]


class RankerEnsemble(nn.Module):
    """Ranks by the mean of several rankers' standardised predicted TSE, plus the first one's capacity prior.

    It scores like a :class:`GHNRanker` (:meth:`score`, :meth:`standardised`,
    :meth:`check_compatible`), so a campaign takes it wherever it takes one.

    Args:
        rankers: The fitted rankers, at least one (an ensemble of one scores as
            that ranker does).

    Raises:
        ValueError: ``rankers`` is empty or holds something that is not a ranker.

    Shapes:
        - :meth:`score`: ``B`` graphs -> ``[B]`` rank scores, lower is better.
    """

    def __init__(self, rankers: Sequence[GHNRanker]) -> None:
        rankers = list(rankers)
        if not rankers:
            raise ValueError("`rankers` must hold at least one ranker, but got none.")
        wrong = [r for r in rankers if not callable(getattr(r, "standardised", None))]
        if wrong:
            raise ValueError(f"`rankers` must hold GHNRanker objects, but got {type(wrong[0]).__name__}.")
        super().__init__()
        self.rankers = nn.ModuleList(rankers)
        # Builds of one space convert a graph alike: convert it once for all of them.
        ghns = [_graph_network(r) for r in rankers]
        for ghn in ghns[1:]:
            if ghn is not None and ghns[0] is not None:
                ghn.share_graph_cache(ghns[0])

    @property
    def space_info(self) -> dict[str, Any]:
        """The first ranker's ``space_info`` (every member is checked against the space)."""
        return self.rankers[0].space_info

    def standardised(self, graphs: Sequence[ArchGraph], *, chunk: int = 512) -> np.ndarray:
        """Mean of the members' standardised predicted TSE; ``[B]``, lower is better."""
        graphs = list(graphs)
        return np.mean([r.standardised(graphs, chunk=chunk) for r in self.rankers], axis=0)

    def score(self, graphs: Sequence[ArchGraph], *, chunk: int = 512) -> np.ndarray:
        """Rank score of each graph, lower is better: :meth:`standardised` plus the first member's prior.

        Args:
            graphs: The architectures.
            chunk: Graphs per forward pass of each member.

        Returns:
            Array ``[B]``.
        """
        graphs = list(graphs)
        first = self.rankers[0]
        return with_flops_prior(self.standardised(graphs, chunk=chunk), graphs, weight=first.config.flops_weight,
                                mean=first.flops_mean, std=first.flops_std)

    def check_compatible(self, space: Any, *, source: Sequence[str | Path] | str | Path | None = None) -> None:
        """Refuse a space that any member cannot score (:meth:`GHNRanker.check_compatible`).

        Args:
            space: The search space.
            source: The members' checkpoint paths, in order (named in the error).
        """
        sources = list(source) if isinstance(source, (list, tuple)) else [source] * len(self.rankers)
        for ranker, path in zip(self.rankers, sources, strict=True):
            ranker.check_compatible(space, source=path)

    @classmethod
    def load(cls, paths: Sequence[str | Path], *, map_location: str | torch.device = "cpu") -> RankerEnsemble:
        """Load each ranker checkpoint (:meth:`GHNRanker.load`, ``weights_only=True``).

        Raises:
            ValueError: ``paths`` is empty.
            CheckpointError: A checkpoint is missing, corrupt or foreign (one line naming its path).
        """
        paths = list(paths)
        if not paths:
            raise ValueError("`paths` must name at least one ranker checkpoint, but got none.")
        return cls([GHNRanker.load(p, map_location=map_location) for p in paths])


def _graph_network(ranker: Any) -> Any:
    """The GHN whose graph cache ``ranker`` converts graphs with (``None`` for another kind of ranker)."""
    members = getattr(ranker, "members", None)
    return getattr(members[0], "ghn", None) if members else None
