"""A conversation turn's prompt: it extends the previous request's tokens exactly, numbers passages
conversation-wide, never repeats a passage in view, and keeps the newest turns within the token budget."""

from __future__ import annotations

import pytest

from appliance.conversations.history import history_of
from appliance.conversations.store import Turn
from appliance.rag.history import not_shown, number_passages, recent_turns, text_history
from appliance.rag.prompt import HistoryTurn, PromptBuilder
from retrieval.types import Chunk


def _chunk(tok, chunk_id: int, text: str) -> Chunk:
    return Chunk(chunk_id, f"d{chunk_id}", "kb", 0, text, tok.encode(text), f"Doc {chunk_id}", "doc.md", None, ())


@pytest.fixture(scope="module")
def tok(loaded_model):
    return loaded_model.tokenizer


def test_a_follow_up_extends_the_previous_request_token_for_token(tok) -> None:
    builder = PromptBuilder(tok)
    a, b, c = _chunk(tok, 7, "Rivers flow to the sea."), _chunk(tok, 3, "Hills are high."), _chunk(tok, 9, "Seas.")
    first = builder.build("Where do rivers go?", [a, b])
    answer = tuple(tok.encode("To the sea [2]."))
    generated = [*answer, *tok.encode_template("<|im_end|>")]  # what the engine held: prompt, answer, end of turn
    turn = HistoryTurn(tuple(zip(first.numbers, first.passages, strict=True)), "Where do rivers go?",
                       "To the sea [2].", answer)
    sources = number_passages([a, c], {3: 1, 7: 2})
    added = not_shown(sources, [turn])
    second = builder.build_turn([turn], added, "And then?")
    assert second.token_ids[:len(first.token_ids) + len(generated)] == first.token_ids + generated
    assert sources == [(2, a), (3, c)] and added == [(3, c)]  # 7 keeps [2] and is not repeated; 9 is new: [3]
    assert second.numbered() == {1: b, 2: a, 3: c}
    text = tok.decode(second.token_ids, skip_special_tokens=False)
    assert text.count("Rivers flow to the sea.") == 1 and "[3] Doc 9\nSeas." in text
    assert text.endswith("Question: And then?<|im_end|>\n<|im_start|>assistant\n")
    spans = second.layout().chunks  # the document cache sees every passage, in prompt order
    assert [s.chunk_id for s in spans] == [3, 7, 9]
    assert [second.token_ids[s.start:s.end] for s in spans] == [list(builder.passage_tokens(x)) for x in (b, a, c)]
    # what the budget counts for a turn: what it adds to a prompt (the first turn's `<documents>` aside)
    assert builder.turn_cost(turn) == len(second.token_ids) - len(builder.build_turn([], added, "And then?").token_ids)


def test_the_budget_keeps_the_newest_turns_and_dropped_passages_come_back_under_their_numbers(tok) -> None:
    builder = PromptBuilder(tok)
    a, b = _chunk(tok, 1, "Alpha " * 40), _chunk(tok, 2, "Beta " * 40)
    old = HistoryTurn(((1, a),), "About alpha?", "Alpha.", tuple(tok.encode("Alpha.")))
    new = HistoryTurn(((2, b),), "About beta?", "Beta.", tuple(tok.encode("Beta.")))
    cost_new = builder.turn_cost(new)
    assert recent_turns(builder, [old, new], cost_new + builder.turn_cost(old)) == [old, new]
    assert recent_turns(builder, [old, new], cost_new) == [new]
    assert recent_turns(builder, [old, new], cost_new - 1) == []
    sources = number_passages([a], {1: 1, 2: 2})
    added = not_shown(sources, [new])  # `a` left the prompt with `old`
    assert sources == [(1, a)] and added == [(1, a)]


def test_a_saved_conversation_keeps_numbers_of_deleted_passages(tok) -> None:
    a, b = _chunk(tok, 1, "Alpha."), _chunk(tok, 2, "Beta.")
    turn = Turn("Q?", "Q?", "none", "A [2].", (5, 6), "stop", [], [(1, 1), (2, 2)], [], {}, n=1)
    history = history_of([turn], {1: a}, budget=100)  # chunk 2's document was deleted
    assert history.turns[0].passages == ((1, a),) and history.turns[0].answer_token_ids == (5, 6)
    assert dict(history.numbers) == {1: 1, 2: 2}
    sources = number_passages([b], history.numbers)
    assert sources == [(2, b)]  # had it come back, it would keep its number; a new passage never takes [2]
    assert number_passages([_chunk(tok, 5, "New.")], history.numbers)[0][0] == 3


def test_chat_messages_become_text_turns(tok) -> None:
    history = text_history([("Who?", "Ada.")], tok, budget=50)
    assert history.turns[0].passages == () and history.turns[0].answer_token_ids == tuple(tok.encode("Ada."))


def test_the_window_moves_seldom_so_the_next_turns_extend_a_cached_prompt(tok) -> None:
    """Over a long conversation the earlier turns' window drops several turns at once, so most turns extend the
    previous prompt (prefix-cache hits) rather than each one dropping its oldest turn and recomputing the rest."""
    builder = PromptBuilder(tok)
    turns = [HistoryTurn((), "And then?", "An answer of some length.", tuple(tok.encode("An answer of some length.")))
             for _ in range(12)]
    cost = builder.turn_cost(turns[0])
    assert all(builder.turn_cost(t) == cost for t in turns)
    windows = [recent_turns(builder, turns[:n], 4 * cost) for n in range(len(turns) + 1)]
    assert all(sum(builder.turn_cost(t) for t in w) <= 4 * cost for w in windows)
    assert [len(w) for w in windows] == [0, 1, 2, 3, 4, 2, 3, 4, 2, 3, 4, 2, 3]
    ids = [[id(t) for t in w] for w in windows]
    extended = sum(ids[n][:-1] == ids[n - 1] for n in range(1, len(ids)))
    assert extended == 9  # of 12 turns, 3 move the window (each dropping 3); a one-at-a-time window: 4 extend
