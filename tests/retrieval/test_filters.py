"""Document metadata (source, title, modified, content_type, tags) and search filters applied inside the search:
each part of a filter, a restrictive filter still filling k, the indexes' filtered search against brute force
(exact and HNSW), follow-up phrasings, tags updated on unchanged content, and an old store migrated in place."""

from __future__ import annotations

import os
import sqlite3
import zipfile
from pathlib import Path

import numpy as np
import pytest

from appliance.engine.tokenizer import TextTokenizer
from retrieval.filters import AllowedIds, FilterError, SearchFilters, parse_instant, parse_tag_args
from retrieval.index import EXACT_FILTER_MAX, VectorIndex
from retrieval.lexical import LexicalIndex
from retrieval.service import RetrievalService
from retrieval.store import Store
from tests.retrieval.files import make_html

DAY = 86400.0


def _write(folder: Path, name: str, text: str, mtime: float) -> Path:
    path = folder / name
    path.write_text(text)
    os.utime(path, (mtime, mtime))
    return path


@pytest.fixture
def tagged(tmp_path: Path, service: RetrievalService) -> RetrievalService:
    """Six notes about owls: three tagged team=hr (two old, one new), three team=ops; one of each is HTML."""
    base = 1_700_000_000.0
    for i in range(6):
        team = "hr" if i < 3 else "ops"
        name = f"owl{i}.html" if i in (0, 3) else f"owl{i}.md"
        text = (make_html().decode() + f"<!-- copy {i} -->" if name.endswith(".html")
                else f"# Owl note {i}\n\nBarn owls hunt mice at night; note {i} counts owl pellets.")
        path = _write(tmp_path, name, text, base + (i % 3) * 100 * DAY)
        status = service.ingest_paths("kb", [path], tags={"team": team, "n": str(i)})
        assert status.state == "done", status
    return service


def test_documents_carry_metadata(tmp_path: Path, tagged: RetrievalService) -> None:
    docs = {Path(d.source).name: d for d in tagged.list_documents("kb")}
    assert docs["owl1.md"].content_type == "md" and docs["owl0.html"].content_type == "html"
    assert docs["owl1.md"].modified == pytest.approx(1_700_000_000.0 + 100 * DAY)
    assert dict(docs["owl4.md"].tags) == {"team": "ops", "n": "4"}
    hit = tagged.search("barn owls hunt mice", ["kb"], k=1)[0].chunk
    assert hit.content_type == "md" and dict(hit.tags)["team"] in ("hr", "ops") and hit.modified is not None


@pytest.mark.parametrize("mode", ["hybrid", "vector", "bm25"])
def test_each_filter_part_keeps_only_its_documents(tagged: RetrievalService, mode: str) -> None:
    docs = tagged.list_documents("kb")
    by_name = {Path(d.source).name: d.doc_id for d in docs}
    cases = [
        (SearchFilters.of(tags={"team": "hr"}), {"owl0.html", "owl1.md", "owl2.md"}),
        (SearchFilters.of(tags={"team": "hr", "n": "2"}), {"owl2.md"}),
        (SearchFilters.of(content_types=["html"]), {"owl0.html", "owl3.html"}),
        (SearchFilters.of(modified_after="2024-06-01"), {"owl2.md", "owl5.md"}),
        (SearchFilters.of(doc_ids=[by_name["owl4.md"], by_name["owl1.md"]]), {"owl4.md", "owl1.md"}),
        (SearchFilters.of(tags={"team": "ops"}, content_types=["md"]), {"owl4.md", "owl5.md"}),
        (SearchFilters.of(tags={"team": "nobody"}), set()),
    ]
    query = "owl mice widget lamp calibration"  # words of both kinds of document, so BM25 finds each
    for filters, expected in cases:
        hits = tagged.search(query, ["kb"], k=20, mode=mode, filters=filters)  # type: ignore[arg-type]
        found = {Path(h.chunk.source).name for h in hits}
        assert found <= expected, (filters, found)
        assert all(filters.admits(h.chunk) for h in hits)
        if mode != "bm25":  # the vector ranking reaches every allowed chunk
            assert found == expected, (filters, found)


