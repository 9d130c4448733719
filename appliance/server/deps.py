"""Request-scoped dependencies: the shared app state and the caller's identity.

Routes get what they need through these functions (FastAPI `Depends`), never through globals.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from fastapi import Request

from appliance.server.errors import ApiError

if TYPE_CHECKING:
    from appliance.config import Settings
    from appliance.engine.async_engine import AsyncEngine
    from retrieval.service import RetrievalService


@dataclass
class AppState:
    """Everything the routes share; built by the app's lifespan, stored on `app.state.appliance`."""

    settings: Settings
    engine: AsyncEngine | None = None
    retrieval: RetrievalService | None = None
    model_name: str = "default"
    ready: bool = False
    extras: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Principal:
    """Who is calling. `collections` is None for "all collections"."""

    key_id: str
    role: str  # "admin" | "reader"
    collections: frozenset[str] | None = None

    def can_read(self, collection: str) -> bool:
        return self.collections is None or collection in self.collections


def get_state(request: Request) -> AppState:
    return request.app.state.appliance


def current_principal(request: Request) -> Principal:
    """The caller, from `Authorization: Bearer <key>`.

    With no admin key configured (only allowed on loopback) every caller is an anonymous admin.
    """
    state = get_state(request)
    admin_key = state.settings.admin_key
    if not admin_key:
        return Principal(key_id="anonymous", role="admin")
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise ApiError(401, "unauthorized", "missing 'Authorization: Bearer <key>' header")
    if hmac.compare_digest(token.strip().encode(), admin_key.encode()):
        return Principal(key_id="admin", role="admin")
    raise ApiError(401, "unauthorized", "invalid API key")


def require_admin(request: Request) -> Principal:
    principal = current_principal(request)
    if principal.role != "admin":
        raise ApiError(403, "forbidden", "this action needs an admin key")
    return principal
