"""The :class:`Ranker` protocol: what a campaign needs from a ranker.

:class:`~nas.ghn.GHNRanker` and :class:`~nas.ghn.RankerEnsemble` implement it;
so can a user's own ranker, without subclassing anything.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

if TYPE_CHECKING:
    from nas.graph import ArchGraph
    from nas.space import SearchSpace

__all__ = ["Ranker"]


@runtime_checkable
class Ranker(Protocol):
    """Scores architectures from their graphs alone; lower is better.

    Examples:
        >>> from nas.ghn import GHNRanker, Ranker
        >>> issubclass(GHNRanker, Ranker)
        True
    """

    def score(self, graphs: Sequence[ArchGraph]) -> np.ndarray:
        """The rank scores ``[len(graphs)]`` of ``graphs`` (lower is better)."""
        ...

    def check_compatible(self, space: SearchSpace, *, source: Any = None) -> None:
        """Raise :class:`~nas.exceptions.CheckpointError` when the ranker cannot score ``space``.

        Args:
            space: The search space to score.
            source: Where the ranker was loaded from (a path, or the paths of
                an ensemble's members), named in the error.
        """
        ...
