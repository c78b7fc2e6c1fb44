"""Built-in search spaces, by name.

* ``"nb201"``: :class:`NB201Space`, NAS-Bench-201's cell (Dong & Yang, ICLR 2020).
* ``"darts"``: :class:`DARTSSpace`, DARTS's normal and reduction cells (Liu et al., ICLR 2019).
* ``"macro"``: :class:`MacroSpace`, MobileNetV2-like stages of inverted bottlenecks.

:func:`nas.space.load_space` resolves these names: each class registers itself
with :func:`nas.space.register_space`, and ``setup.cfg`` declares the modules in
the ``nas.spaces`` entry-point group, which an installed package of a user's
spaces can join. A user's own space may also be a :class:`nas.space.SearchSpace`
subclass in any module or file (``module:attr``, ``file.py:attr``).
"""

from __future__ import annotations

from nas.space import SearchSpace
from search_spaces.darts import DARTS_OPS, DARTSSpace
from search_spaces.macro import MACRO_CHOICES, MacroSpace
from search_spaces.nb201 import NB201_OPS, NB201Space, arch_string, params_from_arch_string

__all__ = [
    "BUILTIN_SPACES",
    "DARTSSpace",
    "DARTS_OPS",
    "MACRO_CHOICES",
    "MacroSpace",
    "NB201Space",
    "NB201_OPS",
    "arch_string",
    "params_from_arch_string",
]

#: Built-in search spaces by the name :func:`nas.space.load_space` accepts.
BUILTIN_SPACES: dict[str, type[SearchSpace]] = {cls.name: cls for cls in (DARTSSpace, MacroSpace, NB201Space)}
