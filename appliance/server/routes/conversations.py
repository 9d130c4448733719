"""Saved conversations (the caller's own; an admin's: anyone's) and their feedback, which admins export as a
golden set for `appliance eval`.

    GET    /api/conversations[?all=true]                  newest first (all=true: everyone's, admins only)
    GET    /api/conversations/{id}                        with its turns: question, answer, sources, citations
    PATCH  /api/conversations/{id}   {title}
    DELETE /api/conversations/{id}
    POST   /api/conversations/{id}/turns/{n}/feedback     {rating: up|down, comment?}
    GET    /api/admin/feedback?format=jsonl|json           every rated turn as a golden-set line

Who sees what: `conversation_turns.visible_conversation` (404 for another key's, 403 when the conversation's
collection is no longer readable). A turn's sources and citations whose document has since been deleted stay
readable (the text the answer was given) and are marked `"gone": true`.
"""

from __future__ import annotations

import asyncio
import json
from typing import Literal

from fastapi import APIRouter, Depends, Query
from fastapi.responses import Response
from pydantic import BaseModel, Field

from appliance.conversations.store import Conversation, ConversationNotFoundError, Turn
from appliance.server.conversation_turns import visible_conversation
from appliance.server.deps import AppState, Principal, conversations_of, current_principal, get_state, require_admin
from appliance.server.errors import ApiError
from appliance.server.schemas import RequestModel
from appliance.server.schemas_retrieval import retrieval_of

router = APIRouter()


class ConversationOut(BaseModel):
    conversation_id: str
    title: str
    collection: str
    owner: str
    created_at: float
    updated_at: float
    turn_count: int

    @classmethod
    def of(cls, c: Conversation) -> ConversationOut:
        return cls(conversation_id=c.conversation_id, title=c.title, collection=c.collection, owner=c.owner,
                   created_at=c.created_at, updated_at=c.updated_at, turn_count=c.turns)


class FeedbackOut(BaseModel):
    rating: Literal["up", "down"]
    comment: str | None
    created_at: float


class TurnOut(BaseModel):
    n: int
    question: str
    retrieval_query: str
    rewrite: str
    answer: str
    finish_reason: str | None
    sources: list[dict]
    citations: list[dict]
    evidence: list[dict]  # the passage sentences that best supported the answer (absent from older turns: [])
    usage: dict
    timings: dict
    kv: dict
    created_at: float
    feedback: FeedbackOut | None


class Rename(RequestModel):
    title: str = Field(min_length=1, max_length=200)


class FeedbackIn(RequestModel):
    rating: Literal["up", "down"]
    comment: str | None = Field(None, max_length=4000, description="what was wrong, or the right answer")


@router.get("/api/conversations")
async def list_conversations(all: bool = Query(False, description="everyone's (admin keys only)"),
                             state: AppState = Depends(get_state),
                             principal: Principal = Depends(current_principal)) -> dict[str, list[ConversationOut]]:
    """`{"conversations": [...]}`: the caller's, newest first, only those over collections it can still read."""
    if all and principal.role != "admin":
        raise ApiError(403, "forbidden", "listing everyone's conversations needs an admin key")
    owner = None if all else principal.key_id
    found = await asyncio.to_thread(conversations_of(state).list_conversations, owner)
    return {"conversations": [ConversationOut.of(c) for c in found if principal.can_read(c.collection)]}


@router.get("/api/conversations/{conversation_id}")
async def get_conversation(conversation_id: str, state: AppState = Depends(get_state),
                           principal: Principal = Depends(current_principal)) -> dict:
    """The conversation with its `turns`, oldest first."""
    conversation = await visible_conversation(state, principal, conversation_id)
    turns = await asyncio.to_thread(_turns_with_gone_marked, state, conversation_id)
    return ConversationOut.of(conversation).model_dump() | {"turns": [t.model_dump() for t in turns]}


@router.patch("/api/conversations/{conversation_id}", response_model=ConversationOut)
async def rename_conversation(conversation_id: str, body: Rename, state: AppState = Depends(get_state),
                              principal: Principal = Depends(current_principal)) -> ConversationOut:
    await visible_conversation(state, principal, conversation_id)
    store = conversations_of(state)
    await asyncio.to_thread(store.rename, conversation_id, " ".join(body.title.split()))
    return ConversationOut.of(await asyncio.to_thread(store.get, conversation_id))


