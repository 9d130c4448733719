"""Images (PNG, JPEG, TIFF) through OCR: one section per frame; a multi-page TIFF's sections carry its page
numbers (1-based), a single picture's none.

A frame over `ocr.MAX_PIXELS` is refused before it is decoded (a small file can declare a huge picture). A frame
OCR reads no text from is reported in the document's warnings; an image with no text at all fails.
"""

from __future__ import annotations

import io
import warnings

from PIL import Image, ImageSequence, UnidentifiedImageError

from retrieval.errors import CorruptFileError, FileError
from retrieval.parse.ocr import MAX_PIXELS, ocr_image, pages_phrase, require_ocr
from retrieval.parse.text import stem_title
from retrieval.types import ParsedDocument, Section


def _frame_text(frame: Image.Image, name: str, page: int) -> str:
    width, height = frame.size
    if width * height > MAX_PIXELS:
        raise CorruptFileError(f"{name}: page {page} is {width}x{height} pixels, over the limit of {MAX_PIXELS} "
                               "(a decompression bomb or a scan at an excessive resolution)")
    try:
        return ocr_image(frame.copy())  # copy(): decodes this frame only
    except FileError:
        raise
    except (OSError, ValueError, SyntaxError) as exc:  # truncated or broken image data (Pillow)
        raise CorruptFileError(f"{name}: page {page} could not be decoded ({exc})") from exc
    except Exception as exc:  # pytesseract: TesseractError, RuntimeError on its timeout
        raise CorruptFileError(f"{name}: OCR failed on page {page} ({type(exc).__name__}: {exc})") from exc


def parse_image(data: bytes, name: str) -> ParsedDocument:
    require_ocr(name)
    sections: list[Section] = []
    blank: list[int] = []
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)  # our own limit speaks instead
            image = Image.open(io.BytesIO(data))
        with image:
            paged = getattr(image, "n_frames", 1) > 1
            for page, frame in enumerate(ImageSequence.Iterator(image), start=1):
                text = _frame_text(frame, name, page)
                if text:
                    sections.append(Section(text=text, page=page if paged else None))
                else:
                    blank.append(page)
    except FileError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise CorruptFileError(f"{name}: the image is too large to read ({exc})") from exc
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError) as exc:
        raise CorruptFileError(f"{name}: not a readable image ({exc})") from exc
    if not sections:
        raise CorruptFileError(f"{name}: OCR found no text in the image")
    notes = (f"{name}: OCR found no text on {pages_phrase(blank)}.",) if blank else ()
    return ParsedDocument(title=stem_title(name), sections=sections, kind="image", warnings=notes)
