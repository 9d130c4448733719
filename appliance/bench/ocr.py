"""`appliance bench ocr`: how fast and how well scanned pages are read, and what OCR costs ingestion.

Workload: pages of seeded random English words (`page_lines`) drawn in DejaVu Sans at 28 px on 1700x2200 white
pictures (`render_page`: a letter page at 200 dpi, the text about 10 pt). One run measures:

- OCR alone: `retrieval.parse.ocr.ocr_image` on each picture (pages/s, median of repeats);
- scanned PDF: the pictures as one image-only PDF (300 dpi) through `parse_bytes` (render + OCR, pages/s);
- word accuracy of both: the share of the drawn words recovered, in order (difflib's matching blocks over the
  lower-cased words, punctuation dropped), over every page;
- ingestion of a mixed folder through `RetrievalService.ingest_paths` (parse + chunk + embed + store + index):
  Markdown notes and a text PDF, alone, then with the scanned PDF and PNG pictures of the same pages beside them,
  each into a fresh collection (medians of repeats); their difference is what OCR adds, as OCR pages/s.

Results go to the "Ingestion: OCR" section of docs/BENCHMARKS.md.
"""

from __future__ import annotations

import difflib
import io
import random
import re
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from PIL import Image, ImageDraw, ImageFont

SECTION = "Ingestion: OCR"
FONT = Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf")
PAGE_SIZE = (1700, 2200)
FONT_PX = 28
_WORDS = (
    "the of and to in is was for on that with as by at from his her they which this be are an have were not but "
    "had one all their there been has when who will more no if out so said what up its about into than them can "
    "only other new some could time these two may then do first any my now such like our over man me even most "
    "made after also did many before must through back years where much your way well down should because each "
    "just those people how too little state good very make world still own see men work long get here between "
    "both life being under never day same another know while last might us great old year off come since against "
    "go came right used take three river mountain harbour lantern copper winter garden village meadow"
).split()


def page_lines(seed: int, lines: int = 24, words: int = 9) -> list[str]:
    """`lines` lines of `words` random words each (the same for the same seed), the first capitalised."""
    rng = random.Random(seed)
    out = [" ".join(rng.choice(_WORDS) for _ in range(words)) for _ in range(lines)]
    return [line[:1].upper() + line[1:] for line in out]


def render_page(lines: list[str], size: tuple[int, int] = PAGE_SIZE, font_px: int = FONT_PX) -> Image.Image:
    """A white grayscale page with `lines` drawn in black DejaVu Sans, 1.6 lines apart, from a 100 px margin."""
    font = ImageFont.truetype(str(FONT), font_px)
    page = Image.new("L", size, 255)
    draw = ImageDraw.Draw(page)
    for i, line in enumerate(lines):
        draw.text((100, 100 + int(i * font_px * 1.6)), line, font=font, fill=0)
    return page


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


def word_accuracy(reference: str, recovered: str) -> float:
    """The share of `reference`'s words found in `recovered` in the same order (1.0: every word, in order)."""
    ref = _words(reference)
    matcher = difflib.SequenceMatcher(a=ref, b=_words(recovered), autojunk=False)
    return sum(block.size for block in matcher.get_matching_blocks()) / max(1, len(ref))


def scanned_pdf(pages: list[Image.Image]) -> bytes:
    """An image-only PDF (no text layer), one page per picture at 300 dpi."""
    buf = io.BytesIO()
    pages[0].save(buf, "PDF", resolution=300, save_all=True, append_images=pages[1:])
    return buf.getvalue()


def text_pdf(pages: list[list[str]]) -> bytes:
    """A PDF with a text layer (reportlab, Helvetica 11 pt), one page per list of lines."""
    try:
        from reportlab.pdfgen import canvas
    except ImportError as exc:  # the `bench` and `dev` extras install it
        raise RuntimeError("appliance bench ocr needs reportlab: pip install -e '.[bench]'") from exc
    buf = io.BytesIO()
    pdf = canvas.Canvas(buf)
    for lines in pages:
        text = pdf.beginText(72, 760)
        text.setFont("Helvetica", 11)
        for line in lines:
            text.textLine(line)
        pdf.drawText(text)
        pdf.showPage()
    pdf.save()
    return buf.getvalue()


