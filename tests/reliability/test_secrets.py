"""A storage URL's password never shows: not in logs, tables, plots, stored settings or error messages.

One campaign runs end to end on the test PostgreSQL server (URL with its real
password) with debug logging, a ``nas worker`` joins it, and a rerun with other
settings is refused; everything they print and write is searched for the
password, as are the studies' stored attributes. Unreachable and malformed
URLs with passwords (in the user info or the query) must be masked in the
one-line errors too.
"""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import urlsplit

import optuna
import pytest

from _helpers import SEARCH_ARGS, assert_one_line_error, base_env, run_inprocess, run_subprocess

SECRET = "hunter2secret"


def _grep_tree(folder: Path, secret: str) -> list[str]:
    """Files under ``folder`` whose bytes contain ``secret`` (text, CSV, JSON, parquet, PNG, PDF, databases)."""
    return [str(p) for p in folder.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]


def _stored_text(storage: str) -> str:
    """Every study and trial attribute of every study in ``storage``, as text."""
    from nas.campaign import open_storage

    handle = open_storage(storage)
    parts = []
    for summary in optuna.get_all_study_summaries(handle, include_best_trial=False):
        study = optuna.load_study(study_name=summary.study_name, storage=handle)
        parts.append(json.dumps(study.user_attrs, default=str))
        for trial in study.get_trials(deepcopy=False):
            parts.append(json.dumps([trial.params, trial.user_attrs, trial.system_attrs], default=str))
    return "\n".join(parts)


@pytest.mark.parametrize(
    "url",
    [
        f"postgresql://nas:{SECRET}@127.0.0.1:1/nas",
        f"postgresql+psycopg2://nas:{SECRET}@127.0.0.1:1/nas?connect_timeout=3",
        f"postgresql://nas@127.0.0.1:1/nas?password={SECRET}",
        f"mysql://root:{SECRET}@127.0.0.1:1/nas",
        f"postgresql://nas:{SECRET}@[::1:1/nas",  # malformed: an unclosed IPv6 bracket
        f"postgres://nas:{SECRET}@127.0.0.1/nas",  # unsupported scheme spelling
    ],
    ids=["userinfo", "driver-and-query", "query-password", "mysql", "malformed", "bad-scheme"],
)
def test_password_is_masked_in_storage_errors(url: str, tmp_path: Path, tiny_ghn: Path) -> None:
    for argv in (
        ["search", *SEARCH_ARGS, "--ghn", str(tiny_ghn), "--out", str(tmp_path / "out"), "--storage", url],
        ["worker", "--storage", url, "--study", "c"],
    ):
        result = run_inprocess(argv)
        assert_one_line_error(result)
        assert SECRET not in result.err + result.out, result.err
    assert not _grep_tree(tmp_path, SECRET)


def test_mask_url_hides_every_password_form() -> None:
    from nas.campaign import mask_url

    for url in (
        f"postgresql://u:{SECRET}@h:5432/db",
        f"postgresql://u:{SECRET}@h/db?sslmode=require",
        f"postgresql://u@h/db?password={SECRET}&sslmode=require",
        f"mysql+pymysql://u:{SECRET}@h/db",
        f"postgresql://u:{SECRET}@[::1/db",
        f"not a url u:{SECRET}@host",
    ):
        masked = mask_url(url)
        assert SECRET not in masked and "***" in masked, masked


#: Passwords with each reserved character of a URL unescaped, a percent-escape, and of length 1 and 2.
AWKWARD = ["Xw@Yk7", "Xw/Yk7", "Xw:Yk7", "Xw?Yk7", "Xw#Yk7", "Xw[Yk7]", "Xw%40Yk7", "Xw!$&'()*+,;=Yk7", "@@", "//", "s",
           "p", "sq"]


@pytest.mark.parametrize("password", AWKWARD)
@pytest.mark.parametrize("form", ["postgresql://nas:{}@db.example:5432/nas",
                                  "postgresql+psycopg2://nas:{}@db.example/nas?sslmode=require"])
def test_mask_url_hides_a_password_with_reserved_characters_whole(password: str, form: str) -> None:
    from nas.campaign import mask_url
    from nas.campaign._storage import _scrub

    url = form.format(password)
    assert mask_url(url) == form.format("***")
    # A driver message naming the URL keeps its words: a one-letter password is not replaced inside them.
    message = f"psycopg could not connect to {url}: password authentication failed for user nas"
    assert _scrub(message, url) == f"psycopg could not connect to {form.format('***')}: password authentication " \
                                   "failed for user nas"


@pytest.mark.parametrize("password", ["Xw@Yk7", "@", "a@b@c"])
def test_an_unescaped_at_sign_in_the_password_is_refused_without_showing_it(password: str) -> None:
    url = f"postgresql://nas:{password}@127.0.0.1:1/nas"
    result = run_inprocess(["worker", "--storage", url, "--study", "c"])
    assert_one_line_error(result, "unescaped '@'", "%40")
    assert "postgresql://nas:***@127.0.0.1:1/nas" in result.err
    for part in {password, *password.split("@")} - {""}:
        assert f"{part}@" not in result.err.replace("***@", "")


def test_password_never_leaks_from_a_real_postgres_campaign(postgres_url: str, tmp_path: Path, tiny_ghn: Path) -> None:
    password = urlsplit(postgres_url).password
    assert password, "the test URL must carry a password"
    out = tmp_path / "out"
    env = base_env(tmp_path)
    common = ["--ghn", str(tiny_ghn), "--out", str(out), "--storage", postgres_url, "--study", "secret"]

    search = run_subprocess(["-v", "search", *SEARCH_ARGS, "--trials", "20", "--top-k", "2", *common], env=env,
                            hooked=False)
    assert search.code == 0, search.err[-3000:]
    worker = run_subprocess(["-v", "worker", "--storage", postgres_url, "--study", "secret", "--ghn", str(tiny_ghn),
                             "--out", str(tmp_path / "worker-out")], env=env, hooked=False)
    assert worker.code == 0, worker.err[-3000:]
    refused = run_inprocess(["search", *SEARCH_ARGS, "--trials", "20", "--top-k", "2", *common, "--finetune-epochs", "2"])
    assert_one_line_error(refused, "different settings", "***")

    assert (out / "finetuned.csv").exists() and (out / "best.json").exists()  # the campaign did write its outputs
    for name, text in (("search", search.out + search.err), ("worker", worker.out + worker.err),
                       ("refused", refused.out + refused.err)):
        assert password not in text, f"the password appears in the output of {name}"
    assert not _grep_tree(tmp_path, password)
    assert password not in _stored_text(postgres_url)
