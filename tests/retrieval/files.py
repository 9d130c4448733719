"""Real documents made in the tests: a tiny PDF writer (text pages + outline), HTML, DOCX, PPTX, XLSX, EPUB, zips."""

from __future__ import annotations

import io
import zipfile

import docx
import openpyxl
import pptx
from pptx.util import Inches


def _pdf_string(text: str) -> str:
    return "(" + text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)") + ")"


def make_pdf(pages: list[str], outline: list[tuple[str, int]] = (), title: str | None = None) -> bytes:
    """A valid PDF: one page per string (lines split on '\\n'), Helvetica text, and an outline of
    (title, 0-based page) entries."""
    n_pages = len(pages)
    page_ids = [4 + 2 * i for i in range(n_pages)]
    outline_root = 4 + 2 * n_pages
    info_id = outline_root + 1 + len(outline)
    objects: dict[int, bytes] = {}
    catalog = f"<< /Type /Catalog /Pages 2 0 R{f' /Outlines {outline_root} 0 R' if outline else ''} >>"
    objects[1] = catalog.encode()
    objects[2] = f"<< /Type /Pages /Kids [{' '.join(f'{p} 0 R' for p in page_ids)}] /Count {n_pages} >>".encode()
    objects[3] = b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>"
    for i, text in enumerate(pages):
        ops = ["BT", "/F1 11 Tf", "72 760 Td", "14 TL"]
        ops += [f"{_pdf_string(line)} Tj T*" for line in text.split("\n")]
        ops.append("ET")
        stream = "\n".join(ops).encode("latin-1")
        objects[page_ids[i]] = (
            f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents {page_ids[i] + 1} 0 R "
            "/Resources << /Font << /F1 3 0 R >> >> >>"
        ).encode()
        objects[page_ids[i] + 1] = b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream"
    if outline:
        items = [outline_root + 1 + i for i in range(len(outline))]
        objects[outline_root] = (
            f"<< /Type /Outlines /First {items[0]} 0 R /Last {items[-1]} 0 R /Count {len(items)} >>".encode()
        )
        for i, (heading, page) in enumerate(outline):
            links = f" /Prev {items[i - 1]} 0 R" if i else ""
            links += f" /Next {items[i + 1]} 0 R" if i + 1 < len(items) else ""
            objects[items[i]] = (
                f"<< /Title {_pdf_string(heading)} /Parent {outline_root} 0 R{links} "
                f"/Dest [{page_ids[page]} 0 R /XYZ 0 792 0] >>"
            ).encode()
    objects[info_id] = f"<< /Title {_pdf_string(title or '')} >>".encode()
    out = bytearray(b"%PDF-1.4\n")
    offsets = {}
    for number in sorted(objects):
        offsets[number] = len(out)
        out += b"%d 0 obj\n" % number + objects[number] + b"\nendobj\n"
    xref = len(out)
    count = max(objects) + 1
    out += b"xref\n0 %d\n0000000000 65535 f \n" % count
    for number in range(1, count):
        out += b"%010d 00000 n \n" % offsets[number] if number in offsets else b"0000000000 65535 f \n"
    out += b"trailer\n<< /Size %d /Root 1 0 R /Info %d 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (count, info_id, xref)
    return bytes(out)


NOISY_HTML = """<!doctype html><html><head><title>Widget Manual</title></head><body>
<header><nav><ul>{nav}</ul></nav></header>
<div class="sidebar"><ul>{nav}</ul></div>
<main><article>
<h1>Widget Manual</h1>
<p>The widget is a configurable device for measuring the torque of small flywheels in laboratory settings.
It ships with a calibration kit and a carrying case.</p>
<h2>Calibration</h2>
<p>To calibrate the widget, turn the brass dial clockwise until the green lamp stops blinking, then hold
the reset button for five seconds. Calibration must be repeated after every firmware update.</p>
<h3>Troubleshooting calibration</h3>
<p>If the lamp keeps blinking red, the flywheel sensor is dirty: clean it with isopropyl alcohol and try
again. Persistent failures mean the sensor cable must be replaced.</p>
</article></main>
<footer><p>Copyright 2026 Widget Corp. Privacy policy. Terms of service. Cookie settings.</p></footer>
</body></html>"""


def make_html() -> bytes:
    nav = "".join(f'<li><a href="/p{i}">Navigation link {i}</a></li>' for i in range(30))
    return NOISY_HTML.format(nav=nav).encode()


