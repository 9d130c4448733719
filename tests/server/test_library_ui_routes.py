"""What readers may read (GET /api/collections, GET /api/documents/{id}) and how the web UI's files are served."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from appliance.server.deps import Principal, current_principal
from appliance.server.routes import ui
from tests.server.conftest import Server


@pytest.fixture
def reader_of_space(rag_server: Server) -> Iterator[None]:
    overrides = rag_server.app.dependency_overrides
    overrides[current_principal] = lambda: Principal("reader-1", "reader", frozenset({"space"}))
    yield
    overrides.pop(current_principal)


def _doc_id(server: Server, collection: str, title: str) -> str:
    service = server.app.state.appliance.retrieval
    return next(d.doc_id for d in service.list_documents(collection) if d.title == title)


def test_collections_are_those_the_key_may_read(rag_server: Server) -> None:
    names = {c["name"] for c in httpx.get(f"{rag_server.url}/api/collections").json()["collections"]}
    assert {"space", "kitchen"} <= names
    rag_server.app.dependency_overrides[current_principal] = lambda: Principal("r", "reader", frozenset({"space"}))
    try:
        body = httpx.get(f"{rag_server.url}/api/collections").json()
    finally:
        rag_server.app.dependency_overrides.pop(current_principal)
    assert [(c["name"], c["documents"]) for c in body["collections"]] == [("space", 3)]


def test_a_document_reads_as_its_passages_in_order(rag_server: Server) -> None:
    doc_id = _doc_id(rag_server, "kitchen", "Bread")
    body = httpx.get(f"{rag_server.url}/api/documents/{doc_id}").json()
    assert (body["doc_id"], body["collection"], body["title"], body["source"].endswith("bread.md")) == (
        doc_id, "kitchen", "Bread", True)
    assert [p["ordinal"] for p in body["passages"]] == sorted(p["ordinal"] for p in body["passages"])
    assert "wild yeast" in " ".join(p["text"] for p in body["passages"])
    assert httpx.get(f"{rag_server.url}/api/documents/no-such-doc").status_code == 404


def test_a_reader_cannot_read_documents_outside_its_collections(rag_server: Server, reader_of_space: None) -> None:
    url = rag_server.url
    assert httpx.get(f"{url}/api/documents/{_doc_id(rag_server, 'space', 'Mars')}").status_code == 200
    r = httpx.get(f"{url}/api/documents/{_doc_id(rag_server, 'kitchen', 'Bread')}")
    assert r.status_code == 404 and "yeast" not in r.text  # as if it did not exist


def test_pages_and_assets_carry_a_strict_content_security_policy(rag_server: Server) -> None:
    for path in ("/", "/search", "/admin", "/doc"):
        r = httpx.get(f"{rag_server.url}{path}")
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
        csp = r.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp and "unsafe-inline" not in csp
        assert r.headers["x-content-type-options"] == "nosniff"
    for asset, kind in (("/ui/js/ask.js", "text/javascript"), ("/ui/app.css", "text/css")):
        r = httpx.get(f"{rag_server.url}{asset}")
        assert r.status_code == 200 and r.headers["content-type"].startswith(kind)


def test_assets_never_come_from_outside_the_ui_folder(rag_server: Server, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "ui").mkdir()
    (tmp_path / "ui" / "ok.js").write_text("fine")
    (tmp_path / "ui" / "notes.txt").write_text("not an asset type")
    (tmp_path / "secret.js").write_text("top secret content")
    monkeypatch.setattr(ui, "UI_DIR", tmp_path / "ui")
    assert httpx.get(f"{rag_server.url}/ui/ok.js").text == "fine"
    for path in ("/ui/%2e%2e/secret.js", "/ui/..%2fsecret.js", "/ui/notes.txt", "/ui/missing.js"):
        r = httpx.get(f"{rag_server.url}{path}")
        assert r.status_code == 404 and "top secret content" not in r.text, path
