"""API keys: the store (argon2 hashes, revocation across processes, cached verification), the CLI, the admin
REST API, /api/me, readers refused on every admin route, per-key rate limits, and `serve`'s bind check."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from appliance.cli import app as cli
from appliance.keys import KeyStore, UnknownKeyError, split_key
from tests.security.conftest import ADMIN, SecureServer

SERVER_SETTINGS = {"rate_limit_per_minute": 60, "rate_limit_burst": 20}


def test_store_keeps_only_argon2_hashes_and_revocation_is_seen_by_other_processes(tmp_path: Path) -> None:
    store = KeyStore(tmp_path / "keys.db")
    new = store.create("reader", ["hr", "eng", "hr"])
    key_id, secret = split_key(new.key) or ("", "")
    assert key_id == new.info.key_id and new.info.collections == ("eng", "hr")
    [[stored]] = sqlite3.connect(tmp_path / "keys.db").execute("SELECT secret_hash FROM keys").fetchall()
    assert stored.startswith("$argon2id$") and secret not in stored
    verified = store.verify(new.key)
    assert verified is not None and (verified.key_id, verified.role, verified.collections) == (key_id, "reader",
                                                                                                ("eng", "hr"))
    assert store.list_keys()[0].last_used is not None
    assert store.verify(new.key[:-1] + ("A" if new.key[-1] != "A" else "B")) is None  # wrong secret
    assert store.verify("ak_000000000000_whatever") is None and store.verify("not-a-key") is None
    other = KeyStore(tmp_path / "keys.db")  # another process (e.g. `appliance keys revoke`) on the same file
    other.revoke(key_id)
    assert store.verify(new.key) is None  # cached as verified, yet refused at once
    with pytest.raises(UnknownKeyError):
        other.revoke(key_id)


def test_verification_is_cached_so_argon2_is_not_paid_per_request(tmp_path: Path) -> None:
    store = KeyStore(tmp_path / "keys.db")
    key = store.create("admin").key
    started = time.perf_counter()
    store.verify(key)
    first = time.perf_counter() - started
    started = time.perf_counter()
    for _ in range(20):
        assert store.verify(key) is not None
    cached = (time.perf_counter() - started) / 20
    assert cached < first / 5, (first, cached)


def test_cli_create_list_revoke(tmp_path: Path) -> None:
    runner = CliRunner()
    data = ["--data-dir", str(tmp_path)]
    made = runner.invoke(cli, ["keys", "create", "--role", "reader", "--collections", "a,b", *data])
    assert made.exit_code == 0, made.output
    key = made.stdout.strip().splitlines()[0]
    key_id = (split_key(key) or ("", ""))[0]
    listed = runner.invoke(cli, ["keys", "list", *data])
    assert key_id in listed.stdout and "reader" in listed.stdout and key not in listed.stdout
    assert KeyStore(tmp_path / "keys.db").verify(key) is not None
    assert runner.invoke(cli, ["keys", "revoke", key_id, *data]).exit_code == 0
    assert KeyStore(tmp_path / "keys.db").verify(key) is None
    assert runner.invoke(cli, ["keys", "revoke", key_id, *data]).exit_code == 1
    bad = runner.invoke(cli, ["keys", "create", "--role", "reader", "--collections", "../etc", *data])
    assert bad.exit_code == 1 and "invalid collection name" in bad.output


def test_serve_on_a_public_address_accepts_a_stored_key_as_configured_auth(tmp_path: Path) -> None:
    KeyStore(tmp_path / "keys.db").create("admin")
    r = subprocess.run([sys.executable, "-m", "appliance.cli", "serve", "--host", "0.0.0.0", "--data-dir",
                        str(tmp_path), "--model", str(tmp_path / "missing.gguf")], capture_output=True, text=True,
                       timeout=120)
    # past the bind check (which refuses without any key), it fails on the model instead
    assert r.returncode == 1 and "model not found" in r.stderr and "without an API key" not in r.stderr


def test_rest_keys_me_and_roles(secure_server: SecureServer) -> None:
    url = secure_server.url
    made = httpx.post(f"{url}/api/admin/keys", headers=ADMIN, json={"role": "reader", "collections": ["space"]})
    assert made.status_code == 201
    body = made.json()
    assert set(body) == {"key_id", "key", "role", "collections", "created"} and body["collections"] == ["space"]
    reader = {"Authorization": f"Bearer {body['key']}"}
    assert httpx.get(f"{url}/api/me", headers=reader).json() == {
        "key_id": body["key_id"], "role": "reader", "collections": ["space"]}
    assert httpx.get(f"{url}/api/me", headers=ADMIN).json() == {"key_id": "admin", "role": "admin", "collections": None}
    listed = httpx.get(f"{url}/api/admin/keys", headers=ADMIN).json()["keys"]
    entry = next(k for k in listed if k["key_id"] == body["key_id"])
    assert set(entry) == {"key_id", "role", "collections", "created", "last_used"} and entry["last_used"] is not None
    assert body["key"] not in httpx.get(f"{url}/api/admin/keys", headers=ADMIN).text

    bad_grant = httpx.post(f"{url}/api/admin/keys", headers=ADMIN, json={"role": "admin", "collections": ["x"]})
    assert bad_grant.status_code == 400 and bad_grant.json()["error"]["type"] == "invalid_request"
    assert httpx.post(f"{url}/api/admin/keys", headers=reader, json={"role": "admin"}).status_code == 403
    assert httpx.delete(f"{url}/api/admin/keys/{body['key_id']}", headers=reader).status_code == 403
    assert httpx.delete(f"{url}/api/admin/keys/{body['key_id']}", headers=ADMIN).status_code == 200
    assert httpx.get(f"{url}/api/me", headers=reader).status_code == 401
    assert httpx.delete(f"{url}/api/admin/keys/{body['key_id']}", headers=ADMIN).status_code == 404
    assert httpx.get(f"{url}/api/me").status_code == 401
    assert httpx.get(f"{url}/metrics").status_code == 401
    assert httpx.get(f"{url}/health").status_code == 200  # liveness stays open


def test_readers_get_403_on_every_admin_route(secure_server: SecureServer) -> None:
    reader = {"Authorization": f"Bearer {secure_server.new_key('reader', ['space'])}"}
    paths = secure_server.app.openapi()["paths"]
    routes = [(method.upper(), path) for path, operations in paths.items() if path.startswith("/api/admin")
              for method in operations]
    assert len(routes) >= 11
    for method, path in routes:
        filled = path.replace("{name}", "space").replace("{doc_id}", "d").replace("{job_id}", "j").replace(
            "{key_id}", "k")
        r = httpx.request(method, f"{secure_server.url}{filled}", headers=reader, json={})
        assert r.status_code == 403 and r.json()["error"]["type"] == "forbidden", (method, path, r.text)


def test_rate_limit_per_key_answers_429_with_retry_after(secure_server: SecureServer) -> None:
    first = {"Authorization": f"Bearer {secure_server.new_key('reader')}"}
    second = {"Authorization": f"Bearer {secure_server.new_key('reader')}"}
    started = time.monotonic()
    answers = [httpx.get(f"{secure_server.url}/api/me", headers=first) for _ in range(30)]
    refills = int(time.monotonic() - started) + 1  # 60 per minute: one more request per second
    codes = [r.status_code for r in answers]
    assert codes[:20] == [200] * 20 and 20 <= codes.count(200) <= 20 + refills  # a burst of 20, then the rate
    assert set(codes) == {200, 429}
    limited = answers[codes.index(429)]
    assert int(limited.headers["retry-after"]) >= 1
    assert limited.json()["error"]["type"] == "rate_limited"
    assert httpx.get(f"{secure_server.url}/api/me", headers=second).status_code == 200  # per key
    time.sleep(1.1)
    assert httpx.get(f"{secure_server.url}/api/me", headers=first).status_code == 200  # refilled
