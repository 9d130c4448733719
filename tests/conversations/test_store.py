"""The conversation store: turns numbered per conversation, owners kept, feedback, deletion, and nothing
half-written when a turn's write fails."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.conversations.store import (
    ConversationConflictError,
    ConversationNotFoundError,
    ConversationStore,
    NewTurn,
)


def _turn(question: str = "What is it?", answer: str = "It is a thing [1].", **overrides: object) -> NewTurn:
    fields: dict = {"question": question, "retrieval_query": question, "rewrite": "none", "answer": answer,
                    "answer_token_ids": (5, 6, 7), "finish_reason": "stop",
                    "sources": [{"n": 1, "chunk_id": 11, "text": "A thing."}], "added": [(1, 11)],
                    "citations": [{"n": 1, "chunk_id": 11, "kind": "cited", "supported": True}],
                    "summary": {"usage": {"prompt_tokens": 9}}}
    return NewTurn(**(fields | overrides))


@pytest.fixture
def store(tmp_path: Path) -> ConversationStore:
    return ConversationStore(tmp_path / "conversations.db")


def test_turns_are_numbered_and_read_back_whole(store: ConversationStore, tmp_path: Path) -> None:
    assert store.add_turn("c1", "key-a", "kb", _turn("First question about   rivers?")) == 1
    assert store.add_turn("c1", "key-a", "kb", _turn("And lakes?", answer_token_ids=(1, 2))) == 2
    assert store.add_turn("c2", "key-b", "kb", _turn()) == 1
    conversation = store.get("c1")
    assert (conversation.owner, conversation.collection, conversation.turns) == ("key-a", "kb", 2)
    assert conversation.title == "First question about rivers?"
    turns = store.turns("c1")
    assert [t.n for t in turns] == [1, 2]
    assert turns[1].answer_token_ids == (1, 2) and turns[0].added == [(1, 11)]
    assert turns[0].sources[0]["text"] == "A thing." and turns[0].summary == {"usage": {"prompt_tokens": 9}}
    assert [c.conversation_id for c in store.list_conversations("key-a")] == ["c1"]
    assert {c.conversation_id for c in store.list_conversations()} == {"c1", "c2"}
    store.close()
    reopened = ConversationStore(tmp_path / "conversations.db")  # a restart keeps everything
    assert [t.question for t in reopened.turns("c1")] == ["First question about   rivers?", "And lakes?"]


def test_a_turn_never_joins_another_owners_or_collections_conversation(store: ConversationStore) -> None:
    store.add_turn("c1", "key-a", "kb", _turn())
    with pytest.raises(ConversationConflictError):
        store.add_turn("c1", "key-b", "kb", _turn())
    with pytest.raises(ConversationConflictError):
        store.add_turn("c1", "key-a", "other", _turn())
    assert store.get("c1").turns == 1


def test_a_failed_write_leaves_nothing_half_written(store: ConversationStore) -> None:
    """The conversation row and its first turn are one transaction: a turn that cannot be written (here, a
    summary that is not JSON) leaves no conversation behind either."""
    with pytest.raises(TypeError):
        store.add_turn("c1", "key-a", "kb", _turn(summary={"bad": object()}))
    with pytest.raises(ConversationNotFoundError):
        store.get("c1")
    assert store.turns("c1") == []
    store.add_turn("c1", "key-a", "kb", _turn())  # the store still works
    assert store.get("c1").turns == 1


def test_feedback_rename_and_delete(store: ConversationStore) -> None:
    store.add_turn("c1", "key-a", "kb", _turn())
    store.add_turn("c1", "key-a", "kb", _turn("Second?"))
    store.set_feedback("c1", 2, "down", "It is a river.")
    store.set_feedback("c1", 2, "up", None)  # a later rating replaces the earlier one
    with pytest.raises(ConversationNotFoundError):
        store.set_feedback("c1", 3, "up", None)
    rated = store.rated_turns()
    assert [(c.conversation_id, t.n, t.feedback.rating if t.feedback else None) for c, t in rated] == [("c1", 2, "up")]
    store.rename("c1", "Rivers")
    assert store.get("c1").title == "Rivers"
    store.delete("c1")
    with pytest.raises(ConversationNotFoundError):
        store.get("c1")
    assert store.turns("c1") == [] and store.rated_turns() == []
    with pytest.raises(ConversationNotFoundError):
        store.delete("c1")
    with pytest.raises(ConversationNotFoundError):
        store.rename("c1", "x")