def _write_folders(root: Path, pages: list[Image.Image], text_files: int) -> tuple[list[Path], list[Path]]:
    """(text files, scanned files) written under `root`."""
    root.mkdir(parents=True, exist_ok=True)
    texts = []
    for i in range(text_files):
        lines = page_lines(10_000 + i, lines=40)
        (root / f"note{i}.md").write_text(f"# Note {i}\n\n" + "\n\n".join(lines) + "\n")
        texts.append(root / f"note{i}.md")
    (root / "report.pdf").write_bytes(text_pdf([page_lines(20_000 + i, lines=40) for i in range(max(1, text_files))]))
    texts.append(root / "report.pdf")
    scans = [root / "scan.pdf"]
    scans[0].write_bytes(scanned_pdf(pages))
    for i, page in enumerate(pages):
        page.save(root / f"photo{i}.png")
        scans.append(root / f"photo{i}.png")
    return texts, scans


def _ingest_seconds(service: Any, paths: list[Path], name: str) -> tuple[float, int]:
    start = time.perf_counter()
    status = service.ingest_paths(name, paths)
    seconds = time.perf_counter() - start
    failed = [f.error for f in status.files if f.state == "failed"]
    if failed:
        raise RuntimeError(f"ingestion failed: {failed}")
    return seconds, sum(f.chunks for f in status.files if f.state == "done")


def run_ocr_bench(pages: int = 8, repeats: int = 3, text_files: int = 8, data_dir: Path | None = None,
                  say: Callable[[str], None] = print) -> dict[str, Any]:
    """Run every measurement (medians of `repeats`) and return the figures as a dict."""
    from appliance.bench.machine import describe_machine
    from appliance.engine.loader import load_tokenizer
    from retrieval.parse import parse_bytes
    from retrieval.parse.ocr import configured_languages, ocr_image, require_ocr
    from retrieval.service import RetrievalService

    require_ocr("appliance bench ocr")
    machine = describe_machine()
    lines = [page_lines(seed) for seed in range(pages)]
    references = ["\n".join(page) for page in lines]
    images = [render_page(page) for page in lines]
    say(f"OCR alone: {pages} pages x {repeats}")
    rates, texts = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        texts = [ocr_image(image) for image in images]
        rates.append(pages / (time.perf_counter() - start))
    direct_accuracy = statistics.fmean(word_accuracy(r, t) for r, t in zip(references, texts, strict=True))
    say("scanned PDF through the parser")
    pdf = scanned_pdf(images)
    pdf_rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        doc = parse_bytes(pdf, "scan.pdf")
        pdf_rates.append(pages / (time.perf_counter() - start))
    by_page = {s.page: s.text for s in doc.sections}
    pdf_accuracy = statistics.fmean(word_accuracy(r, by_page.get(i + 1, "")) for i, r in enumerate(references))
    result: dict[str, Any] = {
        "machine": machine,
        "workload": {"pages": pages, "words_per_page": len(_words(references[0])), "font_px": FONT_PX,
                     "page_px": list(PAGE_SIZE), "languages": configured_languages(), "repeats": repeats},
        "ocr": {"pages_per_s": statistics.median(rates), "word_accuracy": direct_accuracy},
        "pdf": {"pages_per_s": statistics.median(pdf_rates), "word_accuracy": pdf_accuracy},
    }
    with tempfile.TemporaryDirectory(dir=data_dir) as tmp:
        text_paths, scan_paths = _write_folders(Path(tmp) / "folder", images, text_files)
        service = RetrievalService.open(Path(tmp) / "data", load_tokenizer("default"), chunk_tokens=256)
        try:
            service.embedder.encode(["warm up"])
            runs: dict[str, list[tuple[float, int]]] = {"text": [], "mixed": []}
            for r in range(repeats):
                say(f"ingestion, repeat {r + 1}: text files, then the mixed folder")
                runs["text"].append(_ingest_seconds(service, text_paths, f"text{r}"))
                runs["mixed"].append(_ingest_seconds(service, text_paths + scan_paths, f"mixed{r}"))
        finally:
            service.close()
    ocr_pages = 2 * pages  # the scanned PDF's pages and the PNG pictures
    ingest: dict[str, Any] = {"text_files": len(text_paths), "scanned_files": len(scan_paths), "ocr_pages": ocr_pages}
    for name, values in runs.items():
        seconds = statistics.median(v[0] for v in values)
        files = len(text_paths) + (len(scan_paths) if name == "mixed" else 0)
        ingest[name] = {"seconds": seconds, "files_per_s": files / seconds, "chunks": values[0][1],
                        "chunks_per_s": values[0][1] / seconds}
    extra = ingest["mixed"]["seconds"] - ingest["text"]["seconds"]
    ingest["ocr_pages_per_s"] = ocr_pages / extra if extra > 0 else None
    result["ingest"] = ingest
    return result


