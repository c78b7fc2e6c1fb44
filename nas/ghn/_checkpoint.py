"""Reading and writing GHN checkpoint files safely.

A checkpoint is a ``torch.save`` file holding only plain containers, strings,
numbers and tensors, so it is read with ``torch.load(weights_only=True)``:
a file that tries to unpickle a class (code) is refused. Writes are atomic
(:func:`nas._atomic.save_torch`): the payload is serialised in memory, written
to a temporary file in the target folder, which then replaces the target with
:func:`os.replace`, so a run killed mid-write or a full disk leaves the
previous checkpoint intact and no temporary file behind.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from nas._atomic import one_line, save_torch
from nas.exceptions import CheckpointError

__all__ = ["FORMAT", "VERSION", "read_checkpoint", "write_checkpoint"]

#: Value of the ``"format"`` entry of every GHN checkpoint.
FORMAT = "ghn-nas/ghn"
#: Newest checkpoint version this code reads and the one it writes.
VERSION = 1


def write_checkpoint(path: str | Path, payload: dict[str, Any], *, what: str = "GHN checkpoint") -> None:
    """Atomically write ``payload`` to ``path`` (parent folders are created).

    Args:
        path: Target file.
        payload: Plain containers, numbers, strings and tensors only.
        what: What the file is, for error messages.

    Raises:
        CheckpointError: The write failed (e.g. ``ENOSPC``, a full disk). The
            message is one line naming the path and the cause; no temporary
            file is left and a previous checkpoint at ``path`` is unchanged.
    """
    save_torch(payload, path, what=what)


def read_checkpoint(
    path: str | Path,
    *,
    map_location: str | torch.device = "cpu",
    expected_format: str = FORMAT,
    what: str = "GHN checkpoint",
) -> dict[str, Any]:
    """Read and check the envelope of a GHN checkpoint (or of another file of this package).

    Args:
        path: Checkpoint file.
        map_location: Where tensors are loaded.
        expected_format: The ``format`` entry the file must have.
        what: What the file is, for error messages.

    Returns:
        The payload; its ``format`` and ``version`` were checked and it has
        ``config``, ``space_info`` and ``state_dict`` entries of the right types.

    Raises:
        CheckpointError: The file is missing, unreadable, truncated, corrupt,
            holds pickled code, is not a GHN checkpoint of this package or is
            from a newer version. The message is one line naming the path.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{what} {str(path)!r} does not exist or is not a file.")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # truncated zip, pickled classes, garbage bytes, ... all mean "not ours"
        raise CheckpointError(
            f"{what} {str(path)!r} cannot be read safely ({type(err).__name__}: {one_line(err)})."
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != expected_format:
        found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise CheckpointError(
            f"{str(path)!r} is not a ghn-nas {what} (format {found!r}, expected {expected_format!r})."
        )
    version = payload.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or not 1 <= version <= VERSION:
        raise CheckpointError(
            f"{what} {str(path)!r} has version {version!r}; this ghn-nas reads versions 1..{VERSION}."
        )
    for key, kind in (("config", dict), ("space_info", dict), ("state_dict", dict)):
        if not isinstance(payload.get(key), kind):
            raise CheckpointError(f"{what} {str(path)!r} lacks a valid {key!r} entry.")
    return payload
