"""The per-collection search indexes of one process, kept in step with the store.

Snapshots live in `<root>/<collection>/v<version>/` (FAISS bytes, tombstones, BM25 folder), written into a
temporary folder and renamed into place, so a reader sees a whole snapshot or none. Every change of a
collection's indexes happens under its file lock (`<root>/<collection>.lock`), shared by all processes on
the data dir: publish in the store, update the indexes, write the snapshot. A process notices another's
change by the collection's `index_version` in the store (one cheap query per search) and then reloads.
Whenever a snapshot is missing or its ids differ from the store's ready chunks it is rebuilt from the store.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from filelock import FileLock, Timeout

from retrieval.index import VectorIndex
from retrieval.lexical import LexicalIndex
from retrieval.store import Published, Store

log = logging.getLogger("retrieval.indexes")


@dataclass(frozen=True)
class CollectionIndex:
    version: int
    vector: VectorIndex
    lexical: LexicalIndex


class IndexManager:
    def __init__(self, root: Path, store: Store, dim: Callable[[], int], hnsw_threshold: int = 20_000,
                 use_gpu: bool = True) -> None:
        """`use_gpu`: exact vector search may run on faiss-gpu when CUDA is there (False: always the CPU)."""
        self.root = root
        self.use_gpu = use_gpu
        self.store = store
        self._dim = dim  # called only when an index must be built, so the embedder loads lazily
        self.hnsw_threshold = hnsw_threshold
        self._loaded: dict[str, CollectionIndex] = {}
        self._mutex = threading.Lock()
        self._locks: dict[str, threading.RLock] = {}
        root.mkdir(parents=True, exist_ok=True)
        self.rebuilds = 0  # how many times an index was rebuilt from the store (tests and metrics read it)

    def _thread_lock(self, collection: str) -> threading.RLock:
        with self._mutex:
            return self._locks.setdefault(collection, threading.RLock())

    def _file_lock(self, collection: str) -> FileLock:
        return FileLock(str(self.root / f"{collection}.lock"), timeout=600)

    def get(self, collection: str, version: int) -> CollectionIndex:
        """The collection's indexes at the store's `version`, reloaded or rebuilt when this process is behind.

        While another thread or process is changing the collection's indexes, a search does not wait: it
        gets the indexes this process already has (they never hold half a document; hits are checked
        against the store), and the next search after the change picks the new snapshot up.
        """
        current = self._loaded.get(collection)
        if current is not None and current.version == version:
            return current
        if current is None:
            with self._thread_lock(collection), self._file_lock(collection):
                return self._sync(collection)
        thread_lock = self._thread_lock(collection)
        if not thread_lock.acquire(blocking=False):
            return current
        try:
            file_lock = self._file_lock(collection)
            try:
                file_lock.acquire(timeout=0)
            except Timeout:
                return current
            try:
                return self._sync(collection)
            finally:
                file_lock.release()
        finally:
            thread_lock.release()

    def check(self, collection: str) -> CollectionIndex:
        """Load the collection's snapshot, verify it against the store, rebuild it if it differs; remove
        the half-written snapshots of a process that died while writing (only written under this lock)."""
        with self._thread_lock(collection), self._file_lock(collection):
            for partial in (self.root / collection).glob(".tmp-*"):
                shutil.rmtree(partial, ignore_errors=True)
            self._loaded.pop(collection, None)
            return self._sync(collection)

    def change(self, collection: str, mutate: Callable[[], Published]) -> Published:
        """Run `mutate` (a store transaction that bumps the version) and bring the indexes along, atomically
        with respect to every other process's index changes."""
        with self._thread_lock(collection), self._file_lock(collection):
            base = self._sync(collection)
            published = mutate()
            added = np.asarray(published.added, dtype=np.int64)
            vectors = self.store.embeddings(published.added) if len(added) else None
            vector = base.vector.with_changes(
                added, vectors, np.asarray(published.removed, dtype=np.int64), self.hnsw_threshold
            )
            ids, _, texts = self.store.ready_corpus(collection, with_vectors=False)
            updated = CollectionIndex(published.version, vector, LexicalIndex.build(ids, texts))
            self._write(collection, updated)
            self._loaded[collection] = updated
            return published

    def drop(self, collection: str, delete: Callable[[], None]) -> None:
        with self._thread_lock(collection), self._file_lock(collection):
            delete()
            self._loaded.pop(collection, None)
            shutil.rmtree(self.root / collection, ignore_errors=True)

    # --- under the collection's locks ----------------------------------------------------------------
    def _sync(self, collection: str) -> CollectionIndex:
        version = self.store.versions([collection]).get(collection, 0)
        current = self._loaded.get(collection)
        if current is not None and current.version == version:
            return current
        loaded = self._read(collection, version)
        if (
            loaded is None
            or not np.array_equal(loaded.vector.ids(), self.store.ready_chunk_ids(collection))
            or not np.array_equal(np.sort(loaded.lexical.ids), loaded.vector.ids())
        ):
            loaded = self._rebuild(collection, version)
        self._loaded[collection] = loaded
        return loaded

    def _rebuild(self, collection: str, version: int) -> CollectionIndex:
        log.info("rebuilding the indexes of collection %r from the store", collection)
        self.rebuilds += 1
        ids, vectors, texts = self.store.ready_corpus(collection)
        rebuilt = CollectionIndex(
            version,
            VectorIndex.build(self._dim(), ids, vectors, self.hnsw_threshold, self.use_gpu),
            LexicalIndex.build(ids, texts),
        )
        self._write(collection, rebuilt)
        return rebuilt

    def _read(self, collection: str, version: int) -> CollectionIndex | None:
        folder = self.root / collection / f"v{version}"
        try:
            vector = VectorIndex.from_bytes((folder / "vectors.faiss").read_bytes(), np.load(folder / "tombstones.npy"),
                                            self.use_gpu)
            return CollectionIndex(version, vector, LexicalIndex.load(folder / "bm25"))
        except FileNotFoundError:
            return None
        except Exception:  # a damaged snapshot is rebuilt, never trusted
            log.warning("snapshot %s is unreadable; rebuilding", folder, exc_info=True)
            return None

    def _write(self, collection: str, index: CollectionIndex) -> None:
        parent = self.root / collection
        parent.mkdir(parents=True, exist_ok=True)
        final = parent / f"v{index.version}"
        tmp = parent / f".tmp-{uuid.uuid4().hex}"
        tmp.mkdir()
        (tmp / "vectors.faiss").write_bytes(index.vector.to_bytes())
        np.save(tmp / "tombstones.npy", index.vector.tombstones)
        index.lexical.save(tmp / "bm25")
        for path in tmp.rglob("*"):
            if path.is_file():
                with open(path, "rb") as fh:
                    os.fsync(fh.fileno())
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        for old in parent.iterdir():  # keep the previous version for readers that are still loading it
            if old.name.startswith("v") and old.name[1:].isdigit() and int(old.name[1:]) < index.version - 1:
                shutil.rmtree(old, ignore_errors=True)
