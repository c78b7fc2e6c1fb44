"""Atomic file writes: a reader, a crash or a full disk never leaves half a file.

The content goes to a temporary file next to the target (same folder, hence
same file system), is flushed to disk with :func:`os.fsync` and then replaces
the target with :func:`os.replace`. On any failure (a full disk, an
interrupt, an error of the writer) the temporary file is removed and the
previous file at the target path, if any, is left as it was.

:func:`save_torch` serialises with :func:`torch.save` into memory first, so a
failing write never happens inside torch's own file writer, and reports every
failure as a :class:`~nas.exceptions.CheckpointError` naming the path.
"""

from __future__ import annotations

import contextlib
import io
import os
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from nas.exceptions import CheckpointError

__all__ = [
    "FIGURE_DPI",
    "FIGURE_FORMATS",
    "atomic_write",
    "atomic_write_bytes",
    "one_line",
    "save_figure",
    "save_torch",
    "temporary_path",
]

#: Resolution of every PNG figure the package writes.
FIGURE_DPI = 200
#: Files :func:`save_figure` writes for one figure, by suffix.
FIGURE_FORMATS: tuple[str, ...] = (".png", ".pdf")


def one_line(err: BaseException) -> str:
    """The first sentence of ``err``'s message on one line (at most 200 characters), or its type name."""
    text = " ".join(str(err).split())
    first = text.split(". ")[0]
    return (first[:200] + "...") if len(first) > 200 else first or type(err).__name__


def temporary_path(path: Path) -> Path:
    """A fresh hidden temporary name next to ``path`` that keeps its suffix (writers may infer the format from it).

    Examples:
        ``runs/x/best.png`` -> ``runs/x/.best.3f9c0a1b2d4e.tmp.png``
    """
    return path.with_name(f".{path.stem}.{uuid.uuid4().hex[:12]}.tmp{path.suffix}")


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Write ``path`` atomically through ``write(tmp)``, which creates the file ``tmp``.

    Args:
        path: Target file; its folder must exist.
        write: Writes the whole content to the path it is given (a temporary
            file in the target folder with the target's suffix).

    Returns:
        ``path``.

    Raises:
        OSError: The write failed (e.g. ``ENOSPC``, a full disk); the error
            keeps its errno and names ``path``. No temporary file is left and
            a previous file at ``path`` is unchanged.
    """
    path = Path(path)
    tmp = temporary_path(path)
    try:
        write(tmp)
        _fsync(tmp)
        os.replace(tmp, path)
    except BaseException as err:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        if isinstance(err, OSError):
            if err.errno is not None and err.strerror:
                raise OSError(err.errno, err.strerror, str(path)) from err
            raise OSError(f"cannot write {str(path)!r}: {one_line(err)}") from err
        raise
    return path


def atomic_write_bytes(path: str | Path, data: bytes | bytearray | memoryview) -> Path:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_write`).

    Args:
        path: Target file; its folder must exist.
        data: The whole content.

    Returns:
        ``path``.

    Raises:
        OSError: As :func:`atomic_write`.
    """
    return atomic_write(path, lambda tmp: tmp.write_bytes(data))


def save_torch(obj: Any, path: str | Path, *, what: str = "checkpoint") -> Path:
    """``torch.save(obj)`` into ``path`` atomically; parent folders are created.

    The object is serialised into memory first and then written with
    :func:`atomic_write_bytes`.

    Args:
        obj: What :func:`torch.save` accepts (tensors, plain containers).
        path: Target file.
        what: What the file is, for the error message (``"GHN checkpoint"``).

    Returns:
        ``path``.

    Raises:
        CheckpointError: Serialising or writing failed (a full disk, a folder
            that cannot be created, ...). The message is one line naming the
            path and the cause; no temporary file is left and a previous file
            at ``path`` is unchanged.
    """
    path = Path(path)
    try:
        buffer = io.BytesIO()
        torch.save(obj, buffer)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, buffer.getbuffer())
    except (OSError, RuntimeError) as err:
        cause = err.__cause__ if isinstance(err.__cause__, OSError) else err
        raise CheckpointError(
            f"cannot write {what} {str(path)!r} ({type(cause).__name__}: {one_line(cause)}); "
            "any previous file there is unchanged."
        ) from err
    return path


def save_figure(
    figure: Any, path: str | Path, *, formats: Sequence[str] = FIGURE_FORMATS, dpi: int = FIGURE_DPI
) -> list[Path]:
    """Save a matplotlib figure atomically, once per format: ``<path>.png`` and ``<path>.pdf`` by default.

    Args:
        figure: A :class:`matplotlib.figure.Figure` (e.g. ``ax.figure``).
        path: Target path; a suffix among ``formats`` is replaced. Its folder is created.
        formats: Suffixes to write (matplotlib infers the format from each).
        dpi: Resolution of raster formats.

    Returns:
        The written paths, in the order of ``formats``.

    Raises:
        OSError: A write failed (see :func:`atomic_write`); no temporary file is left.
    """
    target = Path(path)
    stem = target.with_suffix("") if target.suffix.lower() in [f.lower() for f in formats] else target
    stem.parent.mkdir(parents=True, exist_ok=True)
    return [
        atomic_write(stem.with_name(stem.name + suffix),
                     lambda tmp: figure.savefig(tmp, dpi=dpi, bbox_inches="tight"))
        for suffix in formats
    ]
