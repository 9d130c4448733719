"""The durable store: SQLite in WAL mode, the source of truth for collections, documents, chunks (text,
token ids, embedding) and jobs. Indexes are rebuilt from it whenever they disagree with it.

Visibility rule: a document is `pending` while its job runs and becomes `ready` in `publish`, one
transaction per job that also replaces older versions of the same source and bumps the collection's
`index_version`. Searches only ever return chunks of `ready` documents.
"""

from __future__ import annotations

import hashlib
import json
import re
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from retrieval.errors import ConflictError, InvalidNameError, NotFoundError
from retrieval.filters import SearchFilters, check_tags
from retrieval.types import Chunk, ChunkDraft, Collection, Document

COLLECTION_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
_NAME = re.compile(COLLECTION_NAME_PATTERN)
_SCHEMA = """
CREATE TABLE IF NOT EXISTS collections(
    name TEXT PRIMARY KEY, created_at REAL NOT NULL, index_version INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS documents(
    doc_id TEXT PRIMARY KEY, collection TEXT NOT NULL REFERENCES collections(name) ON DELETE CASCADE,
    source TEXT NOT NULL, title TEXT NOT NULL, content_hash TEXT NOT NULL, size INTEGER NOT NULL,
    chunks INTEGER NOT NULL, state TEXT NOT NULL, job_id TEXT, created_at REAL NOT NULL,
    modified REAL, content_type TEXT);
CREATE INDEX IF NOT EXISTS documents_by_hash ON documents(collection, content_hash);
CREATE INDEX IF NOT EXISTS documents_by_source ON documents(collection, source);
CREATE INDEX IF NOT EXISTS documents_by_job ON documents(job_id);
CREATE TABLE IF NOT EXISTS chunks(
    chunk_id INTEGER PRIMARY KEY AUTOINCREMENT,
    doc_id TEXT NOT NULL REFERENCES documents(doc_id) ON DELETE CASCADE, ordinal INTEGER NOT NULL,
    text TEXT NOT NULL, token_ids BLOB NOT NULL, page INTEGER, heading_path TEXT NOT NULL,
    embedding BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS chunks_by_doc ON chunks(doc_id);
CREATE TABLE IF NOT EXISTS document_tags(
    doc_id TEXT NOT NULL REFERENCES documents(doc_id) ON DELETE CASCADE, key TEXT NOT NULL, value TEXT NOT NULL,
    PRIMARY KEY(doc_id, key));
CREATE INDEX IF NOT EXISTS document_tags_by_value ON document_tags(key, value);
CREATE TABLE IF NOT EXISTS chunk_retrievals(
    chunk_id INTEGER PRIMARY KEY REFERENCES chunks(chunk_id) ON DELETE CASCADE, count INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS jobs(
    job_id TEXT PRIMARY KEY, collection TEXT NOT NULL, state TEXT NOT NULL, created_at REAL NOT NULL,
    finished_at REAL, pid INTEGER, message TEXT, owner TEXT);
CREATE TABLE IF NOT EXISTS job_files(
    job_id TEXT NOT NULL REFERENCES jobs(job_id) ON DELETE CASCADE, seq INTEGER NOT NULL,
    source TEXT NOT NULL, state TEXT NOT NULL, error TEXT, doc_id TEXT, chunks INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY(job_id, seq));
"""
_LOCK_WAIT_S = 60.0  # how long a write waits for another process's transaction
_CHUNK_COLUMNS = (
    "c.chunk_id, c.doc_id, d.collection, c.ordinal, c.text, c.token_ids, d.title, d.source, c.page, c.heading_path, "
    "d.modified, d.content_type"
)
_DOC_COLUMNS = (
    "doc_id, collection, source, title, content_hash, size, chunks, state, created_at, modified, content_type"
)


def check_collection_name(name: str) -> str:
    if not _NAME.match(name):
        raise InvalidNameError(
            f"invalid collection name {name!r}: use 1-64 letters, digits, '_', '-' or '.', "
            "starting with a letter or digit"
        )
    return name


def document_id(collection: str, content_hash: str) -> str:
    return hashlib.sha256(f"{collection}\0{content_hash}".encode()).hexdigest()[:20]


@dataclass(frozen=True)
class Published:
    """What one `publish` changed in a collection: chunk ids to add to / remove from its indexes."""

    version: int
    added: list[int]
    removed: list[int]
    duplicates: list[str]  # pending doc ids dropped because an identical document became ready meanwhile
    removed_docs: list[str] = field(default_factory=list)  # ready doc ids that are gone (replaced or deleted)


