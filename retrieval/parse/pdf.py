"""PDF: one section per page (1-based page numbers kept); the outline gives heading paths.

Each page's text comes from pypdf (fast: ~2 ms a page). Two kinds of page get more:
- a page that draws lines or rectangles (or form XObjects) is searched for ruled tables with pdfplumber
  (~60 ms a page, so only those pages); a table found becomes a Markdown table (`tables.markdown_table`) at its
  place among the page's text lines, and its words are not repeated as loose text;
- a page without a text layer that draws something (a scan, or text drawn as outlines) is rendered (pypdfium2,
  300 dpi) and read by OCR (`ocr.py`). A page OCR reads nothing from, or pages left unread because OCR is not
  installed, are reported in the document's warnings (the job's errors); a PDF with no text at all fails,
  saying why.
"""

from __future__ import annotations

import io
import math
import re
from typing import Any

from pypdf import PageObject, PdfReader
from pypdf.errors import PdfReadError

from retrieval.errors import CorruptFileError, FileError
from retrieval.parse.ocr import MAX_PIXELS, OcrUnavailableError, ocr_image, ocr_problem, pages_phrase
from retrieval.parse.tables import markdown_table
from retrieval.parse.text import stem_title
from retrieval.types import ParsedDocument, Section

OCR_DPI = 300
# content-stream operators: rectangles and line segments (ruled tables), and anything that draws
_RULES = re.compile(rb"(?<![^\s\]\)>])(?:re|l)\s")
_DRAWS = re.compile(rb"(?<![^\s\]\)>])(?:re|l|c|v|y|f\*?|F|S|B\*?|b\*?|BI|Do)\s")


def _outline_starts(reader: PdfReader) -> list[tuple[int, tuple[str, ...]]]:
    """(0-based page, heading path) for every outline entry, sorted by page."""
    starts: list[tuple[int, tuple[str, ...]]] = []

    def walk(items: list[Any], path: tuple[str, ...]) -> None:
        last: tuple[str, ...] = path
        for item in items:
            if isinstance(item, list):
                walk(item, last)
                continue
            try:
                page = reader.get_destination_page_number(item)
            except Exception:  # broken destinations are common; the entry is just skipped
                continue
            if page is None:
                continue
            last = (*path, str(item.title).strip())
            starts.append((page, last))

    try:
        walk(reader.outline, ())
    except Exception:  # an unreadable outline costs heading paths, not the document
        return []
    return sorted(starts, key=lambda s: s[0])


def _content(page: PageObject) -> tuple[bytes, bool]:
    """The page's decoded content stream, and whether its resources hold XObjects (images or forms)."""
    contents = page.get_contents()
    data = contents.get_data() if contents is not None else b""
    resources = page.get("/Resources")
    xobjects = resources.get_object().get("/XObject") if resources is not None else None
    return data, bool(xobjects is not None and len(xobjects.get_object()))


class _Pages:
    """pdfplumber and pypdfium2 views of the same file, each opened on first use."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self._plumber: Any = None
        self._pdfium: Any = None

    def plumber_page(self, index: int) -> Any:
        if self._plumber is None:
            import pdfplumber

            self._plumber = pdfplumber.open(io.BytesIO(self.data))
        return self._plumber.pages[index]

    def render(self, index: int) -> Any:
        """The page as a grayscale PIL image at OCR_DPI (less for a page that would exceed MAX_PIXELS)."""
        if self._pdfium is None:
            import pypdfium2

            self._pdfium = pypdfium2.PdfDocument(self.data)
        page = self._pdfium[index]
        try:
            width, height = page.get_size()  # points
            scale = min(OCR_DPI / 72, math.sqrt(MAX_PIXELS / max(1.0, width * height)))
            return page.render(scale=scale, grayscale=True).to_pil()
        finally:
            page.close()

    def close(self) -> None:
        if self._plumber is not None:
            self._plumber.close()
        if self._pdfium is not None:
            self._pdfium.close()


def _inside(obj: dict[str, Any], box: tuple[float, float, float, float]) -> bool:
    x = (obj["x0"] + obj["x1"]) / 2
    y = (obj["top"] + obj["bottom"]) / 2
    return box[0] <= x <= box[2] and box[1] <= y <= box[3]


def _is_grid(rows: list[list[str | None]]) -> bool:
    """At least two rows and two columns with text: one ruled cell is a frame around text, not a table."""
    filled = [row for row in rows if any(cell and cell.strip() for cell in row)]
    return len(filled) >= 2 and max(sum(bool(cell and cell.strip()) for cell in row) for row in filled) >= 2


def _text_with_tables(page: Any) -> str | None:
    """The page's text with each ruled table as a Markdown table in reading position; None without tables."""
    tables = [t for t in page.find_tables() if _is_grid(t.extract())]
    if not tables:
        return None
    boxes = [t.bbox for t in tables]
    rest = page.filter(lambda obj: obj.get("object_type") != "char" or not any(_inside(obj, b) for b in boxes))
    blocks: list[tuple[float, int, str]] = [(line["top"], 0, line["text"]) for line in rest.extract_text_lines()]
    blocks += [(t.bbox[1], 1, markdown_table(t.extract())) for t in tables]
    parts: list[str] = []
    after_table = False
    for _, is_table, text in sorted(blocks):  # by position from the top; a table after a line at its height
        gap = "\n\n" if is_table or after_table else "\n"
        parts.append((gap if parts else "") + text)
        after_table = bool(is_table)
    return "".join(parts)


