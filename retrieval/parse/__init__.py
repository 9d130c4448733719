"""Parsers by file type: `detect_kind` (extension, then content sniffing) and `parse_bytes`.

Every parser is `(data: bytes, name: str) -> ParsedDocument` and raises a `FileError` subclass with a
message naming the file. Parsers are imported when first used (`parser_for`), so a format's library costs
nothing until a file of that format arrives (the parse worker imports them all up front: `load_parsers`).
Archives are not parsed here: see `retrieval.parse.zip.iter_archive`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import PurePosixPath

from retrieval.errors import CorruptFileError, UnsupportedTypeError
from retrieval.parse.text import looks_binary
from retrieval.types import ParsedDocument

Parser = Callable[[bytes, str], ParsedDocument]

# kind -> "module:function" of its parser
PARSERS: dict[str, str] = {
    "pdf": "retrieval.parse.pdf:parse_pdf",
    "html": "retrieval.parse.html:parse_html",
    "md": "retrieval.parse.md:parse_md",
    "txt": "retrieval.parse.text:parse_txt",
    "docx": "retrieval.parse.docx:parse_docx",
    "pptx": "retrieval.parse.pptx:parse_pptx",
    "xlsx": "retrieval.parse.xlsx:parse_xlsx",
    "csv": "retrieval.parse.csv_file:parse_csv",
    "eml": "retrieval.parse.eml:parse_eml",
    "epub": "retrieval.parse.epub:parse_epub",
    "image": "retrieval.parse.image:parse_image",
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
    ".pptx": "pptx",
    ".xlsx": "xlsx",
    ".csv": "csv",
    ".eml": "eml",
    ".epub": "epub",
    ".png": "image",
    ".jpg": "image",
    ".jpeg": "image",
    ".tif": "image",
    ".tiff": "image",
    ".zip": "zip",
}
SUPPORTED = ", ".join(sorted(EXTENSIONS))
_ZIP = b"PK\x03\x04"
_IMAGE_MAGIC = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"II*\x00", b"MM\x00*")
_MAGIC: dict[str, tuple[bytes, ...]] = {
    "pdf": (b"%PDF-",),
    "docx": (_ZIP,),
    "pptx": (_ZIP,),
    "xlsx": (_ZIP,),
    "epub": (_ZIP,),
    "zip": (_ZIP,),
    "image": _IMAGE_MAGIC,
}


def _sniff(head: bytes) -> str | None:
    if head.startswith(b"%PDF-"):
        return "pdf"
    if head.startswith(_ZIP):
        return "zip"
    if head.startswith(_IMAGE_MAGIC):
        return "image"
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
            label = "an image" if kind == "image" else f"a {kind.upper()} file"
            raise CorruptFileError(f"{name}: the content is not {label}")
        return kind
    sniffed = _sniff(data[:1024])
    if sniffed is not None:
        return sniffed
    if suffix == "" and data and not looks_binary(data):
        return "txt"
    raise UnsupportedTypeError(f"{name}: unsupported file type {suffix or '(no extension)'}; supported: {SUPPORTED}")


def parser_for(kind: str) -> Parser:
    """The parser of a (non-archive) kind, its module imported on first use."""
    module, function = PARSERS[kind].split(":")
    parser: Parser = getattr(importlib.import_module(module), function)
    return parser


def load_parsers() -> None:
    """Import every parser now (the parse worker does, so that no file's time limit pays for an import)."""
    for kind in PARSERS:
        parser_for(kind)


def parse_bytes(data: bytes, name: str) -> ParsedDocument:
    """Parse one (non-archive) file. Raises a FileError subclass on any failure."""
    kind = detect_kind(name, data)
    if kind == "zip":
        raise UnsupportedTypeError(f"{name}: nested archives are not expanded")
    return parser_for(kind)(data, name)
