"""A tiny run of `appliance bench answers` (one page, two questions): every system answers the same questions,
the figures are computed from the answers, steering makes the answers cite, and the section renders."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from appliance.bench.answers import DEV_QUESTIONS, PLAIN, parse_variant, run_answers_bench
from appliance.bench.answers_report import answers_markdown
from appliance.bench.gold_sets import GoldQuestions
from appliance.engine.loader import LoadedModel
from appliance.rag.answering import AnswerOptions

PAGE = ("<html><head><title>filecmp</title></head><body><h1>filecmp — File and Directory Comparisons</h1>"
        "<p>The filecmp module defines functions to compare files and directories.</p>"
        "<p>filecmp.cmp(f1, f2, shallow=True) compares the files named f1 and f2. "
        "filecmp.clear_cache() clears the filecmp cache.</p></body></html>")


def test_variants_parse_into_options() -> None:
    v = parse_variant("relevance+examples+steer+k3", 5)
    assert (v.k, v.options.passage_order, v.options.prompt, v.options.steer_citations) == (
        3, "relevance", "short+examples", True)
    assert parse_variant("default", 5).options == AnswerOptions()
    assert parse_variant("default+copy1.5", 5).options == AnswerOptions(copy_bias=1.5)
    assert parse_variant("steer+copy2", 5).options == replace(PLAIN, steer_citations=True, copy_bias=2.0)
    assert parse_variant("default+guard", 5).options == replace(AnswerOptions(), loop_guard=True)
    fused = parse_variant("default+fused", 5)  # the engine's lever: the pipeline's options stay the defaults
    assert fused.fused and fused.options == AnswerOptions() and not parse_variant("default", 5).fused
    assert not PLAIN.loop_guard
    assert parse_variant("plain", 5).options == PLAIN and not PLAIN.steer_citations and PLAIN.prompt == "cite"
    with pytest.raises(ValueError, match="unknown lever"):
        parse_variant("relevance+louder", 5)


def test_the_bench_runs_on_a_tiny_corpus(tmp_path: Path, loaded_model: LoadedModel,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(DEV_QUESTIONS, "tiny", 1)  # the second question is held out
    corpus = tmp_path / "library"
    corpus.mkdir()
    (corpus / "filecmp.html").write_text(PAGE)
    gold = GoldQuestions("tiny", [f"Which Python standard library module provides the function {f}()? Answer with "
                                  "the module name only." for f in ("cmp", "clear_cache")],
                         ["filecmp.html"] * 2, ["filecmp"] * 2, ["filecmp.cmp", "filecmp.clear_cache"])
    result = run_answers_bench(corpus, tmp_path / "data", k=1, max_tokens=32, variants=("default", "steer"),
                               llama_cpp=False, loaded=loaded_model, gold=gold, say=lambda _: None)
    systems = result["systems"]
    assert list(systems) == ["baseline@ours", "default", "steer"] and result["reference"] == "baseline@ours"
    for name, figures in systems.items():
        rows = result["answers"][name]
        assert len(rows) == 2 and all(r["gold_in_passages"] for r in rows)
        assert figures["accuracy"] == sum(r["right"] for r in rows) / 2
        assert figures["cited"] == sum(r["cited"] for r in rows) / 2
        assert figures["evidence_has_gold"] == sum(r["evidence_has_gold"] for r in rows) / 2
    baseline = result["answers"]["baseline@ours"]
    assert systems["baseline@ours"]["cited"] == 0.0 and not any(r["evidence"] for r in baseline)
    for row in result["answers"]["steer"]:  # a sentence of the page about the asked function, naming its module
        assert row["evidence"] and row["evidence"] in PAGE and row["evidence_has_gold"]
    assert result["held_out_from"] == 1
    for name, figures in result["held_out"].items():  # the figures of the second question alone
        assert figures["accuracy"] == result["answers"][name][1]["right"]
    table = answers_markdown(result)
    assert "| steer |" in table and "| target (default) |" in table and "Questions 2-2 alone: held out" in table
