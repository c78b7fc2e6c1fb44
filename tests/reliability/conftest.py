"""Fixtures of the reliability tests: a tiny GHN, a finished tiny campaign, a PostgreSQL database.

PostgreSQL: the tests read ``NAS_TEST_POSTGRES_URL`` (``.ci/run`` sets it after
``ci/install_postgres.sh``). Each test gets a scratch database of its own,
created through that URL's user (which needs CREATEDB) and dropped afterwards.
Without a URL or a driver the PostgreSQL tests are skipped, and the reason is
printed in the terminal summary; under CI (``CI`` set to a true value) they
fail instead, so a broken install cannot pass unnoticed.
"""

from __future__ import annotations

import os
import shutil
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _helpers import GHN_ARGS, SEARCH_ARGS, TINY, run_inprocess  # noqa: E402

_PG_SKIPS: list[str] = []


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def _unavailable(reason: str) -> None:
    """Fail under CI, else skip with a reason that the terminal summary repeats."""
    if _in_ci():
        pytest.fail(f"PostgreSQL is required under CI: {reason}", pytrace=False)
    _PG_SKIPS.append(reason)
    pytest.skip(f"PostgreSQL tests skipped: {reason}")


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _PG_SKIPS:
        terminalreporter.write_sep(
            "!", f"{len(_PG_SKIPS)} PostgreSQL reliability test(s) SKIPPED: {_PG_SKIPS[0]}", yellow=True, bold=True
        )


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """URL of a fresh, empty PostgreSQL database (dropped after the test)."""
    base = os.environ.get("NAS_TEST_POSTGRES_URL", "").strip()
    if not base:
        _unavailable("NAS_TEST_POSTGRES_URL is not set; run `bash ci/install_postgres.sh` (or .ci/run) to get a server")
    try:
        import psycopg2
    except ImportError:
        _unavailable("the driver is missing: pip install psycopg2-binary (extra `postgres`)")
    from nas.campaign import mask_url

    try:
        admin = psycopg2.connect(base, connect_timeout=10)
    except psycopg2.Error as err:
        pytest.fail(
            f"NAS_TEST_POSTGRES_URL {mask_url(base)} is set but unusable: {' '.join(str(err).split())}", pytrace=False
        )
    admin.autocommit = True
    name = f"nas_t_{uuid.uuid4().hex[:12]}"
    with admin.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')
    parts = urlsplit(base)
    try:
        yield urlunsplit((parts.scheme, parts.netloc, f"/{name}", parts.query, parts.fragment))
    finally:
        with admin.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


@pytest.fixture(scope="session")
def rel_tmp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A session folder (the NAS_CACHE_DIR of in-process runs lives here)."""
    path = tmp_path_factory.mktemp("reliability")
    os.environ.setdefault("NAS_CACHE_DIR", str(path / "nas-cache"))
    return path


@pytest.fixture(scope="session")
def tiny_ghn(rel_tmp: Path) -> Path:
    """A tiny GHN for ``TinySpace`` on ``digits``, meta-trained in this process (a second or so)."""
    path = rel_tmp / "tiny_ghn.pt"
    result = run_inprocess([
        "train-ghn", "--space", TINY, "--dataset", "digits", "--out", str(path), "--ghn-steps", "6",
        "--eval-every", "3", *GHN_ARGS, "--no-progress",
    ])
    assert result.code == 0, result.err
    return path


@pytest.fixture(scope="session")
def tiny_ranker(rel_tmp: Path) -> Path:
    """A ranker for ``TinySpace`` on ``digits`` fitted from random weights on 4 labels of 1 step (seconds)."""
    path = rel_tmp / "tiny_ranker.pt"
    result = run_inprocess([
        "fit-ranker", "--space", TINY, "--dataset", "digits", "--out", str(path), "--ranker-labels", "4",
        "--ranker-k", "1", "--no-progress",
    ])
    assert result.code == 0, result.err
    return path


@pytest.fixture(scope="session")
def finished_campaign(rel_tmp: Path, tiny_ghn: Path) -> Path:
    """Output folder of an uninterrupted tiny campaign ranked by the ranker (SQLite storage inside it); read-only."""
    out = rel_tmp / "finished_campaign"
    result = run_inprocess(["search", *SEARCH_ARGS, "--ghn", str(tiny_ghn), "--out", str(out), "--rank-by", "ranker"])
    assert result.code == 0, result.err
    return out


@pytest.fixture
def campaign_copy(finished_campaign: Path, tmp_path: Path) -> Path:
    """A private copy of :func:`finished_campaign` that a test may damage."""
    out = tmp_path / "campaign"
    shutil.copytree(finished_campaign, out)
    return out
