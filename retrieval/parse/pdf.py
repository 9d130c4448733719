"""PDF via pypdf: one section per page (1-based page numbers kept); the outline gives heading paths."""

from __future__ import annotations

import io
from typing import Any

from pypdf import PdfReader
from pypdf.errors import PdfReadError

from retrieval.errors import CorruptFileError
from retrieval.parse.text import stem_title
from retrieval.types import ParsedDocument, Section


def _outline_starts(reader: PdfReader) -> list[tuple[int, tuple[str, ...]]]:
    """(0-based page, heading path) for every outline entry, sorted by page."""
    starts: list[tuple[int, tuple[str, ...]]] = []

    def walk(items: list[Any], path: tuple[str, ...]) -> None:
        last: tuple[str, ...] = path
        for item in items:
            if isinstance(item, list):
                walk(item, last)
                continue
            try:
                page = reader.get_destination_page_number(item)
            except Exception:  # broken destinations are common; the entry is just skipped
                continue
            if page is None:
                continue
            last = (*path, str(item.title).strip())
            starts.append((page, last))

    try:
        walk(reader.outline, ())
    except Exception:  # an unreadable outline costs heading paths, not the document
        return []
    return sorted(starts, key=lambda s: s[0])


def parse_pdf(data: bytes, name: str) -> ParsedDocument:
    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted and not reader.decrypt(""):
            raise CorruptFileError(f"{name}: the PDF is encrypted with a password")
        starts = _outline_starts(reader)
        sections: list[Section] = []
        for index, page in enumerate(reader.pages):
            text = (page.extract_text() or "").strip()
            path = next((p for start, p in reversed(starts) if start <= index), ())
            if text:
                sections.append(Section(text=text, heading_path=path, page=index + 1))
        meta_title = reader.metadata.title if reader.metadata else None
    except CorruptFileError:
        raise
    except (PdfReadError, ValueError, KeyError, TypeError, OSError) as exc:
        raise CorruptFileError(f"{name}: not a readable PDF ({exc})") from exc
    except Exception as exc:  # pypdf raises many kinds on damaged files (including DependencyError for AES)
        raise CorruptFileError(f"{name}: the PDF could not be read ({type(exc).__name__}: {exc})") from exc
    if not sections:
        raise CorruptFileError(f"{name}: the PDF has no extractable text (scanned images need OCR)")
    return ParsedDocument(title=(meta_title or "").strip() or stem_title(name), sections=sections, kind="pdf")
