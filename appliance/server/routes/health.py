"""Liveness and readiness."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse

from appliance.server.deps import AppState, get_state

router = APIRouter()


@router.get("/health")
def health() -> dict:
    return {"status": "ok"}


@router.get("/ready")
def ready(state: AppState = Depends(get_state)) -> JSONResponse:
    down = state.engine.down if state.engine is not None else None
    if down is not None:
        return JSONResponse({"status": "engine_down", "message": down}, status_code=503)
    if state.ready:
        return JSONResponse({"status": "ready"})
    return JSONResponse({"status": "loading"}, status_code=503, headers={"Retry-After": "5"})
