"""PPTX, XLSX, CSV, EML and EPUB made in the test and parsed from bytes (pages, sections, titles, table
columns), hostile packages refused, and a DOCX table end to end through the Chunker."""

from __future__ import annotations

import io
import re
from email.message import EmailMessage

import docx
import pytest

from appliance.engine.tokenizer import TextTokenizer
from retrieval.chunk import Chunker
from retrieval.errors import CorruptFileError, TooLargeError, UnsafeArchiveError
from retrieval.parse import csv_file, parse_bytes
from tests.retrieval.files import make_epub, make_pptx, make_xlsx
from tests.security.hostile_files import bomb_epub, with_dtd


def cells(line: str) -> list[str]:
    return [c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]


def table_rows(text: str) -> list[list[str]]:
    """The rows of the Markdown table(s) in `text`, the `| --- |` rule left out."""
    return [cells(line) for line in text.split("\n") if line.startswith("|") and "---" not in line]


def test_pptx_one_section_per_slide_with_tables_and_notes() -> None:
    doc = parse_bytes(make_pptx(), "deck.pptx")
    assert doc.kind == "pptx" and doc.title == "Launch plan"
    assert [(s.page, s.heading_path) for s in doc.sections] == [(1, ("Launch plan",)), (3, ())]
    first = doc.sections[0].text
    assert first.index("Launch plan") < first.index("Ship the widget") < first.index("| Market | Date |")
    assert table_rows(first) == [["Market", "Date"], ["Norway", "May 3"], ["Chile", "June 9"]]
    assert first.endswith("Notes: Mention the budget freeze.")
    assert doc.sections[1].text == "Questions welcome."


def test_xlsx_a_section_per_sheet_with_a_table_of_its_used_rows() -> None:
    doc = parse_bytes(make_xlsx(), "book.xlsx")
    assert doc.kind == "xlsx" and doc.title == "book"
    assert [s.heading_path for s in doc.sections] == [("Sales",), ("Staff",)]
    assert table_rows(doc.sections[0].text) == [
        ["Region", "Units", "Price"], ["North", "120", "9.5"], ["South \\| East", "", "7"], ["West", "40", "8"]]
    assert doc.sections[0].text.split("\n")[1] == "| --- | --- | --- |"
    assert table_rows(doc.sections[1].text) == [["Name", "Role"], ["Ada", "Engineer"]]


def test_csv_sniffs_the_delimiter_decodes_and_bounds(monkeypatch: pytest.MonkeyPatch) -> None:
    data = "Café;Owner;Seats\nLe Zinc;Amélie;24\nBar Nord;Ole;;\n".encode("cp1252")
    doc = parse_bytes(data, "cafes.csv")
    assert doc.kind == "csv" and len(doc.sections) == 1
    assert table_rows(doc.sections[0].text) == [["Café", "Owner", "Seats"], ["Le Zinc", "Amélie", "24"],
                                                ["Bar Nord", "Ole", ""]]
    monkeypatch.setattr(csv_file, "MAX_ROWS", 2)
    monkeypatch.setattr(csv_file, "MAX_COLUMNS", 2)
    cut = parse_bytes(data, "cafes.csv").sections[0].text
    assert table_rows(cut) == [["Café", "Owner"], ["Le Zinc", "Amélie"]]
    assert "only the first 2 rows" in cut and "only the first 2 columns" in cut
    monkeypatch.setattr(csv_file, "MAX_BYTES", 10)
    with pytest.raises(TooLargeError, match="cafes.csv"):
        parse_bytes(data, "cafes.csv")


def test_eml_headers_first_then_the_plain_body_and_no_attachment() -> None:
    message = EmailMessage()
    message["From"], message["To"] = "Ada <ada@example.org>", "ops@example.org"
    message["Subject"], message["Date"] = "Réunion: backup window", "Tue, 03 Mar 2026 10:00:00 +0000"
    message.set_content("The backup window moves to 02:00 UTC.\n\nReply if that clashes.")
    message.add_alternative("<html><body><p>HTML twin of the body.</p></body></html>", subtype="html")
    message.add_attachment(b"SECRET ATTACHMENT", maintype="application", subtype="octet-stream", filename="a.bin")
    doc = parse_bytes(message.as_bytes(), "mail.eml")
    assert doc.kind == "eml" and doc.title == "Réunion: backup window"
    text = doc.sections[0].text
    assert text.startswith("From: Ada <ada@example.org>\nTo: ops@example.org\nDate: Tue, 03 Mar 2026")
    assert "Subject: Réunion: backup window\n\nThe backup window moves to 02:00 UTC." in text
    assert "HTML twin" not in text and "SECRET" not in text
    assert doc.metadata == {"from": "Ada <ada@example.org>", "to": "ops@example.org",
                            "date": "Tue, 03 Mar 2026 10:00:00 +0000", "subject": "Réunion: backup window"}


