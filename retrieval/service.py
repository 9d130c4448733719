"""RetrievalService: the one facade the server and the CLI use for collections, ingestion and search.

Layout under `data_dir`: `retrieval.sqlite3` (the store, source of truth), `indexes/` (FAISS + BM25
snapshots, rebuilt from the store whenever they disagree with it), `uploads/<owner>/` (uploaded files of
one process, named by content hash, kept only until their job has read them; the folder of a process
that died is removed at the next open).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import BinaryIO

import numpy as np

from retrieval.chunk import Chunker, Tokenizer
from retrieval.embed import Embedder, shared_embedder
from retrieval.errors import NotFoundError, TooLargeError
from retrieval.filters import AllowedIds, SearchFilters, check_tags
from retrieval.indexes import IndexManager
from retrieval.jobs import IngestItem, IngestLimits, Ingestor, JobRunner, ProgressFn
from retrieval.jobstore import JobRecords
from retrieval.owner import current_owner, owner_alive
from retrieval.parse import EXTENSIONS, detect_kind
from retrieval.retrievals import RetrievalCounter
from retrieval.search import RRF_K, fuse
from retrieval.store import Store, check_collection_name
from retrieval.types import Chunk, Collection, Document, Hit, JobStatus, SearchMode

_UNSAFE_NAME = re.compile(r"[^\w.\- ()+,@]")


def safe_upload_name(raw: str) -> str:
    """The base name of an uploaded file, reduced to harmless characters (never a path)."""
    base = PurePosixPath(raw.replace("\\", "/")).name
    cleaned = _UNSAFE_NAME.sub("_", base).strip(" .")[:200]
    return cleaned or "upload"


class RetrievalService:
    """Collections, documents, ingestion jobs and hybrid search over one data dir.

    Thread-safe. Several processes may open the same data dir (e.g. a server and `appliance ingest`):
    the store serializes writes, index changes hold a per-collection file lock, and a search reloads a
    collection's indexes when the store says another process changed them.
    """

    def __init__(
        self,
        data_dir: Path,
        store: Store,
        embedder: Embedder,
        chunker: Chunker,
        indexes: IndexManager,
        limits: IngestLimits,
    ) -> None:
        self.data_dir = data_dir
        self.store = store
        self.embedder = embedder
        self.chunker = chunker
        self.indexes = indexes
        self.limits = limits
        self.jobs = JobRecords(store)
        self.ingestor = Ingestor(store, self.jobs, indexes, chunker, embedder, limits)
        self._runner: JobRunner | None = None
        self._removed_callback: Callable[[list[str]], None] | None = None
        self.retrievals = RetrievalCounter(store)
        self.uploads = data_dir / "uploads" / current_owner()
        self._chunk_docs: dict[str, tuple[tuple[int, float], np.ndarray, np.ndarray, dict[str, int]]] = {}
        self._chunk_docs_lock = threading.Lock()

    @classmethod
    def open(
        cls,
        data_dir: Path,
        tokenizer: Tokenizer,
        embedder: str = "default",
        chunk_tokens: int = 256,
        *,
        device: str = "auto",
        limits: IngestLimits | None = None,
        hnsw_threshold: int = 20_000,
    ) -> RetrievalService:
        """Open (creating if needed) the store under `data_dir`, fail jobs whose process died, and check
        every collection's indexes against the store (rebuilding those that differ). The embedding model
        loads on first use."""
        data_dir = Path(data_dir)
        data_dir.mkdir(parents=True, exist_ok=True)
        store = Store(data_dir / "retrieval.sqlite3")
        model = shared_embedder(embedder, device)
        indexes = IndexManager(data_dir / "indexes", store, lambda: model.dim, hnsw_threshold, device != "cpu")
        service = cls(data_dir, store, model, Chunker(tokenizer, chunk_tokens), indexes, limits or IngestLimits())
        service.jobs.recover_interrupted()
        _remove_dead_uploads(data_dir / "uploads")
        for collection in service.list_collections():
            indexes.check(collection.name)
        return service

    def close(self) -> None:
        if self._runner is not None:
            self._runner.stop()
        self.ingestor.close()
        self.retrievals.flush()
        self.store.close()

    # --- collections and documents -------------------------------------------------------------------
    def create_collection(self, name: str) -> Collection:
        self.store.create_collection(name)
        return next(c for c in self.store.list_collections() if c.name == name)

    def list_collections(self) -> list[Collection]:
        return self.store.list_collections()

    def on_documents_removed(self, callback: Callable[[list[str]], None]) -> None:
        """Call `callback(doc_ids)` whenever ready documents go: deleted, in a deleted collection, or replaced
        by a newer version in an ingestion job of this process (the engine drops their cached chunk KV)."""
        self._removed_callback = callback
        self.ingestor.on_removed = callback

    def _removed(self, doc_ids: list[str]) -> None:
        if doc_ids and self._removed_callback is not None:
            self._removed_callback(doc_ids)

    def delete_collection(self, name: str) -> None:
        check_collection_name(name)
        self.store.require_collection(name)
        doc_ids = [d.doc_id for d in self.store.list_documents(name)]
        self.indexes.drop(name, lambda: self.store.delete_collection(name))
        self._removed(doc_ids)

    def list_documents(self, collection: str) -> list[Document]:
        return self.store.list_documents(collection)

    def document_chunks(self, doc_id: str) -> list[Chunk]:
        return self.store.document_chunks(doc_id)

    def chunks(self, chunk_ids: list[int]) -> dict[int, Chunk]:
        """The chunks among `chunk_ids` whose documents are still ready (a deleted one is absent)."""
        return self.store.chunks(chunk_ids)

    def delete_document(self, collection: str, doc_id: str) -> None:
        """Remove a ready document and its chunks from the store and the collection's indexes."""
        self.store.require_collection(collection)
        self.indexes.change(collection, lambda: self.store.delete_document(collection, doc_id))
        self._removed([doc_id])

    # --- ingestion ---------------------------------------------------------------------------------
    def ingest_paths(
        self, collection: str, paths: Sequence[Path], progress: ProgressFn | None = None, create: bool = True,
        tags: Mapping[str, str] | None = None,
    ) -> JobStatus:
        """Ingest files, folders (recursively: files with a supported extension) and zips, in this process,
        and return the finished job. Creates the collection when `create` and it does not exist. Every
        document gets `tags` (checked first: FilterError) and its file's mtime as `modified`."""
        tag_pairs = tuple(sorted(check_tags(tags or {}).items()))
        if create and not any(c.name == collection for c in self.store.list_collections()):
            self.store.create_collection(collection)
        self.store.require_collection(collection)
        items = [IngestItem(str(p), p, tags=tag_pairs, modified=_mtime(p)) for p in _expand(paths)]
        job_id = self.jobs.create(collection, [i.source for i in items])
        return self.ingestor.run(job_id, collection, items, progress)

    def stage_upload(self, filename: str, stream: BinaryIO, tags: Mapping[str, str] | None = None) -> IngestItem:
        """Copy an uploaded file under `uploads/` (named by its content hash), checking its type from its
        name and first bytes and its size while copying; its documents get `tags` and the upload time as
        `modified`. Raises UnsupportedTypeError, TooLargeError, FilterError (bad tags)."""
        tag_pairs = tuple(sorted(check_tags(tags or {}).items()))
        name = safe_upload_name(filename)
        head = stream.read(1024)
        detect_kind(name, head)
        self.uploads.mkdir(parents=True, exist_ok=True)
        tmp = self.uploads / f".part-{uuid.uuid4().hex}"
        digest, size = hashlib.sha256(), 0
        try:
            with open(tmp, "wb") as out:
                piece = head
                while piece:
                    size += len(piece)
                    if size > self.limits.max_file_bytes:
                        raise TooLargeError(f"{name}: larger than the limit of {self.limits.max_file_bytes} bytes")
                    digest.update(piece)
                    out.write(piece)
                    piece = stream.read(1024 * 1024)
            final = self.uploads / f"{digest.hexdigest()}.{uuid.uuid4().hex[:8]}"  # two jobs may stage one file
            os.replace(tmp, final)
        finally:
            tmp.unlink(missing_ok=True)
        return IngestItem(name, final, staged=True, tags=tag_pairs, modified=time.time())

    def submit(self, collection: str, items: list[IngestItem]) -> str:
        """Queue a background job over staged items; returns its id at once."""
        self.store.require_collection(collection)
        job_id = self.jobs.create(collection, [i.source for i in items])
        if self._runner is None:
            self._runner = JobRunner(self.ingestor)
        self._runner.submit(job_id, collection, items)
        return job_id

    def job(self, job_id: str) -> JobStatus:
        return self.jobs.get(job_id)

    def wait(self, job_id: str, timeout_s: float = 600.0) -> JobStatus:
        """Poll until the job is done or failed (or the timeout passes; then its current status)."""
        deadline = time.monotonic() + timeout_s
        while (status := self.jobs.get(job_id)).state in (
            "queued",
            "running",
        ) and time.monotonic() < deadline:
            time.sleep(0.05)
        return status

    # --- search ------------------------------------------------------------------------------------
    def search(self, query: str, collections: Iterable[str], k: int = 10, mode: SearchMode = "hybrid", *,
               count: bool = True, filters: SearchFilters | None = None) -> list[Hit]:
        """The top `k` chunks of ready documents in `collections` (and passing `filters`) for `query`, best
        first; each is counted as retrieved once (`retrieval_counts`) unless `count` is False.

        Filters are resolved in the store to the allowed chunk ids of each collection, which restrict both
        indexes' candidates inside the search (before the top-k cut); every hit is checked again on its stored
        row, as its collection is. Raises NotFoundError for an unknown collection. Sees other processes'
        changes at once.
        """
        names = list(dict.fromkeys(collections))
        versions = self.store.versions(names)
        missing = [n for n in names if n not in versions]
        if missing:
            raise NotFoundError(f"collection {missing[0]!r} does not exist")
        if not query.strip() or k <= 0:
            return []
        only: list[AllowedIds | None] | None = None
        if filters is not None and not filters.empty:
            only = [self._allowed(n, versions[n], filters) for n in names]
            if not any(len(a or ()) for a in only):
                return []
        indexes = [self.indexes.get(name, versions[name]) for name in names]
        vector = self.embedder.encode_queries([query])[0] if mode != "bm25" else None
        ranked = fuse(indexes, vector, query, k + 4, mode, only)
        chunks = self.store.chunks([cid for cid, _ in ranked])
        allowed = set(names)  # the caller's collections, checked again on the stored rows (defence in depth)
        hits = [Hit(chunks[cid], score) for cid, score in ranked if cid in chunks]
        found = [hit for hit in hits if hit.chunk.collection in allowed
                 and (filters is None or filters.admits(hit.chunk))][:k]
        if count:
            self.retrievals.record(hit.chunk.chunk_id for hit in found)
        return found

    def _allowed(self, collection: str, version: int, filters: SearchFilters) -> AllowedIds:
        """The chunk ids of `collection`'s ready documents that pass `filters`: the documents are chosen in the
        store, their chunks through a chunk -> document map kept per index version."""
        docs = self.store.filtered_documents(collection, filters)
        if not docs:
            return AllowedIds(np.zeros(0, dtype=np.int64))
        # a collection deleted and made again restarts its versions: its creation time tells them apart
        created = self.store.query("SELECT created_at FROM collections WHERE name = ?", (collection,))
        if not created:
            raise NotFoundError(f"collection {collection!r} does not exist")
        mark = (version, float(created[0][0]))
        with self._chunk_docs_lock:
            cached = self._chunk_docs.get(collection)
            if cached is None or cached[0] != mark:
                ids, doc_of = self.store.ready_chunk_documents(collection)  # read after `version`: as new or newer
                names, codes = np.unique(np.asarray(doc_of, dtype=object), return_inverse=True)
                cached = (mark, ids, codes, {str(d): i for i, d in enumerate(names)})
                self._chunk_docs[collection] = cached
        _, ids, codes, code_of = cached
        wanted = np.asarray([code_of[d] for d in docs if d in code_of], dtype=np.int64)
        return AllowedIds(ids[np.isin(codes, wanted)])

    def search_phrasings(self, queries: Sequence[str], collections: Iterable[str], k: int = 10,
                         filters: SearchFilters | None = None) -> list[Hit]:
        """The top `k` chunks for several phrasings of one need (a follow-up joined with its conversation's
        earlier questions, and as asked: whichever the conversation turns out to be about), each searched
        (hybrid, within `filters`) and their rankings fused by reciprocal rank; counted as retrieved once.
        Raises as `search`."""
        rankings = [self.search(q, collections, k, "hybrid", count=False, filters=filters)
                    for q in dict.fromkeys(queries)]
        fused: dict[int, float] = {}
        chunks = {}
        for ranking in rankings:
            for rank, hit in enumerate(ranking):
                fused[hit.chunk.chunk_id] = fused.get(hit.chunk.chunk_id, 0.0) + 1.0 / (RRF_K + rank + 1)
                chunks[hit.chunk.chunk_id] = hit.chunk
        best = sorted(fused, key=lambda cid: -fused[cid])[:k]
        self.retrievals.record(best)
        return [Hit(chunks[cid], fused[cid]) for cid in best]

    def retrieval_counts(self, chunk_ids: list[int]) -> dict[int, int]:
        """How often each of `chunk_ids` was retrieved by searches of any process (written about once a second;
        absent: never)."""
        return self.store.retrievals(chunk_ids)

    def warm_up(self) -> None:
        """Load now what the first search would load: the embedder, its query threads, and every collection's
        indexes (one search each). A server calls it before it says it is ready."""
        self.embedder.encode_queries(["warm up"])
        for collection in self.list_collections():
            self.search("warm up", [collection.name], k=1, count=False)

    def embed(self, texts: list[str]) -> list[list[float]]:
        return self.embedder.encode(texts).tolist()


def _remove_dead_uploads(root: Path) -> None:
    """Remove the staging folders of processes that died (a crash mid-upload or mid-job)."""
    if root.is_dir():
        for folder in root.iterdir():
            if folder.is_dir() and not owner_alive(folder.name):
                shutil.rmtree(folder, ignore_errors=True)


def _mtime(path: Path) -> float | None:
    try:
        return path.stat().st_mtime
    except OSError:
        return None  # unreadable: the job records why


def _expand(paths: Sequence[Path]) -> list[Path]:
    """Files as given; folders become their files with a supported extension, sorted."""
    out: list[Path] = []
    for path in paths:
        if path.is_dir():
            out += sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in EXTENSIONS)
        else:
            out.append(path)
    return out
