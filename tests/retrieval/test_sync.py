"""Folder sync (issue 20 item 5): the pure plan, then real passes over a real store (add, change, delete,
rename, a second pass that does nothing, unsupported and failing files, documents from elsewhere), and
`appliance sync --watch` in a subprocess picking up a new file."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from retrieval.parse import EXTENSIONS
from retrieval.service import RetrievalService
from retrieval.sync import FolderSync, synced_folders
from retrieval.sync_plan import Rename, StoredDoc, plan_sync

ROOT = Path(__file__).resolve().parents[2]


# --- the plan, without a store ------------------------------------------------------------------------------
def test_plan_sorts_files_into_add_change_remove_rename_unchanged() -> None:
    docs = [StoredDoc("d1", "/f/a.md", "h1"), StoredDoc("d2", "/f/b.md", "h2"), StoredDoc("d3", "/f/c.md", "h3"),
            StoredDoc("d4", "/f/gone.md", "h4")]
    files = {"/f/a.md": "h1", "/f/b.md": "h2-new", "/f/renamed.md": "h3", "/f/new.md": "h5"}
    plan = plan_sync(files, docs)
    assert plan.unchanged == ["/f/a.md"]
    assert plan.change == ["/f/b.md"] and plan.replaced == {"/f/b.md": docs[1]}
    assert plan.add == ["/f/new.md"]
    assert plan.rename == [Rename("d3", "/f/c.md", "/f/renamed.md")]
    assert plan.remove == [docs[3]]
    assert plan.ingest == ["/f/b.md", "/f/new.md"] and not plan.empty


def test_plan_of_an_equal_folder_is_empty() -> None:
    docs = [StoredDoc("d1", "/f/a.md", "h1"), StoredDoc("d2", "/f/b.md", "h2")]
    plan = plan_sync({"/f/a.md": "h1", "/f/b.md": "h2"}, docs)
    assert plan.empty and plan.unchanged == ["/f/a.md", "/f/b.md"]


def test_plan_swapped_contents_are_two_renames_and_nothing_to_ingest() -> None:
    docs = [StoredDoc("d1", "/f/a.md", "h1"), StoredDoc("d2", "/f/b.md", "h2")]
    plan = plan_sync({"/f/a.md": "h2", "/f/b.md": "h1"}, docs)
    assert plan.rename == [Rename("d2", "/f/b.md", "/f/a.md"), Rename("d1", "/f/a.md", "/f/b.md")]
    assert not plan.ingest and not plan.remove


def test_plan_same_bytes_twice_is_one_document_and_a_duplicate() -> None:
    plan = plan_sync({"/f/a.md": "h1", "/f/copy.md": "h1"}, [])
    assert plan.add == ["/f/a.md"] and plan.duplicates == {"/f/copy.md": "/f/a.md"}
    kept = plan_sync({"/f/a.md": "h1", "/f/copy.md": "h1"}, [StoredDoc("d1", "/f/copy.md", "h1")])
    assert kept.empty and kept.duplicates == {"/f/a.md": "/f/copy.md"}  # the document keeps its name


def test_plan_does_not_retry_a_failed_content_and_drops_its_old_version() -> None:
    docs = [StoredDoc("d1", "/f/a.md", "h1")]
    plan = plan_sync({"/f/a.md": "broken"}, docs, failed={"/f/a.md": "broken"})
    assert plan.failed_before == ["/f/a.md"] and not plan.ingest and plan.remove == docs
    again = plan_sync({"/f/a.md": "fixed"}, docs, failed={"/f/a.md": "broken"})
    assert again.change == ["/f/a.md"]


def test_plan_a_new_file_where_a_renamed_one_was_is_an_add() -> None:
    docs = [StoredDoc("d1", "/f/a.md", "h1")]
    plan = plan_sync({"/f/a.md": "h2", "/f/b.md": "h1"}, docs)
    assert plan.rename == [Rename("d1", "/f/a.md", "/f/b.md")] and plan.add == ["/f/a.md"] and not plan.change


# --- real passes ---------------------------------------------------------------------------------------------
def _doc(title: str, marker: str) -> str:
    return f"# {title}\n\nField notes about {title.lower()}, catalogue mark {marker}. The survey went on all season."


def _folder_state(folder: Path) -> dict[str, str]:
    """{absolute source: sha256} of the folder's supported files, as the collection must hold them."""
    return {str(p.resolve()): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.suffix.lower() in EXTENSIONS}


