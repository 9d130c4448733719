"""GET /api/admin/syncs (admin key required): each folder `appliance sync` keeps a collection equal to, and
its last pass (retrieval/sync.py's `synced_folders` table, written by the sync process, read here)."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from appliance.server.deps import AppState, get_state, require_admin
from appliance.server.schemas_retrieval import retrieval_of
from retrieval.sync import SyncRecord, synced_folders

router = APIRouter(prefix="/api/admin", dependencies=[Depends(require_admin)])


class SyncOut(BaseModel):
    collection: str
    folder: str
    state: str  # running | done | failed | interrupted (the process running it exited)
    watching: bool  # an `appliance sync --watch` process keeps it in sync now
    started_at: float
    finished_at: float | None
    added: int
    changed: int
    removed: int
    renamed: int
    unchanged: int
    failed: int
    unsupported: int
    job_id: str | None
    error: str | None

    @classmethod
    def of(cls, r: SyncRecord) -> SyncOut:
        return cls(collection=r.collection, folder=r.folder, state=r.state, watching=r.watching,
                   started_at=r.started_at, finished_at=r.finished_at, job_id=r.job_id, error=r.error, **r.counts)


@router.get("/syncs")
async def list_syncs(state: AppState = Depends(get_state)) -> dict[str, list[SyncOut]]:
    """`{"syncs": [...]}`: every synced folder, by collection, with the counts of its last pass."""
    records = await run_in_threadpool(synced_folders, retrieval_of(state).store)
    return {"syncs": [SyncOut.of(r) for r in records]}
