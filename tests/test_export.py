"""``nas export`` and :mod:`nas.export`: ONNX, torch.export and a plain module file, each checked on real images."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import run_cli
from nas.cli import main
from nas.data import load_dataset
from nas.exceptions import ExportError
from nas.export import EXPORT_FORMATS, TOLERANCE, export_candidate, load_network, run_export
from nas.graph import ArchGraph
from nas.training import TrainConfig, train_graph
from search_spaces import BUILTIN_SPACES

DIGITS = load_dataset("digits")
SMALL = {"nb201": {"C": 4, "N": 1}, "darts": {"C": 4, "layers": 2}, "macro": {}}


def _trained(space_name: str) -> tuple[ArchGraph, dict[str, torch.Tensor]]:
    """A candidate of the space trained for a few SGD steps on digits (BatchNorm statistics no longer the init's)."""
    space = BUILTIN_SPACES[space_name](input_shape=DIGITS.input_shape, num_classes=DIGITS.num_classes,
                                       **SMALL[space_name])
    graph = space.sample(0).graph
    trained: list[torch.nn.Module] = []
    train_graph(graph, DIGITS, TrainConfig(steps=5, batch_size=32), evaluate_on=(), model_out=trained)
    return graph, {k: v.detach().clone() for k, v in trained[0].state_dict().items()}


@pytest.mark.parametrize("space_name", sorted(BUILTIN_SPACES))
def test_every_builtin_space_exports_in_every_format_and_matches(space_name: str, tmp_path: Path) -> None:
    graph, state = _trained(space_name)
    images = DIGITS.x_test[:32]
    checks = export_candidate(graph, state, images, tmp_path)
    assert [c.format for c in checks] == list(EXPORT_FORMATS)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx", "model.pt2", "model.py", "model_weights.pt"]
    net = load_network(graph, state)
    other = DIGITS.x_test[100:107]  # another batch size: the batch dimension is dynamic
    with torch.no_grad():
        expected = net(other)
    for check in checks:
        assert check.max_abs_diff <= TOLERANCE and check.images == 32
        assert torch.allclose(run_export(check, other), expected, atol=TOLERANCE, rtol=0), check.format


def test_plain_module_file_loads_without_the_package(tmp_path: Path) -> None:
    graph, state = _trained("nb201")
    export_candidate(graph, state, DIGITS.x_test[:8], tmp_path, formats=["python"])
    torch.save(DIGITS.x_test[:5].clone(), tmp_path / "x.pt")
    script = (
        "import sys, importlib.abc\n"
        "class Block(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path, target=None):\n"
        "        if name.split('.')[0] in ('nas', 'search_spaces', 'torch_geometric'):\n"
        "            raise ImportError('blocked: ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "import torch, model\n"
        "net = model.load()\n"
        "torch.save(net(torch.load('x.pt', weights_only=True)).detach(), 'y.pt')\n"
        "assert not any(m.split('.')[0] == 'nas' for m in sys.modules)\n"
    )
    subprocess.run([sys.executable, "-c", script], cwd=tmp_path, check=True, env={"PATH": "", "PYTHONPATH": ""},
                   capture_output=True)
    with torch.no_grad():
        expected = load_network(graph, state)(DIGITS.x_test[:5])
    assert torch.allclose(torch.load(tmp_path / "y.pt", weights_only=True), expected, atol=TOLERANCE, rtol=0)


def test_an_export_that_differs_is_not_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import nas.export as export

    graph, state = _trained("macro")
    write, run = export._FORMATS["program"]
    monkeypatch.setitem(export._FORMATS, "program", (write, lambda files, x: run(files, x) + 1e-3))
    with pytest.raises(ExportError, match=r"program export differs .* by 0\.001.*not kept"):
        export_candidate(graph, state, DIGITS.x_test[:8], tmp_path, formats=["python", "program"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.py", "model_weights.pt"]  # the checked one stays


def test_weights_of_another_architecture_are_refused(tmp_path: Path) -> None:
    graph, _ = _trained("nb201")
    _, other = _trained("macro")
    with pytest.raises(ExportError, match=r"do not fit architecture .* missing .* unexpected"):
        export_candidate(graph, other, DIGITS.x_test[:8], tmp_path)
    assert list(tmp_path.iterdir()) == []


def _files(tmp_path: Path) -> tuple[Path, Path]:
    graph, state = _trained("nb201")
    arch, weights = tmp_path / "best.json", tmp_path / "best.pt"
    arch.write_text(json.dumps({"key": graph.key, "graph": graph.to_dict()}))
    torch.save(state, weights)
    return arch, weights


def test_cli_exports_reports_and_records(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    arch, weights = _files(tmp_path)
    out = tmp_path / "export"
    argv = ["export", "--arch", str(arch), "--weights", str(weights), "--dataset", "digits", "--out", str(out),
            "--format", "program,python", "--images", "40"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "ok (<= 0.0001 on 40 images)" in printed and "model.pt2" in printed
    record = json.loads((out / "export.json").read_text())
    assert [row["format"] for row in record["exports"]] == ["program", "python"]
    assert record["dataset"] == "digits" and record["exports"][1]["files"] == ["model.py", "model_weights.pt"]
    assert main(argv[:-4] + ["--format", "program"]) == 0  # again into the same folder: its own files are replaced
    assert [row["format"] for row in json.loads((out / "export.json").read_text())["exports"]] == ["python", "program"]


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"--dataset": "mnist5k"}, "takes inputs (1, 8, 8) with 10 classes, but dataset 'mnist5k'"),
        ({"--weights": "best.json"}, "is not a state_dict"),
        ({"--weights": "nothing.pt"}, "`--weights`: no such file"),
        ({"--format": "onnx,tflite"}, "argument --format: must be a comma-separated selection"),
        ({"--images": "0"}, "`--images` must be positive"),
        ({"--out": "foreign"}, "already holds model.py, which `nas export` did not write"),
    ],
)
def test_cli_bad_input_is_one_line_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                          change: dict[str, str], needle: str) -> None:
    arch, weights = _files(tmp_path)
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "model.py").write_text("# the user's own file\n")
    flags = {"--arch": str(arch), "--weights": str(weights), "--dataset": "digits", "--out": str(tmp_path / "out"),
             "--format": "python"}
    for flag, value in change.items():
        flags[flag] = value if flag not in ("--weights", "--out") else str(tmp_path / value)
    code, _, err = run_cli(capsys, "export", *[x for kv in flags.items() for x in kv])
    assert code == 2
    assert needle in err and len(err.strip().splitlines()) == 1, err
    assert (tmp_path / "foreign" / "model.py").read_text() == "# the user's own file\n"
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
