"""How the commands report a failure the user can act on: one red line on stderr, exit status 1."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import typer
from rich.console import Console

from appliance.errors import ApplianceError

err = Console(stderr=True)


@contextmanager
def exit_on_appliance_error() -> Iterator[None]:
    """Turn an ApplianceError raised inside into `error: <message>` and `typer.Exit(1)` (no traceback)."""
    try:
        yield
    except ApplianceError as exc:
        err.print(f"[bold red]error:[/] {exc}")
        raise typer.Exit(1) from exc
