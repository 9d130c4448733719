"""A tiny run of `appliance bench conversation` (one page, one conversation of two turns): the cached follow-up
reuses the whole first turn, the uncached one nothing. The published figures come from the bench itself."""

from __future__ import annotations

import json
from pathlib import Path

from appliance.bench.conversation import (
    CONVERSATIONS,
    conversation_markdown,
    load_conversations,
    run_conversation_bench,
)
from appliance.engine.loader import LoadedModel

PAGE = ("<html><head><title>json</title></head><body><h1>json — JSON encoder and decoder</h1>"
        "<p>json.dump(obj, fp, indent=None, sort_keys=False) writes obj to the file fp as JSON. Pass indent=4 to "
        "indent it and sort_keys=True to sort the keys. json.load(fp) reads it back.</p></body></html>")
BLOCK = 16


def test_the_set_holds_five_turn_conversations() -> None:
    conversations = load_conversations()
    assert len(conversations) >= 4 and all(len(c) == 5 for c in conversations)
    assert "by hand" in json.loads(CONVERSATIONS.read_text())["note"]


def test_the_bench_runs_on_a_tiny_slice(tmp_path: Path, loaded_model: LoadedModel) -> None:
    corpus = tmp_path / "library"
    corpus.mkdir()
    (corpus / "json.html").write_text(PAGE)
    conversations = tmp_path / "conversations.json"
    conversations.write_text(json.dumps({"note": "test", "conversations": [
        ["How do I write an object to a file as JSON?", "How do I indent it?"]]}))
    result = run_conversation_bench(corpus, turns=2, k=1, max_tokens=6, loaded=loaded_model,
                                    conversations_file=conversations, say=lambda _: None)
    first, second = (row for row in result["rows"])
    assert second["turns_in_prompt"] == 1 and second["retrieval_query"] != "How do I indent it?"
    held = first["cached"]["prompt_tokens"] + 1  # the first turn's prompt and at least one answer token
    assert second["cached"]["reused"] >= held // BLOCK * BLOCK
    assert second["off"]["reused"] == 0 and second["off"]["prompt_tokens"] == second["cached"]["prompt_tokens"]
    table = conversation_markdown(result)
    assert "| 2 |" in table and "no cache / cached" in table
