"""A tiny run of `appliance bench ocr` (one page, one repeat, one note): every figure is there, the rendered page is
read back nearly word for word, and the section says what was measured. The published figures come from the
bench itself."""

from __future__ import annotations

from pathlib import Path

from appliance.bench.ocr import ocr_markdown, page_lines, run_ocr_bench, word_accuracy


def test_word_accuracy_is_order_aware() -> None:
    assert word_accuracy("the red fox ran", "The red, fox ran!") == 1.0
    assert word_accuracy("the red fox ran", "the fox") == 0.5
    assert word_accuracy("one two three four", "four three two one") == 0.25  # one word in order, not four
    assert word_accuracy("a b", "") == 0.0
    assert page_lines(3) == page_lines(3) != page_lines(4)


def test_the_bench_runs_on_a_tiny_slice(tmp_path: Path) -> None:
    result = run_ocr_bench(pages=1, repeats=1, text_files=1, data_dir=tmp_path, say=lambda _: None)
    assert result["ocr"]["word_accuracy"] >= 0.95 and result["pdf"]["word_accuracy"] >= 0.95
    assert result["ocr"]["pages_per_s"] > 0 and result["pdf"]["pages_per_s"] > 0
    ingest = result["ingest"]
    assert (ingest["text_files"], ingest["scanned_files"], ingest["ocr_pages"]) == (2, 2, 2)
    assert ingest["mixed"]["chunks"] > ingest["text"]["chunks"] > 0
    markdown = ocr_markdown(result)
    assert "| OCR alone (`ocr_image` on the picture) |" in markdown
    assert "the same with 2 scanned files beside them (2 OCR pages)" in markdown
