"""The FastAPI application factory: routes, error handlers and the lifespan that owns engine and indexes."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from types import FrameType
from typing import TYPE_CHECKING

from fastapi import FastAPI

from appliance import __version__
from appliance.config import Settings
from appliance.engine.front import EngineFront
from appliance.heap import freeze_long_lived
from appliance.server.deps import AppState
from appliance.server.errors import ERROR_RESPONSES, install_error_handlers
from appliance.server.limits import BodyLimitMiddleware
from appliance.server.logging import RequestIdMiddleware
from appliance.server.metrics import Metrics
from appliance.server.routes import (
    admin,
    ask,
    cluster,
    conversations,
    health,
    keys,
    library,
    openai,
    openai_embeddings,
    search,
    syncs,
    tokenize,
    ui,
    usage,
)
from appliance.server.routes.metrics import router as metrics_router
from appliance.server.usage import UsageBook
from appliance.server.warmup import warm_up

if TYPE_CHECKING:
    from retrieval.service import RetrievalService

log = logging.getLogger("appliance.server")


def create_app(settings: Settings, engine: EngineFront, model_name: str = "default",
               retrieval: RetrievalService | None = None, freeze: bool = False) -> FastAPI:
    """Build the app around an already-loaded engine (`appliance serve` loads it first, so a bad model is
    one clear error line before anything listens). Without `retrieval`, the lifespan opens the store and
    checks the indexes under `settings.data_dir`; then it warms retrieval and the engine (`warmup.py`) so the
    first question costs what the next ones do, while the socket already listens. `/ready` answers 200 once
    that is done. `freeze`: a serving process's app, which then keeps what it built at start out of garbage
    collection (`appliance.heap`; not for tests, which build many apps)."""
    state = AppState(settings=settings, engine=engine, model_name=model_name, retrieval=retrieval)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        started = time.perf_counter()
        opened: RetrievalService | None = None
        if state.retrieval is not None:
            state.retrieval.on_documents_removed(engine.invalidate_documents)
        else:
            from retrieval.service import RetrievalService

            opened = state.retrieval = await asyncio.to_thread(
                RetrievalService.open, settings.data_dir, engine.tokenizer, settings.embedder,
                device=settings.retrieval_device, limits=settings.ingest_limits())
            opened.on_documents_removed(engine.invalidate_documents)
        async def warm_then_ready() -> None:
            try:
                times = await warm_up(engine, state.retrieval, settings.warmup_tokens, settings.warmup_timeout_s)
                log.info("ready %.1f s after the app started (warm-up: retrieval %.1f s, engine %.1f s)",
                         time.perf_counter() - started, times.retrieval_s, times.engine_s)
            except Exception:  # a warm-up is an optimisation: serve without it rather than never be ready
                log.exception("warm-up failed after %.1f s; ready without it", time.perf_counter() - started)
            if freeze:
                freeze_long_lived("server warmed up")  # the app, the indexes, the embedder: kept for good
            state.ready = True

        warming = asyncio.create_task(warm_then_ready())  # the socket listens meanwhile: /health 200, /ready 503
        try:
            yield
        finally:
            state.ready = False
            warming.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await warming
            engine.close()
            if opened is not None:
                opened.close()
            if state.conversations is not None:
                state.conversations.close()

    app = FastAPI(title="RAG appliance", version=__version__, lifespan=lifespan, responses=ERROR_RESPONSES)
    app.state.appliance = state
    state.metrics, state.usage = Metrics(state), UsageBook()
    mb = 1024 * 1024
    app.add_middleware(BodyLimitMiddleware, max_body=int(settings.max_body_mb * mb),
                       max_upload=int(settings.max_upload_mb * mb))
    app.add_middleware(RequestIdMiddleware)  # outermost: the body limit's 413 carries the request id too
    install_error_handlers(app)
    app.include_router(metrics_router)
    for module in (health, openai, openai_embeddings, tokenize, search, ask, conversations, admin, cluster, usage,
                   keys, syncs, library, ui):
        app.include_router(module.router)
    return app


def serve_app(app: FastAPI, host: str, port: int, log_level: str = "info", grace_s: int = 10) -> None:
    """Serve `app` until SIGINT or SIGTERM, then stop gracefully and return (the process exits 0).

    On the signal `/ready` answers 503 at once and the listening socket closes; requests in flight get
    `grace_s` seconds to finish (streams still running then are cancelled, which aborts their engine
    requests and frees their KV blocks); then the lifespan closes the engine and the store.
    """
    import signal

    import uvicorn

    state: AppState = app.state.appliance

    class _DrainingServer(uvicorn.Server):
        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            state.ready = False
            log.info("signal %d: draining (grace period %d s)", sig, grace_s)
            super().handle_exit(sig, frame)

    server = _DrainingServer(uvicorn.Config(app, host=host, port=port, log_level=log_level,
                                            timeout_graceful_shutdown=grace_s))
    # uvicorn re-raises the caught signal after its shutdown, under the handler it found at start: make that
    # a no-op, so that a graceful stop returns from run() instead of killing the process by the signal
    previous = {sig: signal.signal(sig, lambda *_: None) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        server.run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
