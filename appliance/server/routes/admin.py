"""Admin endpoints (admin key required): collections, multipart document uploads (-> background job),
job status, documents and their deletion. Shapes follow DESIGN.md §4."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from appliance.server.deps import AppState, get_state, require_admin
from appliance.server.errors import ApiError
from appliance.server.schemas_filters import upload_tags
from appliance.server.schemas_retrieval import (
    CollectionOut,
    CreateCollection,
    DocumentOut,
    JobOut,
    retrieval_of,
    service_errors,
)
from retrieval.jobs import IngestItem

router = APIRouter(prefix="/api/admin", dependencies=[Depends(require_admin)])
_UPLOAD_BODY = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "required": ["files"],
    "properties": {"files": {"type": "array", "items": {"type": "string", "format": "binary"}},
                   "tags": {"type": "string", "description": 'a JSON object of tags, e.g. {"team": "hr"}'},
                   "tag": {"type": "array", "items": {"type": "string"}, "description": "key=value, repeatable"}},
}}}}}


@router.post("/collections", status_code=201, response_model=CollectionOut)
def create_collection(body: CreateCollection, state: AppState = Depends(get_state)) -> CollectionOut:
    with service_errors():
        return CollectionOut.of(retrieval_of(state).create_collection(body.name))


@router.get("/collections")
def list_collections(state: AppState = Depends(get_state)) -> dict[str, list[CollectionOut]]:
    return {"collections": [CollectionOut.of(c) for c in retrieval_of(state).list_collections()]}


@router.delete("/collections/{name}")
def delete_collection(name: str, state: AppState = Depends(get_state)) -> dict[str, str]:
    with service_errors():
        retrieval_of(state).delete_collection(name)
    return {"deleted": name}


@router.get("/collections/{name}/documents")
def list_documents(name: str, state: AppState = Depends(get_state)) -> dict[str, list[DocumentOut]]:
    with service_errors():
        return {"documents": [DocumentOut.of(d) for d in retrieval_of(state).list_documents(name)]}


@router.delete("/collections/{name}/documents/{doc_id}")
def delete_document(name: str, doc_id: str, state: AppState = Depends(get_state)) -> dict[str, str]:
    with service_errors():
        retrieval_of(state).delete_document(name, doc_id)
    return {"deleted": doc_id}


@router.get("/jobs/{job_id}", response_model=JobOut)
def get_job(job_id: str, state: AppState = Depends(get_state)) -> JobOut:
    with service_errors():
        return JobOut.of(retrieval_of(state).job(job_id))


@router.post("/collections/{name}/documents", status_code=202, openapi_extra=_UPLOAD_BODY)
async def upload_documents(name: str, request: Request, state: AppState = Depends(get_state)) -> dict[str, str]:
    """Multipart field(s) `files` -> 202 {job_id}; every document of the upload gets the tags of the fields
    `tags` (a JSON object) and `tag` (`key=value`, repeatable), 422 when invalid. The request is size-limited
    (APPLIANCE_MAX_UPLOAD_MB) and
    holds at most APPLIANCE_MAX_UPLOAD_FILES files (413); every file is type-checked (415) and size-checked
    (413) before the job starts; the job then parses, chunks and indexes them in the background."""
    service = retrieval_of(state)
    with service_errors():
        await run_in_threadpool(service.store.require_collection, name)
    max_files = state.settings.max_upload_files
    try:
        form = await request.form(max_files=max_files)
    except StarletteHTTPException as exc:
        if str(exc.detail).startswith("Too many files"):
            raise ApiError(413, "too_large", f"more than {max_files} files in one upload") from exc
        raise
    files = [v for _, v in form.multi_items() if isinstance(v, UploadFile)]
    try:
        if not files:
            raise ApiError(422, "invalid_request", "no files in the multipart body (use field name 'files')")
        tags = upload_tags([v for v in form.getlist("tags") if isinstance(v, str)],
                           [v for v in form.getlist("tag") if isinstance(v, str)])
    except ApiError:
        await form.close()
        raise
    staged: list[IngestItem] = []
    try:
        with service_errors():
            for upload in files:
                staged.append(await run_in_threadpool(service.stage_upload, upload.filename or "upload", upload.file,
                                                      tags))
            job_id = await run_in_threadpool(service.submit, name, staged)
    except ApiError:
        for item in staged:
            item.path.unlink(missing_ok=True)
        raise
    finally:
        await form.close()
    return {"job_id": job_id}
