"""The docs site builds without a warning (broken links, unknown API objects, bad docstrings)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_docs_site_builds_in_strict_mode(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT, capture_output=True, text=True, timeout=300, env={"NO_MKDOCS_2_WARNING": "1", "PATH": "/usr/bin:/bin"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "site" / "api" / "index.html").is_file()
    assert "GHNRanker" in (tmp_path / "site" / "api" / "index.html").read_text()


def test_readme_stays_a_five_minute_read() -> None:
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 250, f"README.md has {len(lines)} lines; move details into docs/"


def _readme_commands() -> list[str]:
    """The `nas ...` lines of the README's bash blocks (comments and continuation lines joined)."""
    text = (ROOT / "README.md").read_text()
    commands, inside, pending = [], False, ""
    for line in text.splitlines():
        if line.startswith("```"):
            inside = line.strip() == "```bash"
            continue
        if not inside:
            continue
        line = pending + line.split("  #")[0].strip()
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        pending = ""
        if line.startswith("nas "):
            commands.append(line)
    return commands


#: README commands cheap enough to run here (seconds each); the others train or search for minutes.
CHEAP = ("nas spaces", "nas sample", "nas draw")


def test_the_readmes_cheap_commands_run_as_written(tmp_path: Path) -> None:
    import shlex

    commands = [c for c in _readme_commands() if c.startswith(CHEAP)]
    assert len(commands) >= 3, commands
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    for command in commands:
        proc = subprocess.run([sys.executable, "-c", "import sys; from nas.cli import main; sys.exit(main())",
                               *shlex.split(command)[1:]], cwd=tmp_path, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, f"{command}: {proc.stderr[-2000:]}"
    assert (tmp_path / "cell.png").stat().st_size > 1000


def test_the_readmes_search_space_passes_check_space() -> None:
    import re

    from nas.testing import check_space

    code = re.search(r"```python\n(# my_space.py\n.*?)```", (ROOT / "README.md").read_text(), re.S)
    assert code is not None, "the README's search-space example is missing"
    namespace: dict = {}
    exec(code.group(1), namespace)  # noqa: S102 - the README's own example
    check_space(namespace["MySpace"](input_shape=(1, 8, 8), num_classes=10), n=2)
