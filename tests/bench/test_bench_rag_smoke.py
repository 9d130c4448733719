"""A tiny run of `appliance bench rag`: three markdown pages, two questions, concurrency 1 and 2.

Nothing here is timed or compared; the real figures come from `appliance bench rag` over python3.11-doc.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from appliance.bench.rag import rag_markdown, run_rag_bench, write_rag_section

PAGES = {
    "mars.md": "# Mars\n\nMars is the fourth planet from the Sun. Its red colour comes from iron oxide dust.",
    "jupiter.md": "# Jupiter\n\nJupiter is the largest planet. The Great Red Spot is a storm on Jupiter.",
    "moon.md": "# The Moon\n\nThe Moon orbits the Earth every 27 days. Apollo 11 landed on the Moon in 1969.",
}


@pytest.fixture(scope="module")
def tiny_result(tmp_path_factory: pytest.TempPathFactory, make_engine: Callable[..., object]) -> dict:
    corpus = tmp_path_factory.mktemp("corpus")
    for name, text in PAGES.items():
        (corpus / name).write_text(text)
    return run_rag_bench(corpus, ["Why is Mars red?", "When did Apollo 11 land on the Moon?"],
                         concurrency=(1, 2), max_tokens=8, k=2, data_dir=tmp_path_factory.mktemp("data"),
                         chunk_tokens=128, engine=make_engine(max_num_seqs=4))  # type: ignore[arg-type]


def test_result_structure_and_ranges(tiny_result: dict) -> None:
    assert tiny_result["machine"]["cores"]
    corpus = tiny_result["workload"]["corpus"]
    assert corpus["pages"] == corpus["documents"] == 3 and corpus["chunks"] >= 3
    assert corpus["ingest_s"] is not None  # a fresh data dir: ingested, not reused
    assert set(tiny_result["levels"]) == {"1", "2"}
    assert [lv["requests"] for lv in tiny_result["levels"].values()] == [2, 4]
    for lv in tiny_result["levels"].values():
        assert 0 < lv["ttft_p50_ms"] <= lv["ttft_p99_ms"] <= lv["e2e_p99_ms"]
        assert 0 < lv["e2e_p50_ms"] <= lv["e2e_p99_ms"]
        assert lv["requests_per_s"] > 0 and lv["output_tokens_per_s"] > 0 and lv["tokens_computed"] > 0
        for share in ("reused_share", "answers_all_valid_share", "answers_with_marker_share",
                      "marked_answers_all_valid_share", "supported_share"):
            assert 0.0 <= lv[share] <= 1.0
        assert lv["answers_all_valid_share"] == 1.0  # the decoding constraint allows only 1..k


def test_section_written_and_others_kept(tiny_result: dict, tmp_path: Path) -> None:
    doc = tmp_path / "BENCHMARKS.md"
    doc.write_text("# Benchmarks\n\n## Engine\n\nkeep me\n\n## RAG\n\nold figures\n")
    write_rag_section(tiny_result, doc)
    text = doc.read_text()
    assert "keep me" in text and "old figures" not in text
    assert text.count("## RAG") == 1 and "| 2 | 4 |" in text
    assert rag_markdown(tiny_result).count("\n| ") >= 2
