"""Optuna storage URLs, worker identities and the re-queueing of dead workers' trials.

A campaign keeps both of its studies in one Optuna storage, named by a URL:

* ``sqlite:///relative/file.db`` or ``sqlite:////absolute/file.db``: one file,
  the default (``sqlite:///<out>/campaign.db``). Good for one process, or a few
  on one machine.
* ``journal:///absolute/path/file.log`` or ``journal://relative/path/file.log``:
  Optuna's append-only journal file (:class:`optuna.storages.JournalStorage`
  over :class:`optuna.storages.journal.JournalFileBackend`). Everything after
  ``journal://`` is the file path. Best for several worker processes on one
  machine (or on a shared file system that supports locking).
* ``postgresql://user:password@host:port/db`` (and ``postgresql+driver://``,
  ``mysql://``, ``mysql+driver://``): a database server shared by workers on
  several machines. Needs the driver (``pip install ghn-nas[postgres]``).

SQL storages record Optuna heartbeats; on every storage each trial also records
the worker that holds it (``host:pid:token``) and a heartbeat time in its user
attributes. A RUNNING trial whose worker process is gone (same host) or whose
heartbeat is older than the grace period is marked FAIL and its candidate is
put back in the queue, so nothing is lost and nothing runs twice.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import socket
import time
import warnings
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote, urlencode

import optuna
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial, TrialState

from nas._liveness import PeriodicThread, new_owner_id, owner_dead
from nas.exceptions import StorageError

__all__ = [
    "CAMPAIGN_ATTR",
    "STORAGE_SCHEMES",
    "Heartbeat",
    "default_storage_url",
    "mask_url",
    "is_stale",
    "new_worker_id",
    "open_storage",
    "reap_stale_trials",
    "requeue_trial",
    "worker_session",
]

logger = logging.getLogger(__name__)

#: URL schemes :func:`open_storage` accepts (a ``+driver`` suffix is allowed on SQL ones).
STORAGE_SCHEMES: tuple[str, ...] = ("sqlite", "journal", "postgresql", "mysql")

#: Rank-study user attribute holding the campaign's settings.
CAMPAIGN_ATTR = "nas_campaign"

#: User attributes a campaign writes on trials for its own bookkeeping.
WORKER_ATTR = "nas_worker"
HEARTBEAT_ATTR = "nas_heartbeat"
RETRIES_ATTR = "nas_retries"
RETRY_OF_ATTR = "nas_retry_of"

#: User attributes set when a candidate is queued (kept when it is re-queued).
QUEUE_ATTRS = frozenset(
    {
        "key", "choices", "num_params", "flops", "rank_by", "rank_score", "ghn_loss", "ghn_acc", "ghn_score",
        "rank_trial", "refine", "queue_position", "nas_unit",
    }
)

#: How many times the candidate of a dead worker's trial is put back in the queue.
MAX_RETRIES = 3

_SECRET_QUERY_KEYS = frozenset({"password", "pass", "pwd", "passwd", "secret", "token", "sslpassword"})

# Tokens of the workers running in this process: a RUNNING trial held by a
# token of this pid that is not in this set belongs to an earlier, interrupted
# run inside this same process.
_ACTIVE_TOKENS: set[str] = set()


#: A URL's scheme and the text after ``//``.
_URL = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*:)?//(?P<rest>.*)$", re.S)

#: Passwords shorter than this are masked where the URL names them, not wherever their text appears
#: (replacing every "s" of a message garbles it and gives a one-letter password away).
_MIN_SCRUB = 6


def _split_password(url: str) -> tuple[str | None, str]:
    """``(password, url with it masked)``: the password of a URL's user info, however it is spelled.

    The user info ends at the *last* ``@`` after ``//`` (a password may hold
    ``@``, ``/``, ``:`` or ``?`` unescaped); the user name ends at its first
    ``:``. Query parameters named like a password are masked too. Text that
    is not ``scheme://...`` has every ``user:password@`` token masked.
    """
    text = str(url)
    match = _URL.match(text)
    if match is None:
        masked = " ".join(re.sub(r"^([^:@]*):.*@", r"\1:***@", token) if "@" in token else token
                          for token in text.split(" "))
        return None, masked
    scheme, rest = match.group("scheme") or "", match.group("rest")
    password = None
    at = rest.rfind("@")
    if at >= 0:
        user, sep, secret = rest[:at].partition(":")
        if sep:
            password = secret
            rest = f"{user}:***@{rest[at + 1:]}"
    head, sep, query = rest.partition("?")
    if sep:
        pairs = parse_qsl(query, keep_blank_values=True)
        secrets = [v for k, v in pairs if k.lower() in _SECRET_QUERY_KEYS]
        if secrets:
            password = password or secrets[0]
            query = urlencode([(k, "***" if k.lower() in _SECRET_QUERY_KEYS else v) for k, v in pairs], safe="*")
        rest = f"{head}?{query}"
    return password, f"{scheme}//{rest}"


def mask_url(url: str) -> str:
    """Hide the password of a storage URL, for messages and logs.

    Args:
        url: Any URL (or text that failed to parse as one).

    Returns:
        The URL with the password in its user info and any password-like query
        parameter replaced by ``***``. A password holding reserved characters
        (``@ / : ? #``) unescaped is masked whole.

    Examples:
        >>> mask_url("postgresql://nas:s3cret@db:5432/nas")
        'postgresql://nas:***@db:5432/nas'
        >>> mask_url("postgresql://nas:Xw/Yk@7@db/nas")
        'postgresql://nas:***@db/nas'
    """
    return _split_password(url)[1]


def _scrub(message: str, url: str) -> str:
    """One line of ``message`` with the URL's password removed wherever it appears."""
    line = " ".join(str(message).split())
    password, masked = _split_password(url)
    line = line.replace(url, masked)
    if password:
        for form in {password, unquote(password)}:
            line = line.replace(f":{form}@", ":***@")
            if len(form) >= _MIN_SCRUB:
                line = line.replace(form, "***")
    return line


def default_storage_url(out: str | Path) -> str:
    """The default storage of a campaign: ``sqlite:///<out>/campaign.db`` (absolute path)."""
    return f"sqlite:///{(Path(out) / 'campaign.db').resolve()}"


def open_storage(url: str, *, heartbeat_interval: int = 30, grace_period: int = 120) -> BaseStorage:
    """Open (creating when needed) the Optuna storage a URL names.

    Args:
        url: A storage URL; see the module docstring for the schemes.
        heartbeat_interval: Seconds between heartbeats of a running trial.
        grace_period: Seconds without a heartbeat after which a running trial
            is considered dead.

    Returns:
        An :class:`optuna.storages.RDBStorage` (with heartbeats) or an
        :class:`optuna.storages.JournalStorage`.

    Raises:
        StorageError: The URL is malformed, has an unsupported scheme, or the
            storage cannot be opened or reached. The message shows the URL with
            its password masked.
    """
    if not isinstance(url, str) or not url.strip():
        raise StorageError(f"`storage` must be a non-empty URL, but got {url!r}.")
    for name, value in (("heartbeat_interval", heartbeat_interval), ("grace_period", grace_period)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"`{name}` must be a positive int, but got {value!r}.")
    if grace_period <= heartbeat_interval:
        raise ValueError(
            f"`grace_period` ({grace_period}) must exceed `heartbeat_interval` ({heartbeat_interval})."
        )
    url = url.strip()
    scheme, sep, rest = url.partition("://")
    base = scheme.split("+", 1)[0].lower()
    if not sep or base not in STORAGE_SCHEMES:
        raise StorageError(
            f"storage URL {mask_url(url)!r} has an unsupported scheme; use one of "
            "sqlite:///FILE.db, journal:///FILE.log, postgresql://USER:PASSWORD@HOST/DB, mysql://..."
        )
    if "@" in rest[: rest.rfind("@")]:
        raise StorageError(
            f"storage URL {mask_url(url)!r} has an unescaped '@' before its host (in the user name or password); "
            "percent-encode it as %40 (urllib.parse.quote)."
        )
    if base == "journal":
        return _open_journal(url, rest)
    if base == "sqlite":
        path = rest[1:] if rest.startswith("/") else rest
        if not path or path == ":memory:":
            raise StorageError(
                f"storage URL {mask_url(url)!r} must name a file (sqlite:///FILE.db); an in-memory "
                "database cannot be shared or resumed."
            )
        try:
            Path(path).expanduser().parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise StorageError(f"cannot create the folder of storage {mask_url(url)!r}: {err.strerror}.") from None
        _check_sqlite_file(Path(path).expanduser(), url)
    return _open_rdb(url, base, heartbeat_interval=heartbeat_interval, grace_period=grace_period)


def _check_sqlite_file(path: Path, url: str) -> None:
    """Refuse an existing SQLite file that is not an Optuna storage (Optuna would add its tables to it).

    An empty file and a database without tables are accepted: Optuna sets them up.
    """
    if not path.is_file() or path.stat().st_size == 0:
        return
    import sqlite3

    try:
        with contextlib.closing(sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)) as conn:
            tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    except sqlite3.DatabaseError as err:
        raise StorageError(f"storage {mask_url(url)!r} is not a SQLite database ({err}); name a new file.") from None
    if tables and "studies" not in tables:
        raise StorageError(
            f"storage {mask_url(url)!r} is a SQLite database of something else (tables "
            f"{', '.join(sorted(tables)[:5])}), not an Optuna storage; name a new file, so that this one is left as "
            "it is."
        )


