"""CSV: one section, the rows as a Markdown table (the first non-empty row is the header). The text is
decoded like any text file (`decode_text`), the delimiter sniffed (`,` `;` tab `|`), and the size, the row
count and the column count are bounded (`retrieval.parse.grid`)."""

from __future__ import annotations

import csv
import io

from retrieval.errors import CorruptFileError, TooLargeError
from retrieval.parse.grid import Grid
from retrieval.parse.text import decode_text, stem_title
from retrieval.types import ParsedDocument, Section

MAX_BYTES = 32 * 1024 * 1024
MAX_ROWS = 50_000
MAX_COLUMNS = 200
MAX_CELLS = 1_000_000
_DELIMITERS = ",;\t|"
_FIELD_CHARS = 1024 * 1024  # one field at most (csv's own default is 128 KiB)


def _dialect(sample: str) -> type[csv.Dialect] | csv.Dialect:
    """csv.Sniffer's guess; when it gives up (ragged rows), the delimiter the header line uses most."""
    try:
        return csv.Sniffer().sniff(sample, delimiters=_DELIMITERS)
    except csv.Error:
        header = next((line for line in sample.splitlines() if line.strip()), "")
        delimiter = max(_DELIMITERS, key=header.count)
        if header.count(delimiter) == 0:
            return csv.excel
        return type("Sniffed", (csv.excel,), {"delimiter": delimiter})


def parse_csv(data: bytes, name: str) -> ParsedDocument:
    if len(data) > MAX_BYTES:
        raise TooLargeError(f"{name}: a CSV file of {len(data)} bytes is over the limit of {MAX_BYTES}")
    text = decode_text(data, name)
    dialect = _dialect(text[:64 * 1024])
    grid = Grid(MAX_ROWS, MAX_COLUMNS, MAX_CELLS)
    previous_limit = csv.field_size_limit(_FIELD_CHARS)
    try:
        grid.add_all(csv.reader(io.StringIO(text, newline=""), dialect))
    except csv.Error as exc:
        raise CorruptFileError(f"{name}: not a readable CSV file ({exc})") from exc
    finally:
        csv.field_size_limit(previous_limit)
    table = grid.markdown()
    if not table:
        raise CorruptFileError(f"{name}: the CSV file has no values")
    return ParsedDocument(title=stem_title(name), sections=[Section(text=table)], kind="csv")
