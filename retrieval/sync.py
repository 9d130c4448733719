"""Keep a collection equal to a folder (`appliance sync DIR --collection NAME [--watch]`).

One pass: scan the folder (supported files by the extension rule of a folder ingest, each hashed with sha256
while streaming it), plan against the collection's ready documents (`retrieval.sync_plan`), then apply:
removals and renames in one store transaction (renames only rewrite `documents.source`: no parse, no
embedding; the title stays the one read from the file at ingestion), then one ingestion job for new and
changed files (its publish replaces a changed file's old version atomically). Sources are the files' absolute
paths under the folder as resolved (what `appliance ingest /abs/folder` records).

A collection is owned by its folder: documents whose content is in no file of the folder are removed, whatever
added them. A pass that is killed leaves nothing half-done (the removal transaction is atomic, the job's
publish is its commit point, pending rows are dropped at the next open), so the next pass converges on the
folder with no duplicates. Files whose content failed to ingest are remembered (`sync_failures`) and not
retried until they change. Each collection's last pass is kept in `synced_folders` for the admin page.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from retrieval.errors import ConflictError, NotFoundError
from retrieval.jobs import ProgressFn
from retrieval.owner import current_owner, owner_alive
from retrieval.parse import EXTENSIONS
from retrieval.service import RetrievalService
from retrieval.store import Published, Store
from retrieval.sync_plan import Rename, StoredDoc, SyncPlan, plan_sync

log = logging.getLogger("retrieval.sync")
ARCHIVES = {".zip"}  # a folder sync keeps files, not the entries of archives inside them
_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS synced_folders(collection TEXT PRIMARY KEY REFERENCES collections(name) "
    "ON DELETE CASCADE, folder TEXT NOT NULL, state TEXT NOT NULL, owner TEXT, watcher TEXT, started_at REAL "
    "NOT NULL, finished_at REAL, added INTEGER NOT NULL DEFAULT 0, changed INTEGER NOT NULL DEFAULT 0, "
    "removed INTEGER NOT NULL DEFAULT 0, renamed INTEGER NOT NULL DEFAULT 0, unchanged INTEGER NOT NULL DEFAULT 0, "
    "failed INTEGER NOT NULL DEFAULT 0, unsupported INTEGER NOT NULL DEFAULT 0, job_id TEXT, error TEXT)",
    "CREATE TABLE IF NOT EXISTS sync_failures(collection TEXT NOT NULL REFERENCES collections(name) "
    "ON DELETE CASCADE, source TEXT NOT NULL, content_hash TEXT NOT NULL, error TEXT NOT NULL, "
    "PRIMARY KEY(collection, source))",
)
_RECORD_COLUMNS = ("collection, folder, state, owner, watcher, started_at, finished_at, added, changed, removed, "
                   "renamed, unchanged, failed, unsupported, job_id, error")
HashCache = dict[str, tuple[int, int, str]]  # source -> (size, mtime_ns, sha256): skip rehashing untouched files


@dataclass
class FolderScan:
    """`files`: {source: sha256} of the supported files; `unsupported`: other files (archives included);
    `unreadable`: {source: why} for files that could not be read (treated as absent)."""

    files: dict[str, str] = field(default_factory=dict)
    unsupported: list[str] = field(default_factory=list)
    unreadable: dict[str, str] = field(default_factory=dict)


@dataclass
class SyncReport:
    """What one pass did. `failed`: {source: error} of this pass's files that could not be ingested."""

    collection: str
    folder: str
    plan: SyncPlan
    scan: FolderScan
    failed: dict[str, str] = field(default_factory=dict)
    job_id: str | None = None

    def counts(self) -> dict[str, int]:
        p = self.plan
        return {"added": len(set(p.add) - set(self.failed)), "changed": len(set(p.change) - set(self.failed)),
                "removed": len(p.remove) + sum(s in self.failed for s in p.change), "renamed": len(p.rename),
                "unchanged": len(p.unchanged), "failed": len(self.failed) + len(p.failed_before),
                "unsupported": len(self.scan.unsupported)}


@dataclass(frozen=True)
class SyncRecord:
    """A collection's synced folder and its last pass (`state`: running | done | failed | interrupted)."""

    collection: str
    folder: str
    state: str
    watching: bool
    started_at: float
    finished_at: float | None
    counts: dict[str, int]
    job_id: str | None
    error: str | None