def ocr_markdown(result: dict[str, Any]) -> str:
    """The "Ingestion: OCR" section body for docs/BENCHMARKS.md."""
    m, w, i = result["machine"], result["workload"], result["ingest"]
    per_ocr = i["ocr_pages_per_s"]
    lines = [
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory']}; load average at the start: {m['load_average']}. "
        f"Tesseract through pytesseract, languages {w['languages']!r}, one OpenMP thread.",
        f"Pages: {w['pages']} pictures of {w['words_per_page']} random English words each (DejaVu Sans "
        f"{w['font_px']} px on {w['page_px'][0]}x{w['page_px'][1]} px, a letter page at 200 dpi); medians of "
        f"{w['repeats']} repeats.",
        "",
        "| Reading scanned pages | pages/s | word accuracy |",
        "| --- | ---: | ---: |",
        f"| OCR alone (`ocr_image` on the picture) | {result['ocr']['pages_per_s']:.2f} | "
        f"{result['ocr']['word_accuracy']:.3f} |",
        f"| image-only PDF through the parser (render at 300 dpi + OCR) | {result['pdf']['pages_per_s']:.2f} | "
        f"{result['pdf']['word_accuracy']:.3f} |",
        "",
        "| Ingestion (parse + chunk + embed + store + index) | seconds | files/s | chunks/s |",
        "| --- | ---: | ---: | ---: |",
        f"| {i['text_files']} text files (Markdown notes, a text PDF) | {i['text']['seconds']:.2f} | "
        f"{i['text']['files_per_s']:.2f} | {i['text']['chunks_per_s']:.1f} |",
        f"| the same with {i['scanned_files']} scanned files beside them ({i['ocr_pages']} OCR pages) | "
        f"{i['mixed']['seconds']:.2f} | {i['mixed']['files_per_s']:.2f} | {i['mixed']['chunks_per_s']:.1f} |",
        "",
        "OCR pages/s inside ingestion (the difference of the two rows): "
        + (f"{per_ocr:.2f}." if per_ocr is not None else "not measurable (the mixed run was not slower)."),
        "Word accuracy: the share of the drawn words recovered in order (difflib matching blocks over lower-cased "
        "words). A file's OCR counts against the parser's per-file time limit (APPLIANCE_PARSE_TIMEOUT_S).",
    ]
    return "\n".join(lines)


def bench_ocr(
    pages: Annotated[int, typer.Option(min=1, help="rendered pages (each read twice: PNG and scanned PDF)")] = 8,
    repeats: Annotated[int, typer.Option(min=1, help="repeats per figure (medians reported)")] = 3,
    text_files: Annotated[int, typer.Option(min=1, help="Markdown notes in the mixed folder")] = 8,
    json_file: Annotated[Path | None, typer.Option("--json", help="also write the full result here")] = None,
    docs: Annotated[bool, typer.Option("--docs/--no-docs", help="update docs/BENCHMARKS.md")] = True,
) -> None:
    """OCR pages/s and word accuracy on rendered pages, and ingestion throughput of a mixed folder with OCR."""
    from rich.console import Console

    from appliance.bench.report import publish
    from appliance.errors import ApplianceError

    console = Console()
    try:
        result = run_ocr_bench(pages, repeats, text_files,
                               say=lambda msg: console.print(msg, style="dim", markup=False, highlight=False))
    except ApplianceError as exc:  # OCR unavailable: the sentence says what to install
        console.print(str(exc), style="red", markup=False)
        raise typer.Exit(1) from None
    publish(console, result, ocr_markdown(result), SECTION, json_file, docs)