@router.delete("/api/conversations/{conversation_id}")
async def delete_conversation(conversation_id: str, state: AppState = Depends(get_state),
                              principal: Principal = Depends(current_principal)) -> dict[str, str]:
    await visible_conversation(state, principal, conversation_id)
    try:
        await asyncio.to_thread(conversations_of(state).delete, conversation_id)
    except ConversationNotFoundError as exc:  # deleted meanwhile
        raise ApiError(404, "not_found", str(exc)) from exc
    return {"deleted": conversation_id}


@router.post("/api/conversations/{conversation_id}/turns/{n}/feedback")
async def rate_turn(conversation_id: str, n: int, body: FeedbackIn, state: AppState = Depends(get_state),
                    principal: Principal = Depends(current_principal)) -> dict:
    """Rate a turn's answer (a later rating replaces the earlier one): `{conversation_id, turn, rating, ...}`."""
    await visible_conversation(state, principal, conversation_id)
    comment = body.comment.strip() if body.comment and body.comment.strip() else None
    try:
        saved = await asyncio.to_thread(conversations_of(state).set_feedback, conversation_id, n, body.rating, comment)
    except ConversationNotFoundError as exc:
        raise ApiError(404, "not_found", str(exc)) from exc
    return {"conversation_id": conversation_id, "turn": n, "rating": saved.rating, "comment": saved.comment,
            "created_at": saved.created_at}


_FEEDBACK_RESPONSE: dict[int | str, dict] = {
    200: {"content": {"application/x-ndjson": {}, "application/json": {}},
          "description": "format=jsonl: one golden line per rated turn; format=json: {feedback: [...]}"}}


@router.get("/api/admin/feedback", dependencies=[Depends(require_admin)], response_model=None,
            responses=_FEEDBACK_RESPONSE)
async def export_feedback(format: Literal["jsonl", "json"] = "jsonl", state: AppState = Depends(get_state)
                          ) -> Response | dict:
    """Every rated turn as a golden-set line (what `appliance eval --golden` reads): the question (standalone:
    a follow-up as retrieval searched for it), its collection, the expected answer (the answer rated up, or a
    down rating's comment, its correction; none otherwise) and, for an answer rated up, the chunks its
    supported citations name."""
    rated = await asyncio.to_thread(conversations_of(state).rated_turns)
    lines = [golden_line(conversation, turn) for conversation, turn in rated]
    if format == "json":
        return {"feedback": lines}
    body = "".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines)
    return Response(body, media_type="application/x-ndjson")


def golden_line(conversation: Conversation, turn: Turn) -> dict:
    assert turn.feedback is not None
    up = turn.feedback.rating == "up"
    expected = turn.answer if up else turn.feedback.comment
    cited = sorted({c["chunk_id"] for c in turn.citations if c.get("kind") == "cited" and c.get("supported")})
    return {"question": turn.retrieval_query, "asked": turn.question, "collection": conversation.collection,
            "expected_answer": expected, "expected_chunk_ids": cited if up else [],
            "rating": turn.feedback.rating, "comment": turn.feedback.comment,
            "conversation_id": conversation.conversation_id, "turn": turn.n, "rated_at": turn.feedback.created_at}


def _turns_with_gone_marked(state: AppState, conversation_id: str) -> list[TurnOut]:
    turns = conversations_of(state).turns(conversation_id)
    cited = [item["chunk_id"] for t in turns for item in (*t.sources, *t.citations)]
    present = retrieval_of(state).chunks(sorted(set(cited))) if cited else {}
    return [TurnOut(n=t.n, question=t.question, retrieval_query=t.retrieval_query, rewrite=t.rewrite, answer=t.answer,
                    finish_reason=t.finish_reason,
                    sources=[s | {"gone": s["chunk_id"] not in present} for s in t.sources],
                    citations=[c | {"gone": c["chunk_id"] not in present} for c in t.citations],
                    evidence=[e | {"gone": e["chunk_id"] not in present} for e in t.summary.get("evidence", [])],
                    usage=t.summary.get("usage", {}), timings=t.summary.get("timings", {}), kv=t.summary.get("kv", {}),
                    created_at=t.created_at,
                    feedback=FeedbackOut(**vars(t.feedback)) if t.feedback else None)
            for t in turns]