def _collection_state(service: RetrievalService, collection: str) -> dict[str, str]:
    docs = service.list_documents(collection)
    assert len({d.source for d in docs}) == len(docs)  # no source twice
    return {d.source: d.content_hash for d in docs}


def _sources_of(service: RetrievalService, marker: str) -> list[str]:
    return [h.chunk.source for h in service.search(marker, ["kb"], k=5, mode="bm25") if marker in h.chunk.text]


def _jobs(service: RetrievalService) -> int:
    return service.store.query("SELECT COUNT(*) FROM jobs")[0][0]


def test_add_change_delete_rename_then_the_collection_equals_the_folder(
    tmp_path: Path, service: RetrievalService
) -> None:
    folder = tmp_path / "notes"
    (folder / "sub").mkdir(parents=True)
    (folder / "glaciers.md").write_text(_doc("Glaciers", "qxglacier1"))
    (folder / "volcanoes.md").write_text(_doc("Volcanoes", "qxvolcano1"))
    (folder / "sub" / "reefs.txt").write_text(_doc("Reefs", "qxreef1"))
    syncer = FolderSync(service)
    first = syncer.run("kb", folder)
    assert first.counts()["added"] == 3 and first.job_id is not None
    assert _collection_state(service, "kb") == _folder_state(folder)

    reef = next(d for d in service.list_documents("kb") if d.source.endswith("reefs.txt"))
    reef_chunks = [c.chunk_id for c in service.document_chunks(reef.doc_id)]
    (folder / "glaciers.md").write_text(_doc("Glaciers", "qxglacier2"))  # changed
    (folder / "volcanoes.md").unlink()  # deleted
    (folder / "sub" / "reefs.txt").rename(folder / "coral.txt")  # renamed (and moved)
    (folder / "deserts.md").write_text(_doc("Deserts", "qxdesert1"))  # added
    second = syncer.run("kb", folder)
    counts = second.counts()
    assert (counts["added"], counts["changed"], counts["removed"], counts["renamed"]) == (1, 1, 1, 1)
    assert _collection_state(service, "kb") == _folder_state(folder)
    coral = str((folder / "coral.txt").resolve())
    # the rename kept the document and its chunks (nothing embedded again) under the new name
    moved = next(d for d in service.list_documents("kb") if d.source == coral)
    assert moved.doc_id == reef.doc_id and [c.chunk_id for c in service.document_chunks(moved.doc_id)] == reef_chunks
    assert _sources_of(service, "qxreef1") == [coral]
    assert _sources_of(service, "qxglacier2") == [str((folder / "glaciers.md").resolve())]
    assert _sources_of(service, "qxglacier1") == [] and _sources_of(service, "qxvolcano1") == []
    assert _sources_of(service, "qxdesert1") == [str((folder / "deserts.md").resolve())]
    [record] = synced_folders(service.store)
    assert (record.collection, record.folder, record.state, record.job_id) == ("kb", str(folder.resolve()), "done",
                                                                              second.job_id)
    assert record.counts["changed"] == 1 and record.counts["renamed"] == 1 and record.error is None


def test_a_second_pass_over_the_same_folder_does_nothing(tmp_path: Path, service: RetrievalService) -> None:
    folder = tmp_path / "notes"
    folder.mkdir()
    for n in range(3):
        (folder / f"n{n}.md").write_text(_doc(f"Topic {n}", f"qxsame{n}"))
    (folder / "copy.md").write_text(_doc("Topic 0", "qxsame0"))  # the same bytes as n0.md: one document
    syncer = FolderSync(service)
    first = syncer.run("kb", folder)
    assert first.plan.duplicates == {str((folder / "n0.md").resolve()): str((folder / "copy.md").resolve())}
    jobs, version = _jobs(service), service.store.versions(["kb"])["kb"]
    docs = service.list_documents("kb")
    again = syncer.run("kb", folder)
    assert again.plan.empty and again.job_id is None
    assert (_jobs(service), service.store.versions(["kb"])["kb"]) == (jobs, version)  # no job, no index change
    assert service.list_documents("kb") == docs and len(docs) == 3


