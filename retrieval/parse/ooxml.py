"""Zip packages of XML parts (DOCX, PPTX, XLSX, EPUB), checked before any library opens them: the archive
rules of `retrieval.parse.zip` apply (no zip bombs, no unsafe names, no links), and no XML part may declare
a DTD or an entity (external entities, entity-expansion bombs), which Office never writes."""

from __future__ import annotations

import io
import zipfile

from retrieval.errors import CorruptFileError, TooLargeError, UnsafeArchiveError
from retrieval.parse.zip import ArchiveLimits, checked_entries

XML_PARTS = (".xml", ".rels")
_DTD = (b"<!DOCTYPE", b"<!ENTITY")
_ENTITY = (b"<!ENTITY",)


def _declares(archive: zipfile.ZipFile, info: zipfile.ZipInfo, markers: tuple[bytes, ...]) -> bool:
    """Whether the part holds one of `markers` anywhere (read in pieces that overlap by 8 bytes)."""
    tail = b""
    with archive.open(info) as part:
        while piece := part.read(1024 * 1024):
            window = tail + piece
            if any(marker in window for marker in markers):
                return True
            tail = window[-8:]
    return False


def check_xml_package(
    data: bytes,
    name: str,
    label: str,
    xml_parts: tuple[str, ...] = XML_PARTS,
    markup_parts: tuple[str, ...] = (),
) -> dict[str, zipfile.ZipInfo]:
    """Check a zip package of XML parts; returns its file entries by safe name.

    Parts ending in `xml_parts` may declare neither a DTD nor an entity; parts ending in `markup_parts`
    (EPUB's XHTML, read by an HTML parser that never expands entities) may carry a `<!DOCTYPE html>` but no
    entity. Raises UnsafeArchiveError, TooLargeError, or CorruptFileError ("not a readable {label} file")."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            entries = checked_entries(archive, name, ArchiveLimits())
            for info, _ in entries:
                lowered = info.filename.lower()
                markers = _DTD if lowered.endswith(xml_parts) else _ENTITY if lowered.endswith(markup_parts) else ()
                if markers and _declares(archive, info, markers):
                    raise UnsafeArchiveError(f"{name}: part {info.filename!r} declares an XML DTD or entity")
    except (zipfile.BadZipFile, OSError, EOFError, NotImplementedError, ValueError) as exc:
        raise CorruptFileError(f"{name}: not a readable {label} file ({exc})") from exc
    return {safe: info for info, safe in entries}


def read_part(archive: zipfile.ZipFile, info: zipfile.ZipInfo, name: str, cap: int = 64 * 1024 * 1024) -> bytes:
    """One checked part's bytes, at most `cap` and at most its stated size (a header can lie)."""
    if info.file_size > cap:
        raise TooLargeError(f"{name}: part {info.filename!r} is larger than {cap} bytes")
    try:
        with archive.open(info) as stream:
            content = stream.read(info.file_size + 1)
    except (zipfile.BadZipFile, OSError, EOFError, NotImplementedError) as exc:
        raise CorruptFileError(f"{name}: part {info.filename!r} cannot be read ({exc})") from exc
    if len(content) > info.file_size:
        raise UnsafeArchiveError(f"{name}: part {info.filename!r} expands past its stated size")
    return content