def test_a_restrictive_filter_still_fills_k(tmp_path: Path, service: RetrievalService) -> None:
    """40 decoys rank above the one tagged document's chunks for the query; the filter still returns it,
    and k results when k chunks pass."""
    paths = [_write(tmp_path, f"decoy{i}.md", f"# Volcano {i}\n\nVolcano {i} erupts lava and ash.", 1e9)
             for i in range(40)]
    service.ingest_paths("kb", paths)
    rare = _write(tmp_path, "rare.md", "# Gardening\n\nTomatoes need sun. " * 3, 1e9)
    service.ingest_paths("kb", [rare], tags={"kind": "rare"})
    unfiltered = service.search("volcano lava eruption", ["kb"], k=5)
    assert all("decoy" in h.chunk.source for h in unfiltered)
    hits = service.search("volcano lava eruption", ["kb"], k=5, filters=SearchFilters.of(tags={"kind": "rare"}))
    assert [Path(h.chunk.source).name for h in hits] == ["rare.md"]
    decoys = service.search("gardening tomatoes", ["kb"], k=7,
                            filters=SearchFilters.of(doc_ids=[d.doc_id for d in service.list_documents("kb")
                                                              if "decoy" in d.source][:9]))
    assert len(decoys) == 7 and all("decoy" in h.chunk.source for h in decoys)


def test_phrasings_and_zip_entries_keep_to_the_filter(tmp_path: Path, service: RetrievalService) -> None:
    bundle = tmp_path / "bundle.zip"
    with zipfile.ZipFile(bundle, "w") as zf:
        zf.writestr("a.md", "# Otters\n\nSea otters hold hands while sleeping.")
        zf.writestr("b.md", "# Otter dams\n\nOtters do not build dams; beavers do.")
    service.ingest_paths("kb", [bundle], tags={"src": "zip"})
    service.ingest_paths("kb", [_write(tmp_path, "c.md", "# Otters\n\nRiver otters eat fish.", 1e9)])
    assert {dict(d.tags).get("src") for d in service.list_documents("kb")} == {"zip", None}
    hits = service.search_phrasings(["otters", "do otters sleep"], ["kb"], k=5,
                                    filters=SearchFilters.of(tags={"src": "zip"}))
    assert hits and all(h.chunk.source.startswith(str(bundle)) for h in hits)


def test_reingesting_unchanged_content_with_new_tags_retags_it(tmp_path: Path, service: RetrievalService) -> None:
    path = _write(tmp_path, "memo.md", "# Memo\n\nThe budget meeting is on Monday.", 1e9)
    service.ingest_paths("kb", [path], tags={"team": "hr"})
    doc_id = service.list_documents("kb")[0].doc_id
    status = service.ingest_paths("kb", [path], tags={"team": "finance"})
    assert status.files[0].error == "unchanged (tags updated)"
    assert service.list_documents("kb")[0].doc_id == doc_id
    assert service.search("budget", ["kb"], filters=SearchFilters.of(tags={"team": "hr"})) == []
    assert service.search("budget", ["kb"], filters=SearchFilters.of(tags={"team": "finance"}))