def _open_journal(url: str, path_text: str) -> BaseStorage:
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    if not path_text:
        raise StorageError(f"storage URL {mask_url(url)!r} must name a file: journal:///path/to/file.log.")
    path = Path(path_text).expanduser()
    if path.is_dir():
        raise StorageError(
            f"journal storage {str(path)!r} is a folder; name a file such as {str(path / 'campaign.log')!r}."
        )
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(path)))
    except OSError as err:
        raise StorageError(f"cannot open journal storage {str(path)!r}: {err.strerror or err}.") from None


def _open_rdb(url: str, base: str, *, heartbeat_interval: int, grace_period: int) -> BaseStorage:
    import sqlalchemy.exc

    shown = url
    scheme, _, rest = url.partition("://")
    if scheme.lower() == "postgresql" and not _importable("psycopg") and _importable("psycopg2"):
        # SQLAlchemy 2.1 defaults to psycopg 3; fall back to the psycopg2 driver when only that one is there.
        url = f"postgresql+psycopg2://{rest}"
    engine_kwargs: dict[str, Any] = {}
    if base == "sqlite":
        # Several processes may write the same file: wait for the lock rather than fail at once.
        engine_kwargs["connect_args"] = {"timeout": 60}
    else:
        engine_kwargs["pool_pre_ping"] = True
    if base == "sqlite":
        _sqlite_wal(url)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            storage = optuna.storages.RDBStorage(
                url,
                engine_kwargs=engine_kwargs,
                heartbeat_interval=heartbeat_interval,
                grace_period=grace_period,
                heartbeat_stale_trial_callback=requeue_trial,
            )
    except ImportError as err:
        driver = {"postgresql": "psycopg[binary] or psycopg2-binary", "mysql": "PyMySQL"}.get(base, "")
        raise StorageError(
            f"storage {mask_url(shown)!r} needs a database driver that is not installed"
            + (f": install {driver}" if driver else "")
            + f" ({_scrub(str(err.__cause__ or err), url)})."
        ) from None
    except (sqlalchemy.exc.SQLAlchemyError, ValueError, RuntimeError, OSError) as err:
        detail = _scrub(str(getattr(err, "orig", None) or err), url).split(" (Background on this error")[0]
        raise StorageError(f"cannot open storage {mask_url(shown)!r}: {type(err).__name__}: {detail}") from None
    if base == "sqlite":
        import sqlalchemy

        # Each trial writes a dozen attributes: without this, every commit waits for an fsync.
        sqlalchemy.event.listen(storage.engine, "connect", _sqlite_fast_commits)
        storage.engine.dispose()
    return storage


