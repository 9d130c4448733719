"""Request-scoped dependencies: the shared app state, the accessors of its services, the caller's identity.

Routes get what they need through these functions (FastAPI `Depends`), never through globals. `AppState` has a
typed field per shared service; the services' modules never import this one (it sits above them).
"""

from __future__ import annotations

import hmac
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from fastapi import Depends, Request, Security
from fastapi.concurrency import run_in_threadpool
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from appliance.keys import KeyStore, Role
from appliance.server.admission import Admission
from appliance.server.errors import ApiError
from appliance.server.metered_engine import MeteredEngine
from appliance.server.metrics import Metrics
from appliance.server.ratelimit import RateLimiter

if TYPE_CHECKING:
    from appliance.config import Settings
    from appliance.conversations.store import ConversationStore
    from appliance.engine.front import EngineFront
    from appliance.rag.pipeline import AskPipeline
    from appliance.server.usage import UsageBook
    from retrieval.service import RetrievalService


@dataclass
class AppState:
    """Everything the routes share; built by the app's lifespan, stored on `app.state.appliance`."""

    settings: Settings
    engine: EngineFront | None = None
    retrieval: RetrievalService | None = None
    model_name: str = "default"
    ready: bool = False
    # the app's shared services: `create_app` makes the first two, the accessor of each other one (keys_of,
    # admission_of, engine_of, ...) makes it on first use
    metrics: Metrics | None = None
    usage: UsageBook | None = None
    keys: KeyStore | None = None
    rate_limiter: RateLimiter | None = None
    admission: Admission | None = None
    metered_engine: MeteredEngine | None = None
    ask: AskPipeline | None = None
    conversations: ConversationStore | None = None


@dataclass(frozen=True)
class Principal:
    """Who is calling. `collections` is None for "all collections" (admins); a reader's grant otherwise."""

    key_id: str
    role: Role
    collections: frozenset[str] | None = None

    def can_read(self, collection: str) -> bool:
        return self.collections is None or collection in self.collections


ANONYMOUS = Principal(key_id="anonymous", role="admin")
_bearer = HTTPBearer(auto_error=False, description="An API key (`ak_<key_id>_<secret>`) or APPLIANCE_ADMIN_KEY")


async def get_state(request: Request) -> AppState:
    """The app state (async, like every dependency here: FastAPI runs a sync one on a worker thread, a hop
    that costs milliseconds when the engine thread holds the GIL)."""
    return request.app.state.appliance


def keys_of(state: AppState) -> KeyStore:
    """The key store of the data dir (`<data_dir>/keys.db`), opened on first use."""
    if state.keys is None:
        state.keys = KeyStore(state.settings.data_dir / "keys.db")
    return state.keys


def conversations_of(state: AppState) -> ConversationStore:
    """The saved conversations of the data dir (`<data_dir>/conversations.db`), opened on first use."""
    if state.conversations is None:
        from appliance.conversations.store import ConversationStore

        state.conversations = ConversationStore(state.settings.data_dir / "conversations.db")
    return state.conversations


def metrics_of(state: AppState) -> Metrics:
    assert state.metrics is not None, "create_app makes the metrics"
    return state.metrics


def engine_of(state: AppState) -> MeteredEngine:
    """The timed engine, or 503 while the model is loading."""
    if state.engine is None:
        raise ApiError(503, "model_unavailable", "the model is still loading", {"Retry-After": "5"})
    if state.metered_engine is None:
        state.metered_engine = MeteredEngine(state.engine, metrics_of(state))
    return state.metered_engine


def admission_of(state: AppState) -> Admission:
    """The bound on generation requests in the server (APPLIANCE_MAX_QUEUE), made on first use."""
    if state.admission is None:
        state.admission = Admission(state.settings.max_queue)
    return state.admission


def _limiter_of(state: AppState) -> RateLimiter:
    if state.rate_limiter is None:
        state.rate_limiter = RateLimiter(state.settings.rate_limit_per_minute, state.settings.rate_limit_burst)
    return state.rate_limiter


def _identify(state: AppState, token: str | None) -> Principal:
    admin_key = state.settings.admin_key
    if not admin_key and not keys_of(state).has_keys():
        return ANONYMOUS  # no key configured: `appliance serve` allows that on loopback only
    if not token:
        raise ApiError(401, "unauthorized", "missing 'Authorization: Bearer <key>' header")
    if admin_key and hmac.compare_digest(token.encode(), admin_key.encode()):
        return Principal(key_id="admin", role="admin")
    key = keys_of(state).verify(token)
    if key is None:
        raise ApiError(401, "unauthorized", "invalid or revoked API key")
    return Principal(key.key_id, key.role, None if key.collections is None else frozenset(key.collections))


async def current_principal(request: Request,
                            credentials: HTTPAuthorizationCredentials | None = Security(_bearer)) -> Principal:
    """The caller, from `Authorization: Bearer <key>`: the one place where authentication is decided.

    With no key configured at all (no APPLIANCE_ADMIN_KEY and no stored key) every caller is an anonymous
    admin. Otherwise the key must be APPLIANCE_ADMIN_KEY (key id `admin`) or a stored key (401 if missing,
    unknown or revoked). A key over its rate limit gets 429 with `Retry-After` (anonymous callers have none).
    """
    state: AppState = request.app.state.appliance
    token = credentials.credentials.strip() if credentials is not None else None
    if token and not keys_of(state).is_fresh(token):
        principal = await run_in_threadpool(_identify, state, token)  # argon2 (~20 ms) off the event loop
    else:
        principal = _identify(state, token)
    if principal is not ANONYMOUS:
        wait = _limiter_of(state).acquire(principal.key_id)
        if wait > 0:
            raise ApiError(429, "rate_limited", f"API key {principal.key_id!r} is over its limit of "
                           f"{state.settings.rate_limit_per_minute} requests per minute; retry in {wait:.1f} s",
                           {"Retry-After": str(math.ceil(wait))})
    return principal


async def generating_principal(principal: Principal = Depends(current_principal),
                               state: AppState = Depends(get_state)) -> Principal:
    """The caller of a route that generates, refused with 503 + Retry-After while the server's queue is full:
    once authenticated, but before its body is validated or its prompt is built, so that under overload a
    refusal costs little more than `/health` (`admission.py`)."""
    admission_of(state).check()
    return principal


async def require_admin(principal: Principal = Depends(current_principal)) -> Principal:
    """The caller, who must hold an admin key (403 otherwise)."""
    if principal.role != "admin":
        raise ApiError(403, "forbidden", "this action needs an admin key")
    return principal
