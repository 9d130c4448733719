"""Tables as Markdown: every parser that finds a table (PDF, DOCX, XLSX, CSV, PPTX) writes it with
`markdown_table`, so a table reaches the chunker, the prompt and the UI in one shape: a header row, a
`| --- |` rule, then one line per row, each cell in its own column."""

from __future__ import annotations

import re
from collections.abc import Sequence

_SPACE = re.compile(r"\s+")


def _cell(value: object) -> str:
    """One cell on one line: whitespace (newlines included) collapsed, `|` escaped so columns never shift."""
    text = "" if value is None else str(value)
    return _SPACE.sub(" ", text).strip().replace("|", "\\|")


def markdown_table(rows: Sequence[Sequence[object]]) -> str:
    """`rows[0]` is the header. Rows are padded to the widest row; rows with no text at all are dropped.
    Returns "" when nothing is left."""
    cells = [[_cell(value) for value in row] for row in rows]
    cells = [row for row in cells if any(row)]
    if not cells:
        return ""
    width = max(len(row) for row in cells)
    cells = [row + [""] * (width - len(row)) for row in cells]
    lines = ["| " + " | ".join(row) + " |" for row in cells]
    lines.insert(1, "|" + " --- |" * width)
    return "\n".join(lines)


def is_table_line(line: str) -> bool:
    """Whether a line of text is a row (or the rule) of a Markdown table written by `markdown_table`."""
    stripped = line.strip()
    return len(stripped) >= 2 and stripped.startswith("|") and stripped.endswith("|")
