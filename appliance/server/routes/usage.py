"""GET /api/admin/usage: what each API key and each collection has cost since the server started."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from appliance.server.answers import usage_of
from appliance.server.deps import AppState, Principal, get_state, require_admin

router = APIRouter()


@router.get("/api/admin/usage")
def usage(state: AppState = Depends(get_state), _: Principal = Depends(require_admin)) -> dict:
    """`{"keys": {key_id: totals}, "collections": {name: totals}}`; totals are requests,
    prompt_tokens_computed, prompt_tokens_reused, generated_tokens and engine_seconds (in memory)."""
    return usage_of(state).snapshot()
