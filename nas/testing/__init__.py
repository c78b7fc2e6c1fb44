"""Test helpers shipped with the package, for built-in and user-defined extensions.

:func:`check_space` and :class:`SpaceConformance` check that a search space
samples valid, reproducible, serialisable and runnable candidates; see
:mod:`nas.testing.space_conformance`.
"""

from __future__ import annotations

from nas.testing.space_conformance import CHECKS, SpaceConformance, check_space

__all__ = ["CHECKS", "SpaceConformance", "check_space"]
