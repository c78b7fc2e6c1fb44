"""Every built-in search space (and the example user space) passes the conformance checks."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

from conftest import ROOT
from nas.exceptions import SpaceError
from nas.network import Network
from nas.space import SearchSpace, load_space
from nas.testing import CHECKS, SpaceConformance, check_space
from search_spaces import (
    BUILTIN_SPACES,
    DARTS_OPS,
    MACRO_CHOICES,
    NB201_OPS,
    DARTSSpace,
    MacroSpace,
    NB201Space,
    arch_string,
    params_from_arch_string,
)

DIGITS, MNIST, CIFAR = (1, 8, 8), (1, 28, 28), (3, 32, 32)
MY_SPACE = f"{ROOT / 'examples' / 'my_space.py'}:MySpace"


@pytest.mark.parametrize("shape", [DIGITS, MNIST], ids=["digits", "mnist"])
@pytest.mark.parametrize("name", sorted(BUILTIN_SPACES))
def test_builtin_space_conformance(name: str, shape: tuple[int, int, int]) -> None:
    check_space(BUILTIN_SPACES[name](input_shape=shape, num_classes=10), n=4, seed=0)


@pytest.mark.parametrize("name", sorted(BUILTIN_SPACES))
def test_builtin_space_runs_on_cifar_shape_with_other_classes(name: str) -> None:
    space = BUILTIN_SPACES[name](input_shape=CIFAR, num_classes=7)
    graph = space.sample(1).graph
    assert graph.input_shape == CIFAR and graph.num_classes == 7
    assert tuple(Network(graph)(torch.randn(2, *CIFAR)).shape) == (2, 7)


@pytest.mark.parametrize("name", sorted(BUILTIN_SPACES))
def test_builtin_space_class_is_documented(name: str) -> None:
    cls = BUILTIN_SPACES[name]
    assert cls.name == name
    assert cls.__doc__ and ("ICLR" in cls.__doc__ or "CVPR" in cls.__doc__ or "MobileNet" in cls.__doc__)
    space = cls()
    assert space.describe()["settings"] == space.settings and space.settings  # settings are recorded
    assert isinstance(space.size(), int) and space.size() > 1


@pytest.mark.parametrize("name", sorted(BUILTIN_SPACES))
def test_spatial_size_never_drops_below_one(name: str) -> None:
    """Even deep settings on 8x8 digits keep every feature map at least 1x1."""
    deep = {"nb201": {"N": 1}, "darts": {"layers": 8}, "macro": {"stages": 5}}[name]
    space = BUILTIN_SPACES[name](input_shape=DIGITS, **deep)
    for seed in range(3):
        g = space.sample(seed).graph
        assert min(s[1] for s in g.shapes if len(s) == 3) >= 1
        assert torch.isfinite(Network(g).eval()(torch.randn(1, *DIGITS))).all()


class TestMySpaceConformance(SpaceConformance):
    """The example user space, loaded from its file, through the pytest base class."""

    n = 6

    @pytest.fixture
    def space(self) -> SearchSpace:
        return load_space(MY_SPACE, input_shape=DIGITS, num_classes=10)


#: The user-style spaces of ``examples/`` that the ranking suite evaluates (``experiments/suite.py``).
SUITE_EXAMPLES = ["branch_space.py:BranchSpace", "mobile_space.py:MobileSpace", "resnet_space.py:ResNetSpace",
                  "inception_space.py:InceptionSpace", "dense_space.py:DenseSpace"]


@pytest.mark.parametrize("shape", [DIGITS, MNIST], ids=["digits", "mnist"])
@pytest.mark.parametrize("spec", SUITE_EXAMPLES)
def test_example_spaces_of_the_suite_pass_the_conformance_checks(spec: str, shape: tuple[int, int, int]) -> None:
    space = load_space(f"{ROOT / 'examples' / spec}", input_shape=shape, num_classes=10)
    check_space(space, n=4, seed=0)
    keys = {c.graph.key for c in space.sample_many(20, seed=0, unique=False)}
    assert len(keys) >= 15  # the choices really change the architecture


def test_conformance_class_has_one_test_per_check() -> None:
    tests = {name[len("test_") :] for name in dir(SpaceConformance) if name.startswith("test_")}
    assert tests == set(CHECKS)


def test_conformance_catches_a_nondeterministic_space() -> None:
    class Flaky(NB201Space):
        calls = 0

        def build(self, trial: Any):  # noqa: ANN202
            Flaky.calls += 1
            params = {f"edge_{i}_{j}": NB201_OPS[(Flaky.calls + i + j) % 5] for i in range(1, 4) for j in range(i)}
            return super().build(_Fixed(params))

    with pytest.raises(AssertionError, match="fails conformance check 'deterministic'"):
        check_space(Flaky(input_shape=DIGITS), n=2)


def test_conformance_catches_wrong_class_count() -> None:
    class Wrong(NB201Space):
        def build(self, trial: Any):  # noqa: ANN202
            self.num_classes, real = 3, self.num_classes
            try:
                return super().build(trial)
            finally:
                self.num_classes = real

    with pytest.raises(AssertionError, match="fails conformance check 'samples_valid'.*3 logits"):
        check_space(Wrong(input_shape=DIGITS), n=1)


class _Fixed:
    def __init__(self, params: dict[str, Any]) -> None:
        self.params = params

    def suggest_categorical(self, name: str, choices: Any) -> Any:
        return self.params[name]


# --------------------------------------------------------------------------- NAS-Bench-201


def _nb201(**ops: str) -> dict[str, str]:
    params = {f"edge_{i}_{j}": "nor_conv_3x3" for i in range(1, 4) for j in range(i)}
    params.update(ops)
    return params


def test_nb201_size_and_choices() -> None:
    space = NB201Space()
    assert space.size() == 15625 == len(NB201_OPS) ** 6
    params = space.sample(0).params
    assert sorted(params) == ["edge_1_0", "edge_2_0", "edge_2_1", "edge_3_0", "edge_3_1", "edge_3_2"]
    assert set(params.values()) <= set(NB201_OPS)


def test_nb201_all_conv_cell_op_counts() -> None:
    for n in (1, 2):
        g = NB201Space(input_shape=DIGITS, N=n).from_params(_nb201())
        counts = g.op_counts()
        assert counts["relu_conv_bn"] == 6 * 3 * n + 2 * 2  # 6 edges per cell + 2 per reduction block
        assert counts["sum"] == 2 * 3 * n + 2  # nodes 2 and 3 of each cell + each reduction block
        assert counts["zero"] == 0


def test_nb201_channels_follow_c() -> None:
    g = NB201Space(input_shape=DIGITS, C=6).from_params(_nb201())
    channels = sorted({g.shapes[i][0] for i, nd in enumerate(g.nodes) if nd.op == "relu_conv_bn"})
    assert channels == [6, 12, 24]
    assert g.shapes[g.output_index - 2] == (24,)  # global pool of the 4C stage


def test_nb201_all_none_cell_runs_and_outputs_a_constant() -> None:
    space = NB201Space(input_shape=DIGITS)
    params = {k: "none" for k in _nb201()}
    g = space.from_params(params)
    assert g.op_counts()["zero"] == 3  # one per cell
    torch.manual_seed(0)
    net = Network(g).eval()
    x = torch.randn(2, *DIGITS)
    with torch.no_grad():
        y = net(x)
    assert torch.isfinite(y).all()
    linear = net.ops[g.module_name(g.nodes[g.output_index].inputs[0])]
    assert torch.allclose(y, linear.bias.expand(2, -1))  # the input cannot reach the logits


def test_nb201_node_without_inputs_is_dropped() -> None:
    # node 1 is zero (its only edge is none): edges 2<-1 and 3<-1 vanish with it.
    g = NB201Space(input_shape=DIGITS).from_params(_nb201(edge_1_0="none"))
    assert g.op_counts()["zero"] == 0
    assert g.op_counts()["relu_conv_bn"] == 3 * 3 + 4  # edges 2<-0, 3<-0, 3<-2 per cell
    assert g.op_counts()["sum"] == 1 * 3 + 2  # only node 3 sums (two inputs)


def test_nb201_cell_cut_from_its_input_emits_zero() -> None:
    params = {k: "none" for k in _nb201()}
    params.update(edge_3_1="nor_conv_3x3", edge_2_0="skip_connect")  # node 1 is zero, node 3 reads only it
    g = NB201Space(input_shape=DIGITS).from_params(params)
    assert g.op_counts()["zero"] == 3
    assert g.op_counts()["identity"] == 0  # node 2 does not reach the cell output


def test_nb201_arch_string() -> None:
    params = _nb201(edge_1_0="skip_connect", edge_2_1="none", edge_3_2="avg_pool_3x3")
    text = arch_string(params)
    assert text == (
        "|skip_connect~0|+|nor_conv_3x3~0|none~1|+|nor_conv_3x3~0|nor_conv_3x3~1|avg_pool_3x3~2|"
    )
    assert params_from_arch_string(text) == params
    cand = NB201Space().sample(5)
    assert NB201Space.arch_string(cand) == arch_string(cand.params)
    assert params_from_arch_string(arch_string(cand)) == cand.params


@pytest.mark.parametrize(
    "text",
    [
        "|none~0|+|none~0|none~1|",  # two nodes
        "|none~0|+|none~0|+|none~0|none~1|none~2|",  # node 2 lists one edge
        "|conv~0|+|none~0|none~1|+|none~0|none~1|none~2|",  # unknown op
        "|none~1|+|none~0|none~1|+|none~0|none~1|none~2|",  # wrong source
    ],
)
def test_nb201_bad_arch_string(text: str) -> None:
    with pytest.raises(SpaceError, match="NAS-Bench-201 arch string"):
        params_from_arch_string(text)


def test_nb201_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="`N` must be a positive int, but got 0"):
        NB201Space(N=0)


def test_nb201_samples_are_diverse() -> None:
    space = NB201Space(input_shape=DIGITS)
    strings = {arch_string(space.sample(s)) for s in range(200)}
    assert len(strings) > 190  # 15,625 cells: collisions in 200 draws are rare


# --------------------------------------------------------------------------- DARTS and macro


def test_darts_genotype_and_reductions() -> None:
    space = DARTSSpace(input_shape=DIGITS)
    assert space.reduction_layers() == [1]
    assert DARTSSpace(layers=8).reduction_layers() == [2, 5]  # as in DARTS
    cand = space.sample(0)
    geno = space.genotype(_Fixed(cand.params))
    for cell in ("normal", "reduce"):
        edges = geno[cell]
        assert len(edges) == 8
        for k in range(4):
            (op_a, a), (op_b, b) = edges[2 * k : 2 * k + 2]
            assert a < b <= k + 1  # two distinct earlier nodes
            assert op_a in DARTS_OPS and op_b in DARTS_OPS
    assert "none" not in DARTS_OPS and len(DARTS_OPS) == 7
    g = cand.graph
    assert g.op_counts()["concat"] == 3  # one per cell
    channels = [g.shapes[i][0] for i, nd in enumerate(g.nodes) if nd.op == "concat"]
    assert channels == [4 * 8, 4 * 16, 4 * 16]  # 4 nodes of C channels; C doubles at the reduction


def test_darts_reduction_halves_the_map() -> None:
    g = DARTSSpace(input_shape=DIGITS).sample(2).graph
    sizes = [g.shapes[i][1:] for i, nd in enumerate(g.nodes) if nd.op == "concat"]
    assert sizes == [(8, 8), (4, 4), (4, 4)]


def test_macro_choices_shape_the_network() -> None:
    space = MacroSpace(input_shape=MNIST)
    params = {f"stage{s}_{k}": v[0] for s in range(3) for k, v in MACRO_CHOICES.items()}
    params.update({"stage1_depth": 3, "stage1_skip": True, "stage2_width": 1.5, "stage2_expand": 6})
    g = space.from_params(params)
    assert g.op_counts()["sum"] == 2  # blocks 2 and 3 of stage 1 (block 1 changes shape)
    assert g.shapes[g.output_index - 2] == (48,)  # 1.5 * 8 * 4 channels
    assert min(s[1] for s in g.shapes if len(s) == 3) == 7  # 28 -> 14 -> 7
    no_skip = space.from_params({**params, "stage1_skip": False})
    assert no_skip.op_counts()["sum"] == 0
    assert space.size() == math.prod(len(v) for v in MACRO_CHOICES.values()) ** 3
