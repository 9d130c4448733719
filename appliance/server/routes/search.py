"""POST /api/search: hybrid (default), vector or BM25 search over one collection the caller may read, within
the request's metadata `filters`."""

from __future__ import annotations

import time

from fastapi import APIRouter, Depends

from appliance.server.deps import AppState, Principal, current_principal, get_state
from appliance.server.errors import ApiError
from appliance.server.schemas_filters import search_filters
from appliance.server.schemas_retrieval import (
    SearchHit,
    SearchRequest,
    SearchResponse,
    retrieval_of,
    service_errors,
)

router = APIRouter()


@router.post("/api/search", response_model=SearchResponse)
def search(
    body: SearchRequest, state: AppState = Depends(get_state), principal: Principal = Depends(current_principal)
) -> SearchResponse:
    if not principal.can_read(body.collection):
        raise ApiError(403, "forbidden", f"this key cannot read collection {body.collection!r}")
    service = retrieval_of(state)
    start = time.perf_counter()
    with service_errors():
        hits = service.search(body.query, [body.collection], k=body.k, mode=body.mode,
                              filters=search_filters(body.filters))
    took_ms = (time.perf_counter() - start) * 1000
    return SearchResponse(hits=[SearchHit.of(h) for h in hits], took_ms=round(took_ms, 3))
