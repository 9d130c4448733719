"""A tiny run of `appliance bench rag`: three markdown pages, three questions, our engine in two modes.

Nothing here is timed or compared; the real figures come from `appliance bench rag` over python3.11-doc.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.bench.gold_sets import GoldQuestions
from appliance.bench.rag import run_rag_bench
from appliance.bench.rag_report import rag_markdown, write_rag_section
from appliance.bench.rag_workload import Question

PAGES = {
    "mars.md": "# Mars\n\nMars is the fourth planet from the Sun. Its red colour comes from iron oxide dust.",
    "jupiter.md": "# Jupiter\n\nJupiter is the largest planet. The Great Red Spot is a storm on Jupiter.",
    "moon.md": "# The Moon\n\nThe Moon orbits the Earth every 27 days. Apollo 11 landed on the Moon in 1969.",
}
QUESTIONS = [Question("Why is Mars red?", "mars.md"), Question("What is the Great Red Spot?", "jupiter.md"),
             Question("When did Apollo 11 land on the Moon?", "moon.md")]
GOLD = GoldQuestions("tiny", ["What dust makes Mars red? Answer with one word.",
                              "In which year did Apollo 11 land on the Moon? Answer with the year only."],
                     ["mars.md", "moon.md"], ["iron", "1969"])


@pytest.fixture(scope="module")
def tiny_result(tmp_path_factory: pytest.TempPathFactory, loaded_model) -> dict:
    corpus = tmp_path_factory.mktemp("corpus")
    for name, text in PAGES.items():
        (corpus / name).write_text(text)
    return run_rag_bench(tmp_path_factory.mktemp("data"), segment=2, max_tokens=4, concurrency=[1, 2],
                         systems=["off", "blend"], k=2, kv_cache_mb=64, corpus_dir=corpus, questions=QUESTIONS,
                         loaded=loaded_model, gold=GOLD)


def test_result_structure_and_ranges(tiny_result: dict) -> None:
    assert tiny_result["machine"]["cores"]
    corpus = tiny_result["corpus"]
    assert corpus["pydoc"]["documents"] == 3 and corpus["pydoc-answers"]["documents"] == 2  # the asked pages
    warm = tiny_result["warm"]
    assert warm["encoded"] == warm["chunks"] >= 2 and warm["disk_mb"] > 0  # the pages of the 2 asked questions
    for workload in ("A", "B"):
        assert set(tiny_result[workload]) == {"off", "blend"}
        for levels in tiny_result[workload].values():
            assert [lv["requests"] for lv in levels.values()] == [2, 2]
            for lv in levels.values():
                assert 0 < lv["ttft_p50_ms"] <= lv["ttft_p99_ms"] and lv["requests_per_s"] > 0
        fid = tiny_result[workload + "_fidelity"]["blend"]
        assert 0.0 <= fid["token_f1"] <= 1.0 and 0.0 <= fid["same_citations"] <= 1.0
    # (B) found every passage pre-encoded: blend reused chunks and encoded none
    for lv in tiny_result["B"]["blend"].values():
        assert lv["encoded_mean"] == 0 and lv["reused_mean"] > 0
    assert all(lv["reused_mean"] == 0 for lv in tiny_result["B"]["off"].values())


def test_gold_workload_grades_every_system_against_the_gold_answers(tiny_result: dict) -> None:
    gold = tiny_result["G"]
    assert gold["set"] == "tiny" and gold["questions"] == 2 and gold["corpus"]["documents"] == 2
    assert gold["warm"]["chunks"] >= 2
    rows = gold["systems"]
    assert set(rows) == {"off", "blend"} and "ratio" not in rows["off"]
    for row in rows.values():
        assert len(row["right"]) == 2 and row["accuracy"] == sum(row["right"]) / 2 and row["ttft_p50_ms"] > 0
    same = sum(a == b for a, b in zip(rows["off"]["right"], rows["blend"]["right"], strict=True)) / 2
    assert rows["blend"]["same_verdict"] == same
    assert "(G) gold answers" in rag_markdown(tiny_result)


def test_section_written_and_others_kept(tiny_result: dict, tmp_path: Path) -> None:
    doc = tmp_path / "BENCHMARKS.md"
    doc.write_text("# Benchmarks\n\n## Engine\n\nkeep me\n\n## RAG\n\nold figures\n")
    write_rag_section(tiny_result, doc)
    text = doc.read_text()
    assert "keep me" in text and "old figures" not in text and text.count("## RAG") == 1
    assert (tmp_path / "bench_rag.png").stat().st_size > 0
    assert "| blend |" in rag_markdown(tiny_result)
