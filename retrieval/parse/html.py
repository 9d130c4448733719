"""HTML: the main text (navigation, sidebars and footers dropped) by trafilatura, kept as Markdown so
headings give the heading path."""

from __future__ import annotations

import re

import trafilatura

from retrieval.errors import CorruptFileError
from retrieval.parse.md import markdown_sections
from retrieval.parse.text import decode_text, stem_title
from retrieval.types import ParsedDocument, Section

# trafilatura escapes Markdown metacharacters in running text; the chunk text is for reading, not rendering.
_ESCAPE = re.compile(r"\\([\\`*_{}\[\]()#+\-.!|<>])")
_PERMALINK = re.compile(r"[¶\uf0c1]")


def _clean(text: str) -> str:
    return _PERMALINK.sub("", _ESCAPE.sub(r"\1", text))


def parse_html(data: bytes, name: str) -> ParsedDocument:
    html = decode_text(data, name)
    markdown = trafilatura.extract(
        html,
        output_format="markdown",
        include_formatting=True,
        include_links=False,
        include_tables=True,
        include_comments=False,
        favor_recall=True,
    )
    if not markdown or not markdown.strip():
        raise CorruptFileError(f"{name}: no readable main text found in the HTML page")
    first_heading, sections = markdown_sections(_clean(markdown))
    metadata = trafilatura.extract_metadata(html)
    title = _clean((metadata.title if metadata and metadata.title else None) or first_heading or stem_title(name))
    cleaned = [
        Section(text=s.text, heading_path=tuple(h.replace("`", "").strip() for h in s.heading_path)) for s in sections
    ]
    return ParsedDocument(title=title.strip(), sections=cleaned, kind="html")