def _chunk(row: tuple, tags: dict[str, tuple[tuple[str, str], ...]]) -> Chunk:
    return Chunk(
        chunk_id=row[0],
        doc_id=row[1],
        collection=row[2],
        ordinal=row[3],
        text=row[4],
        token_ids=np.frombuffer(row[5], dtype=np.int32).tolist(),
        title=row[6],
        source=row[7],
        page=row[8],
        heading_path=tuple(json.loads(row[9])),
        modified=row[10],
        content_type=row[11],
        tags=tags.get(row[1], ()),
    )


def _kind_of(source: str) -> str | None:
    """The parser kind a stored source name implies (for stores made before `content_type` was recorded)."""
    from retrieval.parse import EXTENSIONS

    return EXTENSIONS.get(Path(source.split("#")[0]).suffix.lower())


class Store:
    """Thread-safe (one connection per thread); several processes may share the file (WAL + busy wait)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._local = threading.local()
        conn = self._conn()
        conn.executescript(_SCHEMA)
        if "owner" not in {row[1] for row in conn.execute("PRAGMA table_info(jobs)")}:  # stores made before it
            conn.execute("ALTER TABLE jobs ADD COLUMN owner TEXT")
        if "modified" not in {row[1] for row in conn.execute("PRAGMA table_info(documents)")}:
            self._add_metadata_columns()

    def _add_metadata_columns(self) -> None:
        """Stores made before documents carried metadata: `modified` becomes the ingestion time, `content_type`
        the kind the source's extension names (doc ids and chunk ids stay as they are)."""
        with self.transaction() as db:
            if "modified" in {row[1] for row in db.execute("PRAGMA table_info(documents)")}:
                return  # another process migrated it meanwhile
            db.execute("ALTER TABLE documents ADD COLUMN modified REAL")
            db.execute("ALTER TABLE documents ADD COLUMN content_type TEXT")
            db.execute("UPDATE documents SET modified = created_at")
            rows = db.execute("SELECT doc_id, source FROM documents").fetchall()
            db.executemany("UPDATE documents SET content_type = ? WHERE doc_id = ?",
                           [(_kind_of(source), doc_id) for doc_id, source in rows])

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=_LOCK_WAIT_S, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA foreign_keys=ON")
            self._local.conn = conn
        return conn

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction (BEGIN IMMEDIATE: one writer at a time across processes)."""
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def query(self, sql: str, params: tuple | list = ()) -> list[tuple]:
        return self._conn().execute(sql, params).fetchall()

    def ready_totals(self) -> tuple[int, int]:
        """(documents, chunks) that search can find: those of ready documents, every collection together."""
        docs, chunks = self.query("SELECT COUNT(*), COALESCE(SUM(chunks), 0) FROM documents WHERE state = 'ready'")[0]
        return int(docs), int(chunks)

    # --- collections -------------------------------------------------------------------------------
    def create_collection(self, name: str) -> None:
        check_collection_name(name)
        try:
            with self.transaction() as db:
                db.execute("INSERT INTO collections(name, created_at) VALUES (?, ?)", (name, time.time()))
        except sqlite3.IntegrityError as exc:
            raise ConflictError(f"collection {name!r} already exists") from exc

    def require_collection(self, name: str) -> None:
        if not self.query("SELECT 1 FROM collections WHERE name = ?", (name,)):
            raise NotFoundError(f"collection {name!r} does not exist")

    def list_collections(self) -> list[Collection]:
        rows = self.query(
            "SELECT c.name, c.created_at, COUNT(d.doc_id), COALESCE(SUM(d.chunks), 0) FROM collections c "
            "LEFT JOIN documents d ON d.collection = c.name AND d.state = 'ready' "
            "GROUP BY c.name ORDER BY c.name"
        )
        return [Collection(*row) for row in rows]

    def versions(self, names: list[str]) -> dict[str, int]:
        marks = ",".join("?" * len(names))
        return dict(self.query(f"SELECT name, index_version FROM collections WHERE name IN ({marks})", names))

    def delete_collection(self, name: str) -> None:
        with self.transaction() as db:
            if db.execute("DELETE FROM collections WHERE name = ?", (name,)).rowcount == 0:
                raise NotFoundError(f"collection {name!r} does not exist")

    # --- documents ---------------------------------------------------------------------------------
    def _tags(self, doc_ids: list[str]) -> dict[str, tuple[tuple[str, str], ...]]:
        """Each document's tags, (key, value) sorted by key (documents without tags are absent)."""
        found: dict[str, list[tuple[str, str]]] = {}
        for start in range(0, len(doc_ids), 900):
            part = list(dict.fromkeys(doc_ids[start : start + 900]))
            marks = ",".join("?" * len(part))
            for doc_id, key, value in self.query(
                f"SELECT doc_id, key, value FROM document_tags WHERE doc_id IN ({marks}) ORDER BY doc_id, key", part
            ):
                found.setdefault(doc_id, []).append((key, value))
        return {doc_id: tuple(pairs) for doc_id, pairs in found.items()}

    def _documents(self, rows: list[tuple]) -> list[Document]:
        tags = self._tags([row[0] for row in rows])
        return [replace(Document(*row), tags=tags.get(row[0], ())) for row in rows]

    def list_documents(self, collection: str) -> list[Document]:
        self.require_collection(collection)
        rows = self.query(
            f"SELECT {_DOC_COLUMNS} FROM documents WHERE collection = ? AND state = 'ready' ORDER BY source",
            (collection,),
        )
        return self._documents(rows)

    def set_tags(self, doc_id: str, tags: dict[str, str]) -> None:
        """Replace a document's tags (they decide filters at the next search; indexes are not involved)."""
        with self.transaction() as db:
            db.execute("DELETE FROM document_tags WHERE doc_id = ?", (doc_id,))
            db.executemany("INSERT INTO document_tags(doc_id, key, value) VALUES (?, ?, ?)",
                           [(doc_id, k, v) for k, v in tags.items()])

    def filtered_documents(self, collection: str, filters: SearchFilters) -> list[str]:
        """Ids of the collection's ready documents that pass `filters`."""
        where, params = filters.sql()
        rows = self.query(
            f"SELECT d.doc_id FROM documents d WHERE d.collection = ? AND d.state = 'ready' AND {where}",
            [collection, *params],
        )
        return [r[0] for r in rows]

    def ready_chunk_documents(self, collection: str) -> tuple[np.ndarray, list[str]]:
        """(chunk ids of the collection's ready chunks, sorted; the document id of each)."""
        rows = self.query(
            "SELECT c.chunk_id, c.doc_id FROM chunks c JOIN documents d USING (doc_id) "
            "WHERE d.collection = ? AND d.state = 'ready' ORDER BY c.chunk_id",
            (collection,),
        )
        return np.asarray([r[0] for r in rows], dtype=np.int64), [r[1] for r in rows]

    def find_document(self, collection: str, content_hash: str) -> Document | None:
        """A document of the collection (ready, or pending in any job) with this content hash."""
        rows = self.query(
            f"SELECT {_DOC_COLUMNS} FROM documents WHERE collection = ? AND content_hash = ? LIMIT 1",
            (collection, content_hash),
        )
        return self._documents(rows)[0] if rows else None

    def add_pending_document(
        self,
        collection: str,
        job_id: str,
        source: str,
        title: str,
        content_hash: str,
        size: int,
        drafts: list[ChunkDraft],
        embeddings: np.ndarray,
        *,
        modified: float | None = None,
        content_type: str | None = None,
        tags: dict[str, str] | None = None,
    ) -> str:
        """Store a parsed document and its chunks as `pending` (invisible to search) in one transaction.
        `modified` defaults to now; `tags` are checked (`retrieval.filters.check_tags`)."""
        doc_id = document_id(collection, content_hash)
        now = time.time()
        checked = check_tags(tags or {})
        with self.transaction() as db:
            db.execute(
                "INSERT INTO documents(doc_id, collection, source, title, content_hash, size, chunks, state, job_id, "
                "created_at, modified, content_type) VALUES (?, ?, ?, ?, ?, ?, ?, 'pending', ?, ?, ?, ?)",
                (doc_id, collection, source, title, content_hash, size, len(drafts), job_id, now,
                 now if modified is None else modified, content_type),
            )
            db.executemany("INSERT INTO document_tags(doc_id, key, value) VALUES (?, ?, ?)",
                           [(doc_id, k, v) for k, v in checked.items()])
            db.executemany(
                "INSERT INTO chunks(doc_id, ordinal, text, token_ids, page, heading_path, embedding) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        doc_id,
                        i,
                        d.text,
                        np.asarray(d.token_ids, dtype=np.int32).tobytes(),
                        d.page,
                        json.dumps(list(d.heading_path)),
                        np.asarray(vec, dtype=np.float32).tobytes(),
                    )
                    for i, (d, vec) in enumerate(zip(drafts, embeddings, strict=True))
                ],
            )
        return doc_id

    def publish(self, collection: str, job_id: str) -> Published:
        """Make the job's pending documents ready, replacing ready documents of the same source; drop
        pending ones whose content became ready meanwhile (another process). Bumps the index version.

        The same transaction sets the job's `finished_at` (and marks the dropped duplicates `skipped`): it is
        the job's commit point, so a job whose process dies after it is recovered as done, never failed."""
        with self.transaction() as db:
            pending = db.execute(
                "SELECT doc_id, source, content_hash FROM documents "
                "WHERE job_id = ? AND collection = ? AND state = 'pending'",
                (job_id, collection),
            ).fetchall()
            added: list[int] = []
            removed: list[int] = []
            duplicates: list[str] = []
            removed_docs: list[str] = []
            for doc_id, source, content_hash in pending:
                if db.execute(
                    "SELECT 1 FROM documents WHERE collection = ? AND content_hash = ? AND state = 'ready'",
                    (collection, content_hash),
                ).fetchone():
                    db.execute("DELETE FROM documents WHERE doc_id = ?", (doc_id,))
                    duplicates.append(doc_id)
                    continue
                for (old,) in db.execute(
                    "SELECT doc_id FROM documents WHERE collection = ? AND source = ? AND state = 'ready'",
                    (collection, source),
                ).fetchall():
                    removed += [r[0] for r in db.execute("SELECT chunk_id FROM chunks WHERE doc_id = ?", (old,))]
                    db.execute("DELETE FROM documents WHERE doc_id = ?", (old,))
                    removed_docs.append(old)
                db.execute("UPDATE documents SET state = 'ready' WHERE doc_id = ?", (doc_id,))
                added += [r[0] for r in db.execute("SELECT chunk_id FROM chunks WHERE doc_id = ?", (doc_id,))]
            version = self._bump(db, collection)
            db.executemany(
                "UPDATE job_files SET state = 'skipped', error = 'same content ingested meanwhile' "
                "WHERE job_id = ? AND doc_id = ?",
                [(job_id, d) for d in duplicates],
            )
            db.execute("UPDATE jobs SET finished_at = ? WHERE job_id = ?", (time.time(), job_id))
        return Published(version, added, removed, duplicates, removed_docs)

    def delete_document(self, collection: str, doc_id: str) -> Published:
        with self.transaction() as db:
            removed = [
                r[0]
                for r in db.execute(
                    "SELECT c.chunk_id FROM chunks c JOIN documents d USING (doc_id) WHERE d.doc_id = ? "
                    "AND d.collection = ? AND d.state = 'ready'",
                    (doc_id, collection),
                )
            ]
            if (
                db.execute(
                    "DELETE FROM documents WHERE doc_id = ? AND collection = ? AND state = 'ready'",
                    (doc_id, collection),
                ).rowcount
                == 0
            ):
                raise NotFoundError(f"document {doc_id!r} not found in collection {collection!r}")
            version = self._bump(db, collection)
        return Published(version, [], removed, [], [doc_id])

    def discard_pending(self, job_id: str) -> None:
        with self.transaction() as db:
            db.execute("DELETE FROM documents WHERE job_id = ? AND state = 'pending'", (job_id,))

    @staticmethod
    def _bump(db: sqlite3.Connection, collection: str) -> int:
        db.execute("UPDATE collections SET index_version = index_version + 1 WHERE name = ?", (collection,))
        row = db.execute("SELECT index_version FROM collections WHERE name = ?", (collection,)).fetchone()
        if row is None:
            raise NotFoundError(f"collection {collection!r} does not exist (deleted meanwhile?)")
        return int(row[0])

    # --- chunks ------------------------------------------------------------------------------------
    def chunks(self, chunk_ids: list[int]) -> dict[int, Chunk]:
        """Chunks of ready documents among `chunk_ids` (others are silently absent)."""
        if not chunk_ids:
            return {}
        marks = ",".join("?" * len(chunk_ids))
        rows = self.query(
            f"SELECT {_CHUNK_COLUMNS} FROM chunks c JOIN documents d USING (doc_id) "
            f"WHERE c.chunk_id IN ({marks}) AND d.state = 'ready'",
            list(chunk_ids),
        )
        tags = self._tags([row[1] for row in rows])
        return {row[0]: _chunk(row, tags) for row in rows}

    def document_chunks(self, doc_id: str) -> list[Chunk]:
        rows = self.query(
            f"SELECT {_CHUNK_COLUMNS} FROM chunks c JOIN documents d USING (doc_id) "
            "WHERE c.doc_id = ? ORDER BY c.ordinal",
            (doc_id,),
        )
        tags = self._tags([doc_id])
        return [_chunk(row, tags) for row in rows]

    def add_retrievals(self, counts: dict[int, int], lock_wait_s: float) -> None:
        """Add `counts` (chunk id -> times retrieved) to the stored counts, in one transaction; chunks deleted
        meanwhile are passed over. Raises sqlite3.OperationalError when another writer holds the lock longer
        than `lock_wait_s` (nothing is written then)."""
        conn = self._conn()
        conn.execute(f"PRAGMA busy_timeout = {int(lock_wait_s * 1000)}")
        try:
            with self.transaction() as db:
                marks = ",".join("?" * len(counts))
                db.execute(f"INSERT OR IGNORE INTO chunk_retrievals(chunk_id, count) SELECT chunk_id, 0 FROM chunks "
                           f"WHERE chunk_id IN ({marks})", list(counts))
                db.executemany("UPDATE chunk_retrievals SET count = count + ? WHERE chunk_id = ?",
                               [(n, cid) for cid, n in counts.items()])
        finally:
            conn.execute(f"PRAGMA busy_timeout = {int(_LOCK_WAIT_S * 1000)}")

    def retrievals(self, chunk_ids: list[int]) -> dict[int, int]:
        """How often each of `chunk_ids` was retrieved (absent: never, or not yet written)."""
        if not chunk_ids:
            return {}
        marks = ",".join("?" * len(chunk_ids))
        return dict(self.query(f"SELECT chunk_id, count FROM chunk_retrievals WHERE chunk_id IN ({marks})",
                               list(chunk_ids)))

    def ready_chunk_ids(self, collection: str) -> np.ndarray:
        rows = self.query(
            "SELECT c.chunk_id FROM chunks c JOIN documents d USING (doc_id) "
            "WHERE d.collection = ? AND d.state = 'ready' ORDER BY c.chunk_id",
            (collection,),
        )
        return np.asarray([r[0] for r in rows], dtype=np.int64)

    def embeddings(self, chunk_ids: list[int]) -> np.ndarray:
        """Stored vectors of `chunk_ids`, in that order."""
        marks = ",".join("?" * len(chunk_ids))
        found = dict(self.query(f"SELECT chunk_id, embedding FROM chunks WHERE chunk_id IN ({marks})", chunk_ids))
        return np.stack([np.frombuffer(found[i], dtype=np.float32) for i in chunk_ids])

    def ready_corpus(
        self, collection: str, with_vectors: bool = True
    ) -> tuple[np.ndarray, np.ndarray | None, list[str]]:
        """(chunk ids, embeddings (None when empty or not asked for), BM25 texts: title + headings + text)
        of the collection's ready chunks, by chunk id."""
        vector_column = "c.embedding" if with_vectors else "NULL"
        rows = self.query(
            f"SELECT c.chunk_id, {vector_column}, d.title, c.heading_path, c.text FROM chunks c "
            "JOIN documents d USING (doc_id) WHERE d.collection = ? AND d.state = 'ready' "
            "ORDER BY c.chunk_id",
            (collection,),
        )
        ids = np.asarray([r[0] for r in rows], dtype=np.int64)
        vectors = np.stack([np.frombuffer(r[1], dtype=np.float32) for r in rows]) if rows and with_vectors else None
        texts = [context_text(r[2], tuple(json.loads(r[3])), r[4]) for r in rows]
        return ids, vectors, texts


def context_text(title: str, heading_path: tuple[str, ...], text: str) -> str:
    """What gets embedded and BM25-indexed for a chunk: its title and heading path give it context."""
    headings = " > ".join(h for h in heading_path if h != title)
    return f"{title}\n{headings}\n{text}" if headings else f"{title}\n{text}"
