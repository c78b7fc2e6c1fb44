"""Conformance checks every search space must pass.

A search space is one :meth:`~nas.space.SearchSpace.build` method, called by
three different callers (random sampling, an Optuna study, a fixed dict of
choices). These checks make sure the three agree and that what comes out is a
graph the rest of the package can use: valid, serialisable, compilable to a
:class:`~nas.network.Network` that runs, and convertible to PyG.

Run them on your own space in two ways.

One call, anywhere (a notebook, a script, a test)::

    from nas.testing import check_space
    from my_package import MySpace

    check_space(MySpace(input_shape=(1, 8, 8)))   # raises AssertionError on a failure

Or as separate pytest tests, by subclassing :class:`SpaceConformance` in a
``test_*.py`` file and overriding its ``space`` fixture::

    import pytest
    from nas.testing import SpaceConformance
    from my_package import MySpace

    class TestMySpace(SpaceConformance):
        @pytest.fixture
        def space(self):
            return MySpace(input_shape=(1, 8, 8), num_classes=10)

pytest then collects one ``test_*`` per check below, each naming what failed.
"""

from __future__ import annotations

import json
import logging
import math
import optuna
import pytest
import torch

from nas.graph import ArchGraph
from nas.network import Network
from nas.space import Candidate, SearchSpace

__all__ = [
    "CHECKS",
    "SpaceConformance",
    "check_choices",
    "check_deterministic",
    "check_forward",
    "check_json_round_trip",
    "check_from_params",
    "check_optuna_trial",
    "check_param_specs",
    "check_pyg",
    "check_samples_valid",
    "check_space",
]

logger = logging.getLogger(__name__)


def _expect(condition: bool, message: str) -> None:
    # Not `assert`: `python -O` would strip it and every check would pass.
    if not condition:
        raise AssertionError(message)


def _samples(space: SearchSpace, n: int, seed: int) -> list[Candidate]:
    return [space.sample(seed + i) for i in range(n)]


def check_samples_valid(space: SearchSpace, *, n: int = 8, seed: int = 0) -> None:
    """Samples are :class:`ArchGraph` objects of the space's data shape and classes.

    Raises:
        AssertionError: A sample is not a graph, or has the wrong input shape,
            number of classes, or choices that are not a JSON-able dict.
    """
    for cand in _samples(space, n, seed):
        _expect(isinstance(cand, Candidate), f"sample() returned {type(cand).__name__}, not a Candidate.")
        _expect(isinstance(cand.graph, ArchGraph), f"sample() graph is {type(cand.graph).__name__}.")
        _expect(
            cand.graph.input_shape == tuple(space.input_shape),
            f"graph input_shape {cand.graph.input_shape} != space input_shape {tuple(space.input_shape)}.",
        )
        _expect(
            cand.graph.num_classes == space.num_classes,
            f"graph has {cand.graph.num_classes} logits, space num_classes is {space.num_classes}.",
        )
        _expect(
            isinstance(cand.params, dict),
            f"sample() params is {type(cand.params).__name__}, not a dict.",
        )
        json.dumps(cand.params)  # choices are stored in studies and JSON lines


def check_deterministic(space: SearchSpace, *, n: int = 8, seed: int = 0) -> None:
    """The same seed gives the same candidates, for :meth:`sample` and :meth:`sample_many`.

    Raises:
        AssertionError: Two draws with one seed differ.
    """
    first = [c.graph.key for c in _samples(space, n, seed)]
    again = [c.graph.key for c in _samples(space, n, seed)]
    _expect(first == again, "sample(seed) is not deterministic: the same seeds gave different graphs.")
    params = [c.params for c in _samples(space, n, seed)]
    _expect(
        params == [c.params for c in _samples(space, n, seed)],
        "sample(seed) choices are not deterministic.",
    )
    many = [c.graph.key for c in space.sample_many(n, seed=seed, unique=False)]
    _expect(
        many == [c.graph.key for c in space.sample_many(n, seed=seed, unique=False)],
        "sample_many(n, seed=...) is not deterministic.",
    )


