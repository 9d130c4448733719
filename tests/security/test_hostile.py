"""Hostile input: files that attack the parsers, bodies that attack the server. Each gets its clear error,
nothing is written outside the data dir, the server stays up and its memory stays bounded."""

from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path

import httpx
import pytest

from tests.security.conftest import ADMIN, SecureServer, rss_mb
from tests.security.figures import record
from tests.security.hostile_files import corpus

SERVER_SETTINGS = {"parse_timeout_s": 3, "parse_memory_mb": 1024, "max_file_mb": 16, "max_upload_mb": 32,
                   "max_upload_files": 8, "archive_max_mb": 64, "rate_limit_per_minute": 0, "max_tokens_limit": 2}
CORPUS = {"kb": {"intro.md": "# Intro\n\nThe appliance answers questions over documents."}}
MB = 1024 * 1024


def _files_named(root: Path, fragment: str) -> list[str]:
    return [os.path.join(d, f) for d, _, files in os.walk(root) for f in files if fragment in f]


def _wait(url: str, job_id: str) -> dict:
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        job = httpx.get(f"{url}/api/admin/jobs/{job_id}", headers=ADMIN).json()
        if job["state"] in ("done", "failed"):
            return job
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} did not finish")


def test_hostile_files_get_their_errors_and_touch_nothing_outside(secure_server: SecureServer, tmp_path: Path) -> None:
    url, marker = secure_server.url, f"evil-{uuid.uuid4().hex[:12]}"
    secret = tmp_path / "secret.txt"
    secret.write_text(f"TOP-SECRET-{marker}")
    hostile = corpus(marker, secret)
    baseline = rss_mb()
    files: dict[str, dict] = {}
    for start in range(0, len(hostile), 8):  # the server takes at most 8 files an upload
        upload = [("files", (h.name, h.data, "application/octet-stream")) for h in hostile[start:start + 8]]
        response = httpx.post(f"{url}/api/admin/collections/kb/documents", headers=ADMIN, files=upload, timeout=120)
        assert response.status_code == 202, response.text
        job = _wait(url, response.json()["job_id"])
        assert job["state"] == "done"  # per-file failures do not fail the job
        files.update({f["file"]: f for f in job["files"]})
    for h in hostile:
        got = files[h.name]
        assert got["state"] == h.state and h.reason in (got["error"] or ""), (h.name, got)
        if h.state == "failed":
            assert h.name in got["error"]  # the message names the file
    nested = [f for name, f in files.items() if name.startswith("nested.zip/")]
    assert len(nested) == 3 and all(f["state"] == "skipped" and "nested archives" in f["error"] for f in nested)
    growth = rss_mb() - baseline
    assert growth < 300, growth  # a 200 MB zip bomb and three nested ones were never expanded

    outside = _files_named(Path("/tmp"), marker) + _files_named(secure_server.data_dir.parent, marker)
    assert outside == [] and not Path(f"/tmp/{marker}.txt").exists()
    stored = secure_server.service.store.query("SELECT COUNT(*) FROM chunks WHERE text LIKE ?", (f"%{marker}%",))
    assert stored == [(0,)]  # neither the zip-slip payload nor the XXE target got in
    assert httpx.get(f"{url}/health").status_code == 200
    hits = httpx.post(f"{url}/api/search", headers=ADMIN, json={"query": "answers questions", "collection": "kb"})
    assert hits.status_code == 200 and hits.json()["hits"][0]["title"] == "Intro"
    record("hostile_files", {"files": len(hostile), "clear_errors": len(hostile), "written_outside_data_dir": 0,
                             "rss_growth_mb": round(growth, 1)})


def test_upload_limits(secure_server: SecureServer) -> None:
    url = f"{secure_server.url}/api/admin/collections/kb/documents"
    big = httpx.post(url, headers=ADMIN, files=[("files", ("big.txt", b"a" * (17 * MB), "text/plain"))], timeout=60)
    assert big.status_code == 413 and "big.txt" in big.json()["error"]["message"]
    many = [("files", (f"f{i}.txt", b"text", "text/plain")) for i in range(9)]
    too_many = httpx.post(url, headers=ADMIN, files=many)
    assert too_many.status_code == 413 and "more than 8 files" in too_many.json()["error"]["message"]
    exe = httpx.post(url, headers=ADMIN, files=[("files", ("tool.exe", b"MZ\x90\x00", "application/octet-stream"))])
    assert exe.status_code == 415 and exe.json()["error"]["type"] == "unsupported_media_type"


