"""Questions asked within saved conversations (`POST /api/ask`, with or without `conversation_id`), and who may
see a conversation.

A conversation belongs to the key that asked its first question; a reader sees only its own, an admin every
one. One whose collection the key can no longer read is refused (403), another key's is not found (404: its
existence is not told). A turn is saved, whole, when its answer is complete (`ConversationStore.add_turn`);
an answer abandoned half-way (the client left, the server stopped) leaves no turn behind.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing
from dataclasses import replace
from typing import cast

from appliance.conversations.history import chunk_ids_of, history_of, turn_record
from appliance.conversations.store import (
    Conversation,
    ConversationConflictError,
    ConversationNotFoundError,
    ConversationStore,
)
from appliance.engine.sampling import SamplingParams
from appliance.rag.answer_json import Answer, citations_json
from appliance.rag.history import History
from appliance.rag.pipeline import AskEvent, CitationsEvent, DoneEvent
from appliance.server.answers import open_answer
from appliance.server.deps import AppState, Principal, conversations_of
from appliance.server.errors import ApiError
from appliance.server.schemas_retrieval import retrieval_of
from retrieval.filters import SearchFilters

log = logging.getLogger(__name__)


async def visible_conversation(state: AppState, principal: Principal, conversation_id: str) -> Conversation:
    """The conversation if the caller may see it. Raises ApiError 404 (none, or another key's for a reader),
    403 (its collection is no longer readable by the caller's key)."""
    try:
        conversation = await asyncio.to_thread(conversations_of(state).get, conversation_id)
    except ConversationNotFoundError as exc:
        raise ApiError(404, "not_found", str(exc)) from exc
    if principal.role != "admin" and conversation.owner != principal.key_id:
        raise ApiError(404, "not_found", f"no conversation {conversation_id!r}")
    if not principal.can_read(conversation.collection):
        raise ApiError(403, "forbidden", f"this key cannot read collection {conversation.collection!r}")
    return conversation


async def open_turn(state: AppState, principal: Principal, question: str, collection: str, k: int,
                    params: SamplingParams, doc_cache: str | None, conversation_id: str | None,
                    filters: SearchFilters | None = None) -> Answer:
    """The answer to a question in conversation `conversation_id` (None: a new conversation, whose id the
    answer carries), saved as its next turn once complete. Raises ApiError 404/403 (see
    `visible_conversation`), 409 (the conversation is over another collection), and `open_answer`'s errors."""
    store = conversations_of(state)
    budget = state.settings.conversation_history_tokens
    if conversation_id is None:
        conversation_id, owner, history = uuid.uuid4().hex, principal.key_id, History(budget=budget)
    else:
        conversation = await visible_conversation(state, principal, conversation_id)
        if conversation.collection != collection:
            raise ApiError(409, "conflict", f"conversation {conversation_id!r} is over collection "
                                            f"{conversation.collection!r}, not {collection!r}")
        owner, history = conversation.owner, await asyncio.to_thread(_history, state, store, conversation_id, budget)
    answer = await open_answer(state, principal, question, collection, k, params, doc_cache, history, filters)
    saved = _saved(answer, store, conversation_id, owner, collection, question)
    return Answer(answer.sources, saved, conversation_id)


def _history(state: AppState, store: ConversationStore, conversation_id: str, budget: int) -> History:
    turns = store.turns(conversation_id)
    return history_of(turns, retrieval_of(state).chunks(chunk_ids_of(turns)), budget)


async def _saved(answer: Answer, store: ConversationStore, conversation_id: str, owner: str, collection: str,
                 question: str) -> AsyncIterator[AskEvent]:
    """`answer`'s events; the done event saves the turn first and then carries its conversation and number."""
    citations: list[dict] = []
    events = cast(AsyncGenerator[AskEvent, None], answer.events)  # open_answer's events are a generator
    async with aclosing(events):
        async for event in events:
            if isinstance(event, CitationsEvent):
                citations = citations_json(event.citations)
            elif isinstance(event, DoneEvent):
                turn = turn_record(question, answer.sources, citations, event)
                try:
                    n = await asyncio.to_thread(store.add_turn, conversation_id, owner, collection, turn)
                    event = replace(event, conversation_id=conversation_id, turn=n)
                except ConversationConflictError:
                    log.exception("turn of conversation %s not saved", conversation_id)
            yield event

