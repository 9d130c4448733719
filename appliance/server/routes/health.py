"""Liveness and readiness. Both are `async`: answered on the event loop itself, never behind a hop to a worker
thread (which, while the engine's output reader holds the GIL, waits for it)."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse

from appliance.server.deps import AppState, get_state

router = APIRouter()


@router.get("/health")
async def health() -> dict:
    return {"status": "ok"}


@router.get("/ready")
async def ready(state: AppState = Depends(get_state)) -> JSONResponse:
    down = state.engine.down if state.engine is not None else None
    if down is not None:
        return JSONResponse({"status": "engine_down", "message": down}, status_code=503)
    if state.ready:
        return JSONResponse({"status": "ready"})
    return JSONResponse({"status": "loading"}, status_code=503, headers={"Retry-After": "5"})