def check_json_round_trip(space: SearchSpace, *, n: int = 8, seed: int = 0) -> None:
    """``ArchGraph.from_json(graph.to_json())`` gives back the same key.

    Raises:
        AssertionError: The round trip changes a graph.
    """
    for cand in _samples(space, n, seed):
        back = ArchGraph.from_json(cand.graph.to_json())
        _expect(back.key == cand.graph.key, "JSON round trip changed the graph's key.")
        _expect(back.to_dict() == cand.graph.to_dict(), "JSON round trip changed the graph's dict.")


def check_from_params(space: SearchSpace, *, n: int = 8, seed: int = 0) -> None:
    """``space.from_params(candidate.params)`` rebuilds the same graph (the fixed-dict path).

    Raises:
        AssertionError: The rebuilt graph differs.
    """
    for cand in _samples(space, n, seed):
        rebuilt = space.from_params(cand.params)
        _expect(
            rebuilt.key == cand.graph.key,
            f"from_params(params) built a different graph than sample() for params {cand.params}.",
        )


def check_optuna_trial(space: SearchSpace, *, n: int = 8, seed: int = 0) -> None:
    """A trial of a real Optuna study drives ``build``, and its ``params`` rebuild the graph.

    Raises:
        AssertionError: ``build(trial)`` does not return a graph, or
            ``from_params(trial.params)`` builds a different one.
    """
    sampler = optuna.samplers.RandomSampler(seed=seed)
    study = optuna.create_study(sampler=sampler)
    for _ in range(min(n, 4)):
        trial = study.ask()
        graph = space.build(trial)
        _expect(
            isinstance(graph, ArchGraph),
            f"build(trial) returned {type(graph).__name__}, not an ArchGraph.",
        )
        rebuilt = space.from_params(trial.params)
        _expect(
            rebuilt.key == graph.key,
            f"from_params(trial.params) built a different graph than build(trial) for {trial.params}.",
        )
        study.tell(trial, 0.0)


def check_forward(space: SearchSpace, *, n: int = 8, seed: int = 0) -> None:
    """``Network(graph)`` maps a batch of 2 to finite logits ``(2, num_classes)``, in train and eval mode.

    Raises:
        AssertionError: A forward pass fails, has the wrong shape or is not finite.
    """
    gen = torch.Generator().manual_seed(seed)
    for cand in _samples(space, min(n, 4), seed):
        torch.manual_seed(seed)
        net = Network(cand.graph)
        x = torch.randn(2, *space.input_shape, generator=gen)
        for train in (True, False):
            net.train(train)
            with torch.no_grad():
                y = net(x)
            _expect(
                tuple(y.shape) == (2, space.num_classes),
                f"logits have shape {tuple(y.shape)}, expected (2, {space.num_classes}).",
            )
            _expect(bool(torch.isfinite(y).all()), f"logits are not finite ({'train' if train else 'eval'} mode).")


def check_pyg(space: SearchSpace, *, n: int = 8, seed: int = 0) -> None:
    """``nas.ghn.to_pyg(graph)`` has one PyG node per graph node and one edge per node input.

    Raises:
        AssertionError: The counts differ.
    """
    from nas.ghn import to_pyg

    for cand in _samples(space, n, seed):
        g = cand.graph
        data = to_pyg(g)
        _expect(data.num_nodes == len(g), f"to_pyg() has {data.num_nodes} nodes, the graph {len(g)}.")
        edges = sum(len(node.inputs) for node in g.nodes)
        _expect(
            data.edge_index.shape == (2, edges),
            f"to_pyg() edge_index has shape {tuple(data.edge_index.shape)}, expected (2, {edges}).",
        )


def check_param_specs(space: SearchSpace, *, n: int = 8, seed: int = 0) -> None:
    """``Network(graph)``'s parameters are exactly ``graph.param_specs``, name for name, shape for shape.

    Raises:
        AssertionError: A name or shape differs, or ``num_params()`` disagrees.
    """
    for cand in _samples(space, min(n, 4), seed):
        g = cand.graph
        net = Network(g)
        got = {name: tuple(p.shape) for name, p in net.named_parameters()}
        want = {name: tuple(spec.shape) for name, (_, spec) in g.param_specs.items()}
        _expect(
            got == want,
            f"Network parameters differ from graph.param_specs: {sorted(set(got) ^ set(want))}.",
        )
        _expect(
            g.num_params() == sum(math.prod(s) for s in got.values()),
            "graph.num_params() != Network's count.",
        )


