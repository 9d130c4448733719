"""Each parser on real files made here; type detection and clear per-file errors; the parse time limit."""

from __future__ import annotations

import io

import pytest
from pypdf import PdfReader, PdfWriter

from retrieval.errors import CorruptFileError, ParseTimeoutError, UnsupportedTypeError
from retrieval.parse import detect_kind, parse_bytes
from retrieval.parse.pool import ParserPool
from tests.retrieval.files import make_docx, make_html, make_pdf

PAGES = [
    "Introduction\nThe aurora borealis is caused by solar wind.",
    "Chapter two\nPenguins live in the south.",
    "Chapter two, continued\nEmperor penguins huddle for warmth.",
]


def test_pdf_keeps_pages_and_outline_headings() -> None:
    doc = parse_bytes(make_pdf(PAGES, [("Intro", 0), ("Penguins", 1)], title="Polar Facts"), "polar.pdf")
    assert doc.kind == "pdf" and doc.title == "Polar Facts"
    assert [s.page for s in doc.sections] == [1, 2, 3]
    assert "aurora" in doc.sections[0].text and "Emperor" in doc.sections[2].text
    assert [s.heading_path for s in doc.sections] == [("Intro",), ("Penguins",), ("Penguins",)]


def test_encrypted_and_corrupt_pdfs_fail_clearly() -> None:
    writer = PdfWriter(clone_from=PdfReader(io.BytesIO(make_pdf(PAGES))))
    writer.encrypt(user_password="secret", algorithm="RC4-128")
    buf = io.BytesIO()
    writer.write(buf)
    with pytest.raises(CorruptFileError, match="encrypted"):
        parse_bytes(buf.getvalue(), "locked.pdf")
    with pytest.raises(CorruptFileError, match="broken.pdf"):
        parse_bytes(make_pdf(PAGES)[:200], "broken.pdf")


def test_html_main_text_without_navigation_noise() -> None:
    doc = parse_bytes(make_html(), "manual.html")
    text = "\n".join(s.text for s in doc.sections)
    assert doc.title == "Widget Manual"
    assert "brass dial clockwise" in text and "isopropyl alcohol" in text
    assert "Navigation link" not in text and "Cookie settings" not in text
    paths = [s.heading_path for s in doc.sections]
    assert ("Widget Manual", "Calibration", "Troubleshooting calibration") in paths


def test_docx_headings_paragraphs_and_tables() -> None:
    doc = parse_bytes(make_docx(), "report.docx")
    assert doc.title == "Quarterly Report"
    by_path = {s.heading_path: s.text for s in doc.sections}
    assert "twelve percent" in by_path[("Revenue",)]
    assert "North | 19%" in by_path[("Revenue", "Regional detail")]
    assert "datacenter" in by_path[("Costs",)]


def test_markdown_and_text() -> None:
    md = b"# Guide\n\nIntro.\n\n## Install\n\n```\n# not a heading\n```\n\nRun it.\n"
    doc = parse_bytes(md, "guide.md")
    assert doc.title == "Guide"
    assert [s.heading_path for s in doc.sections] == [("Guide",), ("Guide", "Install")]
    assert "# not a heading" in doc.sections[1].text
    txt = parse_bytes("Caf\xe9 notes".encode("cp1252"), "my_notes.txt")
    assert txt.title == "my notes" and txt.sections[0].text == "Caf\xe9 notes"


def test_type_detection() -> None:
    assert detect_kind("x.PDF", b"%PDF-1.7") == "pdf"
    assert detect_kind("noext", b"<!DOCTYPE html><html>") == "html"
    assert detect_kind("README", b"plain words") == "txt"
    assert detect_kind("scan", b"\x89PNG\r\n\x1a\n....") == "image"
    with pytest.raises(UnsupportedTypeError, match="unsupported file type .mp4"):
        detect_kind("clip.mp4", b"\x00\x00\x00\x18ftypmp42")
    with pytest.raises(CorruptFileError, match="not an image"):
        detect_kind("photo.png", b"GIF89a")
    with pytest.raises(CorruptFileError, match="not a PDF"):
        detect_kind("fake.pdf", b"hello")
    with pytest.raises(UnsupportedTypeError):
        parse_bytes(b"\x00\x01binary", "blob")


def test_parse_time_limit_stops_a_slow_file_and_the_next_file_still_parses() -> None:
    slow = make_pdf([f"Page {i}\n" + "lorem ipsum dolor sit amet " * 40 for i in range(1500)])
    pool: ParserPool[str] = ParserPool(timeout_s=0.3)
    try:
        results = dict(pool.parse_many([("slow", "slow.pdf", slow), ("fast", "fast.txt", b"quick text")]))
    finally:
        pool.close()
    assert isinstance(results["slow"], ParseTimeoutError)
    assert "slow.pdf" in str(results["slow"])
    assert not isinstance(results["fast"], Exception) and results["fast"].sections[0].text == "quick text"
