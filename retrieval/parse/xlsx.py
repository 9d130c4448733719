"""XLSX via openpyxl (read-only streaming, cached formula values): each sheet with values is a section
(heading path: its name) holding its used rows as one Markdown table, the first non-empty row as header.
The package is checked first (`retrieval.parse.ooxml`); rows, columns and the workbook's cells are bounded
(`retrieval.parse.grid`): what is cut is said in a note."""

from __future__ import annotations

import io
import zipfile

import openpyxl
from openpyxl.utils.exceptions import InvalidFileException

from retrieval.errors import CorruptFileError
from retrieval.parse.grid import Grid
from retrieval.parse.ooxml import check_xml_package
from retrieval.parse.text import stem_title
from retrieval.types import ParsedDocument, Section

MAX_ROWS = 20_000  # non-empty rows per sheet
MAX_COLUMNS = 200
MAX_CELLS = 400_000  # in the whole workbook: later sheets get what the earlier ones left
_SCAN_ROWS = 1_048_576  # Excel's own row limit: a row number past it in the XML is never scanned to


def parse_xlsx(data: bytes, name: str) -> ParsedDocument:
    check_xml_package(data, name, "XLSX")
    try:
        workbook = openpyxl.load_workbook(io.BytesIO(data), read_only=True, data_only=True)
    except (InvalidFileException, zipfile.BadZipFile, KeyError, ValueError, TypeError) as exc:
        raise CorruptFileError(f"{name}: not a readable XLSX file ({exc})") from exc
    sections: list[Section] = []
    budget = MAX_CELLS
    skipped: list[str] = []
    try:
        for sheet in workbook.worksheets:
            if budget <= 0:
                skipped.append(sheet.title)
                continue
            grid = Grid(MAX_ROWS, MAX_COLUMNS, budget)
            grid.add_all(sheet.iter_rows(max_row=_SCAN_ROWS, max_col=MAX_COLUMNS + 1, values_only=True))
            budget -= grid.cells
            table = grid.markdown()
            if table:
                sections.append(Section(text=table, heading_path=(sheet.title,)))
    except (KeyError, ValueError, TypeError, zipfile.BadZipFile) as exc:
        raise CorruptFileError(f"{name}: not a readable XLSX file ({exc})") from exc
    finally:
        workbook.close()
    if skipped and sections:
        note = f"(Truncated: the workbook's cell limit was reached; sheets not indexed: {', '.join(skipped)}.)"
        last = sections[-1]
        sections[-1] = Section(text=f"{last.text}\n\n{note}", heading_path=last.heading_path)
    if not sections:
        raise CorruptFileError(f"{name}: the XLSX file has no values")
    title = (workbook.properties.title or "").strip() if workbook.properties else ""
    return ParsedDocument(title=title or stem_title(name), sections=sections, kind="xlsx")
