"""The user's cache folder of ghn-nas: default GHN checkpoints and decoded embedded datasets.

``$NAS_CACHE_DIR`` when set, else ``$XDG_CACHE_HOME/ghn-nas``, else ``~/.cache/ghn-nas``.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["cache_dir"]


def cache_dir() -> Path:
    """The cache folder (not created here)."""
    if os.environ.get("NAS_CACHE_DIR"):
        return Path(os.environ["NAS_CACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "ghn-nas"
