"""The search and admin endpoints through a real FastAPI app (routers, error handlers, auth)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from appliance.config import Settings
from appliance.engine.tokenizer import TextTokenizer
from appliance.server.deps import AppState
from appliance.server.errors import install_error_handlers
from appliance.server.routes import admin, search
from retrieval.jobs import IngestLimits
from retrieval.service import RetrievalService
from tests.retrieval.files import make_html, make_pdf

ADMIN = {"Authorization": "Bearer s3cret"}


@pytest.fixture
def client(tmp_path: Path, tokenizer: TextTokenizer) -> Iterator[TestClient]:
    service = RetrievalService.open(
        tmp_path / "data", tokenizer, chunk_tokens=128, limits=IngestLimits(max_file_bytes=200_000)
    )
    app = FastAPI()
    install_error_handlers(app)
    app.include_router(search.router)
    app.include_router(admin.router)
    app.state.appliance = AppState(settings=Settings(data_dir=tmp_path / "data", admin_key="s3cret"), retrieval=service)
    with TestClient(app) as test_client:
        yield test_client
    service.close()


def _wait(client: TestClient, job_id: str) -> dict:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        job = client.get(f"/api/admin/jobs/{job_id}", headers=ADMIN).json()
        if job["state"] in ("done", "failed"):
            return job
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} did not finish")


def test_upload_job_search_list_and_delete(client: TestClient) -> None:
    assert client.post("/api/admin/collections", json={"name": "kb"}, headers=ADMIN).status_code == 201
    files = [
        ("files", ("manual.html", make_html(), "text/html")),
        (
            "files",
            (
                "polar.pdf",
                make_pdf(
                    ["Intro\nStars.", "Penguins\nEmperor penguins huddle."], [("Intro", 0), ("Birds", 1)], title="Polar"
                ),
                "application/pdf",
            ),
        ),
        ("files", ("broken.pdf", b"%PDF-1.4 truncated", "application/pdf")),
    ]
    response = client.post("/api/admin/collections/kb/documents", files=files, headers=ADMIN)
    assert response.status_code == 202
    job = _wait(client, response.json()["job_id"])
    assert (job["state"], job["done"], job["total"]) == ("done", 3, 3)
    assert [e["file"] for e in job["errors"]] == ["broken.pdf"] and "broken.pdf" in job["errors"][0]["error"]

    hits = client.post(
        "/api/search", json={"query": "emperor penguins", "collection": "kb", "k": 3}, headers=ADMIN
    ).json()
    top = hits["hits"][0]
    assert (top["title"], top["source"], top["page"], top["heading_path"]) == ("Polar", "polar.pdf", 2, ["Birds"])
    assert set(top) >= {"chunk_id", "doc_id", "text", "score"} and hits["took_ms"] > 0
    bm25 = client.post(
        "/api/search", json={"query": "brass dial", "collection": "kb", "mode": "bm25"}, headers=ADMIN
    ).json()["hits"]
    assert bm25[0]["heading_path"][:2] == ["Widget Manual", "Calibration"]

    [kb] = client.get("/api/admin/collections", headers=ADMIN).json()["collections"]
    assert (kb["name"], kb["documents"]) == ("kb", 2)
    docs = client.get("/api/admin/collections/kb/documents", headers=ADMIN).json()["documents"]
    pdf = next(d for d in docs if d["source"] == "polar.pdf")
    assert client.delete(f"/api/admin/collections/kb/documents/{pdf['doc_id']}", headers=ADMIN).status_code == 200
    hits = client.post("/api/search", json={"query": "emperor penguins", "collection": "kb"}, headers=ADMIN).json()
    assert all(h["doc_id"] != pdf["doc_id"] for h in hits["hits"])
    assert client.delete("/api/admin/collections/kb", headers=ADMIN).status_code == 200
    assert client.get("/api/admin/collections", headers=ADMIN).json()["collections"] == []


def test_errors(client: TestClient) -> None:
    assert client.get("/api/admin/collections").status_code == 401
    assert client.get("/api/admin/collections", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert client.post("/api/search", json={"query": "x", "collection": "kb"}).status_code == 401
    assert client.post("/api/admin/collections", json={"name": "kb"}, headers=ADMIN).status_code == 201
    dup = client.post("/api/admin/collections", json={"name": "kb"}, headers=ADMIN)
    assert dup.status_code == 409 and dup.json()["error"]["type"] == "conflict"
    assert client.post("/api/admin/collections", json={"name": "../x"}, headers=ADMIN).status_code == 400
    assert client.post("/api/search", json={"query": "x", "collection": "nope"}, headers=ADMIN).status_code == 404
    assert client.post("/api/search", json={"query": "", "collection": "kb"}, headers=ADMIN).status_code == 422
    assert (
        client.post("/api/search", json={"query": "x", "collection": "kb", "mode": "magic"}, headers=ADMIN).status_code
        == 422
    )
    assert client.get("/api/admin/jobs/job_missing", headers=ADMIN).status_code == 404
    assert client.delete("/api/admin/collections/kb/documents/nope", headers=ADMIN).status_code == 404
    upload = "/api/admin/collections/{}/documents"
    exe = client.post(
        upload.format("kb"), files=[("files", ("tool.exe", b"MZ\x90\x00", "application/octet-stream"))], headers=ADMIN
    )
    assert exe.status_code == 415 and "tool.exe" in exe.json()["error"]["message"]
    big = client.post(upload.format("kb"), files=[("files", ("big.txt", b"a" * 300_000, "text/plain"))], headers=ADMIN)
    assert big.status_code == 413 and big.json()["error"]["type"] == "too_large"
    assert (
        client.post(upload.format("nope"), files=[("files", ("a.txt", b"a", "text/plain"))], headers=ADMIN).status_code
        == 404
    )
    assert client.post(upload.format("kb"), data={"x": "1"}, headers=ADMIN).status_code == 422
    assert not list((client.app.state.appliance.retrieval.uploads).glob("*"))  # refused uploads leave nothing
