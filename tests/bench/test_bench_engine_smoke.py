"""A tiny run of `appliance bench engine` with our engine only: structure and positive numbers.

Nothing here is timed or compared; the real figures come from `appliance bench engine`.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.bench.engine import decode_rate, run_engine_bench
from appliance.bench.report import update_section, write_engine_report

SYSTEM = "ours-float32-eager"


@pytest.fixture(scope="module")
def tiny_result(model_cache_dir: Path, loaded_model: object) -> dict:
    # `loaded_model` leaves the converted weights in model_cache_dir, so the subprocess loads fast; eager decode
    # layers: the bench would otherwise wait ~30 s for torch.compile (tests/engine/test_compiled_decode.py has it)
    return run_engine_bench([SYSTEM, "no-such-system"], repeats=1, prefill_lengths=[16],
                            decode_tokens=4, concurrency=[1, 2], data_dir=model_cache_dir, timeout_s=300)


def test_result_structure_and_positive_numbers(tiny_result: dict) -> None:
    assert tiny_result["machine"]["cores"]
    assert tiny_result["workload"]["prefill_lengths"] == [16]
    ours = tiny_result["systems"][SYSTEM]
    assert ours["available"], ours.get("reason")
    assert set(ours["prefill_tps"]) == {"16"} and set(ours["decode_tps"]) == {"1", "2"}
    figures = [*ours["prefill_tps"].values(), *ours["decode_tps"].values(), ours["peak_rss_mib"],
               ours["load_s"]]
    assert all(isinstance(x, float) and x > 0 for x in figures)
    assert tiny_result["systems"]["no-such-system"]["available"] is False
    assert tiny_result["ratios"] == {}  # no peer ran


def test_report_keeps_other_sections(tiny_result: dict, tmp_path: Path) -> None:
    doc = tmp_path / "BENCHMARKS.md"
    doc.write_text("# Benchmarks\n\n## Retrieval\n\nkeep me\n\n## Engine\n\nold figures\n\n"
                   "## RAG\n\nkeep me too\n")
    notes = write_engine_report(tiny_result, tmp_path)
    text = doc.read_text()
    assert "keep me\n" in text and "keep me too" in text and "old figures" not in text
    assert text.index("## Retrieval") < text.index("## Engine") < text.index("## RAG")
    assert "| prefill 16 tok (tok/s) |" in text and "no-such-system" in text
    assert len(notes) == 2


def test_update_section_creates_and_appends(tmp_path: Path) -> None:
    doc = tmp_path / "docs" / "BENCHMARKS.md"
    update_section(doc, "Engine", "first", {"cpu": "x"})
    update_section(doc, "RAG", "second")
    update_section(doc, "Engine", "third")
    text = doc.read_text()
    assert text.startswith("# Benchmarks") and "## Machine" in text and "- **cpu**: x" in text
    assert "first" not in text and text.index("third") < text.index("second")


def test_decode_rate_counts_tokens_after_all_streams_started() -> None:
    streams = [[1.0, 2.0, 3.0], [2.0, 3.0]]  # the second stream starts at t=2
    assert decode_rate(streams) == pytest.approx(2 / 1.0)
