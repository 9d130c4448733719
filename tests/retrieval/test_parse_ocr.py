"""OCR of images and of PDF pages without a text layer, on pictures of text rendered here with DejaVu Sans:
the words come back with their page numbers, an unreadable page is reported, a scanned PDF is searchable after
ingestion, and a missing Tesseract (or language) fails with a sentence saying what to install."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image
from pypdf import PdfReader, PdfWriter

from appliance.bench.ocr import render_page
from appliance.server.schemas_retrieval import JobOut
from retrieval.errors import CorruptFileError
from retrieval.parse import parse_bytes
from retrieval.parse.ocr import OcrUnavailableError
from retrieval.service import RetrievalService
from tests.retrieval.files import make_pdf

FIRST = ["Glaciers carve deep valleys", "through ancient granite mountains"]
SECOND = ["Volcanoes erupt molten lava", "near the coastal villages"]


def _words(text: str) -> list[str]:
    return text.lower().split()


def _png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()


def _scanned_pdf(*pages: Image.Image) -> bytes:
    """An image-only PDF (no text layer): one page per picture, at 300 dpi (letter-sized pages)."""
    buf = io.BytesIO()
    pages[0].save(buf, "PDF", resolution=300, save_all=True, append_images=list(pages[1:]))
    return buf.getvalue()


def _blank() -> Image.Image:
    return Image.new("L", (1700, 2200), 255)


def _no_tesseract(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A PATH without Tesseract (pytesseract runs "tesseract" found on PATH)."""
    monkeypatch.setenv("PATH", str(tmp_path))


def test_png_words_come_back() -> None:
    doc = parse_bytes(_png(render_page(FIRST)), "glaciers.png")
    assert doc.kind == "image" and doc.title == "glaciers" and not doc.warnings
    assert [s.page for s in doc.sections] == [None]
    assert _words(doc.sections[0].text) == _words(" ".join(FIRST))


def test_multi_page_tiff_one_section_per_frame() -> None:
    buf = io.BytesIO()
    render_page(FIRST).save(buf, "TIFF", save_all=True, append_images=[_blank(), render_page(SECOND)])
    doc = parse_bytes(buf.getvalue(), "scan.tiff")
    assert [s.page for s in doc.sections] == [1, 3]
    assert _words(doc.sections[1].text) == _words(" ".join(SECOND))
    assert doc.warnings == ("scan.tiff: OCR found no text on page 2.",)


def test_image_only_pdf_pages_are_read_with_their_numbers() -> None:
    doc = parse_bytes(_scanned_pdf(render_page(FIRST), render_page(SECOND)), "scan.pdf")
    assert doc.kind == "pdf" and not doc.warnings
    assert [(s.page, _words(s.text)) for s in doc.sections] == [
        (1, _words(" ".join(FIRST))),
        (2, _words(" ".join(SECOND))),
    ]


def test_pdf_mixing_a_text_page_and_a_scanned_page() -> None:
    writer = PdfWriter()
    for part in (make_pdf(["Penguins huddle together in the antarctic winter."]), _scanned_pdf(render_page(SECOND))):
        for page in PdfReader(io.BytesIO(part)).pages:
            writer.add_page(page)
    buf = io.BytesIO()
    writer.write(buf)
    doc = parse_bytes(buf.getvalue(), "mixed.pdf")
    assert [s.page for s in doc.sections] == [1, 2]
    assert "antarctic winter" in doc.sections[0].text
    assert _words(doc.sections[1].text) == _words(" ".join(SECOND))


def test_a_page_ocr_cannot_read_is_reported_and_an_all_blank_file_fails() -> None:
    doc = parse_bytes(_scanned_pdf(render_page(FIRST), _blank()), "half.pdf")
    assert [s.page for s in doc.sections] == [1]
    assert doc.warnings == ("half.pdf: OCR found no text on page 2.",)
    with pytest.raises(CorruptFileError, match=r"blank\.pdf: .*OCR found none"):
        parse_bytes(_scanned_pdf(_blank()), "blank.pdf")
    with pytest.raises(CorruptFileError, match=r"blank\.png: OCR found no text"):
        parse_bytes(_png(_blank()), "blank.png")


def test_ocr_unavailable_says_what_to_install(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    scan = _scanned_pdf(render_page(FIRST))
    _no_tesseract(monkeypatch, tmp_path)
    with pytest.raises(OcrUnavailableError, match=r"scan\.pdf: the PDF has no text layer .*OCR is unavailable: .*"
                                                   r"install Debian's tesseract-ocr"):
        parse_bytes(scan, "scan.pdf")
    with pytest.raises(OcrUnavailableError, match=r"photo\.png: OCR is unavailable: .*tesseract-ocr"):
        parse_bytes(_png(render_page(FIRST)), "photo.png")
    text_pdf = make_pdf(["A text layer needs no OCR at all."])
    assert parse_bytes(text_pdf, "text.pdf").sections[0].text == "A text layer needs no OCR at all."


def test_a_missing_language_says_which_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("APPLIANCE_OCR_LANGUAGES", "eng,qqq")
    with pytest.raises(OcrUnavailableError, match=r"no qqq language data .*tesseract-ocr-qqq"):
        parse_bytes(_png(render_page(FIRST)), "photo.png")


def test_a_decompression_bomb_is_refused_before_decoding() -> None:
    huge = Image.new("1", (9000, 9000), 1)  # 81 Mpx, a few kB as PNG
    with pytest.raises(CorruptFileError, match=r"bomb\.png: page 1 is 9000x9000 pixels, over the limit"):
        parse_bytes(_png(huge), "bomb.png")


def test_scanned_pdf_ingested_is_searchable_and_its_blank_page_reported(
    tmp_path: Path, service: RetrievalService
) -> None:
    path = tmp_path / "survey.pdf"
    path.write_bytes(_scanned_pdf(render_page(FIRST), _blank(), render_page(SECOND)))
    status = service.ingest_paths("scans", [path])
    assert status.state == "done"
    [file] = status.files
    assert file.state == "done" and file.error == f"{path}: OCR found no text on page 2."
    assert status.errors == [] and status.warnings == [file]  # ingested: `appliance ingest` exits 0
    job = JobOut.of(status)  # GET /api/admin/jobs/{id}: the page is in the job's errors
    assert [(e.file, e.error) for e in job.errors] == [(str(path), file.error)]
    hit = service.search("granite", ["scans"], k=1, mode="bm25")[0].chunk
    assert hit.page == 1 and "granite" in hit.text.lower()
    assert service.search("lava", ["scans"], k=1, mode="bm25")[0].chunk.page == 3
