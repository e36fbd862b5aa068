"""CLI commands (to be filled by the owning work stream)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    pass
