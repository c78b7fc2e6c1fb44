"""setup.cfg and environment.yml name the same dependencies."""

from __future__ import annotations

import configparser
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# conda package names that differ from their PyPI names
_CONDA_TO_PYPI = {"pytorch": "torch", "pytorch_geometric": "torch_geometric"}


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[ ]", requirement.strip(), maxsplit=1)[0].lower().replace("-", "_")


def test_environment_yml_matches_setup_cfg() -> None:
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    pip_reqs = {
        _name(line): line.strip()
        for line in cfg["options"]["install_requires"].strip().splitlines()
        if line.strip()
    }
    conda_reqs = {}
    in_deps = False
    for line in (ROOT / "environment.yml").read_text().splitlines():
        if line.startswith("dependencies:"):
            in_deps = True
            continue
        match = re.match(r"^  - ([A-Za-z0-9_.\-]+)(.*)$", line)
        if in_deps and match and match.group(1) not in ("python", "pip"):
            name = _CONDA_TO_PYPI.get(match.group(1), match.group(1)).lower().replace("-", "_")
            conda_reqs[name] = match.group(2).strip()
    assert set(conda_reqs) == set(pip_reqs)
    for name, spec in conda_reqs.items():
        pip_spec = pip_reqs[name][len(name):].strip()
        assert spec == pip_spec, f"{name}: environment.yml says {spec!r}, setup.cfg says {pip_spec!r}"


def test_console_script_is_declared() -> None:
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    assert "nas = nas.cli:main" in cfg["options.entry_points"]["console_scripts"]