def _page_text(pages: _Pages, index: int, page: PageObject) -> tuple[str, bool]:
    """(text of the page from its text layer, whether the page needs OCR)."""
    content, has_xobjects = _content(page)
    if has_xobjects or _RULES.search(content):
        plumber_page = pages.plumber_page(index)
        try:
            with_tables = _text_with_tables(plumber_page)
        finally:
            plumber_page.close()  # its parsed objects are not needed again
        if with_tables is not None:
            return with_tables, False
    text = (page.extract_text() or "").strip()
    return text, not text and (has_xobjects or _DRAWS.search(content) is not None)


def _ocr_page(pages: _Pages, index: int, name: str) -> str:
    try:
        image = pages.render(index)
    except Exception as exc:  # pypdfium2.PdfiumError and friends
        raise CorruptFileError(f"{name}: page {index + 1} could not be rendered for OCR ({exc})") from exc
    try:
        return ocr_image(image)
    except Exception as exc:  # pytesseract: TesseractError, RuntimeError on its timeout
        raise CorruptFileError(f"{name}: OCR failed on page {index + 1} ({type(exc).__name__}: {exc})") from exc


def parse_pdf(data: bytes, name: str) -> ParsedDocument:
    pages = _Pages(data)
    texts: dict[int, str] = {}
    scanned: list[int] = []  # 0-based pages without a text layer
    warnings: list[str] = []
    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted and not reader.decrypt(""):
            raise CorruptFileError(f"{name}: the PDF is encrypted with a password")
        starts = _outline_starts(reader)
        for index, page in enumerate(reader.pages):
            text, needs_ocr = _page_text(pages, index, page)
            if text:
                texts[index] = text
            elif needs_ocr:
                scanned.append(index)
        problem = ocr_problem() if scanned else None
        if problem is not None and not texts:
            raise OcrUnavailableError(f"{name}: the PDF has no text layer (scanned pages) and {problem}")
        if problem is not None:
            warnings.append(f"{name}: {pages_phrase([i + 1 for i in scanned])} without a text layer not read: "
                            f"{problem}.")
        blank: list[int] = []
        for index in scanned if problem is None else []:
            text = _ocr_page(pages, index, name)
            if text:
                texts[index] = text
            else:
                blank.append(index + 1)
        if blank:
            warnings.append(f"{name}: OCR found no text on {pages_phrase(blank)}.")
        meta_title = reader.metadata.title if reader.metadata else None
    except FileError:
        raise
    except (PdfReadError, ValueError, KeyError, TypeError, OSError) as exc:
        raise CorruptFileError(f"{name}: not a readable PDF ({exc})") from exc
    except Exception as exc:  # pypdf raises many kinds on damaged files (including DependencyError for AES)
        raise CorruptFileError(f"{name}: the PDF could not be read ({type(exc).__name__}: {exc})") from exc
    finally:
        pages.close()
    if not texts:
        why = " (OCR found none on its scanned pages)" if scanned else ""
        raise CorruptFileError(f"{name}: the PDF has no extractable text{why}")
    sections = [
        Section(text=texts[i], heading_path=next((p for s, p in reversed(starts) if s <= i), ()), page=i + 1)
        for i in sorted(texts)
    ]
    title = (meta_title or "").strip() or stem_title(name)
    return ParsedDocument(title=title, sections=sections, kind="pdf", warnings=tuple(warnings))
