"""Domain errors raised by the package on bad input.

Every error derives from :class:`NASError` and from :class:`ValueError`, so a
caller may catch the whole family with ``except NASError`` or treat them as the
plain bad-value errors they are with ``except ValueError``. Wrong program state
is reported with :class:`RuntimeError`, not with these classes.
"""

from __future__ import annotations

__all__ = [
    "CheckpointError",
    "DatasetError",
    "ExportError",
    "GraphError",
    "NASError",
    "SpaceError",
    "StorageError",
    "Terminated",
]


class NASError(Exception):
    """Base class of every error the package raises on bad input."""


class ExportError(NASError, ValueError):
    """A trained candidate cannot be exported, or an export's outputs differ from the PyTorch network's.

    For example: weights that do not fit the architecture, a missing ONNX
    runtime, or an operation the export format cannot express.
    """


class GraphError(NASError, ValueError):
    """An architecture graph is invalid.

    For example: a cycle, a dangling edge, an unknown operation, or a node whose
    input shapes cannot be combined.
    """


class SpaceError(NASError, ValueError):
    """A search space is malformed or cannot be loaded.

    For example: an unknown space name, a file that does not parse, or a choice
    list that is empty.
    """


class DatasetError(NASError, ValueError):
    """A dataset cannot be loaded.

    For example: an unknown dataset name, a missing or empty folder, a missing
    file, or a file that is truncated or not in the expected format.
    """


class CheckpointError(NASError, ValueError):
    """A checkpoint is corrupt, foreign, or incompatible with this code.

    For example: a file that is not a checkpoint of this package, one written by
    an incompatible version, or one whose saved config does not match.
    """


class StorageError(NASError, ValueError):
    """A storage URL is bad or a stored study conflicts with the request.

    For example: an unsupported URL scheme, or a study name that already exists
    with different settings.
    """


class Terminated(KeyboardInterrupt):
    """The process received SIGTERM (``nas`` raises it from its signal handler).

    It derives from :class:`KeyboardInterrupt`, so everything that cleans up
    after an interrupt (temporary files of atomic writes, claimed trials put
    back in the queue) cleans up after a termination too.
    """
