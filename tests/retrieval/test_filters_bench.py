"""Smoke test of the retrieval bench's filtered rows: a tiny corpus replicated to a few hundred chunks, searched
unfiltered and with tags carried by 10% and 1% of the documents (the full bench runs this at 100k chunks)."""

from __future__ import annotations

from pathlib import Path

from appliance.bench.retrieval import retrieval_markdown, run_retrieval_bench

TOPICS = ["asyncio event loops and tasks", "json encoding and decoding", "pathlib paths and globbing",
          "regular expression syntax", "logging handlers and levels", "sqlite3 connections and cursors"]


def test_filtered_rows_fill_k_and_are_reported(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i, topic in enumerate(TOPICS):
        body = " ".join(f"<p>The {topic} section {j} explains how to use {topic} in a program.</p>" for j in range(6))
        (corpus / f"page{i}.html").write_text(f"<html><head><title>{topic}</title></head><body><h1>{topic}</h1>"
                                              f"{body}</body></html>")
    result = run_retrieval_bench(corpus, tmp_path, repeats=1, scales=(400,), sample_chunks=8)
    rows = result["filtered_latency"]["400"]
    plain = result["latency"]["400"]
    assert plain["mean_hits"] == 5.0
    assert rows["tag on 10% of documents"]["mean_hits"] == 5.0  # a restrictive filter still fills k
    assert 1.0 <= rows["tag on 1% of documents"]["mean_hits"] <= 5.0
    assert all(r["p50_ms"] > 0 and r["p99_ms"] >= r["p50_ms"] for r in rows.values())
    table = retrieval_markdown(result)
    assert "tag on 10% of documents" in table and "vs unfiltered p50" in table
