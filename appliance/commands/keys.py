"""`appliance keys create|list|revoke`: API keys in `<data_dir>/keys.db`, also reachable over HTTP
(`/api/admin/keys`). A running server sees a new or revoked key at its next request."""

from __future__ import annotations

import json
import time
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from appliance.config import Settings
from appliance.keys import ApiKeyError, KeyStore

keys_app = typer.Typer(help="API keys: create (shown once), list, revoke.", no_args_is_help=True)
console = Console()
err = Console(stderr=True)
DataDir = Annotated[Path | None, typer.Option(envvar="APPLIANCE_DATA_DIR", help="Data dir [default: ./data]")]


class RoleChoice(StrEnum):
    admin = "admin"
    reader = "reader"


def _store(data_dir: Path | None) -> KeyStore:
    return KeyStore(Settings.with_flags(data_dir=data_dir).data_dir / "keys.db")


def _when(ts: float | None) -> str:
    return "-" if ts is None else time.strftime("%Y-%m-%d %H:%M", time.localtime(ts))


@keys_app.command("create")
def create(
    role: Annotated[RoleChoice, typer.Option(help="admin: everything; reader: search/ask its collections")],
    collections: Annotated[str, typer.Option(help="A reader's collections, comma-separated (none: reads nothing)")]
    = "",
    data_dir: DataDir = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print {key_id, key, role, collections} as JSON")]
    = False,
) -> None:
    """Create a key and print it once (only its hash is stored)."""
    names = [c.strip() for c in collections.split(",") if c.strip()]
    try:
        new = _store(data_dir).create(role.value, names)
    except ApiKeyError as exc:
        err.print(f"[bold red]error:[/] {exc}")
        raise typer.Exit(1) from exc
    info = new.info
    if json_output:
        print(json.dumps({"key_id": info.key_id, "key": new.key, "role": info.role,
                          "collections": None if info.collections is None else list(info.collections)}))
        return
    print(new.key)
    grant = "every collection" if info.collections is None else (", ".join(info.collections) or "no collection")
    err.print(f"key {info.key_id} ({info.role}, reads {grant}); store it now: it is not shown again")


@keys_app.command("list")
def list_keys(data_dir: DataDir = None) -> None:
    """The keys: id, role, collections, created, last used (never a secret)."""
    table = Table("key id", "role", "collections", "created", "last used")
    for key in _store(data_dir).list_keys():
        grant = "(all)" if key.collections is None else ", ".join(key.collections) or "(none)"
        table.add_row(key.key_id, key.role, grant, _when(key.created), _when(key.last_used))
    console.print(table)


@keys_app.command("revoke")
def revoke(key_id: Annotated[str, typer.Argument(help="The key id (from `appliance keys list`)")],
           data_dir: DataDir = None) -> None:
    """Revoke a key: every server on this data dir refuses it from its next request."""
    try:
        _store(data_dir).revoke(key_id)
    except ApiKeyError as exc:
        err.print(f"[bold red]error:[/] {exc}")
        raise typer.Exit(1) from exc
    err.print(f"revoked {key_id}")
