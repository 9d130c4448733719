"""Text from pictures of text: Tesseract (Debian's `tesseract-ocr`) through `pytesseract`.

Used by the image parser (PNG, JPEG, TIFF) and by the PDF parser for pages without a text layer. Runs in the
parser worker (retrieval/parse/pool.py), so a page's OCR counts against the file's time limit (about 1.5 s a
300-dpi page on one core) and Tesseract's memory against the worker's cap (a child process inherits it).

Languages: `APPLIANCE_OCR_LANGUAGES` (default "eng"; several as "eng+deu" or "eng,deu"), read here when a page
is read (the worker inherits the server's environment; retrieval takes no settings object for parsers), each
one checked against what Tesseract has installed (Debian: `tesseract-ocr-<lang>`).
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import shutil
import subprocess
from collections.abc import Iterator

from PIL import Image

from retrieval.errors import FileError

LANGUAGES_ENV = "APPLIANCE_OCR_LANGUAGES"
DEFAULT_LANGUAGES = "eng"
MAX_PIXELS = 64_000_000  # a frame or a rendered page above this is refused (an A4 page at 600 dpi is 35 Mpx)
PAGE_TIMEOUT_S = 120.0  # one page's Tesseract run (the file's own limit usually stops it sooner)
INSTALL_HINT = "install Debian's tesseract-ocr and tesseract-ocr-eng (apt-get install tesseract-ocr tesseract-ocr-eng)"


class OcrUnavailableError(FileError):
    """Reading the file needs OCR and Tesseract (or a configured language of it) is not installed."""


def _command() -> str:
    import pytesseract

    return str(pytesseract.pytesseract.tesseract_cmd)


def ocr_problem() -> str | None:
    """None when OCR can run, else why not (a sentence naming what to install)."""
    command = _command()
    path = shutil.which(command)
    if path is None:
        return f"OCR is unavailable: {command!r} was not found; {INSTALL_HINT}"
    missing = [lang for lang in configured_languages().split("+") if lang not in _installed_languages(path)]
    if missing:
        packages = " ".join(f"tesseract-ocr-{lang.lower().replace('_', '-')}" for lang in missing)
        return (f"OCR is unavailable: Tesseract has no {', '.join(missing)} language data ({LANGUAGES_ENV}); "
                f"install Debian's {packages}")
    return None


def require_ocr(name: str) -> None:
    """Raise OcrUnavailableError (naming the file) when OCR cannot run."""
    problem = ocr_problem()
    if problem is not None:
        raise OcrUnavailableError(f"{name}: {problem}")


@functools.lru_cache(maxsize=8)
def _installed_languages(path: str) -> frozenset[str]:
    try:
        run = subprocess.run([path, "--list-langs"], capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.SubprocessError):
        return frozenset()
    # the first line is "List of available languages in ... (N):"
    return frozenset(line.strip() for line in run.stdout.splitlines()[1:] if line.strip())


def configured_languages() -> str:
    """`APPLIANCE_OCR_LANGUAGES` in Tesseract's form ("eng+deu"); "eng" when unset or empty."""
    raw = os.environ.get(LANGUAGES_ENV, "").strip() or DEFAULT_LANGUAGES
    return "+".join(part for part in re.split(r"[+,\s]+", raw) if part)


def flatten(image: Image.Image) -> Image.Image:
    """The image in grayscale, transparency composited onto white (Tesseract would read it as black)."""
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(white, rgba)
    return image if image.mode == "L" else image.convert("L")


def ocr_image(image: Image.Image, languages: str | None = None) -> str:
    """The text Tesseract reads in `image` (page segmentation: automatic), stripped; "" when it reads none.
    `languages` defaults to `configured_languages()`. Raises pytesseract's errors (TesseractNotFoundError,
    TesseractError, RuntimeError on its timeout): callers turn them into FileErrors."""
    import pytesseract

    with _one_omp_thread():
        text = pytesseract.image_to_string(flatten(image), lang=languages or configured_languages(),
                                           timeout=PAGE_TIMEOUT_S)
    return str(text).strip()


@contextlib.contextmanager
def _one_omp_thread() -> Iterator[None]:
    """Tesseract started meanwhile gets one OpenMP thread (a second one made a page 3-6x slower on a busy 2-core
    machine: threads spinning); the variable is put back after, so no other child process inherits it."""
    before = os.environ.get("OMP_THREAD_LIMIT")
    os.environ["OMP_THREAD_LIMIT"] = "1"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("OMP_THREAD_LIMIT", None)
        else:
            os.environ["OMP_THREAD_LIMIT"] = before


def pages_phrase(pages: list[int]) -> str:
    """"page 3" or "pages 2, 5 and 7" (1-based page numbers, for messages)."""
    if len(pages) == 1:
        return f"page {pages[0]}"
    return f"pages {', '.join(map(str, pages[:-1]))} and {pages[-1]}"