def test_unsupported_and_failing_files_are_reported_and_not_retried(tmp_path: Path, service: RetrievalService) -> None:
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "good.md").write_text(_doc("Good", "qxgood"))
    (folder / "empty.txt").write_text("   \n")  # no text to index: fails
    (folder / "tool.exe").write_bytes(b"MZ\x90\x00")
    (folder / "bundle.zip").write_bytes(b"PK\x03\x04")  # archives are not synced
    syncer = FolderSync(service)
    first = syncer.run("kb", folder)
    empty = str((folder / "empty.txt").resolve())
    assert list(first.failed) == [empty] and first.counts()["failed"] == 1
    assert sorted(first.scan.unsupported) == sorted(str((folder / n).resolve()) for n in ("tool.exe", "bundle.zip"))
    assert [d.source for d in service.list_documents("kb")] == [str((folder / "good.md").resolve())]
    jobs = _jobs(service)
    again = syncer.run("kb", folder)
    assert again.plan.failed_before == [empty] and again.job_id is None and _jobs(service) == jobs
    (folder / "empty.txt").write_text(_doc("Empty no more", "qxfilled"))  # changed: tried again
    third = syncer.run("kb", folder)
    assert third.plan.add == [empty] and not third.failed and _sources_of(service, "qxfilled") == [empty]


def test_documents_from_elsewhere_are_adopted_or_removed(tmp_path: Path, service: RetrievalService) -> None:
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "same.md").write_text(_doc("Shared", "qxshared"))
    (outside / "other.md").write_text(_doc("Other", "qxother"))
    service.ingest_paths("kb", [outside])
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "same.md").write_text(_doc("Shared", "qxshared"))
    report = FolderSync(service).run("kb", folder)
    assert len(report.plan.rename) == 1 and [d.source for d in report.plan.remove] == [str(outside / "other.md")]
    assert report.job_id is None  # the shared content was adopted, not ingested again
    assert _collection_state(service, "kb") == _folder_state(folder)
    assert _sources_of(service, "qxother") == []


# --- appliance sync --watch ---------------------------------------------------------------------------------
def test_watch_picks_up_a_new_file_and_stops_on_ctrl_c(tmp_path: Path, service: RetrievalService) -> None:
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "first.md").write_text(_doc("First", "qxfirst"))
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "APPLIANCE_DATA_DIR": str(service.data_dir), "COLUMNS": "200"}
    child = subprocess.Popen(
        [sys.executable, "-m", "appliance.cli", "sync", str(folder), "--collection", "kb", "--watch",
         "--debounce-ms", "100", "--chunk-tokens", "128"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert child.stdout is not None
        lines = []
        deadline = time.monotonic() + 120  # the child's start (torch, the embedder) on a busy machine
        while "1 added" not in "".join(lines) and time.monotonic() < deadline and child.poll() is None:
            lines.append(child.stdout.readline())
        assert "1 added" in "".join(lines), lines
        assert [r.watching for r in synced_folders(service.store)] == [True]
        (folder / "second.md").write_text(_doc("Second", "qxsecond"))
        deadline = time.monotonic() + 60
        while not _sources_of(service, "qxsecond") and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _sources_of(service, "qxsecond") == [str((folder / "second.md").resolve())]
        child.send_signal(signal.SIGINT)
        out, _ = child.communicate(timeout=30)
        assert child.returncode == 0, "".join(lines) + out
        assert "stopped" in out
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert [r.watching for r in synced_folders(service.store)] == [False]
    assert _collection_state(service, "kb") == _folder_state(folder)