@pytest.mark.parametrize("hnsw", [False, True])
@pytest.mark.parametrize("share", [0.001, 0.3, 0.9])
def test_vector_index_filtered_search_matches_brute_force(hnsw: bool, share: float) -> None:
    rng = np.random.default_rng(0)
    n, dim = 12_000, 32
    vectors = rng.normal(size=(n, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ids = np.arange(10, 10 + n, dtype=np.int64) * 3
    index = VectorIndex.build(dim, ids, vectors, hnsw_threshold=1000 if hnsw else 10**9, use_gpu=False)
    assert index.is_exact != hnsw
    allowed = AllowedIds(ids[rng.random(n) < share])
    assert (len(allowed) > EXACT_FILTER_MAX) == (share > 0.5)
    queries = vectors[:8] + rng.normal(0, 0.3, (8, dim)).astype(np.float32)
    scores, found = index.search(queries, 20, allowed)
    keep = np.isin(ids, allowed.ids)
    truth = np.argsort(-(queries @ vectors[keep].T), axis=1)[:, :20]
    for row in range(len(queries)):
        got = found[row][found[row] >= 0]
        assert len(got) == min(20, len(allowed)) and np.isin(got, allowed.ids).all()
        overlap = len(set(got) & set(ids[keep][truth[row]])) / len(got)
        assert overlap >= (0.9 if hnsw else 1.0), overlap


def test_lexical_index_filtered_search() -> None:
    texts = [f"river {i} flows" if i % 2 else f"mountain {i} rises over the river" for i in range(200)]
    ids = np.arange(1000, 1200, dtype=np.int64)
    index = LexicalIndex.build(ids, texts)
    allowed = AllowedIds(ids[:10])
    scores, found = index.search("river", 50, allowed)
    assert sorted(found.tolist()) == ids[:10].tolist()
    assert len(index.search("river", 50)[1]) == 50
    assert len(index.search("river", 50, AllowedIds(np.zeros(0, np.int64)))[1]) == 0


def test_filter_validation() -> None:
    assert parse_instant("2024-01-02") == 1704153600.0
    assert parse_instant("2024-01-02T01:00:00+01:00") == 1704153600.0
    assert parse_tag_args(["team=hr", "year = 2024"]) == {"team": "hr", "year": "2024"}
    assert SearchFilters.of().empty and not SearchFilters.of(content_types=["pdf"]).empty
    for bad in (lambda: SearchFilters.of(modified_after="yesterday"), lambda: SearchFilters.of(content_types=["exe"]),
                lambda: SearchFilters.of(tags={"bad key": "x"}), lambda: SearchFilters.of(tags={"k": ""}),
                lambda: SearchFilters.of(doc_ids=["../x"]), lambda: parse_tag_args(["novalue"]),
                lambda: SearchFilters.of(tags={"k": "a\nb"})):
        with pytest.raises(FilterError):
            bad()


def test_an_old_store_is_migrated_without_changing_ids(tmp_path: Path, tokenizer: TextTokenizer) -> None:
    path = tmp_path / "data" / "retrieval.sqlite3"
    path.parent.mkdir()
    old = sqlite3.connect(path)
    old.executescript("""
        CREATE TABLE collections(name TEXT PRIMARY KEY, created_at REAL NOT NULL,
                                 index_version INTEGER NOT NULL DEFAULT 0);
        CREATE TABLE documents(doc_id TEXT PRIMARY KEY, collection TEXT NOT NULL, source TEXT NOT NULL,
            title TEXT NOT NULL, content_hash TEXT NOT NULL, size INTEGER NOT NULL, chunks INTEGER NOT NULL,
            state TEXT NOT NULL, job_id TEXT, created_at REAL NOT NULL);
        INSERT INTO collections VALUES ('kb', 1.0, 1);
        INSERT INTO documents VALUES ('abc123', 'kb', '/x/report.pdf', 'Report', 'h', 10, 0, 'ready', NULL, 5.0);
    """)
    old.commit()
    old.close()
    store = Store(path)
    (doc,) = store.list_documents("kb")
    assert (doc.doc_id, doc.modified, doc.content_type, doc.tags) == ("abc123", 5.0, "pdf", ())
    assert store.filtered_documents("kb", SearchFilters.of(content_types=["pdf"])) == ["abc123"]
    store.close()
    service = RetrievalService.open(tmp_path / "data", tokenizer, chunk_tokens=128)  # a second open: no-op
    assert service.list_documents("kb")[0].content_type == "pdf"
    service.close()
