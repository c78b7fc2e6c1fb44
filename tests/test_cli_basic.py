"""The basic subcommands, run in-process through ``nas.cli.main``."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from conftest import ROOT, run_cli
from nas.cli import main
from nas.cli.options import parse_space_args
from nas.graph import ArchGraph
from search_spaces import BUILTIN_SPACES, NB201Space

MY_SPACE = f"{ROOT / 'examples' / 'my_space.py'}:MySpace"


_run = run_cli


def _lines(out: str) -> list[dict]:
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def test_spaces_lists_every_builtin(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(capsys, "spaces")
    assert code == 0
    header, *rows = out.strip().splitlines()
    assert header.split() == ["name", "size", "description", "settings"]
    assert [r.split()[0] for r in rows] == list(BUILTIN_SPACES)
    nb201 = rows[list(BUILTIN_SPACES).index("nb201")]
    assert "15,625" in nb201 and "C=8, N=1" in nb201 and "NAS-Bench-201" in nb201


def test_sample_prints_json_lines(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(capsys, "sample", "--space", "nb201", "-n", "4", "--seed", "3")
    assert code == 0
    lines = _lines(out)
    assert len(lines) == 4
    assert len({d["key"] for d in lines}) == 4
    space = NB201Space()
    for d in lines:
        assert set(d) == {"key", "choices", "graph"}
        graph = ArchGraph.from_dict(d["graph"])
        assert graph.key == d["key"]
        assert space.from_params(d["choices"]).key == d["key"]
    assert lines[0]["key"] == space.sample(3).graph.key  # the first line is sample(seed)


def test_sample_is_deterministic_and_seeded(capsys: pytest.CaptureFixture[str]) -> None:
    keys = []
    for seed in ("0", "0", "1"):
        _, out, _ = _run(capsys, "sample", "--space", "macro", "-n", "3", "--seed", seed)
        keys.append([d["key"] for d in _lines(out)])
    assert keys[0] == keys[1]
    assert keys[0] != keys[2]


def test_sample_for_a_dataset_and_with_settings(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(
        capsys, "sample", "--space", "nb201", "--dataset", "digits", "--space-arg", "C=4", "--space-arg", "N=2"
    )
    assert code == 0
    (line,) = _lines(out)
    graph = ArchGraph.from_dict(line["graph"])
    assert graph.input_shape == (1, 8, 8)
    assert graph.nodes[1].attrs["out_channels"] == 4
    assert graph == NB201Space(input_shape=(1, 8, 8), C=4, N=2).sample(0).graph


def test_sample_user_space_file(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(capsys, "sample", "--space", MY_SPACE, "-n", "2", "--space-arg", "max_depth=1")
    assert code == 0
    lines = _lines(out)
    assert len(lines) == 2 and all(d["choices"]["depth"] == 1 for d in lines)


@pytest.mark.parametrize("suffix", [".png", ".pdf"])
def test_draw_writes_a_file(capsys: pytest.CaptureFixture[str], tmp_path: Path, suffix: str) -> None:
    out_file = tmp_path / f"cell{suffix}"
    code, out, _ = _run(capsys, "draw", "--space", "nb201", "--seed", "2", "--out", str(out_file), "--dataset", "digits")
    assert code == 0
    magic = {".png": b"\x89PNG", ".pdf": b"%PDF"}[suffix]
    assert out_file.read_bytes()[:4] == magic
    assert str(out_file) in out


def test_draw_user_space(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    out_file = tmp_path / "mine.png"
    assert _run(capsys, "draw", "--space", MY_SPACE, "--out", str(out_file))[0] == 0
    assert out_file.stat().st_size > 1000


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("missing/cell.png", "output folder '{tmp}/missing' does not exist"),
        ("cell.jpg", "`--out` must end in .png or .pdf, but got '{tmp}/cell.jpg'"),
    ],
)
def test_draw_refuses_bad_outputs(capsys: pytest.CaptureFixture[str], tmp_path: Path, name: str, message: str) -> None:
    code, _, err = _run(capsys, "draw", "--out", str(tmp_path / name))
    assert code == 2
    assert err.strip() == f"nas draw: error: {message.format(tmp=tmp_path)}" + (
        "; create it first." if "folder" in message else "."
    )
    assert not (tmp_path / "missing").exists()


def test_train_json_on_digits(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(
        capsys, "train", "--space", "nb201", "--dataset", "digits", "--epochs", "1", "--max-train", "256",
        "--batch-size", "32", "--space-arg", "C=4", "--threads", "1", "--json",
    )  # fmt: skip
    assert code == 0
    report = json.loads(out)
    graph = NB201Space(input_shape=(1, 8, 8), C=4).sample(0).graph
    assert report["key"] == graph.key
    assert report["num_params"] == graph.num_params()
    assert report["flops"] == graph.flops() > 0
    assert report["steps"] == 256 // 32
    assert 0.0 <= report["val_acc"] <= 1.0 and 0.0 <= report["test_acc"] <= 1.0
    assert report["failed"] is False
    assert report["choices"] == NB201Space().sample(0).params


def test_train_table_for_user_space(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(
        capsys, "train", "--space", MY_SPACE, "--dataset", "digits", "--epochs", "1", "--max-train", "128",
        "--space-arg", "max_depth=1",
    )  # fmt: skip
    assert code == 0
    rows = dict(line.split(None, 1) for line in out.strip().splitlines())
    assert rows["space"] == "my_space" and rows["dataset"] == "digits"
    assert {"num_params", "flops", "val_acc", "test_acc", "wall_time"} <= set(rows)
    assert 0.0 <= float(rows["val_acc"]) <= 1.0


def test_train_arch_from_a_campaigns_best_json_and_save(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    import torch

    from nas.network import Network

    graph = NB201Space(input_shape=(1, 8, 8), C=4).sample(3).graph
    best = tmp_path / "best.json"
    best.write_text(json.dumps({"key": graph.key, "graph": graph.to_dict(), "metrics": {"val_acc": 0.5}}))
    weights = tmp_path / "scratch.pt"
    code, out, _ = _run(
        capsys, "train", "--arch", str(best), "--dataset", "digits", "--epochs", "1", "--max-train", "256",
        "--batch-size", "32", "--threads", "1", "--json", "--save", str(weights),
    )  # fmt: skip
    assert code == 0
    report = json.loads(out)
    assert report["key"] == graph.key and report["space"] == str(best) and report["choices"] is None
    assert report["steps"] == 256 // 32
    state = torch.load(weights, weights_only=True)
    net = Network(graph)
    net.load_state_dict(state)  # every tensor of this architecture, nothing else
    # A plain graph JSON (ArchGraph.to_json) trains the same architecture.
    plain = tmp_path / "graph.json"
    plain.write_text(graph.to_json())
    code, out, _ = _run(capsys, "train", "--arch", str(plain), "--dataset", "digits", "--epochs", "0.1",
                        "--threads", "1", "--json")
    assert code == 0 and json.loads(out)["key"] == graph.key


@pytest.mark.parametrize(
    ("content", "extra", "needle"),
    [
        (None, [], "`--arch`: no such file"),
        ("{not json", [], "is not JSON"),
        ('{"metrics": {}}', [], 'holds no architecture (a graph, or an object with a "graph" entry)'),
        ("graph28", [], "takes inputs (1, 28, 28) with 10 classes, but dataset 'digits' has (1, 8, 8)"),
        ("graph8", ["--save", "weights.txt"], "`--save` must end in .pt, but got"),
    ],
)
def test_train_arch_bad_input_is_one_line_exit_2(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, content: str | None, extra: list[str], needle: str
) -> None:
    path = tmp_path / "arch.json"
    if content == "graph28":
        content = NB201Space().sample(0).graph.to_json()
    elif content == "graph8":
        content = NB201Space(input_shape=(1, 8, 8), C=4).sample(0).graph.to_json()
    if content is not None:
        path.write_text(content)
    extra = [str(tmp_path / e) if e.endswith(".txt") else e for e in extra]
    code, out, err = _run(capsys, "train", "--arch", str(path), "--dataset", "digits", "--epochs", "0.1", *extra)
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and err.startswith("nas train: error: ")
    assert needle in err, err
    assert not list(tmp_path.glob("*.pt"))


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["sample", "--space", "nb2001"], "unknown search space 'nb2001'; built-in spaces: darts, macro, nb201"),
        (["train", "--space", "resnet", "--dataset", "digits"], "built-in spaces: darts, macro, nb201"),
        (["draw", "--space", "nope", "--out", "x.png"], "built-in spaces: darts, macro, nb201"),
        (["sample", "--space-arg", "C"], "`--space-arg` must be KEY=VALUE with KEY a name, but got 'C'"),
        (["sample", "--space-arg", "depth=2"], "NB201Space rejects its settings"),
        (["sample", "--space", "no/file.py:Space"], "space file 'no/file.py' does not exist"),
        (["sample", "-n", "0"], "`-n` must be positive, but got 0"),
        (["sample", "--dataset", "imagenet"], "unknown dataset 'imagenet'"),
        (["train", "--dataset", "digits", "--threads", "-1"], "argument --threads: must be 0 (torch's choice) or 1 to 1024, but got '-1'"),
        (["train", "--dataset", "digits", "--epochs", "0"], "`--epochs` must be positive, but got 0.0"),
        (["train", "--dataset", "digits", "--batch-size", "0"], "`--batch-size` must be positive, but got 0"),
        (["train", "--dataset", "digits", "--device", "bogus"], "`--device` is not a valid torch device: 'bogus'"),
        (["train", "--dataset", "digits", "--max-train", "0"], "`--max-train` must be positive, but got 0"),
        (["draw", "--dpi", "0", "--out", "x.png"], "`--dpi` must be positive, but got 0"),
    ],
)
def test_errors_are_one_line_exit_2(capsys: pytest.CaptureFixture[str], argv: list[str], needle: str) -> None:
    code, out, err = _run(capsys, *argv)
    assert code == 2
    assert out == ""
    assert len(err.strip().splitlines()) == 1
    assert err.startswith(f"nas {argv[0]}: error: ")
    assert needle in err
    assert not re.search(r"`[a-z]+_[a-z_]+`", err), err  # a keyword argument (`batch_size`), not a flag
    assert "Traceback" not in err


def test_parse_space_args_types() -> None:
    assert parse_space_args(["C=16", "lr=0.5", "flag=true", "name=wide", "neg=-2"]) == {
        "C": 16,
        "lr": 0.5,
        "flag": True,
        "name": "wide",
        "neg": -2,
    }
    # Python literals (ast.literal_eval), bare words as strings: the one parser of every subcommand.
    assert parse_space_args(["widths=(8, 16)", "ops=['conv', 'pool']", "quoted='a b'", "none=None", "x=1e-3"]) == {
        "widths": (8, 16), "ops": ["conv", "pool"], "quoted": "a b", "none": None, "x": 1e-3,
    }
    with pytest.raises(ValueError, match="`--space-arg` must be KEY=VALUE"):
        parse_space_args(["C"])
    with pytest.raises(ValueError, match="sets 'C' twice"):
        parse_space_args(["C=1", "C=2"])


@pytest.mark.parametrize("name", sorted(BUILTIN_SPACES))
def test_layered_layout_and_drawing(name: str) -> None:
    from matplotlib.axes import Axes

    from nas.draw import draw_graph, layered_layout, node_label

    graph = BUILTIN_SPACES[name](input_shape=(1, 8, 8)).sample(4).graph
    pos = layered_layout(graph)
    assert set(pos) == set(range(len(graph)))
    assert len(set(pos.values())) == len(graph)  # no two nodes on one spot
    assert pos[graph.input_index][1] == 0.0
    for i, node in enumerate(graph.nodes):
        for j in node.inputs:
            assert pos[j][1] > pos[i][1]  # every edge points down
    ax = draw_graph(graph)
    assert isinstance(ax, Axes)
    labels = [t.get_text() for t in ax.texts]
    for i in range(len(graph)):
        assert node_label(graph, i) in labels
    assert node_label(graph, graph.input_index) == "input\n1x8x8"


@pytest.mark.parametrize("name", sorted(BUILTIN_SPACES))
def test_graphviz_lays_out_every_node_and_edge_top_down(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import os
    import shutil

    from nas.draw import dot_layout, draw_graph

    if shutil.which("dot") is None:
        if os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no"):
            pytest.fail("Graphviz (dot) is required under CI: .ci/run installs it", pytrace=False)
        pytest.skip("Graphviz (dot) is not installed: DAGs are drawn with the built-in layout")
    graph = BUILTIN_SPACES[name](input_shape=(1, 8, 8)).sample(4).graph
    layout = dot_layout(graph)
    assert layout is not None and set(layout.nodes) == set(range(len(graph)))
    assert sorted((s, t) for s, t, _ in layout.edges) == sorted((j, i) for i, n in enumerate(graph.nodes)
                                                                for j in n.inputs)
    for source, target, points in layout.edges:
        assert layout.nodes[source][1] > layout.nodes[target][1]  # every edge points down
        assert len(points) >= 4 and (len(points) - 1) % 3 == 0  # a cubic B-spline
    assert len(draw_graph(graph).patches) == len(graph) + len(layout.edges)  # boxes and arrows
    monkeypatch.setattr(shutil, "which", lambda program: None)  # without Graphviz: the built-in layout
    assert dot_layout(graph) is None and len(draw_graph(graph).patches) == 0


@pytest.mark.parametrize("old", ["-o", "--output"])
def test_draw_old_output_flags_still_work_with_a_deprecation_warning(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, old: str
) -> None:
    out_file = tmp_path / "cell.png"
    code, out, err = _run(capsys, "draw", "--space-arg", "C=4", old, str(out_file))
    assert code == 0 and out_file.is_file() and out.startswith("wrote ")
    assert f"nas draw: warning: {old} is deprecated" in err and "use --out" in err


def test_version_and_verbose_after_the_subcommand(capsys: pytest.CaptureFixture[str]) -> None:
    from importlib.metadata import version

    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.strip() == f"nas {version('ghn-nas')}"
    from nas.cli import _parser

    assert _parser().parse_args(["spaces", "-v"]).verbose is True
    assert _parser().parse_args(["-v", "spaces"]).verbose is True
    assert _parser().parse_args(["spaces"]).verbose is False


@pytest.mark.parametrize("argv", [["sample", "--se", "1"], ["draw", "--ou", "x.png"], ["--verb", "spaces"]])
def test_abbreviated_flags_are_refused(capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and len(err.strip().splitlines()) == 1 and "unrecognized arguments" in err


def test_every_subcommand_defaults_to_the_same_space_and_dataset() -> None:
    from nas.cli import _parser
    from nas.cli.options import DEFAULT_SPACE

    parser = _parser()
    for argv in (["sample"], ["draw"], ["train"], ["train-ghn", "--out", "g.pt"],
                 ["fit-ranker", "--ghn", "g.pt", "--out", "r.pt"]):
        args = parser.parse_args(argv)
        # train leaves --space unset unless given (it refuses --space with --arch) and uses nb201 then
        space = args.space if argv[0] != "train" else (args.space or DEFAULT_SPACE)
        assert (space, args.dataset) == ("nb201", "mnist5k"), argv
        assert getattr(args, "threads", 1) == 1, argv
    search = parser.parse_args(["search"])
    assert "space" not in vars(search)  # unset unless given: CampaignConfig's default applies
    from nas.campaign import CampaignConfig

    assert (CampaignConfig().space, CampaignConfig().dataset) == ("nb201", "mnist5k")


def test_sigterm_exits_143_with_a_resume_message(tmp_path: Path) -> None:
    import signal
    import subprocess
    import sys
    import time

    code = (
        "import sys, time; import nas.cli.basic as b\n"
        "def slow(args):\n    print('started', flush=True); time.sleep(60)\n"
        "b.run_spaces = slow\n"
        "from nas.cli import main; sys.exit(main(['spaces']))"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "started"
    time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143
    assert err.strip().splitlines()[-1] == "nas spaces: terminated; run the same command again to resume."

