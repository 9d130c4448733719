"""Ingestion jobs: read -> (expand archives) -> dedup by content hash -> parse (worker process, time limit)
-> chunk -> embed -> store as pending; then one publish transaction makes the whole job's documents
searchable (the job's commit point; it is then marked `done`).

Per-file failures are recorded and the job goes on; a file ingested with parts its parser could not read
(`ParsedDocument.warnings`) is `done` with those sentences as its error text. A job that dies half-way (even
by `kill -9`) leaves only pending rows, which `JobRecords.recover_interrupted` drops at the next open,
failing the job with a reason; nothing of it was ever visible to search.
"""

from __future__ import annotations

import hashlib
import logging
import queue
import sqlite3
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from appliance.priority import BACKGROUND_NICE, lower_priority
from retrieval.chunk import Chunker
from retrieval.embed import Embedder
from retrieval.errors import FileError, TooLargeError, UnsupportedTypeError
from retrieval.indexes import IndexManager
from retrieval.jobstore import JobRecords
from retrieval.parse import detect_kind
from retrieval.parse.pool import ParserPool
from retrieval.parse.zip import ArchiveLimits, iter_archive
from retrieval.store import Published, Store, context_text
from retrieval.types import ChunkDraft, FileState, JobStatus, ParsedDocument

log = logging.getLogger("retrieval.jobs")
EMBED_BATCH_CHUNKS = 256  # chunks of several small files are embedded together


@dataclass(frozen=True)
class IngestItem:
    """One input file: `source` is the name documents record; `path` holds the bytes. `staged` files
    (uploads copied under the data dir) are removed once the job has read them. Its documents (an archive's
    entries too) get `tags` and `modified` (epoch seconds; None: the time they are stored)."""

    source: str
    path: Path
    staged: bool = False
    tags: tuple[tuple[str, str], ...] = ()
    modified: float | None = None


@dataclass(frozen=True)
class IngestLimits:
    """Per-file size, the parser worker's time and memory, and archive expansion (Settings builds them)."""

    max_file_bytes: int = 64 * 1024 * 1024
    parse_timeout_s: float = 60.0
    parse_memory_bytes: int = 2 * 1024**3
    archive: ArchiveLimits = field(default_factory=ArchiveLimits)


@dataclass(frozen=True)
class FileEvent:
    """Progress callback payload: one file settled; `done` of `total` files so far."""

    source: str
    state: FileState
    error: str | None
    chunks: int
    done: int
    total: int


ProgressFn = Callable[[FileEvent], None]


@dataclass(frozen=True)
class _Work:
    seq: int
    source: str
    content_hash: str
    size: int
    in_archive: bool
    item: IngestItem


