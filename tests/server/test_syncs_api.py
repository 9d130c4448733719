"""GET /api/admin/syncs: an admin sees each synced folder with its last pass; a reader is refused (403), and a
caller without a key too (401)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from appliance.config import Settings
from appliance.engine.async_engine import AsyncEngine
from appliance.server.app import create_app
from appliance.server.deps import Principal, current_principal
from retrieval.service import RetrievalService
from retrieval.sync import FolderSync
from tests.server.conftest import served

ADMIN = {"Authorization": "Bearer s3cret"}


@dataclass
class Synced:
    url: str
    app: object
    folder: Path


@pytest.fixture(scope="module")
def synced(make_engine, loaded_model, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Synced]:
    root = tmp_path_factory.mktemp("syncs")
    folder = root / "notes"
    folder.mkdir()
    (folder / "tides.md").write_text("# Tides\n\nThe Moon's pull raises two tidal bulges on the oceans.")
    (folder / "photo.bmp").write_bytes(b"BM")
    service = RetrievalService.open(root / "data", loaded_model.tokenizer, chunk_tokens=128)
    FolderSync(service).run("notes", folder)
    settings = Settings(data_dir=root / "data", admin_key="s3cret")
    app = create_app(settings, AsyncEngine(make_engine(max_num_seqs=2), max_queue=8), "smollm2", retrieval=service)
    with served(app) as url:
        yield Synced(url, app, folder)
    service.close()


def test_an_admin_sees_each_synced_folder_and_its_last_pass(synced: Synced) -> None:
    r = httpx.get(f"{synced.url}/api/admin/syncs", headers=ADMIN)
    assert r.status_code == 200
    [row] = r.json()["syncs"]
    assert (row["collection"], row["folder"], row["state"], row["watching"]) == (
        "notes", str(synced.folder.resolve()), "done", False)
    assert (row["added"], row["removed"], row["failed"], row["unsupported"]) == (1, 0, 0, 1)
    assert row["job_id"].startswith("job_") and row["finished_at"] >= row["started_at"] and row["error"] is None


def test_a_reader_is_refused_and_no_key_is_unauthorized(synced: Synced) -> None:
    assert httpx.get(f"{synced.url}/api/admin/syncs").status_code == 401
    overrides = synced.app.dependency_overrides  # type: ignore[attr-defined]
    overrides[current_principal] = lambda: Principal("reader-1", "reader", frozenset({"notes"}))
    try:
        r = httpx.get(f"{synced.url}/api/admin/syncs")
    finally:
        overrides.pop(current_principal)
    assert r.status_code == 403 and r.json()["error"]["type"] == "forbidden"
