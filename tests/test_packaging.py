"""Packaging: setup.cfg and environment.yml agree, entry points, and the import rules of ``nas/``."""

from __future__ import annotations

import ast
import configparser
import re
from pathlib import Path

import pytest

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


# ---------------------------------------------------------------- import rules


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(path: Path, *, module_level_only: bool = False) -> list[tuple[str, list[str], int]]:
    """``(module, names, line)`` of each import in ``path``, relative imports resolved.

    Imports under ``if TYPE_CHECKING:`` count too: they are a dependency of the annotations.
    """
    tree = ast.parse(path.read_text(), filename=str(path))
    package = _module_name(path) if path.name == "__init__.py" else _module_name(path).rpartition(".")[0]
    found: list[tuple[str, list[str], int]] = []

    def visit(node: ast.AST, top: bool) -> None:
        for child in ast.iter_child_nodes(node):
            is_scope = isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                if top or not module_level_only:
                    found.extend((alias.name, [], child.lineno) for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                if top or not module_level_only:
                    base = child.module or ""
                    if child.level:
                        anchor = package.split(".")[: len(package.split(".")) - child.level + 1]
                        base = ".".join([*anchor, *([base] if base else [])])
                    found.append((base, [alias.name for alias in child.names], child.lineno))
            visit(child, top and not is_scope and not isinstance(child, ast.ClassDef))

    visit(tree, True)
    return found


def _nas_modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted((ROOT / "nas").rglob("*.py"))}


def _targets(module: str, names: list[str], known: dict[str, Path]) -> list[str]:
    """The modules of ``nas`` an import reaches: ``from pkg import sub`` reaches ``pkg.sub``."""
    out = []
    for name in names or [""]:
        full = f"{module}.{name}" if name else module
        if full in known:
            out.append(full)
        elif module in known:
            out.append(module)
    return out


def test_no_module_of_nas_imports_the_built_in_search_spaces() -> None:
    # Registries point downward: search_spaces/ imports nas.space and registers; nas/ finds it by entry point.
    bad = [
        f"{path.relative_to(ROOT)}:{line}"
        for path in _nas_modules().values()
        for module, _, line in _imports(path)
        if module == "search_spaces" or module.startswith("search_spaces.")
    ]
    assert bad == []


#: Import edges of the deprecated wrappers ``ArchGraph.to_pyg()`` and ``nas.graph.NODE_FEATURES``, which import
#: ``nas.ghn`` lazily inside the call; remove with those wrappers in the next release.
_DEPRECATED_EDGES = {("nas.graph", "nas.ghn")}


def test_no_import_cycles_between_modules_of_nas() -> None:
    import graphlib

    known = _nas_modules()
    graph: dict[str, set[str]] = {name: set() for name in known}
    for name, path in known.items():
        for module, names, _ in _imports(path):
            graph[name].update(t for t in _targets(module, names, known) if t != name)
        # A package's __init__ runs before any of its submodules.
        parent = name.rpartition(".")[0]
        if parent in known and parent != name:
            graph[name].add(parent)
    # A submodule importing its own package's __init__ is how Python imports it, not a cycle of the code.
    for name in graph:
        graph[name] = {t for t in graph[name] if not name.startswith(t + ".") and (name, t) not in _DEPRECATED_EDGES}
    try:
        list(graphlib.TopologicalSorter(graph).static_order())
    except graphlib.CycleError as err:
        pytest.fail(f"import cycle between modules of nas: {' -> '.join(err.args[1])}")


def test_deprecated_edges_are_only_lazy_imports() -> None:
    # An allowed edge must stay inside a function: at module level it would be a real cycle on import.
    known = _nas_modules()
    for name, target in _DEPRECATED_EDGES:
        top = [t for module, names, _ in _imports(known[name], module_level_only=True)
               for t in _targets(module, names, known)]
        assert target not in top, f"{name} imports {target} at module level"


def test_graph_module_does_not_import_torch_geometric() -> None:
    # The architecture graph is plain data; PyG conversion lives with the GHN (nas/ghn/pyg.py).
    bad = [
        f"nas/graph.py:{line} imports {module}"
        for module, _, line in _imports(ROOT / "nas" / "graph.py")
        if module == "torch_geometric" or module.startswith("torch_geometric.")
    ]
    assert bad == []
    assert "Data(" not in (ROOT / "nas" / "graph.py").read_text()


def test_no_private_name_is_imported_from_another_subpackage_of_nas() -> None:
    known = _nas_modules()
    subpackages = {name for name, path in known.items() if path.name == "__init__.py" and name != "nas"}
    files = [*known.values(), *sorted((ROOT / "bench").glob("*.py"))]
    bad = []
    for path in files:
        own = _module_name(path) if path.is_relative_to(ROOT / "nas") else ""
        for module, names, line in _imports(path):
            for target in [module, *(f"{module}.{n}" for n in names)]:
                parts = target.split(".")
                sub = next((".".join(parts[:i]) for i in range(2, len(parts)) if ".".join(parts[:i]) in subpackages),
                           None)
                private = any(p.startswith("_") and not p.startswith("__") for p in parts[2:]) if sub else False
                if private and not (own == sub or own.startswith(sub + ".")):
                    bad.append(f"{path.relative_to(ROOT)}:{line} imports {target}")
    assert bad == []


def test_entry_points_declare_every_built_in_space() -> None:
    from nas.space import ENTRY_POINT_GROUP, builtin_spaces

    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    declared = {
        line.split("=")[0].strip(): line.split("=")[1].strip()
        for line in cfg["options.entry_points"][ENTRY_POINT_GROUP].strip().splitlines()
    }
    spaces = builtin_spaces()
    assert set(declared) <= set(spaces)
    for name, target in declared.items():
        module, _, attr = target.partition(":")
        assert f"{spaces[name].__module__}:{spaces[name].__qualname__}" == target
