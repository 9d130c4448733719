"""DOCX via python-docx: paragraphs and tables in body order; 'Heading N' styles give the heading path.
The package is checked first like any zip, and XML parts with a DTD are refused."""

from __future__ import annotations

import io
import re
import zipfile

import docx
from docx.opc.exceptions import PackageNotFoundError
from docx.table import Table
from docx.text.paragraph import Paragraph

from retrieval.errors import CorruptFileError, UnsafeArchiveError
from retrieval.parse.text import stem_title
from retrieval.parse.zip import ArchiveLimits, checked_entries
from retrieval.types import ParsedDocument, Section

_HEADING_STYLE = re.compile(r"^Heading (\d)$")


def _declares_dtd(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> bool:
    """Whether the part holds `<!DOCTYPE` or `<!ENTITY` anywhere (read in pieces that overlap by 8 bytes)."""
    tail = b""
    with archive.open(info) as part:
        while piece := part.read(1024 * 1024):
            window = tail + piece
            if b"<!DOCTYPE" in window or b"<!ENTITY" in window:
                return True
            tail = window[-8:]
    return False


def _check_package(data: bytes, name: str) -> None:
    """A DOCX is a zip of XML parts: the archive rules apply (no zip bombs), and no part may declare a DTD
    (external entities, entity expansion bombs), which Word never writes."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            for info, _ in checked_entries(archive, name, ArchiveLimits()):
                if info.filename.endswith((".xml", ".rels")) and _declares_dtd(archive, info):
                    raise UnsafeArchiveError(f"{name}: part {info.filename!r} declares an XML DTD or entity")
    except (zipfile.BadZipFile, OSError, EOFError, NotImplementedError) as exc:
        raise CorruptFileError(f"{name}: not a readable DOCX file ({exc})") from exc


def parse_docx(data: bytes, name: str) -> ParsedDocument:
    _check_package(data, name)
    try:
        document = docx.Document(io.BytesIO(data))
    except (PackageNotFoundError, zipfile.BadZipFile, KeyError, ValueError) as exc:
        raise CorruptFileError(f"{name}: not a readable DOCX file ({exc})") from exc
    title = (document.core_properties.title or "").strip()
    stack: list[tuple[int, str]] = []
    sections: list[Section] = []
    lines: list[str] = []

    def flush() -> None:
        body = "\n\n".join(lines).strip()
        if body:
            sections.append(Section(text=body, heading_path=tuple(h for _, h in stack)))
        lines.clear()

    for block in document.iter_inner_content():
        if isinstance(block, Table):
            rows = (" | ".join(cell.text.strip() for cell in row.cells) for row in block.rows)
            lines.append("\n".join(rows))
            continue
        assert isinstance(block, Paragraph)
        text = block.text.strip()
        style = block.style.name if block.style is not None else ""
        level_match = _HEADING_STYLE.match(style or "")
        if style == "Title" and text:
            title = title or text
        if level_match and text:
            flush()
            level = int(level_match.group(1))
            while stack and stack[-1][0] >= level:
                stack.pop()
            stack.append((level, text))
        if text:
            lines.append(text)
    flush()
    if not sections:
        raise CorruptFileError(f"{name}: the DOCX has no text")
    return ParsedDocument(title=title or stem_title(name), sections=sections, kind="docx")
