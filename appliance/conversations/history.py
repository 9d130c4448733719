"""Between saved conversations and the ask pipeline: a finished answer as the turn to save, and the saved
turns as the next turn's prompt needs them (`appliance.rag.history.History`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from appliance.conversations.store import NewTurn, Turn
from appliance.rag.answer_json import done_json, sources_json
from appliance.rag.history import History
from appliance.rag.pipeline import DoneEvent, SourcesEvent
from appliance.rag.prompt import HistoryTurn
from retrieval.types import Chunk


def chunk_ids_of(turns: Sequence[Turn]) -> list[int]:
    """The chunks the turns' prompts showed (what `history_of` needs from the store)."""
    return sorted({chunk_id for turn in turns for _, chunk_id in turn.added})


def history_of(turns: Sequence[Turn], chunks: Mapping[int, Chunk], budget: int) -> History:
    """The turns as their prompts showed them. A passage whose document is gone (absent from `chunks`) is
    left out of the prompt, but keeps its number: no later passage is ever cited under it."""
    numbers = {chunk_id: n for turn in turns for n, chunk_id in turn.added}
    shown = tuple(HistoryTurn(tuple((n, chunks[chunk_id]) for n, chunk_id in turn.added if chunk_id in chunks),
                              turn.question, turn.answer, turn.answer_token_ids) for turn in turns)
    return History(shown, numbers, budget)


def turn_record(question: str, sources: SourcesEvent, citations: list[dict], done: DoneEvent) -> NewTurn:
    """The turn to save for a finished answer: what the client saw (sources, `citations` as JSON, the done
    summary) and what the next prompt needs (the answer's token ids, the passages this prompt showed first)."""
    return NewTurn(question, done.retrieval_query, done.rewrite, done.answer, done.answer_token_ids, done.finish_reason,
                   sources_json(sources), [(n, chunk.chunk_id) for n, chunk in done.added], citations, done_json(done))
