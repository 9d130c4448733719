"""Ruled tables in PDFs (drawn by reportlab) become Markdown tables in their page's text, at their place between
the paragraphs around them, each cell in its column, and their words are not repeated as loose text."""

from __future__ import annotations

import io

from reportlab.lib import colors
from reportlab.lib.pagesizes import letter
from reportlab.lib.styles import getSampleStyleSheet
from reportlab.platypus import PageBreak, Paragraph, SimpleDocTemplate, Spacer, Table, TableStyle

from retrieval.parse import parse_bytes
from retrieval.parse.tables import is_table_line

ROWS = [
    ["Metal", "Density (g/cm3)", "Melting point"],
    ["Aluminium", "2.70", "660 C"],
    ["Copper", "8.96", "1085 C"],
    ["Tungsten", "19.3", "3422 C"],
]


def _pdf() -> bytes:
    """Page 1: plain text. Page 2: a paragraph, the ruled table, a paragraph."""
    styles = getSampleStyleSheet()
    table = Table(ROWS)
    table.setStyle(TableStyle([("GRID", (0, 0), (-1, -1), 0.5, colors.black)]))
    story = [
        Paragraph("Alloys are introduced on the next page.", styles["Normal"]),
        PageBreak(),
        Paragraph("Three metals compared by density.", styles["Normal"]),
        Spacer(1, 12),
        table,
        Spacer(1, 12),
        Paragraph("Tungsten melts at the highest temperature.", styles["Normal"]),
    ]
    buf = io.BytesIO()
    SimpleDocTemplate(buf, pagesize=letter).build(story)
    return buf.getvalue()


def _cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def test_a_ruled_table_becomes_a_markdown_table_in_reading_position() -> None:
    doc = parse_bytes(_pdf(), "metals.pdf")
    assert [s.page for s in doc.sections] == [1, 2] and not doc.warnings
    assert doc.sections[0].text == "Alloys are introduced on the next page."
    lines = doc.sections[1].text.split("\n")
    table = [line for line in lines if is_table_line(line)]
    assert [_cells(line) for line in table] == [ROWS[0], ["---"] * 3, *ROWS[1:]]
    start = lines.index(table[0])
    assert lines[: start] == ["Three metals compared by density.", ""]
    assert lines[start + len(table):] == ["", "Tungsten melts at the highest temperature."]
    assert doc.sections[1].text.count("Tungsten") == 2  # once in its cell, once in the closing paragraph


def test_a_ruled_box_of_one_column_stays_text() -> None:
    """A boxed note (a title cell over a body cell) is a frame around text, not a table of data."""
    styles = getSampleStyleSheet()
    frame = Table([["Boxed note:"], [Paragraph("keep the lid closed.", styles["Normal"])]])
    frame.setStyle(TableStyle([("GRID", (0, 0), (-1, -1), 1, colors.black)]))
    buf = io.BytesIO()
    SimpleDocTemplate(buf, pagesize=letter).build([Paragraph("Before the box.", styles["Normal"]), frame])
    doc = parse_bytes(buf.getvalue(), "boxed.pdf")
    lines = [line.strip() for line in doc.sections[0].text.split("\n")]
    assert lines == ["Before the box.", "Boxed note:", "keep the lid closed."]
