"""Hostile files, built in the test: truncated, cyclic and slow PDFs, zip bombs (flat and nested), zip-slip
and absolute entry names, a DOCX with an XML external entity, XLSX and PPTX packages declaring a DTD, an EPUB
carrying a zip bomb. Each comes with the error it must get."""

from __future__ import annotations

import io
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

from tests.retrieval.files import make_docx, make_epub, make_pdf, make_pptx, make_xlsx, make_zip


@dataclass(frozen=True)
class Hostile:
    name: str
    data: bytes
    state: str  # the job file state it must end in
    reason: str  # a phrase its error must contain


def _pdf(objects: dict[int, bytes]) -> bytes:
    out, offsets = bytearray(b"%PDF-1.4\n"), {}
    for number in sorted(objects):
        offsets[number] = len(out)
        out += b"%d 0 obj\n" % number + objects[number] + b"\nendobj\n"
    xref, count = len(out), max(objects) + 1
    out += b"xref\n0 %d\n0000000000 65535 f \n" % count
    out += b"".join(b"%010d 00000 n \n" % offsets[n] for n in range(1, count))
    return bytes(out + b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (count, xref))


def slow_pdf(operations: int = 200_000) -> bytes:
    """11 KB that inflate to one page of `operations` text operations: minutes of text extraction."""
    body = zlib.compress(b"BT /F1 1 Tf (a) Tj ET\n" * operations, 9)
    return _pdf({
        1: b"<< /Type /Catalog /Pages 2 0 R >>",
        2: b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        3: b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
           b"/Resources << /Font << /F1 5 0 R >> >> >>",
        4: b"<< /Length %d /Filter /FlateDecode >>\nstream\n" % len(body) + body + b"\nendstream",
        5: b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    })


def _zip_of_zeros(size: int, name: str = "zeros.txt") -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as archive, archive.open(name, "w") as entry:
        block = bytes(1024 * 1024)
        for _ in range(size // len(block)):
            entry.write(block)
    return buf.getvalue()


def xxe_docx(secret_file: Path) -> bytes:
    """A real DOCX whose body declares an external entity on `secret_file` and uses it."""
    source = zipfile.ZipFile(io.BytesIO(make_docx()))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as out:
        for info in source.infolist():
            data = source.read(info)
            if info.filename == "word/document.xml":
                head, _, rest = data.partition(b"?>")
                doctype = f'<!DOCTYPE w:document [<!ENTITY xxe SYSTEM "file://{secret_file}">]>'.encode()
                data = head + b"?>" + doctype + rest.replace(b"Revenue grew", b"&xxe; Revenue grew", 1)
            out.writestr(info, data)
    return buf.getvalue()


def corpus(marker: str, secret_file: Path) -> list[Hostile]:
    """The hostile files; `marker` names the files a zip-slip would write (so the test can look for them)."""
    pdf = make_pdf(["Intro\nStars shine.", "Penguins\nEmperor penguins huddle."], [("Intro", 0)], title="Polar")
    bomb = _zip_of_zeros(200 * 1024 * 1024)
    nested = make_zip({f"inner{i}.zip": _zip_of_zeros(50 * 1024 * 1024, f"z{i}.txt") for i in range(3)})
    return [
        Hostile("truncated.pdf", pdf[: len(pdf) // 3], "failed", "not a readable PDF"),
        Hostile("cyclic.pdf", pdf.replace(b"/Kids [4 0 R 6 0 R]", b"/Kids [2 0 R 4 0 R]"), "failed", "cyclic"),
        Hostile("slow.pdf", slow_pdf(), "failed", "took longer than"),
        Hostile("bomb.zip", bomb, "failed", "zip bomb"),
        Hostile("nested.zip", nested, "expanded", ""),
        Hostile("slip.zip", make_zip({"ok.txt": b"fine", f"../../{marker}.txt": b"pwned"}), "failed", "outside"),
        Hostile("absolute.zip", make_zip({f"/tmp/{marker}.txt": b"pwned"}), "failed", "absolute path"),
        Hostile("xxe.docx", xxe_docx(secret_file), "failed", "XML DTD or entity"),
        Hostile("dtd.xlsx", with_dtd(make_xlsx(), "xl/workbook.xml"), "failed", "XML DTD or entity"),
        Hostile("dtd.pptx", with_dtd(make_pptx(), "ppt/presentation.xml"), "failed", "XML DTD or entity"),
        Hostile("bomb.epub", bomb_epub(make_epub()), "failed", "zip bomb"),
    ]


def with_dtd(package: bytes, part: str) -> bytes:
    """A copy of a zip package (XLSX, PPTX, DOCX, EPUB) whose XML `part` declares an entity-expansion DTD."""
    source = zipfile.ZipFile(io.BytesIO(package))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as out:
        for info in source.infolist():
            data = source.read(info)
            if info.filename == part:
                head, _, rest = data.partition(b"?>")
                doctype = b'<!DOCTYPE lol [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">]>'
                data = head + b"?>" + doctype + rest
            out.writestr(info, data)
    return buf.getvalue()


def bomb_epub(epub: bytes, size: int = 16 * 1024 * 1024) -> bytes:
    """A copy of an EPUB with one more entry: `size` zero bytes deflated about a thousand times."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as out:
        source = zipfile.ZipFile(io.BytesIO(epub))
        for info in source.infolist():
            out.writestr(info, source.read(info))
        with out.open("OEBPS/images/zeros.xhtml", "w") as entry:
            block = bytes(1024 * 1024)
            for _ in range(size // len(block)):
                entry.write(block)
    return buf.getvalue()
