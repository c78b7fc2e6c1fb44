"""Search spaces: plain Python that samples candidate architectures.

A search space subclasses :class:`SearchSpace` and implements one method,
:meth:`SearchSpace.build`, which asks an Optuna-style ``trial`` for its choices
(``suggest_categorical``, ``suggest_int``, ``suggest_float``) and returns an
:class:`~nas.graph.ArchGraph` (define-by-run). The same definition serves three
callers:

* :meth:`SearchSpace.sample`: random sampling with a seed and no study, fast
  enough for meta-training (thousands of candidates per second);
* an :class:`optuna.trial.Trial` of a study, for the campaign;
* :meth:`SearchSpace.from_params`: a fixed dict of choices, to rebuild a
  stored candidate (through :class:`optuna.trial.FixedTrial`).

Examples:
    >>> from nas.graph import GraphBuilder
    >>> from nas.space import SearchSpace
    >>> class Tiny(SearchSpace):
    ...     def build(self, trial):
    ...         b = GraphBuilder(self.input_shape)
    ...         width = trial.suggest_categorical("width", [4, 8])
    ...         x = b.add("relu_conv_bn", b.input, out_channels=width, kernel=3)
    ...         x = b.add("global_avg_pool", x)
    ...         return b.build(b.add("linear", x, out_features=self.num_classes))
    >>> Tiny(input_shape=(1, 8, 8)).sample(seed=0).graph.num_classes
    10
"""

from __future__ import annotations

import abc
import importlib
import importlib.metadata
import importlib.util
import logging
import math
import sys
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import numpy as np
from optuna.distributions import (
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
    check_distribution_compatibility,
)
from optuna.trial import FixedTrial

from nas.exceptions import GraphError, SpaceError
from nas.graph import ArchGraph

__all__ = [
    "ENTRY_POINT_GROUP",
    "SearchSpace",
    "Candidate",
    "RandomTrial",
    "builtin_spaces",
    "load_space",
    "register_space",
]

logger = logging.getLogger(__name__)

#: Entry-point group through which installed packages add search spaces (``name = module:Class``).
ENTRY_POINT_GROUP = "nas.spaces"


class Candidate(NamedTuple):
    """A sampled architecture and the choices that produced it."""

    graph: ArchGraph
    params: dict[str, Any]


#: Types Optuna stores as categorical choices; any other choice is refused before it can reach a study.
CHOICE_TYPES = (type(None), bool, int, float, str)