def _sqlite_wal(url: str) -> None:
    """Put an SQLite file in write-ahead-log mode (persistent; readers do not block the writer)."""
    import sqlite3

    path = url.partition("://")[2][1:].split("?")[0]
    try:
        with contextlib.closing(sqlite3.connect(path, timeout=60)) as conn:
            conn.execute("PRAGMA journal_mode=WAL")
    except sqlite3.DatabaseError as err:
        raise StorageError(f"storage {mask_url(url)!r} is not a usable SQLite file: {err}.") from None


def _sqlite_fast_commits(dbapi_connection: Any, record: Any) -> None:
    # With WAL, NORMAL syncs at checkpoints only; a crash can lose the last commits, never corrupt the file.
    dbapi_connection.execute("PRAGMA synchronous=NORMAL")


def _importable(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


# ---------------------------------------------------------------- liveness


def new_worker_id() -> str:
    """A fresh worker identity ``host:pid:token`` for the trials this process runs."""
    return new_owner_id()


@contextlib.contextmanager
def worker_session() -> Iterator[str]:
    """Yield a new worker identity that counts as alive until the block ends.

    A RUNNING trial held by an identity of this process whose block has ended
    (an interrupted run in the same Python session) is stale at once.
    """
    worker = new_worker_id()
    token = worker.rsplit(":", 1)[-1]
    _ACTIVE_TOKENS.add(token)
    try:
        yield worker
    finally:
        _ACTIVE_TOKENS.discard(token)


def _worker_dead(worker: Any) -> bool:
    """Whether ``worker`` (``host:pid:token``) certainly no longer runs."""
    if not isinstance(worker, str) or worker.count(":") < 2:
        return False
    host, pid_text, token = worker.rsplit(":", 2)
    if host == socket.gethostname() and pid_text == str(os.getpid()):
        return token not in _ACTIVE_TOKENS  # an earlier, interrupted run inside this process
    return owner_dead(worker)


def is_stale(trial: FrozenTrial, *, grace_period: float, now: float | None = None) -> bool:
    """Whether a RUNNING trial belongs to a worker that died.

    It is stale when its worker was a process on this host that is gone, or when
    its last heartbeat (or, without one, its start) is older than ``grace_period``.
    """
    if trial.state != TrialState.RUNNING:
        return False
    if _worker_dead(trial.user_attrs.get(WORKER_ATTR)):
        return True
    now = time.time() if now is None else now
    beat = trial.user_attrs.get(HEARTBEAT_ATTR)
    if isinstance(beat, (int, float)):
        return now - float(beat) > grace_period
    if trial.datetime_start is not None:
        return now - trial.datetime_start.timestamp() > grace_period
    return False


def requeue_trial(study: optuna.Study, trial: FrozenTrial) -> bool:
    """Put the candidate of a failed trial back in the queue as a WAITING trial.

    Used as the ``heartbeat_stale_trial_callback`` of SQL storages and by
    :func:`reap_stale_trials`. The new trial gets the same choices and the
    campaign's user attributes (not the worker's), plus ``nas_retry_of``.

    Args:
        study: The study of the trial.
        trial: The trial, already in state FAIL.

    Returns:
        Whether a trial was enqueued (not when the choices are unknown or the
        candidate was retried :data:`MAX_RETRIES` times already).
    """
    params = trial.user_attrs.get("choices") or trial.params
    if not params:
        logger.info("trial %d of %s failed before its choices were made; not re-queued", trial.number, study.study_name)
        return False
    retries = int(trial.user_attrs.get(RETRIES_ATTR, 0)) + 1
    if retries > MAX_RETRIES:
        logger.warning(
            "trial %d of %s failed %d times; its candidate is not re-queued again",
            trial.number,
            study.study_name,
            retries,
        )
        return False
    keep = {k: v for k, v in trial.user_attrs.items() if k in QUEUE_ATTRS}
    keep.update({RETRIES_ATTR: retries, RETRY_OF_ATTR: trial.number})
    study.enqueue_trial(params=dict(params), user_attrs=keep, skip_if_exists=False)
    logger.info("re-queued the candidate of dead trial %d of %s", trial.number, study.study_name)
    return True


def reap_stale_trials(study: optuna.Study, *, grace_period: float) -> list[int]:
    """Fail the RUNNING trials of dead workers and re-queue their candidates.

    Args:
        study: The study to clean.
        grace_period: Seconds without a heartbeat after which a trial is dead.

    Returns:
        The numbers of the trials this call failed.
    """
    now = time.time()
    failed: list[int] = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if not is_stale(trial, grace_period=grace_period, now=now):
            continue
        try:
            frozen = study.tell(trial.number, state=TrialState.FAIL)
        except (ValueError, RuntimeError, optuna.exceptions.UpdateFinishedTrialError):
            continue  # another process finished or reaped it first
        logger.warning(
            "trial %d of %s was left RUNNING by a dead worker (%s); marked FAIL",
            trial.number,
            study.study_name,
            trial.user_attrs.get(WORKER_ATTR, "unknown"),
        )
        requeue_trial(study, frozen)
        failed.append(trial.number)
    return failed


class Heartbeat:
    """Mark trials as held by this worker and refresh their heartbeat in a thread.

    Args:
        trials: The trials held (``optuna.Trial`` objects from ``ask``/``optimize``).
        worker: This worker's identity (:func:`new_worker_id`).
        interval: Seconds between heartbeats.

    Examples:
        >>> with Heartbeat([trial], worker, interval=30):  # doctest: +SKIP
        ...     long_computation()
    """

    def __init__(self, trials: Sequence[optuna.Trial], worker: str, *, interval: float) -> None:
        self.trials = list(trials)
        self.worker = worker
        self.interval = float(interval)
        self._thread = PeriodicThread(lambda: self._beat(self.trials), interval=self.interval, name="nas-heartbeat")

    def _beat(self, trials: Iterable[optuna.Trial]) -> None:
        now = time.time()
        for trial in trials:
            try:
                trial.set_user_attr(HEARTBEAT_ATTR, now)
            except Exception as err:  # a finished trial or a storage hiccup must not kill the worker
                logger.debug("heartbeat of trial %d skipped: %s", trial.number, err)

    def __enter__(self) -> Heartbeat:
        for trial in self.trials:
            trial.set_user_attr(WORKER_ATTR, self.worker)
        self._beat(self.trials)
        self._thread.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._thread.__exit__(*exc)
