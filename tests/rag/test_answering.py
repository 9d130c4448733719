"""How the pipeline shows passages (`answering.py`): relevance and canonical order show the same passages, only
their order differs; numbers follow the prompt order; `auto` keeps canonical order where the exact prefix cache
needs it; the system prompts of each style."""

from __future__ import annotations

import pytest

from appliance.rag.answering import AnswerOptions, arrange
from appliance.rag.history import not_shown, number_passages
from appliance.rag.prompt import SYSTEM_PROMPT, SYSTEM_PROMPTS
from retrieval.types import Chunk


def _chunk(chunk_id: int, text: str) -> Chunk:
    return Chunk(chunk_id, f"d{chunk_id}", "kb", 0, text, (), f"Doc {chunk_id}", "doc.md", None, ())


RANKED = [_chunk(7, "Best passage."), _chunk(2, "Second."), _chunk(9, "Third."), _chunk(4, "Fourth.")]


def test_relevance_and_canonical_orders_show_the_same_passages() -> None:
    canonical, relevance = arrange(RANKED, "canonical"), arrange(RANKED, "relevance")
    assert [c.chunk_id for c in canonical] == [2, 4, 7, 9]
    assert [c.chunk_id for c in relevance] == [4, 9, 2, 7]  # the best passage last, nearest the question
    assert sorted(c.chunk_id for c in canonical) == sorted(c.chunk_id for c in relevance)


def test_a_passage_repeating_a_better_ones_text_is_dropped() -> None:
    ranked = [*RANKED, _chunk(11, "best   PASSAGE.")]
    for order in ("canonical", "relevance"):
        assert 11 not in [c.chunk_id for c in arrange(ranked, order)]
    with pytest.raises(ValueError):
        arrange(RANKED, "auto")


def test_numbers_follow_the_prompt_order_and_keep_a_conversations_numbers() -> None:
    numbered = number_passages(arrange(RANKED, "relevance"), {})
    assert [(n, c.chunk_id) for n, c in numbered] == [(1, 4), (2, 9), (3, 2), (4, 7)]
    again = number_passages(arrange(RANKED, "relevance"), {7: 1, 2: 2})  # 7 and 2 shown by an earlier turn
    assert [(n, c.chunk_id) for n, c in again] == [(1, 7), (2, 2), (3, 4), (4, 9)]
    assert [c.chunk_id for _, c in not_shown(again, [])] == [7, 2, 4, 9]


def test_auto_order_is_canonical_only_under_exact() -> None:
    options = AnswerOptions()
    assert options.order_for("exact") == "canonical"
    assert {options.order_for(m) for m in ("off", "blend", "reuse")} == {"relevance"}
    assert AnswerOptions(passage_order="canonical").order_for("blend") == "canonical"
    with pytest.raises(ValueError):
        AnswerOptions(prompt="chatty")


def test_each_prompt_style_extends_the_citing_instructions() -> None:
    assert SYSTEM_PROMPTS["cite"] == SYSTEM_PROMPT
    assert SYSTEM_PROMPTS["short"].startswith(SYSTEM_PROMPT) and "first line" in SYSTEM_PROMPTS["short"]
    assert SYSTEM_PROMPTS["short+examples"].startswith(SYSTEM_PROMPTS["short"])


def test_the_settings_defaults_are_the_options_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    from appliance.config import Settings
    from appliance.rag.answering import answer_options

    assert answer_options(Settings()) == AnswerOptions()
    monkeypatch.setenv("APPLIANCE_ANSWER_PROMPT", "cite")
    monkeypatch.setenv("APPLIANCE_STEER_CITATIONS", "false")
    monkeypatch.setenv("APPLIANCE_COPY_BIAS", "1.5")
    monkeypatch.setenv("APPLIANCE_LOOP_GUARD", "false")
    assert answer_options(Settings()) == AnswerOptions(prompt="cite", steer_citations=False, copy_bias=1.5,
                                                       loop_guard=False)
