"""The FastAPI application factory: routes, error handlers and the lifespan that owns the engine."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from appliance import __version__
from appliance.config import Settings
from appliance.engine.async_engine import AsyncEngine
from appliance.server.deps import AppState
from appliance.server.errors import install_error_handlers
from appliance.server.routes import health, openai

log = logging.getLogger("appliance.server")


def create_app(settings: Settings, engine: AsyncEngine | None = None, model_name: str = "default") -> FastAPI:
    """Build the app around an already-loaded engine (`appliance serve` loads it first, so a bad model
    is one clear error line before anything listens)."""
    state = AppState(settings=settings, engine=engine, model_name=model_name)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        state.ready = state.engine is not None
        try:
            yield
        finally:
            state.ready = False
            if state.engine is not None:
                state.engine.close()

    app = FastAPI(title="RAG appliance", version=__version__, lifespan=lifespan)
    app.state.appliance = state
    install_error_handlers(app)
    app.include_router(health.router)
    app.include_router(openai.router)
    return app