class RandomTrial:
    """A minimal trial that draws every choice at random under Optuna's own law.

    It implements the part of :class:`optuna.trial.Trial` that search spaces
    use, without a study, so sampling costs microseconds. Asking the same name
    twice returns the first answer, as Optuna does. Values follow
    :class:`optuna.samplers.RandomSampler`'s distribution exactly: a ``step``
    grid ends at the last step inside ``[low, high]`` (Optuna's adjusted
    ``high``), every grid point equally likely; ``log`` integers put mass
    ``log((v + 0.5) / (v - 0.5))`` on ``v``; categorical choices are uniform.
    Arguments Optuna refuses (``step`` with ``log``, ``low > high``, a
    non-positive ``low`` with ``log``, choices other than None, bool, int,
    float and str) raise :class:`~nas.exceptions.SpaceError` here, before any
    study or one-time cost.

    Args:
        rng: A NumPy random generator or an integer seed.
        distributions: The distribution of every name asked so far, shared by
            the trials of one space: a name asked with a distribution Optuna
            would not accept after the earlier one (categorical choices that
            change with an earlier choice, a ``log`` flag that changes) raises
            :class:`~nas.exceptions.SpaceError`, as a study would refuse it.
    """

    def __init__(
        self, rng: np.random.Generator | int | None = None, *, distributions: dict[str, Any] | None = None
    ) -> None:
        self.rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
        self.params: dict[str, Any] = {}
        self.distributions = distributions if distributions is not None else {}

    def _remember(self, name: str, method: str, dist: Any) -> None:
        """Refuse a distribution that Optuna would refuse after the one ``name`` had before."""
        old = self.distributions.setdefault(name, dist)
        try:
            check_distribution_compatibility(old, dist)
        except ValueError as err:
            raise SpaceError(
                f"{method}({name!r}) is asked with {_describe(dist)} after {_describe(old)} in another candidate; "
                f"an Optuna study refuses that ({err}): give each choice list its own name."
            ) from None

    def suggest_categorical(self, name: str, choices: Sequence[Any]) -> Any:
        if name not in self.params:
            if len(choices) == 0:
                raise SpaceError(f"`choices` of {name!r} must not be empty.")
            bad = [c for c in choices if not isinstance(c, CHOICE_TYPES) and not isinstance(c, np.generic)]
            if bad:
                raise SpaceError(
                    f"suggest_categorical({name!r}): choice {bad[0]!r} is a {type(bad[0]).__name__}; Optuna stores "
                    "only None, bool, int, float and str (choose an index or a string and map it in build())."
                )
            plain = [c.item() if isinstance(c, np.generic) else c for c in choices]
            self._remember(name, "suggest_categorical", _distribution(
                name, "suggest_categorical", lambda: CategoricalDistribution(plain)))
            value = choices[int(self.rng.integers(len(choices)))]
            self.params[name] = value.item() if isinstance(value, np.generic) else value
        return self.params[name]

    def suggest_int(self, name: str, low: int, high: int, *, step: int = 1, log: bool = False) -> int:
        if name not in self.params:
            if high < low:
                raise SpaceError(f"suggest_int({name!r}): `high` {high} is below `low` {low}.")
            dist = _distribution(name, "suggest_int", lambda: IntDistribution(low, high, step=step, log=log))
            self._remember(name, "suggest_int", dist)
            if log:
                draw = self.rng.uniform(math.log(dist.low - 0.5), math.log(dist.high + 0.5))
                value = min(max(int(round(math.exp(draw))), dist.low), dist.high)
            else:
                value = dist.low + dist.step * int(self.rng.integers((dist.high - dist.low) // dist.step + 1))
            self.params[name] = int(value)
        return self.params[name]

    def suggest_float(
        self, name: str, low: float, high: float, *, step: float | None = None, log: bool = False
    ) -> float:
        if name not in self.params:
            dist = _distribution(name, "suggest_float", lambda: FloatDistribution(low, high, step=step, log=log))
            self._remember(name, "suggest_float", dist)
            if dist.low == dist.high:
                value = float(dist.low)
            elif log:
                value = float(math.exp(self.rng.uniform(math.log(dist.low), math.log(dist.high))))
            elif dist.step is not None:
                points = int(round((dist.high - dist.low) / dist.step)) + 1  # dist.high is on the grid
                value = float(dist.low + dist.step * int(self.rng.integers(points)))
            else:
                value = float(self.rng.uniform(dist.low, dist.high))
            self.params[name] = value
        return self.params[name]

    def set_user_attr(self, key: str, value: Any) -> None:
        """Ignored: random sampling has no storage."""


def _describe(dist: Any) -> str:
    if isinstance(dist, CategoricalDistribution):
        return f"choices {list(dist.choices)!r}"
    return f"range [{dist.low}, {dist.high}]" + (" (log)" if dist.log else "")


def _distribution(name: str, method: str, make: Callable[[], Any]) -> Any:
    """Optuna's distribution for a suggestion (its checks and adjusted ``high``), errors as :class:`SpaceError`."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Optuna's "high is replaced with ..." note: the law below follows it
        try:
            return make()
        except ValueError as err:
            raise SpaceError(f"{method}({name!r}): {err}") from None


class SearchSpace(abc.ABC):
    """Base class of search spaces; subclasses implement :meth:`build`.

    Args:
        input_shape: Shape ``(C, H, W)`` of one input example of the dataset.
        num_classes: Number of classes the candidates predict.
        **settings: Space-specific settings (recorded by :meth:`describe`).
    """

    #: Name used by :func:`load_space` and in checkpoints.
    name: str = "custom"

    def __init__(
        self, *, input_shape: Sequence[int] = (1, 28, 28), num_classes: int = 10, **settings: Any
    ) -> None:
        shape = tuple(int(s) for s in input_shape)
        if len(shape) != 3 or min(shape) < 1:
            raise ValueError(f"`input_shape` must be (C, H, W) of positive ints, but got {tuple(input_shape)}.")
        if num_classes < 2:
            raise ValueError(f"`num_classes` must be at least 2, but got {num_classes}.")
        self.input_shape: tuple[int, int, int] = shape  # type: ignore[assignment]
        self.num_classes = int(num_classes)
        self.settings: dict[str, Any] = dict(settings)

    @abc.abstractmethod
    def build(self, trial: Any) -> ArchGraph:
        """Ask ``trial`` for choices and return the candidate graph."""

    def size(self) -> int | None:
        """Number of distinct choice combinations, when known."""
        return None

    def describe(self) -> dict[str, Any]:
        """Plain dict naming the space, its data shape and settings (stored in checkpoints)."""
        return {
            "space": self.name,
            "input_shape": list(self.input_shape),
            "num_classes": self.num_classes,
            "settings": dict(self.settings),
        }

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.settings.items())
        return f"{type(self).__name__}({args})"

    def _build_checked(self, trial: Any) -> ArchGraph:
        try:
            graph = self.build(trial)
        except (GraphError, SpaceError):
            raise
        except Exception as err:  # a user's build() raising is a space error, named as such
            raise SpaceError(f"search space {self.name!r} build() raised {type(err).__name__}: {err}") from err
        except SystemExit as err:  # sys.exit() inside build() must not end the run as a success
            raise SpaceError(f"search space {self.name!r} build() called sys.exit({err.code!r})") from None
        if not isinstance(graph, ArchGraph):
            raise SpaceError(
                f"search space {self.name!r} build() must return an ArchGraph, but returned {type(graph).__name__}."
            )
        graph.check_size()  # before anything allocates its weights or activations
        return graph

    def sample(self, seed: int | np.random.Generator | None = None) -> Candidate:
        """Sample one candidate uniformly at random, without a study.

        Raises:
            SpaceError: ``build`` fails, returns no graph, asks a choice Optuna
                would refuse, or asks a name with choices other than those it
                had in an earlier sample of this space (see :meth:`check_choices`).
            GraphError: The candidate is invalid or too large (:meth:`ArchGraph.check_size`).
        """
        trial = RandomTrial(seed, distributions=self.__dict__.setdefault("_distributions", {}))
        graph = self._build_checked(trial)
        return Candidate(graph, dict(trial.params))

    def check_choices(self, n: int = 64, *, seed: int = 0) -> None:
        """Sample ``n`` candidates to find, before any one-time cost, what a study would refuse later.

        Catches a ``build`` that fails or returns no graph, choice values Optuna
        cannot store, too large a candidate, and a name whose choices depend on
        an earlier choice (Optuna's "dynamic value space"), which an Optuna
        study refuses only when the second list comes up. Costs ``n`` samples
        once per ``(n, seed)``: a check that passed is not repeated on this space.

        Raises:
            SpaceError: As :meth:`sample`, naming the choice and both lists.
            GraphError: A sampled candidate is invalid or too large.
        """
        passed = self.__dict__.setdefault("_choices_checked", set())  # a command and meta-training both ask
        if (n, seed) in passed:
            return
        rng = np.random.default_rng(seed)
        distributions: dict[str, Any] = {}
        for _ in range(n):
            self._build_checked(RandomTrial(rng, distributions=distributions))
        passed.add((n, seed))

    def sample_many(self, n: int, *, seed: int = 0, unique: bool = True, max_tries: int | None = None) -> list[Candidate]:
        """Sample ``n`` candidates with one seeded generator.

        Args:
            n: How many.
            seed: Seed of the generator; the same seed gives the same list.
            unique: Drop candidates whose canonical key was already drawn.
            max_tries: Give up after this many draws (default ``50 * n``).

        Raises:
            SpaceError: More distinct candidates asked for than the space has
                (at once, when :meth:`size` knows it), or fewer than ``n`` found.
        """
        return list(self.iter_samples(n, seed=seed, unique=unique, max_tries=max_tries))

    def iter_samples(
        self, n: int, *, seed: int = 0, unique: bool = True, max_tries: int | None = None
    ) -> Iterator[Candidate]:
        """:meth:`sample_many`, one candidate at a time (the same candidates, as they are drawn)."""
        if n < 0:
            raise ValueError(f"`n` must be non-negative, but got {n}.")
        size = self.size() if unique else None
        if size is not None and n > size:
            raise SpaceError(f"asked for {n} distinct candidates, but search space {self.name!r} has only {size}.")
        rng = np.random.default_rng(seed)
        seen: set[str] = set()
        found = tries = 0
        limit = max_tries if max_tries is not None else 50 * max(n, 1)
        while found < n:
            if tries >= limit:
                raise SpaceError(
                    f"search space {self.name!r} gave only {found} distinct candidates in {tries} draws; "
                    f"asked for {n}."
                )
            tries += 1
            cand = self.sample(rng)
            if unique:
                if cand.graph.key in seen:
                    continue
                seen.add(cand.graph.key)
            found += 1
            yield cand

    def params_from_encoding(self, text: str) -> dict[str, Any]:
        """The choices that a benchmark's own encoding of an architecture names (optional).

        A space whose architectures a published benchmark indexes by a string
        (NAS-Bench-201's arch strings for ``nb201``) overrides this, so tables
        keyed by that string can serve as ground truth (``nas correlate
        --ground-truth``). The default has no encoding.

        Raises:
            SpaceError: The space has no encoding, or ``text`` is not one.
        """
        raise SpaceError(f"space {self.name!r} has no architecture encoding; give the table a `graph` column "
                         "(graph JSON, as in nas correlate's candidates.csv) instead of `arch`.")

    def from_params(self, params: dict[str, Any]) -> ArchGraph:
        """Rebuild the candidate that ``params`` (a dict of choices) describes.

        Raises:
            SpaceError: A choice is missing from ``params``.
        """
        try:
            return self._build_checked(FixedTrial(dict(params)))
        except SpaceError as err:
            if isinstance(err.__cause__, ValueError) and any(
                s in str(err.__cause__) for s in ("not contained", "is not found")  # Optuna 4 / 5 wording
            ):
                raise SpaceError(f"`params` lacks a choice of space {self.name!r}: {err.__cause__}") from None
            raise


class FunctionSpace(SearchSpace):
    """A search space from a plain function ``build(trial, space) -> ArchGraph``."""

    def __init__(self, fn: Callable[..., ArchGraph], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.fn = fn
        self.name = getattr(fn, "__name__", "custom")

    def build(self, trial: Any) -> ArchGraph:
        return self.fn(trial, self)


#: Search spaces by name, filled by :func:`register_space` (the registry imports no space).
_REGISTRY: dict[str, type[SearchSpace]] = {}
_discovered = False

_S = TypeVar("_S", bound=type)


def register_space(name: str) -> Callable[[_S], _S]:
    """Class decorator: make a :class:`SearchSpace` subclass resolvable by ``name`` in :func:`load_space`.

    A package adds its spaces by decorating them and declaring each module in
    the ``nas.spaces`` entry-point group (``name = package.module:Class``), so
    that :func:`builtin_spaces` imports it.

    Args:
        name: The name (``"nb201"``).

    Raises:
        ValueError: ``name`` is empty, or registered already for another class.

    Examples:
        >>> @register_space("tiny-example")
        ... class TinyExample(SearchSpace):
        ...     def build(self, trial): ...
        >>> builtin_spaces()["tiny-example"] is TinyExample
        True
        >>> del _REGISTRY["tiny-example"]
    """
    if not isinstance(name, str) or not name.strip() or ":" in name:
        raise ValueError(f"`name` must be a non-empty name without ':', but got {name!r}.")

    def decorator(cls: _S) -> _S:
        if not (isinstance(cls, type) and issubclass(cls, SearchSpace)):
            raise ValueError(f"`register_space({name!r})` decorates a SearchSpace subclass, not {cls!r}.")
        old = _REGISTRY.get(name)
        if old is not None and (old.__module__, old.__qualname__) != (cls.__module__, cls.__qualname__):
            raise ValueError(
                f"search space name {name!r} is registered already, by {old.__module__}.{old.__qualname__}."
            )
        _REGISTRY[name] = cls
        return cls

    return decorator


def _discover() -> None:
    """Import the spaces declared in the ``nas.spaces`` entry points, once (their modules register them).

    From a source tree whose package is not installed (no entry points of
    ``search_spaces``), the built-in ``search_spaces`` package is imported instead.
    """
    global _discovered
    if _discovered:
        return
    _discovered = True
    points = list(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP))
    for point in points:
        try:
            cls = point.load()
        except Exception as err:  # a broken plug-in must not break the built-in spaces
            logger.warning("search space %r (%s) cannot be imported: %s", point.name, point.value, err)
            continue
        if point.name not in _REGISTRY and isinstance(cls, type) and issubclass(cls, SearchSpace):
            _REGISTRY[point.name] = cls
    if not any(point.value.startswith("search_spaces") for point in points):
        importlib.import_module("search_spaces")


def builtin_spaces() -> dict[str, type[SearchSpace]]:
    """The registered search spaces by name, sorted: the built-in ones and those of installed plug-ins."""
    _discover()
    return dict(sorted(_REGISTRY.items()))


def _import_attr(spec: str) -> Any:
    target, _, attr = spec.rpartition(":")
    if not target or not attr:
        raise SpaceError(f"space {spec!r} must be a built-in name, 'module:attr' or 'path/to/file.py:attr'.")
    if target.endswith(".py") or "/" in target or "\\" in target:
        path = Path(target)
        if not path.is_file():
            raise SpaceError(f"space file {str(path)!r} does not exist.")
        mod_name = f"_nas_user_space_{abs(hash(str(path.resolve())))}"
        if mod_name in sys.modules:
            module = sys.modules[mod_name]
        else:
            module_spec = importlib.util.spec_from_file_location(mod_name, path)
            if module_spec is None or module_spec.loader is None:
                raise SpaceError(f"space file {str(path)!r} cannot be imported as Python.")
            module = importlib.util.module_from_spec(module_spec)
            sys.modules[mod_name] = module
            try:
                module_spec.loader.exec_module(module)
            except Exception as err:
                del sys.modules[mod_name]
                raise SpaceError(f"importing space file {str(path)!r} raised {type(err).__name__}: {err}") from err
            except SystemExit as err:  # a script's sys.exit() at import must not end the run as a success
                del sys.modules[mod_name]
                raise SpaceError(f"importing space file {str(path)!r} called sys.exit({err.code!r})") from None
    else:
        try:
            module = importlib.import_module(target)
        except ImportError as err:
            raise SpaceError(f"space module {target!r} cannot be imported: {err}") from err
    if not hasattr(module, attr):
        raise SpaceError(f"space {target!r} has no attribute {attr!r}.")
    return getattr(module, attr)


def load_space(
    spec: str | SearchSpace | type[SearchSpace],
    *,
    input_shape: Sequence[int] | None = None,
    num_classes: int | None = None,
    **settings: Any,
) -> SearchSpace:
    """Resolve a search space from a name, an import path, a class or an instance.

    Args:
        spec: A built-in name (``"nb201"``), ``"module:attr"``,
            ``"path/to/file.py:attr"``, a :class:`SearchSpace` subclass or an instance.
            ``attr`` may name a subclass, an instance or a function
            ``build(trial, space)``.
        input_shape: Data shape ``(C, H, W)``; defaults to the space's own default.
        num_classes: Number of classes; defaults to the space's own default.
        **settings: Space settings passed to the class (e.g. ``C=16, N=5``).

    Raises:
        SpaceError: Unknown name (the message lists the built-ins), a missing
            file or attribute, or an object that is not a space.
    """
    kwargs: dict[str, Any] = dict(settings)
    if input_shape is not None:
        kwargs["input_shape"] = tuple(input_shape)
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    obj: Any = spec
    if isinstance(spec, str):
        builtins = builtin_spaces()
        if spec in builtins:
            obj = builtins[spec]
        elif ":" in spec:
            obj = _import_attr(spec)
        else:
            raise SpaceError(
                f"unknown search space {spec!r}; built-in spaces: {', '.join(sorted(builtins))} "
                "(or give 'module:attr' / 'path/to/file.py:attr')."
            )
    if isinstance(obj, SearchSpace):
        if input_shape is not None:
            obj.input_shape = tuple(int(s) for s in input_shape)  # type: ignore[assignment]
        if num_classes is not None:
            obj.num_classes = int(num_classes)
        return obj
    if isinstance(obj, type) and issubclass(obj, SearchSpace):
        try:
            return obj(**kwargs)
        except TypeError as err:
            raise SpaceError(f"search space {obj.__name__} rejects its settings: {err}") from err
    if callable(obj):
        return FunctionSpace(obj, **kwargs)
    raise SpaceError(f"space {spec!r} is a {type(obj).__name__}, not a SearchSpace subclass, instance or function.")