class Ingestor:
    """Runs one job at a time to completion (`run`); `JobRunner` calls it from a background thread."""

    def __init__(
        self,
        store: Store,
        records: JobRecords,
        indexes: IndexManager,
        chunker: Chunker,
        embedder: Embedder,
        limits: IngestLimits,
    ) -> None:
        self.store, self.records, self.indexes = store, records, indexes
        self.chunker, self.embedder, self.limits = chunker, embedder, limits
        self.pool: ParserPool[_Work] = ParserPool(limits.parse_timeout_s, memory_bytes=limits.parse_memory_bytes)
        self.on_removed: Callable[[list[str]], None] | None = None  # told which ready documents a job replaced

    def close(self) -> None:
        self.pool.close()

    def run(
        self, job_id: str, collection: str, items: list[IngestItem], progress: ProgressFn | None = None
    ) -> JobStatus:
        counts = {"done": 0, "total": len(items)}

        def settle(
            seq: int,
            source: str,
            state: FileState,
            error: str | None = None,
            doc_id: str | None = None,
            chunks: int = 0,
        ) -> None:
            self.records.set_file(job_id, seq, state, error, doc_id, chunks)
            counts["done"] += 1
            if progress is not None:
                progress(FileEvent(source, state, error, chunks, counts["done"], counts["total"]))

        def prepare(seq: int, source: str, data: bytes, item: IngestItem,
                    in_archive: bool) -> Iterator[tuple[_Work, str, bytes]]:
            digest = hashlib.sha256(data).hexdigest()
            same = self.store.find_document(collection, digest)
            if same is not None:
                reason = "unchanged" if same.source == source else f"same content as {same.source}"
                if same.source == source and item.tags and same.tags != item.tags and same.state == "ready":
                    self.store.set_tags(same.doc_id, dict(item.tags))  # new tags on unchanged content
                    reason = "unchanged (tags updated)"
                settle(seq, source, "skipped", reason, same.doc_id, same.chunks)
                return
            yield _Work(seq, source, digest, len(data), in_archive, item), source, data

        def work() -> Iterator[tuple[_Work, str, bytes]]:
            for seq, item in enumerate(items):
                try:
                    data = self._read(item)
                    if detect_kind(item.source, data[:1024]) != "zip":
                        yield from prepare(seq, item.source, data, item, False)
                        continue
                    for name, entry in iter_archive(data, item.source, self.limits.archive):
                        counts["total"] += 1
                        yield from prepare(self.records.add_file(job_id, name), name, entry, item, True)
                    settle(seq, item.source, "expanded")
                except FileError as exc:
                    settle(seq, item.source, "failed", str(exc))

        pending: list[tuple[_Work, ParsedDocument, list[ChunkDraft]]] = []

        def flush() -> None:
            """Embed the chunks of several files in one call (better length sorting), then store each file."""
            texts = [context_text(doc.title, d.heading_path, d.text) for _, doc, drafts in pending for d in drafts]
            vectors = self.embedder.encode(texts)
            offset = 0
            for work_item, doc, drafts in pending:
                part = vectors[offset : offset + len(drafts)]
                offset += len(drafts)
                try:
                    doc_id = self.store.add_pending_document(
                        collection,
                        job_id,
                        work_item.source,
                        doc.title,
                        work_item.content_hash,
                        work_item.size,
                        drafts,
                        part,
                        modified=work_item.item.modified,
                        content_type=doc.kind,
                        tags=dict(work_item.item.tags),
                    )
                except sqlite3.IntegrityError:  # the same content arrived meanwhile (this job or another)
                    settle(work_item.seq, work_item.source, "skipped", "same content ingested meanwhile")
                    continue
                # a file ingested with parts unreadable (a page OCR found no text on) says so in its error text
                settle(work_item.seq, work_item.source, "done", " ".join(doc.warnings) or None, doc_id, len(drafts))
            pending.clear()

        published = False

        def publish() -> Published:
            nonlocal published
            result = self.store.publish(collection, job_id)  # the commit point: the documents are in
            published = True
            return result

        self.records.set_state(job_id, "running")
        try:
            for work_item, result in self.pool.parse_many(work()):
                if isinstance(result, FileError):
                    unsupported_entry = work_item.in_archive and isinstance(result, UnsupportedTypeError)
                    state: FileState = "skipped" if unsupported_entry else "failed"
                    settle(work_item.seq, work_item.source, state, str(result))
                    continue
                drafts = self.chunker.chunk(result)
                if not drafts:
                    settle(work_item.seq, work_item.source, "failed", f"{work_item.source}: no text to index")
                    continue
                pending.append((work_item, result, drafts))
                if sum(len(p[2]) for p in pending) >= EMBED_BATCH_CHUNKS:
                    flush()
            flush()
            replaced = self.indexes.change(collection, publish).removed_docs
            if replaced and self.on_removed is not None:
                self.on_removed(replaced)
            self.records.set_state(job_id, "done")  # after the indexes: `done` means searchable here too
        except BaseException as exc:
            if not published:
                self.store.discard_pending(job_id)
                self.records.set_state(job_id, "failed", f"{type(exc).__name__}: {exc}")
                raise
            if not isinstance(exc, Exception):
                raise
            # the documents are ready in the store; a search rebuilds the snapshot that failed to be written
            log.warning("job %s: index snapshot not written (%s); it is rebuilt from the store", job_id, exc)
            self.records.set_state(job_id, "done")
        finally:
            for item in items:
                if item.staged:
                    item.path.unlink(missing_ok=True)
        return self.records.get(job_id)

    def _read(self, item: IngestItem) -> bytes:
        try:
            size = item.path.stat().st_size
            if size > self.limits.max_file_bytes:
                raise TooLargeError(f"{item.source}: {size} bytes is over the limit of {self.limits.max_file_bytes}")
            return item.path.read_bytes()
        except OSError as exc:
            raise FileError(f"{item.source}: cannot be read ({exc.strerror or exc})") from exc


class JobRunner:
    """A background thread that runs submitted jobs one after another."""

    def __init__(self, ingestor: Ingestor) -> None:
        self.ingestor = ingestor
        self._queue: queue.Queue[tuple[str, str, list[IngestItem]] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._loop, name="ingest-jobs", daemon=True)
        self._thread.start()

    def submit(self, job_id: str, collection: str, items: list[IngestItem]) -> None:
        self._queue.put((job_id, collection, items))

    def idle(self) -> bool:
        return self._queue.unfinished_tasks == 0

    def join(self) -> None:
        """Wait until every submitted job has finished."""
        self._queue.join()

    def stop(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=30)

    def _loop(self) -> None:
        lower_priority(BACKGROUND_NICE)  # ingestion yields the CPU to answers (`appliance.priority`)
        while (task := self._queue.get()) is not None:
            try:
                self.ingestor.run(*task)
            except Exception:
                log.exception("ingestion job %s failed", task[0])
            finally:
                self._queue.task_done()
        self._queue.task_done()