def scan_folder(folder: Path, cache: HashCache | None = None) -> FolderScan:
    """The folder's files (recursively, sorted), hashed by streaming; `cache` reuses the hash of a file whose
    size and mtime are unchanged (and is updated)."""
    root = folder.resolve()
    scan = FolderScan()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        source = str(path)
        suffix = path.suffix.lower()
        if suffix not in EXTENSIONS or suffix in ARCHIVES:
            scan.unsupported.append(source)
            continue
        try:
            stat = path.stat()
            known = cache.get(source) if cache is not None else None
            if known is not None and known[:2] == (stat.st_size, stat.st_mtime_ns):
                scan.files[source] = known[2]
                continue
            digest = hashlib.sha256()
            with open(path, "rb") as fh:
                while block := fh.read(1024 * 1024):
                    digest.update(block)
        except OSError as exc:  # gone since the listing, or not readable
            scan.unreadable[source] = exc.strerror or str(exc)
            continue
        scan.files[source] = digest.hexdigest()
        if cache is not None:
            cache[source] = (stat.st_size, stat.st_mtime_ns, scan.files[source])
    return scan


class FolderSync:
    """Runs sync passes over one retrieval service (see the module docstring)."""

    def __init__(self, service: RetrievalService) -> None:
        self.service = service
        self.store = service.store
        with self.store.transaction() as db:
            for statement in _SCHEMA:
                db.execute(statement)

    def run(self, collection: str, folder: Path, progress: ProgressFn | None = None,
            cache: HashCache | None = None) -> SyncReport:
        """One pass: afterwards the collection's ready documents are the folder's distinct contents (less the
        files that failed). Creates the collection if missing. Raises ConflictError while another live process
        syncs the same collection, NotFoundError when `folder` is not a folder."""
        root = folder.resolve()
        if not root.is_dir():
            raise NotFoundError(f"{folder}: not a folder")
        if not any(c.name == collection for c in self.service.list_collections()):
            self.service.create_collection(collection)
        self._start(collection, root)
        report: SyncReport | None = None
        try:
            scan = scan_folder(root, cache)
            documents = [StoredDoc(d.doc_id, d.source, d.content_hash) for d in self.service.list_documents(collection)]
            failures = dict(self.store.query("SELECT source, content_hash FROM sync_failures WHERE collection = ?",
                                             (collection,)))
            plan = plan_sync(scan.files, documents, failures)
            report = SyncReport(collection, str(root), plan, scan)
            if plan.remove or plan.rename:
                self._move(collection, plan.remove, plan.rename)
            if plan.ingest:
                self._ingest(report, progress)
            self._remember_failures(report)
        except BaseException as exc:
            self._finish(collection, report, f"{type(exc).__name__}: {exc}")
            raise
        self._finish(collection, report, None)
        return report

    def _ingest(self, report: SyncReport, progress: ProgressFn | None) -> None:
        status = self.service.ingest_paths(report.collection, [Path(s) for s in report.plan.ingest], progress)
        report.job_id = status.job_id
        report.failed = {f.source: f.error or "failed" for f in status.files if f.state == "failed"}
        gone = [report.plan.replaced[s] for s in report.plan.change if s in report.failed]
        if gone:  # a file whose new content fails keeps no document: its old version is not in the folder
            self._move(report.collection, gone, [])

    def _move(self, collection: str, remove: list[StoredDoc], rename: list[Rename]) -> None:
        """Remove and rename documents in one transaction (removals also update the indexes)."""

        def mutate() -> Published:
            with self.store.transaction() as db:
                chunk_ids: list[int] = []
                gone: list[str] = []
                for doc in remove:
                    chunk_ids += [r[0] for r in db.execute(
                        "SELECT chunk_id FROM chunks WHERE doc_id = ? AND doc_id IN (SELECT doc_id FROM documents "
                        "WHERE collection = ? AND state = 'ready')", (doc.doc_id, collection))]
                    if db.execute("DELETE FROM documents WHERE doc_id = ? AND collection = ? AND state = 'ready'",
                                  (doc.doc_id, collection)).rowcount:
                        gone.append(doc.doc_id)
                db.executemany(
                    "UPDATE documents SET source = ? WHERE doc_id = ? AND collection = ? AND state = 'ready'",
                    [(r.new_source, r.doc_id, collection) for r in rename])
                version = 0
                if remove:
                    db.execute("UPDATE collections SET index_version = index_version + 1 WHERE name = ?",
                               (collection,))
                    row = db.execute("SELECT index_version FROM collections WHERE name = ?", (collection,)).fetchone()
                    if row is None:
                        raise NotFoundError(f"collection {collection!r} does not exist (deleted meanwhile?)")
                    version = int(row[0])
            return Published(version, [], chunk_ids, [], gone)

        if not remove:
            mutate()  # sources only: the indexes hold chunk ids and texts, nothing to bring along
            return
        removed_docs = self.service.indexes.change(collection, mutate).removed_docs
        if removed_docs and self.service.ingestor.on_removed is not None:
            self.service.ingestor.on_removed(removed_docs)  # the engine drops their cached chunk KV

    def _remember_failures(self, report: SyncReport) -> None:
        """Keep the failures of files still there with the same content (not retried), add this pass's."""
        files = report.scan.files
        with self.store.transaction() as db:
            old = db.execute("SELECT source, content_hash, error FROM sync_failures WHERE collection = ?",
                             (report.collection,)).fetchall()
            rows = {s: (h, e) for s, h, e in old if files.get(s) == h}
            rows |= {s: (files[s], error) for s, error in report.failed.items() if s in files}
            db.execute("DELETE FROM sync_failures WHERE collection = ?", (report.collection,))
            db.executemany("INSERT INTO sync_failures VALUES (?, ?, ?, ?)",
                           [(report.collection, s, h, e) for s, (h, e) in rows.items()])

    # --- the synced_folders record ------------------------------------------------------------------------
    def _start(self, collection: str, root: Path) -> None:
        me = current_owner()
        with self.store.transaction() as db:
            row = db.execute("SELECT state, owner FROM synced_folders WHERE collection = ?", (collection,)).fetchone()
            if row is not None and row[0] == "running" and row[1] not in (None, me) and owner_alive(row[1]):
                raise ConflictError(f"collection {collection!r} is being synced by process {row[1].split('-')[0]}")
            db.execute(
                "INSERT INTO synced_folders(collection, folder, state, owner, started_at) "
                "VALUES (?, ?, 'running', ?, ?) ON CONFLICT(collection) DO UPDATE SET folder = excluded.folder, "
                "state = 'running', owner = excluded.owner, started_at = excluded.started_at, finished_at = NULL, "
                "error = NULL, job_id = NULL",
                (collection, str(root), me, time.time()))

    def _finish(self, collection: str, report: SyncReport | None, error: str | None) -> None:
        counts = report.counts() if report is not None else {}
        try:
            with self.store.transaction() as db:
                db.execute(
                    "UPDATE synced_folders SET state = ?, finished_at = ?, error = ?, job_id = ?, added = ?, "
                    "changed = ?, removed = ?, renamed = ?, unchanged = ?, failed = ?, unsupported = ? "
                    "WHERE collection = ?",
                    ("failed" if error else "done", time.time(), error, report.job_id if report else None,
                     *(counts.get(k, 0) for k in ("added", "changed", "removed", "renamed", "unchanged", "failed",
                                                  "unsupported")), collection))
        except Exception:  # noqa: BLE001 - the pass's own error matters more than its record's
            log.exception("sync of %s: its record could not be written", collection)

    def set_watching(self, collection: str, watching: bool) -> None:
        with self.store.transaction() as db:
            db.execute("UPDATE synced_folders SET watcher = ? WHERE collection = ?",
                       (current_owner() if watching else None, collection))


