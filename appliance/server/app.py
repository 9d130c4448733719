"""The FastAPI application factory: routes, error handlers and the lifespan that owns engine and indexes."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from fastapi import FastAPI

from appliance import __version__
from appliance.config import Settings
from appliance.engine.async_engine import AsyncEngine
from appliance.server.deps import AppState
from appliance.server.errors import install_error_handlers
from appliance.server.routes import admin, ask, health, openai, search

if TYPE_CHECKING:
    from retrieval.service import RetrievalService

log = logging.getLogger("appliance.server")


def create_app(settings: Settings, engine: AsyncEngine, model_name: str = "default",
               retrieval: RetrievalService | None = None) -> FastAPI:
    """Build the app around an already-loaded engine (`appliance serve` loads it first, so a bad model is
    one clear error line before anything listens). Without `retrieval`, the lifespan opens the store and
    checks the indexes under `settings.data_dir`; `/ready` answers 200 once that is done."""
    state = AppState(settings=settings, engine=engine, model_name=model_name, retrieval=retrieval)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        opened_here = state.retrieval is None
        if opened_here:
            from retrieval.service import RetrievalService

            device = "cpu" if settings.device == "cpu" else "auto"
            state.retrieval = await asyncio.to_thread(
                RetrievalService.open, settings.data_dir, engine.tokenizer, settings.embedder, device=device)
        state.ready = True
        try:
            yield
        finally:
            state.ready = False
            engine.close()
            if opened_here:
                state.retrieval.close()

    app = FastAPI(title="RAG appliance", version=__version__, lifespan=lifespan)
    app.state.appliance = state
    install_error_handlers(app)
    for module in (health, openai, search, ask, admin):
        app.include_router(module.router)
    return app
