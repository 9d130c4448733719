"""The engine's output does not depend on how work was split into steps, batched or cached."""

from __future__ import annotations

import pytest

from appliance.engine.sampling import SamplingParams
from appliance.engine.tokenizer import ChatMessage
from tests.engine.prompts import QUESTIONS

GREEDY = SamplingParams(max_tokens=16, temperature=0.0, ignore_eos=True)


@pytest.fixture(scope="module")
def prompts(make_engine) -> list[list[int]]:
    tok = make_engine(kv_blocks=8).tokenizer
    system = "You answer briefly and precisely. Context: the appliance serves questions over documents."
    return [tok.apply_chat_template([ChatMessage("system", system), ChatMessage("user", q)]) for q in QUESTIONS[:6]]


@pytest.fixture(scope="module")
def alone(make_engine, prompts) -> list[list[int]]:
    """Each prompt run by itself on a fresh engine: the expected outputs."""
    return [make_engine(enable_prefix_caching=False).generate([p], GREEDY)[0].token_ids for p in prompts]


@pytest.mark.parametrize("chunk", [1, 7, 64, 4096])
def test_chunked_prefill_gives_identical_output(make_engine, prompts, alone, chunk: int) -> None:
    engine = make_engine(max_num_batched_tokens=chunk, enable_prefix_caching=False)
    result = engine.generate([prompts[0]], GREEDY)[0]
    assert result.token_ids == alone[0]


def test_requests_arriving_at_different_steps(make_engine, prompts, alone) -> None:
    engine = make_engine(max_num_batched_tokens=48, enable_prefix_caching=False)
    got: dict[str, list[int]] = {}
    pending = list(enumerate(prompts))
    step = 0
    while pending or engine.has_unfinished():
        while pending and step >= 3 * pending[0][0]:
            i, prompt = pending.pop(0)
            engine.add_request(f"r{i}", prompt, GREEDY)
        for out in engine.step():
            got.setdefault(out.request_id, []).extend(out.token_ids)
        step += 1
    assert [got[f"r{i}"] for i in range(len(prompts))] == alone


def test_prefix_cache_hit_gives_same_output(make_engine, prompts, alone) -> None:
    engine = make_engine()
    cold = engine.generate([prompts[1]], GREEDY)[0]
    warm = engine.generate([prompts[1]], GREEDY)[0]
    assert cold.num_cached_tokens == 0
    assert warm.num_cached_tokens >= len(prompts[1]) - engine.config.block_size
    assert cold.token_ids == warm.token_ids == alone[1]
    # A different question after the same system prompt reuses the shared leading blocks only.
    other = engine.generate([prompts[2]], GREEDY)[0]
    assert 0 < other.num_cached_tokens < len(prompts[2])
    assert other.token_ids == alone[2]
    assert engine.block_manager.prefix_hits > 0


def test_tiny_pool_preempts_and_still_completes(make_engine, prompts, alone) -> None:
    longest = max(len(p) for p in prompts[:4]) + GREEDY.max_tokens
    blocks = -(-longest // 16) + 2  # room for one request and a bit: the others must wait or be preempted
    engine = make_engine(kv_blocks=blocks, block_size=16, enable_prefix_caching=False)
    results = engine.generate(prompts[:4], GREEDY)
    assert engine.stats.preemptions > 0
    assert [r.token_ids for r in results] == alone[:4]


def test_stop_strings_and_max_tokens(make_engine, prompts) -> None:
    engine = make_engine()
    full = engine.generate([prompts[0]], GREEDY)[0]
    assert len(full.token_ids) == GREEDY.max_tokens and full.finish_reason == "length"
    stop = full.text[len(full.text) // 2:][:3]
    cut = engine.generate([prompts[0]], SamplingParams(max_tokens=24, temperature=0.0, ignore_eos=True,
                                                       stop=(stop,)))[0]
    assert cut.finish_reason == "stop"
    assert cut.text == full.text[:full.text.index(stop)]


def test_eos_stops_generation(make_engine) -> None:
    engine = make_engine()
    prompt = engine.tokenizer.apply_chat_template([ChatMessage("user", "What is the capital of France?")])
    result = engine.generate([prompt], SamplingParams(max_tokens=64, temperature=0.0))[0]
    assert result.finish_reason == "stop"
    assert result.token_ids[-1] in engine.tokenizer.stop_token_ids
    assert "<|im_end|>" not in result.text
