"""The HTTP side of metadata and filters: an upload's tags (form fields `tags` and `tag`), the metadata in the
document list and in search hits, filters on /api/search, and bad filters or tags refused with 422 JSON errors
on every path that takes them."""

from __future__ import annotations

import json
import time

import httpx
import pytest

from tests.security.conftest import ADMIN, SecureServer, secure_server  # noqa: F401  (the fixture)

SERVER_SETTINGS = {"rate_limit_per_minute": 0, "max_tokens_limit": 4}
NOTES = {
    "hr.md": b"# Leave policy\n\nStaff book annual leave through the portal two weeks ahead.",
    "ops.txt": b"Leave the server room door closed; the annual fire drill is in May.",
}


def _wait(url: str, job_id: str) -> dict:
    for _ in range(600):
        job = httpx.get(f"{url}/api/admin/jobs/{job_id}", headers=ADMIN).json()
        if job["state"] in ("done", "failed"):
            return job
        time.sleep(0.1)
    raise AssertionError("job did not finish")


@pytest.fixture(scope="module")
def uploaded(secure_server: SecureServer) -> str:  # noqa: F811
    url = secure_server.url
    assert httpx.post(f"{url}/api/admin/collections", headers=ADMIN, json={"name": "notes"}).status_code == 201
    started = time.time()
    first = httpx.post(f"{url}/api/admin/collections/notes/documents", headers=ADMIN,
                       files=[("files", ("hr.md", NOTES["hr.md"]))],
                       data={"tags": json.dumps({"team": "hr"}), "tag": ["year=2024", "confidential=yes"]})
    second = httpx.post(f"{url}/api/admin/collections/notes/documents", headers=ADMIN,
                        files=[("files", ("ops.txt", NOTES["ops.txt"]))], data={"tag": "team=ops"})
    for r in (first, second):
        assert r.status_code == 202, r.text
        assert _wait(url, r.json()["job_id"])["state"] == "done"
    assert time.time() >= started
    return url


def test_uploaded_documents_carry_their_metadata(uploaded: str) -> None:
    docs = {d["source"]: d for d in
            httpx.get(f"{uploaded}/api/admin/collections/notes/documents", headers=ADMIN).json()["documents"]}
    assert docs["hr.md"]["tags"] == {"team": "hr", "year": "2024", "confidential": "yes"}
    assert docs["ops.txt"]["tags"] == {"team": "ops"}
    assert (docs["hr.md"]["content_type"], docs["ops.txt"]["content_type"]) == ("md", "txt")
    assert abs(docs["hr.md"]["modified"] - time.time()) < 600  # an upload's time
    hits = httpx.post(f"{uploaded}/api/search", headers=ADMIN,
                      json={"query": "annual leave", "collection": "notes", "k": 5}).json()["hits"]
    assert {h["source"] for h in hits} == {"hr.md", "ops.txt"}
    hr = next(h for h in hits if h["source"] == "hr.md")
    assert hr["tags"]["team"] == "hr" and hr["content_type"] == "md" and hr["modified"] == docs["hr.md"]["modified"]


@pytest.mark.parametrize(("filters", "sources"), [
    ({"tags": {"team": "hr"}}, {"hr.md"}),
    ({"tags": {"team": "hr", "year": "2023"}}, set()),
    ({"content_type": ["txt"]}, {"ops.txt"}),
    ({"modified_after": "2001-01-01"}, {"hr.md", "ops.txt"}),
    ({"modified_after": "2999-01-01T00:00:00Z"}, set()),
    ({}, {"hr.md", "ops.txt"}),
])
def test_search_filters(uploaded: str, filters: dict, sources: set[str]) -> None:
    r = httpx.post(f"{uploaded}/api/search", headers=ADMIN,
                   json={"query": "annual leave", "collection": "notes", "k": 5, "filters": filters})
    assert r.status_code == 200, r.text
    assert {h["source"] for h in r.json()["hits"]} == sources


def test_doc_ids_filter(uploaded: str) -> None:
    docs = httpx.get(f"{uploaded}/api/admin/collections/notes/documents", headers=ADMIN).json()["documents"]
    ops = next(d["doc_id"] for d in docs if d["source"] == "ops.txt")
    r = httpx.post(f"{uploaded}/api/search", headers=ADMIN,
                   json={"query": "annual leave", "collection": "notes", "filters": {"doc_ids": [ops]}})
    assert [h["doc_id"] for h in r.json()["hits"]] == [ops]


BAD_FILTERS = [
    {"colour": "red"},  # unknown key
    {"modified_after": "last tuesday"},
    {"modified_after": "2024-13-01"},
    {"content_type": ["exe"]},
    {"tags": {"bad key": "x"}},
    {"tags": {"team": 5}},
    {"doc_ids": ["../../etc"]},
    {"content_type": "pdf"},  # a list, not a string
]


@pytest.mark.parametrize("bad", BAD_FILTERS)
def test_bad_filters_are_422_everywhere(uploaded: str, bad: dict) -> None:
    bodies = [("/api/search", {"query": "leave", "collection": "notes", "filters": bad}),
              ("/api/ask", {"question": "leave?", "collection": "notes", "max_tokens": 2, "filters": bad}),
              ("/v1/chat/completions", {"messages": [{"role": "user", "content": "leave?"}], "max_tokens": 2,
                                        "rag": {"collection": "notes", "filters": bad}})]
    for path, body in bodies:
        r = httpx.post(f"{uploaded}{path}", headers=ADMIN, json=body, timeout=60)
        assert r.status_code == 422, (path, r.text)
        assert r.json()["error"]["type"] == "invalid_request"


@pytest.mark.parametrize("data", [{"tags": "not json"}, {"tags": '["a"]'}, {"tag": "novalue"},
                                  {"tag": "bad key=x"}, {"tags": json.dumps({"k": "\u0000"})}])
def test_bad_upload_tags_are_422_and_start_no_job(uploaded: str, data: dict) -> None:
    before = len(httpx.get(f"{uploaded}/api/admin/collections/notes/documents", headers=ADMIN).json()["documents"])
    r = httpx.post(f"{uploaded}/api/admin/collections/notes/documents", headers=ADMIN,
                   files=[("files", ("new.md", b"# New\n\nSomething new."))], data=data)
    assert r.status_code == 422 and r.json()["error"]["type"] == "invalid_request", r.text
    time.sleep(0.2)
    after = httpx.get(f"{uploaded}/api/admin/collections/notes/documents", headers=ADMIN).json()["documents"]
    assert len(after) == before


def test_ask_and_rag_chat_keep_to_the_filter(uploaded: str) -> None:
    ask = httpx.post(f"{uploaded}/api/ask", headers=ADMIN, timeout=120,
                     json={"question": "annual leave", "collection": "notes", "max_tokens": 2,
                           "filters": {"tags": {"team": "ops"}}}).json()
    assert {s["doc_id"] for s in ask["sources"]} and all("fire drill" in s["text"] for s in ask["sources"])
    chat = httpx.post(f"{uploaded}/v1/chat/completions", headers=ADMIN, timeout=120,
                      json={"messages": [{"role": "user", "content": "annual leave"}], "max_tokens": 2,
                            "rag": {"collection": "notes", "filters": {"content_type": ["md"]}}}).json()
    assert chat["sources"] and all("portal" in s["text"] for s in chat["sources"])
