"""HTTP models of the search and admin endpoints, and the mapping of retrieval errors to HTTP errors."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import BaseModel, Field

from appliance.server.deps import AppState
from appliance.server.errors import ApiError
from appliance.server.schemas import RequestModel
from appliance.server.schemas_filters import FiltersIn
from retrieval.errors import ConflictError, FileError, InvalidNameError, NotFoundError
from retrieval.store import COLLECTION_NAME_PATTERN
from retrieval.types import Collection, Document, Hit, JobStatus

if TYPE_CHECKING:
    from retrieval.service import RetrievalService


def retrieval_of(state: AppState) -> RetrievalService:
    if state.retrieval is None:
        raise ApiError(503, "not_ready", "the retrieval service is still loading", {"Retry-After": "5"})
    return state.retrieval


@contextmanager
def service_errors() -> Iterator[None]:
    """Turn retrieval errors into JSON HTTP errors (404, 409, 400, 413, 415, 422)."""
    try:
        yield
    except NotFoundError as exc:
        raise ApiError(404, "not_found", str(exc)) from exc
    except ConflictError as exc:
        raise ApiError(409, "conflict", str(exc)) from exc
    except InvalidNameError as exc:
        raise ApiError(400, "invalid_request", str(exc)) from exc
    except FileError as exc:
        kind = {413: "too_large", 415: "unsupported_media_type"}.get(exc.status, "invalid_file")
        raise ApiError(exc.status, kind, str(exc)) from exc


class SearchRequest(RequestModel):
    query: str = Field(min_length=1, max_length=4000)
    collection: str = Field(min_length=1, max_length=64)
    k: int = Field(10, ge=1, le=100)
    mode: Literal["hybrid", "vector", "bm25"] = "hybrid"
    filters: FiltersIn | None = None


class SearchHit(BaseModel):
    chunk_id: int
    doc_id: str
    title: str
    source: str
    page: int | None
    heading_path: list[str]
    text: str
    score: float
    modified: float | None = None  # epoch seconds: the file's mtime at ingest, or the upload time
    content_type: str | None = None  # the parser kind (pdf, html, md, txt, docx, ...)
    tags: dict[str, str] = {}

    @classmethod
    def of(cls, hit: Hit) -> SearchHit:
        c = hit.chunk
        return cls(
            chunk_id=c.chunk_id,
            doc_id=c.doc_id,
            title=c.title,
            source=c.source,
            page=c.page,
            heading_path=list(c.heading_path),
            text=c.text,
            score=hit.score,
            modified=c.modified,
            content_type=c.content_type,
            tags=dict(c.tags),
        )


class SearchResponse(BaseModel):
    hits: list[SearchHit]
    took_ms: float


CollectionName = Annotated[str, Field(min_length=1, max_length=64,
                                      json_schema_extra={"pattern": COLLECTION_NAME_PATTERN})]  # else 400


class CreateCollection(RequestModel):
    name: CollectionName


class CollectionOut(BaseModel):
    name: str
    created_at: float
    documents: int
    chunks: int

    @classmethod
    def of(cls, c: Collection) -> CollectionOut:
        return cls.model_validate(c, from_attributes=True)


class DocumentOut(BaseModel):
    doc_id: str
    source: str
    title: str
    content_hash: str
    size: int
    chunks: int
    created_at: float
    modified: float | None = None
    content_type: str | None = None
    tags: dict[str, str] = {}

    @classmethod
    def of(cls, d: Document) -> DocumentOut:
        return cls(doc_id=d.doc_id, source=d.source, title=d.title, content_hash=d.content_hash, size=d.size,
                   chunks=d.chunks, created_at=d.created_at, modified=d.modified, content_type=d.content_type,
                   tags=dict(d.tags))


class FileOut(BaseModel):
    file: str
    state: str
    error: str | None = None
    doc_id: str | None = None
    chunks: int = 0


class FileErrorOut(BaseModel):
    file: str
    error: str


class JobOut(BaseModel):
    job_id: str
    collection: str
    state: Literal["queued", "running", "done", "failed"]
    done: int
    total: int
    errors: list[FileErrorOut]
    files: list[FileOut]
    message: str | None
    created_at: float
    finished_at: float | None

    @classmethod
    def of(cls, j: JobStatus) -> JobOut:
        return cls(
            job_id=j.job_id,
            collection=j.collection,
            state=j.state,
            done=j.done,
            total=j.total,
            errors=[FileErrorOut(file=f.source, error=f.error or "failed") for f in j.errors + j.warnings],
            files=[
                FileOut(file=f.source, state=f.state, error=f.error, doc_id=f.doc_id, chunks=f.chunks) for f in j.files
            ],
            message=j.message,
            created_at=j.created_at,
            finished_at=j.finished_at,
        )
