"""Saved conversations: `<data_dir>/conversations.db` (SQLite, WAL), one row per conversation, turn and rating.

A turn is written once, whole, in one transaction after its answer is complete (a conversation's first turn
creates the conversation in the same transaction): a crash or a dropped client during a turn leaves nothing
half-written. Turn numbers count from 1 within a conversation. Who may see what is decided by the caller
(the server); this store only records each conversation's owner (the key id that made it).
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from appliance.errors import ApplianceError

TITLE_CHARS = 80
_SCHEMA = """
CREATE TABLE IF NOT EXISTS conversations(
    conversation_id TEXT PRIMARY KEY, owner TEXT NOT NULL, collection TEXT NOT NULL, title TEXT NOT NULL,
    created_at REAL NOT NULL, updated_at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS conversations_by_owner ON conversations(owner, updated_at);
CREATE TABLE IF NOT EXISTS turns(
    conversation_id TEXT NOT NULL REFERENCES conversations(conversation_id) ON DELETE CASCADE,
    n INTEGER NOT NULL, question TEXT NOT NULL, retrieval_query TEXT NOT NULL, rewrite TEXT NOT NULL,
    answer TEXT NOT NULL, answer_token_ids BLOB NOT NULL, finish_reason TEXT, sources TEXT NOT NULL,
    added TEXT NOT NULL, citations TEXT NOT NULL, summary TEXT NOT NULL, created_at REAL NOT NULL,
    PRIMARY KEY(conversation_id, n));
CREATE TABLE IF NOT EXISTS feedback(
    conversation_id TEXT NOT NULL, n INTEGER NOT NULL, rating TEXT NOT NULL, comment TEXT,
    created_at REAL NOT NULL, PRIMARY KEY(conversation_id, n),
    FOREIGN KEY(conversation_id, n) REFERENCES turns(conversation_id, n) ON DELETE CASCADE);
"""
_CONVERSATION = ("SELECT c.conversation_id, c.owner, c.collection, c.title, c.created_at, c.updated_at, "
                 "(SELECT COUNT(*) FROM turns t WHERE t.conversation_id = c.conversation_id) FROM conversations c")
_TURN = ("SELECT t.n, t.question, t.retrieval_query, t.rewrite, t.answer, t.answer_token_ids, t.finish_reason, "
         "t.sources, t.added, t.citations, t.summary, t.created_at, f.rating, f.comment, f.created_at "
         "FROM turns t LEFT JOIN feedback f ON f.conversation_id = t.conversation_id AND f.n = t.n")


class ConversationNotFoundError(ApplianceError):
    """No such conversation, or no such turn in it: HTTP 404."""


class ConversationConflictError(ApplianceError):
    """A turn that does not fit its conversation (another owner or collection): HTTP 409."""


@dataclass(frozen=True)
class Conversation:
    conversation_id: str
    owner: str  # the key id that made it
    collection: str
    title: str
    created_at: float
    updated_at: float
    turns: int


@dataclass(frozen=True)
class Feedback:
    rating: str  # "up" | "down"
    comment: str | None
    created_at: float


@dataclass(frozen=True)
class NewTurn:
    """A finished turn as the server records it. `sources` and `citations` are the JSON the client saw;
    `added` lists (number, chunk id) of the passages this turn's prompt showed first; `summary` is the answer's
    usage, timings and KV figures."""

    question: str
    retrieval_query: str
    rewrite: str
    answer: str
    answer_token_ids: tuple[int, ...]
    finish_reason: str | None
    sources: list[dict]
    added: list[tuple[int, int]]
    citations: list[dict]
    summary: dict


@dataclass(frozen=True)
class Turn(NewTurn):
    n: int = 0
    created_at: float = 0.0
    feedback: Feedback | None = None


class ConversationStore:
    """Thread-safe; several processes may share the file (SQLite WAL, a busy wait on writes)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)  # people's questions: nobody else's business
        os.close(fd)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, timeout=30.0, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def add_turn(self, conversation_id: str, owner: str, collection: str, turn: NewTurn) -> int:
        """Record a finished turn, creating the conversation on its first; returns the turn's number.
        Raises ConversationConflictError when the conversation exists with another owner or collection."""
        now = time.time()
        with self._transaction() as db:
            row = db.execute("SELECT owner, collection FROM conversations WHERE conversation_id = ?",
                             (conversation_id,)).fetchone()
            if row is None:
                title = " ".join(turn.question.split())[:TITLE_CHARS]
                db.execute("INSERT INTO conversations VALUES (?, ?, ?, ?, ?, ?)",
                           (conversation_id, owner, collection, title, now, now))
            elif tuple(row) != (owner, collection):
                raise ConversationConflictError(f"conversation {conversation_id} belongs to another key or "
                                                "collection")
            else:
                db.execute("UPDATE conversations SET updated_at = ? WHERE conversation_id = ?", (now, conversation_id))
            n = db.execute("SELECT COALESCE(MAX(n), 0) + 1 FROM turns WHERE conversation_id = ?",
                           (conversation_id,)).fetchone()[0]
            db.execute("INSERT INTO turns VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", (
                conversation_id, n, turn.question, turn.retrieval_query, turn.rewrite, turn.answer,
                np.asarray(turn.answer_token_ids, dtype=np.int32).tobytes(), turn.finish_reason,
                json.dumps(turn.sources), json.dumps(turn.added), json.dumps(turn.citations),
                json.dumps(turn.summary), now))
        return int(n)

    def get(self, conversation_id: str) -> Conversation:
        """Raises ConversationNotFoundError."""
        rows = self._query(f"{_CONVERSATION} WHERE c.conversation_id = ?", (conversation_id,))
        if not rows:
            raise ConversationNotFoundError(f"no conversation {conversation_id!r}")
        return Conversation(*rows[0])

    def list_conversations(self, owner: str | None = None) -> list[Conversation]:
        """The conversations of `owner` (None: everyone's), the most recently updated first."""
        where, params = ("WHERE c.owner = ?", (owner,)) if owner is not None else ("", ())
        return [Conversation(*row) for row in self._query(f"{_CONVERSATION} {where} ORDER BY c.updated_at DESC",
                                                          params)]

    def turns(self, conversation_id: str) -> list[Turn]:
        """Its turns, oldest first (none for an unknown id)."""
        rows = self._query(f"{_TURN} WHERE t.conversation_id = ? ORDER BY t.n", (conversation_id,))
        return [_turn(row) for row in rows]

    def rename(self, conversation_id: str, title: str) -> None:
        with self._lock:
            changed = self._db.execute("UPDATE conversations SET title = ? WHERE conversation_id = ?",
                                       (title, conversation_id)).rowcount
        if not changed:
            raise ConversationNotFoundError(f"no conversation {conversation_id!r}")

    def delete(self, conversation_id: str) -> None:
        """Delete a conversation with its turns and their feedback. Raises ConversationNotFoundError."""
        with self._transaction() as db:
            # explicit, oldest dependents first: a store made without foreign keys on keeps no orphans either
            db.execute("DELETE FROM feedback WHERE conversation_id = ?", (conversation_id,))
            db.execute("DELETE FROM turns WHERE conversation_id = ?", (conversation_id,))
            deleted = db.execute("DELETE FROM conversations WHERE conversation_id = ?", (conversation_id,)).rowcount
        if not deleted:
            raise ConversationNotFoundError(f"no conversation {conversation_id!r}")

    def set_feedback(self, conversation_id: str, n: int, rating: str, comment: str | None) -> Feedback:
        """Rate turn `n` (a later rating replaces an earlier one). Raises ConversationNotFoundError."""
        now = time.time()
        with self._transaction() as db:
            if db.execute("SELECT 1 FROM turns WHERE conversation_id = ? AND n = ?", (conversation_id, n)
                          ).fetchone() is None:
                raise ConversationNotFoundError(f"conversation {conversation_id!r} has no turn {n}")
            db.execute("INSERT OR REPLACE INTO feedback VALUES (?, ?, ?, ?, ?)",
                       (conversation_id, n, rating, comment, now))
        return Feedback(rating, comment, now)

    def rated_turns(self) -> list[tuple[Conversation, Turn]]:
        """Every rated turn with its conversation, oldest rating first."""
        conversations: dict[str, Conversation] = {}
        turns: dict[str, dict[int, Turn]] = {}
        out = []
        for conversation_id, n in self._query("SELECT conversation_id, n FROM feedback ORDER BY created_at", ()):
            if conversation_id not in conversations:
                conversations[conversation_id] = self.get(conversation_id)
                turns[conversation_id] = {t.n: t for t in self.turns(conversation_id)}
            out.append((conversations[conversation_id], turns[conversation_id][n]))
        return out

    def _query(self, sql: str, params: tuple) -> list[tuple]:
        with self._lock:
            return self._db.execute(sql, params).fetchall()


def _turn(row: tuple) -> Turn:
    (n, question, query, rewrite, answer, token_ids, finish, sources, added, citations, summary, created,
     rating, comment, rated_at) = row
    return Turn(question, query, rewrite, answer, tuple(np.frombuffer(token_ids, dtype=np.int32).tolist()), finish,
                json.loads(sources), [tuple(a) for a in json.loads(added)], json.loads(citations),
                json.loads(summary), n, created, Feedback(rating, comment, rated_at) if rating else None)
