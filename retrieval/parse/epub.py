"""EPUB: a zip checked like any XML package (`retrieval.parse.ooxml`; its XHTML may carry a DOCTYPE but no
entity), then META-INF/container.xml names the OPF package file, whose spine gives the reading order. Each
XHTML chapter goes through the HTML parser (`retrieval.parse.html`) into sections whose heading path starts
with the chapter; the title is the OPF's dc:title. An href that is absolute, a URL or climbs out with `..`
is refused."""

from __future__ import annotations

import io
import zipfile
from pathlib import PurePosixPath
from urllib.parse import unquote, urlsplit
from xml.etree import ElementTree

from retrieval.errors import CorruptFileError, UnsafeArchiveError
from retrieval.parse.html import parse_html
from retrieval.parse.ooxml import check_xml_package, read_part
from retrieval.parse.text import stem_title
from retrieval.types import ParsedDocument, Section

_XML_PARTS = (".xml", ".opf", ".ncx", ".rels")
_MARKUP_PARTS = (".xhtml", ".html", ".htm", ".svg")
_CHAPTER_TYPES = ("application/xhtml+xml", "text/html")
_CONTAINER = "META-INF/container.xml"


def _xml(data: bytes, what: str, name: str) -> ElementTree.Element:
    try:
        return ElementTree.fromstring(data)  # DTDs and entities were refused by check_xml_package
    except ElementTree.ParseError as exc:
        raise CorruptFileError(f"{name}: {what} is not well-formed XML ({exc})") from exc


def _safe_href(href: str, base: PurePosixPath, name: str) -> str:
    """`href` (relative to `base`, the OPF's folder) as a path inside the archive; refuses anything else."""
    parts = urlsplit(href)
    path = unquote(parts.path)
    if parts.scheme or parts.netloc or path.startswith("/") or "\\" in path or ".." in PurePosixPath(path).parts:
        raise UnsafeArchiveError(f"{name}: the EPUB refers to {href!r}, outside its own folder")
    return str(base / path)


def _chapter(sections: list[Section], fallback: str) -> list[Section]:
    """Sections of one chapter, each heading path starting with the chapter's heading."""
    chapter = next((s.heading_path[0] for s in sections if s.heading_path), fallback)
    return [
        s if s.heading_path[:1] == (chapter,) else Section(s.text, (chapter, *s.heading_path), s.page)
        for s in sections
    ]


def parse_epub(data: bytes, name: str) -> ParsedDocument:
    entries = check_xml_package(data, name, "EPUB", xml_parts=_XML_PARTS, markup_parts=_MARKUP_PARTS)
    if _CONTAINER not in entries:
        raise CorruptFileError(f"{name}: not a readable EPUB file (no {_CONTAINER})")
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        container = _xml(read_part(archive, entries[_CONTAINER], name), _CONTAINER, name)
        rootfile = container.find(".//{*}rootfile")
        opf_href = rootfile.get("full-path", "") if rootfile is not None else ""
        opf_path = _safe_href(opf_href, PurePosixPath("."), name)
        if opf_path not in entries:
            raise CorruptFileError(f"{name}: not a readable EPUB file (no package file {opf_href!r})")
        opf = _xml(read_part(archive, entries[opf_path], name), opf_path, name)
        base = PurePosixPath(opf_path).parent
        manifest = {
            item.get("id", ""): (item.get("href", ""), item.get("media-type", ""))
            for item in opf.iterfind(".//{*}manifest/{*}item")
        }
        title_node = opf.find(".//{*}metadata/{*}title")
        title = " ".join((title_node.text or "").split()) if title_node is not None else ""
        sections: list[Section] = []
        for number, itemref in enumerate(opf.iterfind(".//{*}spine/{*}itemref"), start=1):
            href, media_type = manifest.get(itemref.get("idref", ""), ("", ""))
            if not href or media_type not in _CHAPTER_TYPES:
                continue
            path = _safe_href(href, base, name)
            if path not in entries:
                raise CorruptFileError(f"{name}: the EPUB's spine names {href!r}, which it does not hold")
            try:
                chapter = parse_html(read_part(archive, entries[path], name), f"{name}/{path}")
            except CorruptFileError:  # a cover or a page with no main text
                continue
            fallback = chapter.title if chapter.title and chapter.title != title else f"Chapter {number}"
            sections.extend(_chapter(chapter.sections, fallback))
    if not sections:
        raise CorruptFileError(f"{name}: the EPUB has no readable text")
    return ParsedDocument(title=title or stem_title(name), sections=sections, kind="epub")
