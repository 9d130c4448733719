"""Spreadsheet-like grids (CSV, XLSX) bounded before they become Markdown tables: at most `max_rows`
non-empty rows, `max_columns` columns and `max_cells` cells are kept, and what was cut is said in a note
under the table, so a huge sheet costs a bounded amount of memory, chunks and embedding time."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from retrieval.parse.tables import markdown_table


def _filled(value: object) -> bool:
    return value is not None and str(value).strip() != ""


@dataclass
class Grid:
    """Rows read so far (trailing empty cells trimmed, empty rows skipped) and what was left out."""

    max_rows: int
    max_columns: int
    max_cells: int
    rows: list[list[object]] = field(default_factory=list)
    cells: int = 0
    rows_cut: bool = False
    columns_cut: bool = False

    def add_all(self, rows: Iterable[Sequence[object]]) -> None:
        """Read rows until a cap is reached (reading stops there: the rest is never materialized)."""
        for row in rows:
            width = len(row)
            while width and not _filled(row[width - 1]):
                width -= 1
            if width == 0:
                continue
            if width > self.max_columns:
                self.columns_cut = True
                width = self.max_columns
            if len(self.rows) == self.max_rows or self.cells + width > self.max_cells:
                self.rows_cut = True
                return
            self.rows.append(list(row[:width]))
            self.cells += width

    def markdown(self) -> str:
        """The rows as a Markdown table (the first row is the header), then a note on what was cut."""
        parts = [markdown_table(self.rows)]
        if self.rows_cut:
            parts.append(f"(Truncated: only the first {len(self.rows)} rows were indexed.)")
        if self.columns_cut:
            parts.append(f"(Truncated: only the first {self.max_columns} columns were indexed.)")
        return "\n\n".join(p for p in parts if p)
