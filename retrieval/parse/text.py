"""Plain text: decoding bytes of unknown encoding, and the `.txt` parser."""

from __future__ import annotations

from pathlib import PurePosixPath

from retrieval.errors import UnsupportedTypeError
from retrieval.types import ParsedDocument, Section


def looks_binary(data: bytes) -> bool:
    """True when the first KiB has NUL bytes (images, executables, ...)."""
    return b"\x00" in data[:1024]


def decode_text(data: bytes, name: str) -> str:
    """UTF-8 (with or without BOM), else Windows-1252, else Latin-1; refuses binary data."""
    if looks_binary(data):
        raise UnsupportedTypeError(f"{name}: binary data is not a text document")
    for encoding in ("utf-8-sig", "cp1252"):
        try:
            return data.decode(encoding)
        except UnicodeDecodeError:
            continue
    return data.decode("latin-1")


def stem_title(name: str) -> str:
    """A title from a file name: 'docs/My_Notes.txt' -> 'My Notes'."""
    return PurePosixPath(name).stem.replace("_", " ").strip() or name


def parse_txt(data: bytes, name: str) -> ParsedDocument:
    text = decode_text(data, name).replace("\r\n", "\n").replace("\r", "\n")
    return ParsedDocument(title=stem_title(name), sections=[Section(text=text)], kind="txt")
