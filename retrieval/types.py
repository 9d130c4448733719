"""Plain data passed between the retrieval modules (dataclasses; pydantic lives at the HTTP boundary)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

SearchMode = Literal["hybrid", "vector", "bm25"]
JobState = Literal["queued", "running", "done", "failed"]
FileState = Literal["pending", "done", "skipped", "failed", "expanded"]


@dataclass(frozen=True)
class Section:
    """A run of text under one heading path on one page (page is 1-based; None when the format has none)."""

    text: str
    heading_path: tuple[str, ...] = ()
    page: int | None = None


@dataclass(frozen=True)
class ParsedDocument:
    """What a parser returns: the document's title and its text as ordered sections."""

    title: str
    sections: list[Section]
    kind: str  # "pdf" | "html" | "md" | "txt" | "docx" | ...
    metadata: dict[str, str] = field(default_factory=dict)  # e.g. an email's from/to/date/subject
    # parts that could not be read while the rest was (a page OCR found no text on), each a sentence naming the
    # file; the job records them as the file's error text, and the file is still ingested
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True)
class ChunkDraft:
    """A chunk before it has an id: `token_ids == tokenizer.encode(text)` exactly."""

    text: str
    token_ids: list[int]
    heading_path: tuple[str, ...]
    page: int | None


@dataclass(frozen=True)
class Chunk:
    """A stored chunk. `chunk_id` is unique across the store and never reused (it is also the FAISS id)."""

    chunk_id: int
    doc_id: str
    collection: str
    ordinal: int
    text: str
    token_ids: list[int]
    title: str
    source: str
    page: int | None
    heading_path: tuple[str, ...]
    # the document's metadata (store.chunks fills them; None/() where a chunk is made without its document)
    modified: float | None = None  # epoch seconds: the file's mtime at ingest, or the upload time
    content_type: str | None = None  # the parser kind: "pdf", "html", "md", "txt", "docx", "csv", ...
    tags: tuple[tuple[str, str], ...] = ()  # (key, value), sorted by key


@dataclass(frozen=True)
class Hit:
    """One search result: a chunk with its fused score (higher is better)."""

    chunk: Chunk
    score: float


@dataclass(frozen=True)
class Collection:
    name: str
    created_at: float
    documents: int
    chunks: int


@dataclass(frozen=True)
class Document:
    doc_id: str
    collection: str
    source: str
    title: str
    content_hash: str
    size: int
    chunks: int
    state: Literal["pending", "ready"]
    created_at: float
    modified: float | None = None  # epoch seconds: the file's mtime at ingest, or the upload time
    content_type: str | None = None  # the parser kind (see retrieval.filters.CONTENT_TYPES)
    tags: tuple[tuple[str, str], ...] = ()  # (key, value), sorted by key


@dataclass(frozen=True)
class JobFile:
    source: str
    state: FileState
    error: str | None = None
    doc_id: str | None = None
    chunks: int = 0


@dataclass(frozen=True)
class JobStatus:
    """A job's progress: `done` of `total` files processed (archives count their entries as files)."""

    job_id: str
    collection: str
    state: JobState
    done: int
    total: int
    created_at: float
    finished_at: float | None
    message: str | None
    files: list[JobFile] = field(default_factory=list)

    @property
    def errors(self) -> list[JobFile]:
        """The files that failed."""
        return [f for f in self.files if f.state == "failed"]

    @property
    def warnings(self) -> list[JobFile]:
        """The files ingested with a problem said in their error text (e.g. a scanned page OCR read nothing from)."""
        return [f for f in self.files if f.state == "done" and f.error]