def synced_folders(store: Store) -> list[SyncRecord]:
    """Every synced folder with its last pass (none before the first `appliance sync`)."""
    if not store.query("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'synced_folders'"):
        return []
    records = []
    for row in store.query(f"SELECT {_RECORD_COLUMNS} FROM synced_folders ORDER BY collection"):
        (collection, folder, state, owner, watcher, started, finished, *numbers, job_id, error) = row
        if state == "running" and not (owner and owner_alive(owner)):
            state, error = "interrupted", error or "the process running it exited; the next pass resumes"
        names = ("added", "changed", "removed", "renamed", "unchanged", "failed", "unsupported")
        records.append(SyncRecord(collection, folder, state, bool(watcher and owner_alive(watcher)), started,
                                  finished, dict(zip(names, numbers, strict=True)), job_id, error))
    return records


def watch(sync: FolderSync, collection: str, folder: Path, on_pass: Callable[[SyncReport], None],
          on_error: Callable[[Exception], None], debounce_ms: int = 500) -> None:
    """Run a pass, then another after each burst of changes under `folder` (`debounce_ms` of quiet), until
    Ctrl-C (KeyboardInterrupt propagates). A later pass that raises goes to `on_error` and the watch goes on
    (a file mid-write, a busy store: the next change retries)."""
    from watchfiles import watch as watch_changes

    cache: HashCache = {}
    first = True
    try:
        # the first pass runs once the watcher is up (its first empty yield), so no change slips between them
        for changes in watch_changes(folder, debounce=debounce_ms, rust_timeout=300, yield_on_timeout=True):
            if not changes and not first:
                continue
            try:
                report = sync.run(collection, folder, cache=cache)
            except Exception as exc:  # noqa: BLE001 - reported; the next change retries
                if first:
                    raise
                on_error(exc)
                continue
            if first:
                sync.set_watching(collection, True)
                first = False
            on_pass(report)
    finally:
        try:
            sync.set_watching(collection, False)
        except Exception:  # noqa: BLE001
            log.exception("sync of %s: the watch flag could not be cleared", collection)
