"""API keys over HTTP: who am I (`GET /api/me`, any key) and key management (admin only).

`POST /api/admin/keys {role, collections}` -> 201 with the key (shown this once), `GET /api/admin/keys`
(never a secret), `DELETE /api/admin/keys/{key_id}`. The same operations as `appliance keys ...`.
"""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Depends
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from appliance.keys import ApiKey, ApiKeyError, UnknownKeyError
from appliance.server.deps import AppState, Principal, current_principal, get_state, keys_of, require_admin
from appliance.server.errors import ApiError
from appliance.server.schemas import RequestModel
from appliance.server.schemas_retrieval import CollectionName

router = APIRouter()


class Me(BaseModel):
    key_id: str
    role: Literal["admin", "reader"]
    collections: list[str] | None = Field(description="the collections this key may read; null: all of them")


class CreateKey(RequestModel):
    role: Literal["admin", "reader"]
    collections: list[CollectionName] = Field(default_factory=list, max_length=1000,
                                   description="a reader's collections (empty: none); must be empty for an admin")


class KeyOut(BaseModel):
    key_id: str
    role: Literal["admin", "reader"]
    collections: list[str] | None
    created: float
    last_used: float | None

    @classmethod
    def of(cls, key: ApiKey) -> KeyOut:
        return cls(key_id=key.key_id, role=key.role, collections=None if key.collections is None else
                   list(key.collections), created=key.created, last_used=key.last_used)


class NewKeyOut(BaseModel):
    key_id: str
    key: str = Field(description="the whole key: shown only in this response")
    role: Literal["admin", "reader"]
    collections: list[str] | None
    created: float


@router.get("/api/me", response_model=Me)
def me(principal: Principal = Depends(current_principal)) -> Me:
    """The caller's key id, role and readable collections (null for every collection)."""
    grant = None if principal.collections is None else sorted(principal.collections)
    return Me(key_id=principal.key_id, role=principal.role, collections=grant)


@router.post("/api/admin/keys", status_code=201, response_model=NewKeyOut)
async def create_key(body: CreateKey, state: AppState = Depends(get_state),
                     _: Principal = Depends(require_admin)) -> NewKeyOut:
    try:
        new = await run_in_threadpool(keys_of(state).create, body.role, body.collections)  # argon2: off the loop
    except ApiKeyError as exc:
        raise ApiError(400, "invalid_request", str(exc)) from exc
    info = new.info
    grant = None if info.collections is None else list(info.collections)
    return NewKeyOut(key_id=info.key_id, key=new.key, role=info.role, collections=grant, created=info.created)


@router.get("/api/admin/keys")
def list_keys(state: AppState = Depends(get_state), _: Principal = Depends(require_admin)) -> dict[str, list[KeyOut]]:
    """`{"keys": [{key_id, role, collections, created, last_used}]}`, oldest first."""
    return {"keys": [KeyOut.of(k) for k in keys_of(state).list_keys()]}


@router.delete("/api/admin/keys/{key_id}")
def revoke_key(key_id: str, state: AppState = Depends(get_state),
               _: Principal = Depends(require_admin)) -> dict[str, str]:
    """Revoke a key: it stops working at once. 404 for an unknown id (APPLIANCE_ADMIN_KEY is not stored)."""
    try:
        keys_of(state).revoke(key_id)
    except UnknownKeyError as exc:
        raise ApiError(404, "not_found", str(exc)) from exc
    return {"revoked": key_id}