def check_choices(space: SearchSpace, *, n: int = 8, seed: int = 0) -> None:
    """What an Optuna study would refuse later is refused now (:meth:`SearchSpace.check_choices`, 64 samples).

    Catches choice values Optuna cannot store (tuples, lists, objects), a name
    whose choice list depends on an earlier choice (a dynamic value space), a
    ``log`` flag that changes, and candidates too large to allocate. ``n`` is
    not used: the check always draws 64 candidates, which cost milliseconds.

    Raises:
        AssertionError: The space would fail in a campaign; the message names the choice.
    """
    from nas.exceptions import GraphError, SpaceError

    try:
        space.check_choices(seed=seed)
    except (SpaceError, GraphError) as err:
        raise AssertionError(str(err)) from None


#: Every check, by the name of its pytest test.
CHECKS = {
    "choices": check_choices,
    "samples_valid": check_samples_valid,
    "deterministic": check_deterministic,
    "json_round_trip": check_json_round_trip,
    "from_params": check_from_params,
    "optuna_trial": check_optuna_trial,
    "forward": check_forward,
    "pyg": check_pyg,
    "param_specs": check_param_specs,
}


def check_space(space: SearchSpace, *, n: int = 8, seed: int = 0) -> None:
    """Run every conformance check on ``space``.

    Args:
        space: The space to check, configured with the data shape it will see.
        n: Candidates drawn per check (the slower checks use at most 4).
        seed: First seed; candidates use seeds ``seed .. seed + n - 1``.

    Raises:
        AssertionError: A check fails; the message names the check and the problem.

    Examples:
        >>> from search_spaces import NB201Space
        >>> check_space(NB201Space(input_shape=(1, 8, 8)), n=2)
    """
    if n < 1:
        raise ValueError(f"`n` must be positive, but got {n}.")
    for name, check in CHECKS.items():
        try:
            check(space, n=n, seed=seed)
        except AssertionError as err:
            raise AssertionError(f"space {space!r} fails conformance check {name!r}: {err}") from err
        logger.debug("space %r passes %s", space, name)


class SpaceConformance:
    """Pytest base class: one test per conformance check on the ``space`` fixture.

    Subclass it in a test module (named ``Test...``) and override ``space``;
    set ``n`` or ``seed`` as class attributes to draw more or other candidates.
    See the module docstring for an example.
    """

    n: int = 8
    seed: int = 0

    @pytest.fixture
    def space(self) -> SearchSpace:
        """The space under test; override in a subclass."""
        raise NotImplementedError("override the `space` fixture of SpaceConformance with your search space.")

    def test_choices(self, space: SearchSpace) -> None:
        check_choices(space, n=self.n, seed=self.seed)

    def test_samples_valid(self, space: SearchSpace) -> None:
        check_samples_valid(space, n=self.n, seed=self.seed)

    def test_deterministic(self, space: SearchSpace) -> None:
        check_deterministic(space, n=self.n, seed=self.seed)

    def test_json_round_trip(self, space: SearchSpace) -> None:
        check_json_round_trip(space, n=self.n, seed=self.seed)

    def test_from_params(self, space: SearchSpace) -> None:
        check_from_params(space, n=self.n, seed=self.seed)

    def test_optuna_trial(self, space: SearchSpace) -> None:
        check_optuna_trial(space, n=self.n, seed=self.seed)

    def test_forward(self, space: SearchSpace) -> None:
        check_forward(space, n=self.n, seed=self.seed)

    def test_pyg(self, space: SearchSpace) -> None:
        check_pyg(space, n=self.n, seed=self.seed)

    def test_param_specs(self, space: SearchSpace) -> None:
        check_param_specs(space, n=self.n, seed=self.seed)
