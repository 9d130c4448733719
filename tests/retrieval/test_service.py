"""RetrievalService end to end on real files: metadata in hits, dedup, replace, delete, crash recovery,
and a second process-like instance seeing new documents without a restart."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from filelock import FileLock

from appliance.engine.tokenizer import TextTokenizer
from retrieval.errors import ConflictError, InvalidNameError, NotFoundError
from retrieval.service import RetrievalService
from retrieval.store import context_text
from tests.retrieval.files import make_docx, make_html, make_pdf, make_zip

PAGES = [
    "Introduction\nThe aurora borealis is caused by charged solar wind particles.",
    "Penguins\nEmperor penguins huddle together to survive the antarctic winter.",
]


def _write(folder: Path, name: str, data: bytes) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _index_ids(service: RetrievalService, collection: str) -> np.ndarray:
    version = service.store.versions([collection])[collection]
    return service.indexes.get(collection, version).vector.ids()


def test_hits_carry_page_heading_and_exact_token_ids(
    tmp_path: Path, service: RetrievalService, tokenizer: TextTokenizer
) -> None:
    bundle = make_zip(
        {
            "docs/polar.pdf": make_pdf(PAGES, [("Intro", 0), ("Birds", 1)], title="Polar Facts"),
            "docs/web/manual.html": make_html(),
            "docs/report.docx": make_docx(),
        }
    )
    archive = _write(tmp_path, "bundle.zip", bundle)
    status = service.ingest_paths("kb", [archive])
    assert status.state == "done" and not status.errors
    assert sorted(d.source for d in service.list_documents("kb")) == [
        f"{archive}/docs/polar.pdf",
        f"{archive}/docs/report.docx",
        f"{archive}/docs/web/manual.html",
    ]
    pdf_hit = service.search("emperor penguins winter", ["kb"], k=3)[0].chunk
    assert (pdf_hit.title, pdf_hit.page, pdf_hit.heading_path) == ("Polar Facts", 2, ("Birds",))
    html_hit = service.search("green lamp blinking brass dial", ["kb"], k=3, mode="bm25")[0].chunk
    assert html_hit.heading_path[:2] == ("Widget Manual", "Calibration") and html_hit.page is None
    vector_hit = service.search("how much did revenue grow", ["kb"], k=1, mode="vector")[0].chunk
    assert "twelve percent" in vector_hit.text
    for hit in service.search("penguins", ["kb"], k=10):
        assert hit.chunk.token_ids == tokenizer.encode(hit.chunk.text)


def test_collections_names_and_conflicts(service: RetrievalService) -> None:
    service.create_collection("docs")
    with pytest.raises(ConflictError):
        service.create_collection("docs")
    with pytest.raises(InvalidNameError):
        service.create_collection("../etc")
    with pytest.raises(NotFoundError):
        service.search("x", ["nope"])
    service.delete_collection("docs")
    assert service.list_collections() == []


def test_dedup_replace_and_delete(tmp_path: Path, service: RetrievalService) -> None:
    notes = _write(tmp_path, "notes.md", b"# Notes\n\nThe meeting moved to Thursday in room Saturn.")
    first = service.ingest_paths("c", [notes])
    again = service.ingest_paths("c", [notes, _write(tmp_path, "copy.md", notes.read_bytes())])
    assert [(f.state, f.error) for f in again.files] == [
        ("skipped", "unchanged"),
        ("skipped", f"same content as {notes}"),
    ]
    assert len(service.list_documents("c")) == 1
    old_ids = _index_ids(service, "c")

    notes.write_bytes(b"# Notes\n\nThe meeting moved to Friday in room Jupiter.")
    replaced = service.ingest_paths("c", [notes])
    assert replaced.files[0].state == "done"
    [doc] = service.list_documents("c")
    assert doc.doc_id != first.files[0].doc_id
    texts = [h.chunk.text for h in service.search("meeting room", ["c"], k=5)]
    assert any("Jupiter" in t for t in texts) and not any("Saturn" in t for t in texts)
    assert not set(old_ids) & set(_index_ids(service, "c"))

    service.delete_document("c", doc.doc_id)
    assert service.search("meeting room", ["c"], k=5) == []
    assert len(_index_ids(service, "c")) == 0
    with pytest.raises(NotFoundError):
        service.delete_document("c", doc.doc_id)


def test_crash_between_store_commit_and_index_write_is_repaired_on_open(
    tmp_path: Path, tokenizer: TextTokenizer
) -> None:
    data = tmp_path / "data"
    service = RetrievalService.open(data, tokenizer)
    service.ingest_paths("c", [_write(tmp_path, "a.md", b"# A\n\nApples grow on trees in orchards.")])
    # What a job does, stopped right after its store commit: the indexes never hear of document b.
    job_id = service.jobs.create("c", ["b.md"])
    drafts = service.chunker.chunk(_parsed_markdown("# B\n\nBananas ripen in tropical plantations."))
    vectors = service.embedder.encode([context_text("B", d.heading_path, d.text) for d in drafts])
    service.store.add_pending_document("c", job_id, "b.md", "B", "hash-b", 40, drafts, vectors)
    service.store.publish("c", job_id)
    service.close()

    reopened = RetrievalService.open(data, tokenizer)
    try:
        assert reopened.indexes.rebuilds == 1
        assert np.array_equal(_index_ids(reopened, "c"), reopened.store.ready_chunk_ids("c"))
        assert "Bananas" in reopened.search("banana plantations", ["c"], k=1)[0].chunk.text
    finally:
        reopened.close()
    again = RetrievalService.open(data, tokenizer)  # the repaired snapshot is now trusted
    assert again.indexes.rebuilds == 0
    again.close()


def test_job_of_a_dead_process_is_failed_and_its_pending_documents_dropped(
    tmp_path: Path, tokenizer: TextTokenizer
) -> None:
    data = tmp_path / "data"
    service = RetrievalService.open(data, tokenizer)
    service.create_collection("c")
    job_id = service.jobs.create("c", ["half.md"])
    drafts = service.chunker.chunk(_parsed_markdown("# Half\n\nHalf-ingested cherries."))
    service.store.add_pending_document(
        "c", job_id, "half.md", "Half", "hash-h", 10, drafts, service.embedder.encode([d.text for d in drafts])
    )
    dead = subprocess.Popen(["true"])
    dead.wait()
    with service.store.transaction() as db:  # a job owned by a process that has exited
        db.execute("UPDATE jobs SET state = 'running', owner = ? WHERE job_id = ?", (f"{dead.pid}-1", job_id))
    service.close()

    reopened = RetrievalService.open(data, tokenizer)
    try:
        status = reopened.job(job_id)
        assert status.state == "failed" and "interrupted" in (status.message or "")
        assert reopened.search("cherries", ["c"]) == []
        assert reopened.store.query("SELECT COUNT(*) FROM documents")[0][0] == 0
    finally:
        reopened.close()


def test_another_instance_sees_new_documents_without_restart(tmp_path: Path, tokenizer: TextTokenizer) -> None:
    data = tmp_path / "data"
    server = RetrievalService.open(data, tokenizer)
    cli = RetrievalService.open(data, tokenizer)
    try:
        cli.ingest_paths("c", [_write(tmp_path, "one.md", b"# One\n\nVolcanoes erupt molten lava.")])
        assert "Volcanoes" in server.search("lava", ["c"], k=1)[0].chunk.text
        cli.ingest_paths("c", [_write(tmp_path, "two.md", b"# Two\n\nGlaciers carve deep valleys.")])
        assert "Glaciers" in server.search("glacier valleys", ["c"], k=1)[0].chunk.text
        [doc] = [d for d in server.list_documents("c") if d.source.endswith("one.md")]
        server.delete_document("c", doc.doc_id)
        assert all("Volcanoes" not in h.chunk.text for h in cli.search("lava", ["c"], k=5))
    finally:
        server.close()
        cli.close()


def test_background_job_reports_progress_and_documents_appear_when_done(
    tmp_path: Path, service: RetrievalService
) -> None:
    service.create_collection("c")
    items = [
        service.stage_upload(
            f"../../doc{i}.md",
            _open(_write(tmp_path, f"d{i}.md", f"# D{i}\n\nTopic {i} about owls number {i}.".encode())),
        )
        for i in range(3)
    ]
    assert all(item.path.parent == service.uploads and item.source == f"doc{i}.md" for i, item in enumerate(items))
    job_id = service.submit("c", items)
    status = service.wait(job_id, timeout_s=120)
    assert (status.state, status.done, status.total) == ("done", 3, 3)
    assert len(service.search("owls", ["c"], k=10)) == 3
    assert not any(item.path.exists() for item in items)


def test_hnsw_past_the_threshold_with_removal(tmp_path: Path, tokenizer: TextTokenizer) -> None:
    service = RetrievalService.open(tmp_path / "data", tokenizer, hnsw_threshold=4)
    try:
        paths = [
            _write(tmp_path, f"f{i}.md", f"# F{i}\n\nFact {i}: element {i} is a metal.".encode()) for i in range(6)
        ]
        service.ingest_paths("c", paths)
        version = service.store.versions(["c"])["c"]
        assert not service.indexes.get("c", version).vector.is_exact
        doc = next(d for d in service.list_documents("c") if d.source.endswith("f3.md"))
        service.delete_document("c", doc.doc_id)
        hits = service.search("element 3 metal", ["c"], k=10, mode="vector")
        assert len(hits) == 5 and all(h.chunk.doc_id != doc.doc_id for h in hits)
    finally:
        service.close()


def _open(path: Path):  # noqa: ANN202 - a binary file for stage_upload
    return path.open("rb")


def _parsed_markdown(text: str):  # noqa: ANN202
    from retrieval.parse.md import parse_md

    return parse_md(text.encode(), "x.md")


def test_search_serves_the_loaded_index_while_another_writer_holds_the_lock(
    tmp_path: Path, tokenizer: TextTokenizer
) -> None:
    data = tmp_path / "data"
    server = RetrievalService.open(data, tokenizer)
    cli = RetrievalService.open(data, tokenizer)
    try:
        cli.ingest_paths("c", [_write(tmp_path, "one.md", b"# One\n\nVolcanoes erupt molten lava.")])
        assert server.search("lava", ["c"], k=1)
        cli.ingest_paths("c", [_write(tmp_path, "two.md", b"# Two\n\nGlaciers carve deep valleys.")])
        with FileLock(str(data / "indexes" / "c.lock")):  # another process in the middle of an index write
            start = time.monotonic()
            stale = server.search("glacier valleys", ["c"], k=5)
            assert time.monotonic() - start < 5
            assert all("Glaciers" not in h.chunk.text for h in stale)
        assert "Glaciers" in server.search("glacier valleys", ["c"], k=1)[0].chunk.text
    finally:
        server.close()
        cli.close()
