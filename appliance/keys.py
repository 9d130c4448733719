"""API keys: roles, collection grants, and their store (`<data_dir>/keys.db`, SQLite).

A key reads `ak_<key_id>_<secret>`. Only an argon2id hash of the secret is stored; the whole key is shown
once, when it is created. Verification looks the key id up, then checks the secret with argon2; a key that
passed is remembered in memory (by a SHA-256 of the whole key) for `cache_s` seconds, so argon2 is not paid
per request. The key's row is still read on every request (one indexed lookup), so a key revoked from
another process (`appliance keys revoke`) stops working at once, and a changed grant applies at once.

Roles: `admin` (everything) and `reader` (search, ask and chat over the collections of its grant only;
an empty grant reads nothing).
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import sqlite3
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, cast

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from appliance.errors import ApplianceError
from retrieval.store import check_collection_name

Role = Literal["admin", "reader"]
ROLES: tuple[Role, ...] = ("admin", "reader")
KEY_PREFIX = "ak_"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS keys(
    key_id TEXT PRIMARY KEY, secret_hash TEXT NOT NULL, role TEXT NOT NULL, collections TEXT,
    created REAL NOT NULL, last_used REAL);
"""
_LAST_USED_EVERY_S = 60.0  # `last_used` is written at most this often per key


class ApiKeyError(ApplianceError):
    """A key that cannot be created as asked (unknown role, bad grant): HTTP 400."""


class UnknownKeyError(ApiKeyError):
    """No key has this id: HTTP 404."""


@dataclass(frozen=True)
class ApiKey:
    """A stored key, without its secret. `collections` is None for an admin (every collection)."""

    key_id: str
    role: Role
    collections: tuple[str, ...] | None
    created: float
    last_used: float | None


@dataclass(frozen=True)
class NewKey:
    """A key just created: `key` is the only time the secret exists outside its hash."""

    key: str
    info: ApiKey


def split_key(key: str) -> tuple[str, str] | None:
    """`ak_<key_id>_<secret>` -> (key_id, secret); None when `key` does not have that form."""
    if not key.startswith(KEY_PREFIX):
        return None
    key_id, sep, secret = key[len(KEY_PREFIX) :].partition("_")
    if not sep or not key_id.isalnum() or not secret:
        return None
    return key_id, secret


class KeyStore:
    """Thread-safe; several processes may share the file (SQLite WAL)."""

    def __init__(self, path: Path, cache_s: float = 300.0) -> None:
        self.path = path
        self.cache_s = cache_s
        # argon2id at OWASP's minimum (19 MiB, 2 passes): the secrets are random, so this only slows a thief
        self._hasher = PasswordHasher(time_cost=2, memory_cost=19 * 1024, parallelism=1)
        self._lock = threading.Lock()
        self._verified: dict[str, float] = {}  # sha256(key) -> verified until
        self._written: dict[str, float] = {}  # key id -> when last_used was last written
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)  # hashes only, but nobody else's business
        os.close(fd)
        self._db = sqlite3.connect(path, timeout=30.0, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def create(self, role: str, collections: Sequence[str] = ()) -> NewKey:
        """A new key. Readers get `collections` (names need not exist yet); admins read everything.
        Raises ApiKeyError for an unknown role, a collection name that is not valid, or a grant on an admin."""
        if role not in ROLES:
            raise ApiKeyError(f"unknown role {role!r}: use one of {', '.join(ROLES)}")
        if role == "admin" and collections:
            raise ApiKeyError("an admin key reads every collection: give collections to reader keys only")
        try:
            grant = sorted({check_collection_name(c) for c in collections})
        except ApplianceError as exc:
            raise ApiKeyError(str(exc)) from exc
        key_id = secrets.token_hex(6)
        secret = secrets.token_urlsafe(32)
        created = time.time()
        stored = None if role == "admin" else json.dumps(grant)
        with self._lock:
            self._db.execute("INSERT INTO keys VALUES (?, ?, ?, ?, ?, NULL)",
                             (key_id, self._hasher.hash(secret), role, stored, created))
        return NewKey(f"{KEY_PREFIX}{key_id}_{secret}", _key((key_id, role, stored, created, None)))

    def list_keys(self) -> list[ApiKey]:
        """Every key, oldest first (never a secret)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT key_id, role, collections, created, last_used FROM keys ORDER BY created").fetchall()
        return [_key(row) for row in rows]

    def revoke(self, key_id: str) -> None:
        """Delete a key; it stops working at once, in every process. Raises UnknownKeyError."""
        with self._lock:
            if self._db.execute("DELETE FROM keys WHERE key_id = ?", (key_id,)).rowcount == 0:
                raise UnknownKeyError(f"no key with id {key_id!r}")

    def has_keys(self) -> bool:
        with self._lock:
            return self._db.execute("SELECT 1 FROM keys LIMIT 1").fetchone() is not None

    def is_fresh(self, key: str) -> bool:
        """Whether `key` passed argon2 less than `cache_s` ago (so `verify` will not pay argon2 again)."""
        digest = hashlib.sha256(key.encode()).hexdigest()
        with self._lock:
            return self._verified.get(digest, 0.0) > time.monotonic()

    def verify(self, key: str) -> ApiKey | None:
        """The key's record if `key` is a valid, unrevoked key, else None."""
        parts = split_key(key)
        if parts is None:
            return None
        key_id, secret = parts
        digest = hashlib.sha256(key.encode()).hexdigest()
        now = time.monotonic()
        with self._lock:
            row = self._db.execute(
                "SELECT key_id, role, collections, created, last_used, secret_hash FROM keys WHERE key_id = ?",
                (key_id,)).fetchone()
            if row is None:
                self._verified.pop(digest, None)
                return None
            fresh = self._verified.get(digest, 0.0) > now
        if not fresh:
            try:
                self._hasher.verify(row[5], secret)  # outside the lock: ~20 ms of argon2
            except (VerificationError, InvalidHashError):
                return None
            with self._lock:
                if len(self._verified) > 10_000:
                    self._verified = {d: t for d, t in self._verified.items() if t > now}
                self._verified[digest] = now + self.cache_s
        self._touch(key_id, now)
        return _key(row[:5])

    def _touch(self, key_id: str, now: float) -> None:
        with self._lock:
            last = self._written.get(key_id)
            if last is not None and now - last < _LAST_USED_EVERY_S:
                return
            self._written[key_id] = now
            self._db.execute("UPDATE keys SET last_used = ? WHERE key_id = ?", (time.time(), key_id))


def _key(row: tuple) -> ApiKey:
    key_id, role, collections, created, last_used = row
    grant = None if collections is None else tuple(json.loads(collections))
    return ApiKey(key_id, cast(Role, role), grant, created, last_used)
