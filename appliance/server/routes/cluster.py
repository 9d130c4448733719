"""`GET /api/admin/cluster` (admin key): the engine replicas of a Ray Serve cluster, their load and the passages
whose KV each holds. A server with one engine answers 404."""

from __future__ import annotations

import time

from fastapi import APIRouter, Depends
from pydantic import BaseModel

from appliance.server.deps import AppState, get_state, require_admin
from appliance.server.errors import ApiError

router = APIRouter(prefix="/api/admin", dependencies=[Depends(require_admin)])


class ReplicaOut(BaseModel):
    replica_id: str
    node_id: str
    pid: int
    in_flight: int  # requests streaming on it now
    served: int  # requests it started since it came up
    cached_passages: int  # passages whose KV it holds (what the affinity router weighs)
    cached_tokens: int
    num_running: int
    num_waiting: int
    kv_usage: float
    doc_hits: int  # chunk lookups found in its chunk tier
    doc_misses: int
    reported_s_ago: float


class ClusterOut(BaseModel):
    replicas: list[ReplicaOut]


@router.get("/cluster", response_model=ClusterOut)
async def cluster(state: AppState = Depends(get_state)) -> ClusterOut:
    reports = state.engine.replicas() if state.engine is not None else None
    if reports is None:
        raise ApiError(404, "not_a_cluster", "this server runs one engine; `appliance serve --replicas N` runs a "
                                             "cluster")
    now = time.time()
    return ClusterOut(replicas=[ReplicaOut(
        replica_id=r.replica_id, node_id=r.node_id, pid=r.pid, in_flight=r.in_flight, served=r.served,
        cached_passages=len(r.held), cached_tokens=sum(r.held.values()), num_running=r.snapshot.num_running,
        num_waiting=r.snapshot.num_waiting, kv_usage=r.snapshot.kv_usage, doc_hits=r.snapshot.doc_hits,
        doc_misses=r.snapshot.doc_misses, reported_s_ago=round(max(0.0, now - r.at), 3)) for r in reports])
