"""Placeholder until the subcommands of this module land."""

from __future__ import annotations

from typing import Any


def add_parsers(subparsers: Any) -> None:
    """Register no subcommands yet."""