def make_docx() -> bytes:
    document = docx.Document()
    document.add_heading("Quarterly Report", level=0)
    document.add_heading("Revenue", level=1)
    document.add_paragraph("Revenue grew by twelve percent thanks to the new subscription tier.")
    document.add_heading("Regional detail", level=2)
    document.add_paragraph("The northern region contributed most of the growth.")
    table = document.add_table(rows=2, cols=2)
    table.cell(0, 0).text, table.cell(0, 1).text = "Region", "Growth"
    table.cell(1, 0).text, table.cell(1, 1).text = "North", "19%"
    document.add_heading("Costs", level=1)
    document.add_paragraph("Hosting costs fell after the migration to the new datacenter.")
    buf = io.BytesIO()
    document.save(buf)
    return buf.getvalue()


def make_zip(entries: dict[str, bytes], symlinks: dict[str, str] | None = None) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in entries.items():
            archive.writestr(zipfile.ZipInfo(name), data, compress_type=zipfile.ZIP_DEFLATED)
        for name, target in (symlinks or {}).items():
            info = zipfile.ZipInfo(name)
            info.external_attr = 0o120777 << 16
            archive.writestr(info, target)
    return buf.getvalue()


def make_pptx() -> bytes:
    deck = pptx.Presentation()
    first = deck.slides.add_slide(deck.slide_layouts[1])  # title and content
    first.shapes.title.text = "Launch plan"
    first.placeholders[1].text = "Ship the widget in May."
    table = first.shapes.add_table(3, 2, Inches(1), Inches(4), Inches(6), Inches(1.5)).table
    for r, row in enumerate([["Market", "Date"], ["Norway", "May 3"], ["Chile", "June 9"]]):
        for c, value in enumerate(row):
            table.cell(r, c).text = value
    first.notes_slide.notes_text_frame.text = "Mention the budget freeze."
    deck.slides.add_slide(deck.slide_layouts[6])  # blank: no text, no section
    third = deck.slides.add_slide(deck.slide_layouts[6])
    third.shapes.add_textbox(Inches(1), Inches(1), Inches(5), Inches(1)).text_frame.text = "Questions welcome."
    buf = io.BytesIO()
    deck.save(buf)
    return buf.getvalue()


def make_xlsx() -> bytes:
    book = openpyxl.Workbook()
    sales = book.active
    sales.title = "Sales"
    sales.append([])  # the header is the first non-empty row
    for row in [["Region", "Units", "Price"], ["North", 120, 9.5], ["South | East", None, 7], [None, None, None],
                ["West", 40, 8]]:
        sales.append(row)
    book.create_sheet("Empty")
    staff = book.create_sheet("Staff")
    staff.append(["Name", "Role"])
    staff.append(["Ada", "Engineer"])
    buf = io.BytesIO()
    book.save(buf)
    return buf.getvalue()


def make_epub(spine_hrefs: tuple[str, ...] = ("text/ch2.xhtml", "text/ch1.xhtml")) -> bytes:
    chapter = """<?xml version="1.0" encoding="utf-8"?>
<!DOCTYPE html PUBLIC "-//W3C//DTD XHTML 1.1//EN" "http://www.w3.org/TR/xhtml11/DTD/xhtml11.dtd">
<html xmlns="http://www.w3.org/1999/xhtml"><head><title>{title}</title></head><body>
<h1>{title}</h1><p>{text}</p></body></html>"""
    container = """<?xml version="1.0"?>
<container version="1.0" xmlns="urn:oasis:names:tc:opendocument:xmlns:container">
<rootfiles><rootfile full-path="OEBPS/content.opf" media-type="application/oebps-package+xml"/></rootfiles>
</container>"""
    xhtml = "application/xhtml+xml"
    items = "".join(f'<item id="c{i}" href="{h}" media-type="{xhtml}"/>' for i, h in enumerate(spine_hrefs))
    refs = "".join(f'<itemref idref="c{i}"/>' for i in range(len(spine_hrefs)))
    opf = f"""<?xml version="1.0" encoding="utf-8"?>
<package xmlns="http://www.idpf.org/2007/opf" version="3.0" unique-identifier="id">
<metadata xmlns:dc="http://purl.org/dc/elements/1.1/"><dc:title>Tides of the North</dc:title></metadata>
<manifest>{items}</manifest><spine>{refs}</spine></package>"""
    body = "The harbour of Tromsø freezes only in the hardest winters, when the fjord ice reaches the quay. " * 3
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("mimetype", "application/epub+zip")
        archive.writestr("META-INF/container.xml", container)
        archive.writestr("OEBPS/content.opf", opf)
        archive.writestr("OEBPS/text/ch1.xhtml", chapter.format(title="Harbours", text=body))
        archive.writestr("OEBPS/text/ch2.xhtml", chapter.format(
            title="Currents", text="The coastal current carries warm Atlantic water far past the Arctic circle. " * 3))
    return buf.getvalue()