def test_eml_with_only_html_goes_through_the_html_parser() -> None:
    message = EmailMessage()
    message["Subject"] = "Newsletter"
    message.set_content("<html><body><nav>Home | About</nav><article><h1>Spring news</h1><p>"
                        + "The orchard blossomed early this year after a mild winter. " * 4
                        + "</p></article></body></html>", subtype="html")
    doc = parse_bytes(message.as_bytes(), "news.eml")
    assert doc.sections[0].text.startswith("Subject: Newsletter\n\n")
    assert "orchard blossomed early" in " ".join(s.text for s in doc.sections)
    assert "<p>" not in " ".join(s.text for s in doc.sections)


def test_epub_follows_the_spine_and_keeps_the_chapter_in_the_heading_path() -> None:
    doc = parse_bytes(make_epub(), "tides.epub")
    assert doc.kind == "epub" and doc.title == "Tides of the North"
    assert [s.heading_path[0] for s in doc.sections] == ["Currents", "Harbours"]  # spine order, not file order
    assert "coastal current" in doc.sections[0].text and "Tromsø" in doc.sections[1].text


@pytest.mark.parametrize("href", ["../../etc/passwd.xhtml", "/etc/passwd.xhtml", "http://example.org/a.xhtml"])
def test_epub_refuses_hrefs_outside_the_book(href: str) -> None:
    with pytest.raises(UnsafeArchiveError, match="evil.epub"):
        parse_bytes(make_epub(("text/ch1.xhtml", href)), "evil.epub")


@pytest.mark.parametrize(("maker", "part", "name"), [
    (make_xlsx, "xl/workbook.xml", "dtd.xlsx"),
    (make_pptx, "ppt/presentation.xml", "dtd.pptx"),
    (make_epub, "OEBPS/content.opf", "dtd.epub"),
])
def test_packages_with_a_dtd_are_refused(maker, part: str, name: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(UnsafeArchiveError, match=f"{name}: part '{part}' declares an XML DTD or entity"):
        parse_bytes(with_dtd(maker(), part), name)


def test_epub_with_a_zip_bomb_entry_is_refused() -> None:
    with pytest.raises(UnsafeArchiveError, match="bomb.epub: .*zip bomb"):
        parse_bytes(bomb_epub(make_epub()), "bomb.epub")


def test_broken_packages_name_the_file() -> None:
    with pytest.raises(CorruptFileError, match="bad.xlsx"):
        parse_bytes(b"PK\x03\x04 not really a zip", "bad.xlsx")


def test_docx_table_with_merged_cells_reaches_a_chunk_in_its_columns(tokenizer: TextTokenizer) -> None:
    document = docx.Document()
    document.add_heading("Budget", level=1)
    table = document.add_table(rows=4, cols=3)
    for r, row in enumerate([["Team", "2025", "2026"], ["Ops", "10", "12"], ["", "11", "13"], ["Lab", "", ""]]):
        for c, value in enumerate(row):
            table.cell(r, c).text = value
    table.cell(1, 0).merge(table.cell(2, 0))  # "Ops" spans two rows
    table.cell(3, 1).merge(table.cell(3, 2)).text = "frozen"  # one cell across both years
    buf = io.BytesIO()
    document.save(buf)
    parsed = parse_bytes(buf.getvalue(), "budget.docx")
    (chunk,) = [c for c in Chunker(tokenizer, target_tokens=128).chunk(parsed) if "|" in c.text]
    assert chunk.heading_path == ("Budget",)
    assert "| --- | --- | --- |" in chunk.text
    assert table_rows(chunk.text) == [["Team", "2025", "2026"], ["Ops", "10", "12"], ["Ops", "11", "13"],
                                      ["Lab", "frozen", ""]]
