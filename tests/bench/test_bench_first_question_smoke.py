"""A tiny run of `appliance bench first-question`: two demo pages, fresh servers with and without the warm-up.

Nothing here is timed or compared; the real figures come from `appliance bench first-question`.
"""

from __future__ import annotations

from pathlib import Path

from appliance.bench.first_question import QUESTIONS, first_question_markdown, run_first_question_bench, summarize
from appliance.commands.demo import PAGES

PAGE = "<html><head><title>{name}</title></head><body><h1>{name}</h1><p>The {name} module.</p></body></html>"


def test_bench_first_question_runs_both_servers(tmp_path: Path, loaded_model) -> None:
    corpus = tmp_path / "library"
    corpus.mkdir()
    for name in PAGES[:2]:
        (corpus / f"{name}.html").write_text(PAGE.format(name=name))
    result = run_first_question_bench(tmp_path / "data", corpus, repeats=1, max_tokens=2, say=lambda _: None)
    assert result["documents"] == 2
    for name in ("warm-up", "no warm-up"):
        (run,) = result["runs"][name]
        assert len(run["answers"]) == len(QUESTIONS) and run["ready_s"] > 0
    markdown = first_question_markdown(result)
    assert "| warm-up |" in markdown and "| no warm-up |" in markdown and "Target" in markdown


def test_summary_is_first_over_the_median_of_the_others() -> None:
    def run(ttfts: list[float]) -> dict:
        return {"ready_s": 1.0, "answers": [{"ttft_ms": t, "retrieval_ms": 1.0} for t in ttfts]}

    summary = summarize([run([200, 100, 100, 400]), run([300, 100, 200, 300]), run([100, 100, 100, 100])])
    assert summary["first_ttft_ms"] == 200 and summary["later_ttft_ms"] == 100
    assert summary["first_over_later"] == 1.5  # per run 2.0, 1.5, 1.0
