"""What any key may read, for the web UI and other clients: the collections it can see, and one ready
document's passages (the target of a citation's "open the document" link).

Both honour the caller's collections: a collection or document outside them is absent (the list omits it,
the document answers 404 as if it did not exist), so neither leaks the existence of another collection.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends
from pydantic import BaseModel

from appliance.server.deps import AppState, Principal, current_principal, get_state
from appliance.server.errors import ApiError
from appliance.server.schemas_retrieval import CollectionOut, retrieval_of

router = APIRouter()


class PassageOut(BaseModel):
    chunk_id: int
    ordinal: int
    page: int | None
    heading_path: list[str]
    text: str


class DocumentView(BaseModel):
    doc_id: str
    collection: str
    title: str
    source: str
    passages: list[PassageOut]


@router.get("/api/collections")
def readable_collections(state: AppState = Depends(get_state),
                         principal: Principal = Depends(current_principal)) -> dict[str, list[CollectionOut]]:
    """`{"collections": [{name, created_at, documents, chunks}]}`: those the caller's key may read."""
    collections = retrieval_of(state).list_collections()
    return {"collections": [CollectionOut.of(c) for c in collections if principal.can_read(c.name)]}


@router.get("/api/documents/{doc_id}", response_model=DocumentView)
def read_document(doc_id: str, state: AppState = Depends(get_state),
                  principal: Principal = Depends(current_principal)) -> DocumentView:
    """A ready document's passages in reading order. 404 when it does not exist, is still being ingested,
    or belongs to a collection the caller may not read."""
    service = retrieval_of(state)
    chunks = service.document_chunks(doc_id)
    ready = service.store.chunks([c.chunk_id for c in chunks]) if chunks else {}
    if not ready or not principal.can_read(chunks[0].collection):
        raise ApiError(404, "not_found", f"document {doc_id!r} does not exist")
    first = chunks[0]
    return DocumentView(
        doc_id=doc_id, collection=first.collection, title=first.title, source=first.source,
        passages=[PassageOut(chunk_id=c.chunk_id, ordinal=c.ordinal, page=c.page, heading_path=list(c.heading_path),
                             text=c.text) for c in chunks if c.chunk_id in ready])
