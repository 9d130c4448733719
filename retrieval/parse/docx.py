"""DOCX via python-docx: paragraphs and tables (as Markdown tables) in body order; 'Heading N' styles give
the heading path. The package is checked first (`retrieval.parse.ooxml`): zip rules, no DTD in XML parts."""

from __future__ import annotations

import io
import re
import zipfile

import docx
from docx.opc.exceptions import PackageNotFoundError
from docx.table import Table
from docx.text.paragraph import Paragraph

from retrieval.errors import CorruptFileError
from retrieval.parse.ooxml import check_xml_package
from retrieval.parse.tables import markdown_table
from retrieval.parse.text import stem_title
from retrieval.types import ParsedDocument, Section

_HEADING_STYLE = re.compile(r"^Heading (\d)$")


def _table_rows(table: Table) -> list[list[str]]:
    """One list per row with one cell per grid column, so merged cells never shift the columns: python-docx
    repeats a merged cell in every grid column it spans (kept once, the rest blank) and in every row of a
    vertical merge (kept: each row reads whole); rows that start late or end early are padded."""
    rows = []
    for row in table.rows:
        cells: list[str] = [""] * row.grid_cols_before
        previous = None
        for cell in row.cells:
            cells.append("" if previous is not None and cell._tc is previous._tc else cell.text)
            previous = cell
        rows.append(cells + [""] * row.grid_cols_after)
    return rows


def parse_docx(data: bytes, name: str) -> ParsedDocument:
    check_xml_package(data, name, "DOCX")
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
            table = markdown_table(_table_rows(block))
            if table:
                lines.append(table)
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
