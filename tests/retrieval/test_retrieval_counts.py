"""Searches count the chunks they return, in the store (for `appliance warm`'s order), without ever waiting
on another writer; and a warm with too little room encodes the most retrieved passages first."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from appliance.commands.warm import passages_by_demand
from appliance.engine.tokenizer import TextTokenizer
from retrieval.retrievals import RetrievalCounter
from retrieval.service import RetrievalService

PAGES = {
    "tea.md": "# Tea\n\nGreen tea is steeped at eighty degrees for two minutes in a clay pot.",
    "coffee.md": "# Coffee\n\nEspresso is brewed under nine bars of pressure in about twenty-five seconds.",
    "cocoa.md": "# Cocoa\n\nHot cocoa is whisked from cacao powder, milk and a pinch of salt.",
}


def ingest(service: RetrievalService, folder: Path) -> None:
    folder.mkdir()
    for name, text in PAGES.items():
        (folder / name).write_text(text)
    assert service.ingest_paths("drinks", sorted(folder.iterdir())).state == "done"


def chunk_of(service: RetrievalService, title: str) -> int:
    return next(c.chunk_id for d in service.list_documents("drinks") for c in service.document_chunks(d.doc_id)
                if c.title == title)


def test_searches_count_what_they_return_and_warm_up_does_not(service: RetrievalService, tmp_path: Path,
                                                              tokenizer: TextTokenizer) -> None:
    ingest(service, tmp_path / "docs")
    service.warm_up()
    for _ in range(3):
        assert service.search("espresso pressure", ["drinks"], k=1, mode="bm25")[0].chunk.title == "Coffee"
    assert service.search("green tea clay pot", ["drinks"], k=1, mode="bm25")[0].chunk.title == "Tea"
    service.search("cocoa", ["drinks"], k=1, count=False)
    service.close()  # writes what is gathered
    reopened = RetrievalService.open(tmp_path / "data", tokenizer, chunk_tokens=128)
    try:
        ids = {title: chunk_of(reopened, title) for title in ("Tea", "Coffee", "Cocoa")}
        assert reopened.retrieval_counts(list(ids.values())) == {ids["Coffee"]: 3, ids["Tea"]: 1}
        order = [c.title for c in passages_by_demand(reopened, "drinks")]
        assert order[:2] == ["Coffee", "Tea"] and order[2] == "Cocoa"
        reopened.delete_document("drinks", reopened.store.chunks([ids["Coffee"]])[ids["Coffee"]].doc_id)
        assert reopened.retrieval_counts(list(ids.values())) == {ids["Tea"]: 1}  # gone with its chunk
    finally:
        reopened.close()


def test_a_busy_store_never_holds_a_search_and_the_counts_wait_for_the_next_write(service: RetrievalService,
                                                                                 tmp_path: Path) -> None:
    ingest(service, tmp_path / "docs")
    coffee = chunk_of(service, "Coffee")
    counter = RetrievalCounter(service.store, flush_s=0.0, lock_wait_s=0.05)
    other = sqlite3.connect(service.store.path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another process's write transaction, e.g. an ingest publishing
    try:
        started = time.perf_counter()
        counter.record([coffee, coffee])  # due at once, but the store is locked
        assert time.perf_counter() - started < 1.0
        assert service.retrieval_counts([coffee]) == {}
    finally:
        other.execute("ROLLBACK")
        other.close()
    counter.record([coffee])
    assert service.retrieval_counts([coffee]) == {coffee: 3}  # nothing lost
    assert counter.flush()  # nothing left: an empty write


def test_a_chunk_deleted_before_the_write_is_passed_over(service: RetrievalService, tmp_path: Path) -> None:
    ingest(service, tmp_path / "docs")
    tea = chunk_of(service, "Tea")
    counter = RetrievalCounter(service.store, flush_s=3600)
    counter.record([tea, 10**9])  # 10**9: a chunk deleted since it was found
    assert counter.flush() and service.retrieval_counts([tea, 10**9]) == {tea: 1}
