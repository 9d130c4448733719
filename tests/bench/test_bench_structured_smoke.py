"""A tiny run of `appliance bench structured` (one repeat, 8 tokens, 1 and 2 streams): every system generates the
same number of tokens, and what the constrained runs generated really is the start of an array of their schema.
The published figures come from the bench itself."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from appliance.bench.structured import (
    MAX_ITEM,
    PLAIN,
    SCHEMAS,
    SYSTEMS,
    array_prefix_items,
    decode_schema,
    run_structured_bench,
    structured_markdown,
)
from appliance.config import EngineConfig
from appliance.engine.loader import LoadedModel

TOKENS = 8


def test_the_prefix_check_refuses_what_the_schema_does_not_allow() -> None:
    assert array_prefix_items('["apple", "ban') == ["apple", "ban"]
    assert array_prefix_items("[") == [] and array_prefix_items('["a", ') == ["a", ""]
    assert len(array_prefix_items('["a\\')) == 1  # cut inside an escape
    with pytest.raises(ValueError):
        array_prefix_items('{"a": 1}')
    with pytest.raises(ValueError):
        array_prefix_items('["a", 3')
    with pytest.raises(ValueError):
        array_prefix_items("apple, banana")
    with pytest.raises(ValueError):
        array_prefix_items(json.dumps(["x" * (MAX_ITEM + 1)]), MAX_ITEM)
    assert array_prefix_items(json.dumps(["x" * (MAX_ITEM + 1)])) == ["x" * (MAX_ITEM + 1)]


def test_the_decode_schemas_cannot_close_early() -> None:
    assert decode_schema(TOKENS)["minItems"] == TOKENS
    assert decode_schema(TOKENS, MAX_ITEM)["items"]["maxLength"] == MAX_ITEM
    for name, (schema, doc) in SCHEMAS.items():  # the documents the library comparison walks fit their schemas
        if schema.get("type") == "array" and schema["items"].get("type") == "string":
            assert len(doc) >= schema["minItems"], name
            array_prefix_items(json.dumps(doc), schema["items"].get("maxLength"))


def test_the_bench_runs_on_a_tiny_slice(tmp_path: Path, loaded_model: LoadedModel) -> None:
    config = EngineConfig(data_dir=tmp_path, compiled_decode=False)
    result = run_structured_bench(repeats=1, tokens=TOKENS, streams=(1, 2), config=config, loaded=loaded_model,
                                  lib_repeats=1, say=lambda _: None)
    assert set(result["runs"]) == {"1", "2"} and set(result["summary"]["2"]) == set(SYSTEMS)
    for n, systems in result["runs"].items():
        for name, runs in systems.items():
            for run in runs:
                assert run["tokens"] == [TOKENS] * int(n) and run["finish"] == ["length"] * int(n), (n, name)
                assert run["tok_s"] > 0
                if name == PLAIN:
                    continue
                assert run["mask_ms"] > 0  # the engine's masking really ran
                for text in run["texts"]:  # checked here, independently of the bench's own count
                    items = array_prefix_items(text, SYSTEMS[name])
                    assert text.startswith('["') and items, text
                    assert json.loads(json.dumps(items)) == items
        for name, figures in result["summary"][n].items():
            assert figures["same_length"]
            if name != PLAIN:
                assert figures["valid"] == figures["outputs"] == int(n)
    compiled = result["compile"]["schemas"]
    assert len(compiled) == len(SCHEMAS)
    assert all(f["cached_ms"] < f["cold_ms"] for f in compiled.values())
    libs = result["libraries"]
    assert libs["xgrammar"]["positions"] > 50 and libs["xgrammar"]["apply_us"] > 0
    assert libs["llguidance"]["fill_us_median"] > 0
    table = structured_markdown(result)
    assert "| 2 | strings | " in table and f"strings <= {MAX_ITEM} chars" in table
    assert "first compile (cold) ms" in table and "apply [16, V] µs" in table
