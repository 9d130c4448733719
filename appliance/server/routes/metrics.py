"""`GET /metrics`: the Prometheus exposition."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Response
from prometheus_client import CONTENT_TYPE_LATEST

from appliance.server.deps import AppState, Principal, current_principal, get_state, metrics_of

router = APIRouter()


@router.get("/metrics", include_in_schema=False)
def metrics(state: AppState = Depends(get_state), _: Principal = Depends(current_principal)) -> Response:
    """Any valid key may scrape (a reader key with no collections suffices): no figure names a collection."""
    return Response(metrics_of(state).exposition(), media_type=CONTENT_TYPE_LATEST)
