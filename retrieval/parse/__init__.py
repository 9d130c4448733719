"""Parsers by file type: `detect_kind` (extension, then content sniffing) and `parse_bytes`.

Every parser is `(data: bytes, name: str) -> ParsedDocument` and raises a `FileError` subclass with a
message naming the file. Archives are not parsed here: see `retrieval.parse.zip.iter_archive`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import PurePosixPath

from retrieval.errors import CorruptFileError, UnsupportedTypeError
from retrieval.parse.docx import parse_docx
from retrieval.parse.html import parse_html
from retrieval.parse.md import parse_md
from retrieval.parse.pdf import parse_pdf
from retrieval.parse.text import looks_binary, parse_txt
from retrieval.types import ParsedDocument

PARSERS: dict[str, Callable[[bytes, str], ParsedDocument]] = {
    "pdf": parse_pdf,
    "html": parse_html,
    "md": parse_md,
    "txt": parse_txt,
    "docx": parse_docx,
}
EXTENSIONS = {
    ".pdf": "pdf",
    ".html": "html",
    ".htm": "html",
    ".xhtml": "html",
    ".md": "md",
    ".markdown": "md",
    ".txt": "txt",
    ".text": "txt",
    ".rst": "txt",
    ".docx": "docx",
    ".zip": "zip",
}
SUPPORTED = ", ".join(sorted(EXTENSIONS))
_MAGIC = {"pdf": b"%PDF-", "docx": b"PK\x03\x04", "zip": b"PK\x03\x04"}


def _sniff(head: bytes) -> str | None:
    if head.startswith(b"%PDF-"):
        return "pdf"
    if head.startswith(b"PK\x03\x04"):
        return "zip"
    lowered = head[:512].lstrip().lower()
    if lowered.startswith((b"<!doctype html", b"<html")):
        return "html"
    return None


def detect_kind(name: str, data: bytes) -> str:
    """The parser kind for a file: its extension when known (checked against the content's magic bytes),
    else what the content looks like. Raises UnsupportedTypeError or CorruptFileError."""
    suffix = PurePosixPath(name).suffix.lower()
    kind = EXTENSIONS.get(suffix)
    if kind is not None:
        magic = _MAGIC.get(kind)
        if magic is not None and not data.startswith(magic):
            raise CorruptFileError(f"{name}: the content is not a {kind.upper()} file")
        return kind
    sniffed = _sniff(data[:1024])
    if sniffed is not None:
        return sniffed
    if suffix == "" and data and not looks_binary(data):
        return "txt"
    raise UnsupportedTypeError(f"{name}: unsupported file type {suffix or '(no extension)'}; supported: {SUPPORTED}")


def parse_bytes(data: bytes, name: str) -> ParsedDocument:
    """Parse one (non-archive) file. Raises a FileError subclass on any failure."""
    kind = detect_kind(name, data)
    if kind == "zip":
        raise UnsupportedTypeError(f"{name}: nested archives are not expanded")
    return PARSERS[kind](data, name)
