"""Security fixtures: a served app with an admin key and the key store on, over a data dir of its own."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from appliance.config import Settings
from appliance.engine.async_engine import AsyncEngine
from appliance.engine.engine import LLMEngine
from appliance.server.app import create_app
from retrieval.service import RetrievalService
from tests.server.conftest import served

ADMIN_KEY = "bootstrap-admin-s3cret"
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}


def rss_mb() -> float:
    """This process's resident memory (the served app runs in it)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


@dataclass
class SecureServer:
    url: str
    app: FastAPI
    engine: LLMEngine
    service: RetrievalService
    data_dir: Path

    def new_key(self, role: str, collections: list[str] | None = None) -> str:
        """A key made through the admin REST API."""
        body = {"role": role, "collections": collections or []}
        r = httpx.post(f"{self.url}/api/admin/keys", headers=ADMIN, json=body)
        assert r.status_code == 201, r.text
        return r.json()["key"]


@pytest.fixture(scope="module")
def secure_server(make_engine, loaded_model, tmp_path_factory: pytest.TempPathFactory,
                  request: pytest.FixtureRequest) -> Iterator[SecureServer]:
    """A served app with APPLIANCE_ADMIN_KEY set. A test module may set `SERVER_SETTINGS` (Settings
    overrides), `ENGINE` (make_engine overrides) and `CORPUS` ({collection: {file name: text}}, ingested
    before the server starts)."""
    data_dir = tmp_path_factory.mktemp("secure") / "data"
    settings = Settings(data_dir=data_dir, admin_key=ADMIN_KEY, **getattr(request.module, "SERVER_SETTINGS", {}))
    engine = make_engine(**{"max_num_seqs": 8, **getattr(request.module, "ENGINE", {})})
    service = RetrievalService.open(data_dir, loaded_model.tokenizer, chunk_tokens=128, limits=settings.ingest_limits())
    sources = data_dir.parent / "sources"
    for collection, files in getattr(request.module, "CORPUS", {}).items():
        paths = []
        for name, text in files.items():
            path = sources / collection / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            paths.append(path)
        assert service.ingest_paths(collection, paths).state == "done"
    app = create_app(settings, AsyncEngine(engine, max_queue=settings.max_queue), "smollm2", retrieval=service)
    with served(app) as url:
        yield SecureServer(url, app, engine, service, data_dir)
    service.close()