def _hundred_mb(multipart: bool):
    if multipart:  # one file part whose content never ends within the limit
        yield b'--b\r\nContent-Disposition: form-data; name="files"; filename="big.txt"\r\n\r\n'
    block = b"x" * MB
    for _ in range(100):
        yield block


@pytest.mark.parametrize("path", ["/api/ask", "/v1/chat/completions", "/api/admin/collections/kb/documents"])
@pytest.mark.parametrize("declared", [True, False])
def test_a_100_mb_body_is_refused_without_reading_it(secure_server: SecureServer, path: str, declared: bool) -> None:
    baseline = rss_mb()
    multipart = path.endswith("/documents")
    headers = {**ADMIN, "content-type": "multipart/form-data; boundary=b" if multipart else "application/json"}
    if declared:
        headers["content-length"] = str(100 * MB)
    started = time.perf_counter()
    r = httpx.post(f"{secure_server.url}{path}", headers=headers, content=_hundred_mb(multipart), timeout=120)
    assert r.status_code == 413 and r.json()["error"]["type"] == "too_large"
    assert rss_mb() - baseline < 64  # never buffered
    assert httpx.get(f"{secure_server.url}/health").status_code == 200
    record(f"body_100mb{path.replace('/', '_')}_{'declared' if declared else 'chunked'}",
           {"status": r.status_code, "seconds": round(time.perf_counter() - started, 3)})


BAD_BODIES = {
    "malformed_json": b'{"question": ',
    "not_an_object": b"[1, 2, 3]",
    "wrong_types": json.dumps({"question": 5, "collection": ["x"], "k": "many", "messages": "hi", "prompt": {},
                               "input": 3, "name": 7, "role": 1, "query": None, "stream": "yes"}).encode(),
    "booleans_for_numbers_and_strings": json.dumps({
        "question": "q", "collection": "kb", "query": "q", "k": True, "max_tokens": False, "seed": True,
        "messages": [{"role": "user", "content": "hi"}], "prompt": "p", "input": False, "name": True,
        "role": False}).encode(),
    "invalid_utf8": b'{"question": "\xff\xfe\xfd", "collection": "kb", "query": "\xc3\x28", "name": "\xa0\xa1"}',
    "deep_nesting": b'{"question": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    "huge_strings": json.dumps({k: "a" * 700_000 for k in ("question", "query", "prompt", "input", "name")}).encode(),
    "nan_and_infinity": b'{"question": "q", "collection": "kb", "temperature": NaN, "top_p": Infinity, "k": -Infinity}',
    "control_characters": json.dumps({
        "question": "\u0000\u0007\u001b[31mhi", "collection": "kb", "query": "\u0000\u202e", "max_tokens": 2,
        "messages": [{"role": "user", "content": "\u0000\ufffe\u001b"}], "prompt": "\u0000", "input": "\u0000",
        "name": "kb\u0000evil", "role": "reader", "collections": ["\u0000"]}).encode(),
}
ENDPOINTS = ["/api/ask", "/api/search", "/v1/chat/completions", "/v1/completions", "/v1/embeddings",
             "/api/admin/collections", "/api/admin/keys"]
_outcomes: dict[str, int] = {}


@pytest.mark.parametrize("kind", sorted(BAD_BODIES))
def test_bad_bodies_get_json_errors_never_500(secure_server: SecureServer, kind: str) -> None:
    for path in ENDPOINTS:
        r = httpx.post(f"{secure_server.url}{path}", content=BAD_BODIES[kind], timeout=120,
                       headers={**ADMIN, "content-type": "application/json"})
        assert r.status_code < 500 and "Traceback" not in r.text, (path, r.status_code, r.text[:300])
        body = r.json()
        if kind != "control_characters":  # control characters are valid text: served, or refused by name
            assert 400 <= r.status_code < 500, (path, r.text[:300])
        if r.status_code >= 400:
            assert set(body) == {"error"} and body["error"]["type"] and body["error"]["message"], body
        _outcomes[f"{kind} {path}"] = r.status_code
    assert httpx.get(f"{secure_server.url}/health").status_code == 200
    record("bad_bodies", {"requests": len(_outcomes), "server_errors": sum(s >= 500 for s in _outcomes.values())})
