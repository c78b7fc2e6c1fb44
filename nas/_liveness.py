"""Whether a process still runs, and a heartbeat thread: shared by the campaign storage and the ground-truth cache.

Work held by a process (a claimed trial, a claimed training) is identified by
an owner string ``host:pid[:token]``. Another process on the same host can
tell that the owner died (:func:`owner_dead`); on other hosts only a heartbeat
that stopped tells, so the holder refreshes one with :class:`PeriodicThread`.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from collections.abc import Callable
from typing import Any

__all__ = ["PeriodicThread", "new_owner_id", "owner_dead", "pid_alive"]

logger = logging.getLogger(__name__)


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this host (one owned by another user counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: it exists, owned by someone else; anything else: assume alive
        return True
    return True


def new_owner_id() -> str:
    """A fresh owner identity ``host:pid:token`` for work this process holds."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def owner_dead(owner: Any) -> bool:
    """Whether ``owner`` (``host:pid`` or ``host:pid:token``) is a process of this host that no longer runs.

    An owner of another host, or one that cannot be parsed, is not known to be
    dead (``False``); nor is this process.
    """
    if not isinstance(owner, str):
        return False
    host, _, rest = owner.partition(":")
    pid = rest.partition(":")[0]
    if host != socket.gethostname() or not pid.isdigit():
        return False
    return int(pid) != os.getpid() and not pid_alive(int(pid))


class PeriodicThread:
    """A daemon thread calling ``beat()`` every ``interval`` seconds while the ``with`` block runs.

    Args:
        beat: What to do each period (e.g. refresh a heartbeat time in a storage).
        interval: Seconds between calls.
        name: The thread's name.
        at_start: Call ``beat`` once on entering the block too.
        on_stop: Called in the thread when it stops (e.g. to close its own connection).

    Examples:
        >>> with PeriodicThread(lambda: None, interval=30, name="heartbeat"):
        ...     pass
    """

    def __init__(
        self,
        beat: Callable[[], None],
        *,
        interval: float,
        name: str,
        at_start: bool = False,
        on_stop: Callable[[], None] | None = None,
    ) -> None:
        if not interval > 0:
            raise ValueError(f"`interval` must be positive, but got {interval!r}.")
        self.beat = beat
        self.interval = float(interval)
        self.at_start = at_start
        self.on_stop = on_stop
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def _run(self) -> None:
        try:
            while not self._stop.wait(self.interval):
                self.beat()
        except Exception as err:  # best effort: a failed heartbeat must not kill the worker
            logger.warning("%s stopped: %s", self._thread.name, err)
        finally:
            if self.on_stop is not None:
                self.on_stop()

    def __enter__(self) -> PeriodicThread:
        if self.at_start:
            self.beat()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
