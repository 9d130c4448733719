"""Log-probabilities on the real engine (float32): each output token's is the model's log_softmax at that step
(checked against a plain forward pass and against the engine's own prompt scoring), its alternatives are the
best ones in order, a temperature scales them, a grammar leaves only the tokens it allows, and the prompt's
are scored over the whole prompt, never from the prefix cache."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import pytest
import torch

from appliance.engine.grammar import GrammarSpec
from appliance.engine.logprobs import TokenLogprobs
from appliance.engine.sampling import SamplingParams
from appliance.engine.tokenizer import ChatMessage
from appliance.errors import RequestError
from tests.engine.plain_forward import plain_logits

TOLERANCE = 2e-4  # float32: a decode step and a whole-prompt pass sum in different orders


@dataclass
class Collected:
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprobs] = field(default_factory=list)
    prompt_logprobs: list[TokenLogprobs] | None = None
    outputs_with_prompt_logprobs: int = 0
    finish_reason: str | None = None
    num_cached_tokens: int = 0
    stopped_on: int | None = None  # the end-of-sequence token that ended it (not an output token: no logprobs)


def collect(engine, prompt: list[int], params: SamplingParams, request_id: str = "r") -> Collected:
    """Run one request alone to its end, gathering what its outputs carry."""
    got = Collected()
    engine.add_request(request_id, prompt, params)
    while engine.has_unfinished():
        for out in engine.step():
            assert out.request_id == request_id
            got.finish_reason = out.finish_reason
            got.num_cached_tokens = out.num_cached_tokens
            if params.logprobs is not None and out.logprobs is None:  # only the token that ends it has none
                assert out.finish_reason == "stop" and out.token_ids[0] in engine.tokenizer.stop_token_ids
                got.stopped_on = out.token_ids[0]
                continue
            got.token_ids += out.token_ids
            if params.logprobs is not None:
                assert out.logprobs is not None and len(out.logprobs) == len(out.token_ids)
                got.logprobs += out.logprobs
            else:
                assert out.logprobs is None
            if out.prompt_logprobs is not None:
                got.prompt_logprobs = out.prompt_logprobs
                got.outputs_with_prompt_logprobs += 1
    return got


def check_top(entry: TokenLogprobs, width: int) -> None:
    """The alternatives: `width` of them, distinct, descending, probabilities summing to at most 1."""
    values = [lp for _, lp in entry.top]
    assert len(entry.top) == width and len({t for t, _ in entry.top}) == width
    assert values == sorted(values, reverse=True)
    assert sum(math.exp(v) for v in values) <= 1 + 1e-6
    assert all(v <= 0 for v in values) and entry.logprob <= 0


@pytest.fixture(scope="module")
def engine(make_engine):
    return make_engine()


@pytest.fixture(scope="module")
def prompt(engine) -> list[int]:
    return engine.tokenizer.apply_chat_template([ChatMessage("user", "Explain photosynthesis in two sentences.")])


@pytest.fixture(scope="module")
def greedy(engine, prompt) -> Collected:
    return collect(engine, prompt, SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True, logprobs=5))


def test_greedy_chosen_token_is_the_top_one(greedy: Collected) -> None:
    assert len(greedy.logprobs) == len(greedy.token_ids) == 12
    for token, entry in zip(greedy.token_ids, greedy.logprobs, strict=True):
        assert entry.token_id == token
        check_top(entry, 5)
        assert entry.top[0] == (token, entry.logprob)
        assert entry.top[1][1] < entry.logprob  # and not a tie: the test below compares real values


def test_greedy_logprobs_are_the_models_log_softmax(make_engine, prompt, greedy: Collected) -> None:
    """Against a plain forward pass over prompt + output: the chosen token's log-probability and the best five
    (ids and values) at every step."""
    logits = plain_logits(make_engine(), prompt + greedy.token_ids)  # [T, V]
    reference = logits.log_softmax(dim=-1)[len(prompt) - 1:-1]  # [12, V]: the positions that chose an output
    for row, entry in zip(reference, greedy.logprobs, strict=True):
        assert abs(row[entry.token_id].item() - entry.logprob) < TOLERANCE
        values, ids = row.topk(5)
        assert [t for t, _ in entry.top] == ids.tolist()
        assert max(abs(a - b) for (_, a), b in zip(entry.top, values.tolist(), strict=True)) < TOLERANCE


def test_prompt_logprobs_of_the_output_match_the_decoding_logprobs(engine, prompt, greedy: Collected) -> None:
    """Scoring prompt + output as a prompt gives, at the output's positions, the log-probabilities decoding gave."""
    ids = prompt + greedy.token_ids
    scored = collect(engine, ids, SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=5), "score")
    assert scored.prompt_logprobs is not None and len(scored.prompt_logprobs) == len(ids) - 1
    tail = scored.prompt_logprobs[len(prompt) - 1:]
    for decoded, rescored in zip(greedy.logprobs, tail, strict=True):
        assert rescored.token_id == decoded.token_id
        assert abs(rescored.logprob - decoded.logprob) < TOLERANCE
        assert [t for t, _ in rescored.top] == [t for t, _ in decoded.top]
        assert max(abs(a - b) for (_, a), (_, b) in zip(rescored.top, decoded.top, strict=True)) < TOLERANCE


def test_a_temperature_scales_the_logprobs(engine, prompt) -> None:
    """A drawn row's log-probabilities are of logits / temperature: differences between two tokens are the
    model's (temperature 1, from prompt scoring) divided by the temperature; the drawn token is in the
    distribution, not necessarily the best."""
    drawn = collect(engine, prompt, SamplingParams(max_tokens=10, temperature=0.6, seed=7, ignore_eos=True,
                                                   logprobs=4), "hot")
    ids = prompt + drawn.token_ids
    scored = collect(engine, ids, SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=4), "cold")
    assert scored.prompt_logprobs is not None
    for hot, cold in zip(drawn.logprobs, scored.prompt_logprobs[len(prompt) - 1:], strict=True):
        check_top(hot, 4)
        assert hot.token_id == cold.token_id
        assert [t for t, _ in hot.top] == [t for t, _ in cold.top]  # dividing keeps the order
        for (_, h), (_, c) in zip(hot.top[1:], cold.top[1:], strict=True):
            assert abs((h - hot.top[0][1]) - (c - cold.top[0][1]) / 0.6) < 1e-3
        assert abs((hot.logprob - hot.top[0][1]) - (cold.logprob - cold.top[0][1]) / 0.6) < 1e-3


def allowed_tokens(state, vocab_size: int) -> set[int]:
    """The tokens a grammar state allows next, read from xgrammar's bitmask."""
    bitmask = torch.zeros(1, (vocab_size + 31) // 32, dtype=torch.int32)
    state.matcher.fill_next_token_bitmask(bitmask, 0)
    bits = bitmask[0].to(torch.int64) & 0xFFFFFFFF
    return {t for t in range(vocab_size) if (bits[t // 32] >> (t % 32)) & 1}


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_with_a_grammar_only_allowed_tokens_are_listed(engine, prompt, temperature: float) -> None:
    """The alternatives are those of the constrained distribution: every listed token is one the grammar
    allowed at that step, and the few it allows hold all of the probability."""
    options = ["yes", "no", "maybe", "never"]
    spec = GrammarSpec.choice(options)
    got = collect(engine, prompt, SamplingParams(max_tokens=8, temperature=temperature, seed=2,
                                                 grammar=spec, logprobs=20), f"choice-{temperature}")
    assert got.finish_reason == "stop"
    assert engine.tokenizer.decode(got.token_ids) in options
    state = engine.grammars.state(spec)
    vocab = engine.model.config.vocab_size
    for token, entry in zip(got.token_ids, got.logprobs, strict=True):
        allowed = allowed_tokens(state, vocab)
        listed = {t for t, _ in entry.top}
        assert 0 < len(listed) <= min(20, len(allowed)) and listed <= allowed and token in allowed
        if len(allowed) <= 20:  # all of them listed: the constrained distribution sums to 1
            assert listed == allowed
            assert sum(math.exp(lp) for _, lp in entry.top) == pytest.approx(1.0, abs=1e-4)
        assert state.accept(token)
    assert len(allowed_tokens(engine.grammars.state(spec), vocab)) < 20  # the first step did list them all


def test_prompt_logprobs_cover_the_prompt_after_its_first_token(engine, prompt) -> None:
    got = collect(engine, prompt, SamplingParams(max_tokens=3, temperature=0.0, prompt_logprobs=2), "prompt")
    assert got.prompt_logprobs is not None and got.outputs_with_prompt_logprobs == 1  # on the first output only
    assert len(got.prompt_logprobs) == len(prompt) - 1
    assert [e.token_id for e in got.prompt_logprobs] == prompt[1:]
    for entry in got.prompt_logprobs:
        check_top(entry, 2)
        listed = dict(entry.top)
        if entry.token_id in listed:
            assert entry.logprob == listed[entry.token_id]
        else:
            assert entry.logprob <= entry.top[-1][1]
    assert got.logprobs == []  # only the prompt's were asked


def test_prompt_logprobs_do_not_depend_on_chunked_prefill(make_engine, engine, prompt) -> None:
    whole = collect(engine, prompt, SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=3), "whole")
    chunked = collect(make_engine(max_num_batched_tokens=7), prompt,
                      SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=3), "chunked")
    assert whole.prompt_logprobs is not None and chunked.prompt_logprobs is not None
    assert [e.token_id for e in chunked.prompt_logprobs] == [e.token_id for e in whole.prompt_logprobs]
    for a, b in zip(whole.prompt_logprobs, chunked.prompt_logprobs, strict=True):
        assert abs(a.logprob - b.logprob) < TOLERANCE and [t for t, _ in a.top] == [t for t, _ in b.top]


def test_prompt_logprobs_after_a_preemption_are_not_repeated(make_engine, engine, prompt) -> None:
    """A request preempted mid-prompt recomputes (and rescores) from its start: each position once."""
    whole = collect(engine, prompt, SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=3), "once")
    chunked = make_engine(max_num_batched_tokens=7)
    chunked.add_request("pre", prompt, SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=3))
    chunked.step()
    chunked.step()  # 14 prompt positions scored
    req = chunked.requests["pre"]
    assert len(req.prompt_logprobs) == 14
    chunked.scheduler.running.remove(req)  # what the scheduler does to its newest request when the pool is full
    chunked.scheduler._preempt(req)
    scored = None
    while chunked.has_unfinished():
        for out in chunked.step():
            scored = out.prompt_logprobs or scored
    assert req.num_preemptions == 1 and scored is not None
    assert [e.token_id for e in scored] == [e.token_id for e in whole.prompt_logprobs] == prompt[1:]


def test_a_prompt_logprobs_request_skips_the_prefix_cache(make_engine) -> None:
    engine = make_engine()
    prompt = engine.tokenizer.apply_chat_template([ChatMessage("user", "Tell me about the history of printing.")])
    plain = SamplingParams(max_tokens=2, temperature=0.0)
    assert collect(engine, prompt, plain, "a").num_cached_tokens == 0
    assert collect(engine, prompt, plain, "b").num_cached_tokens >= len(prompt) - engine.config.block_size > 0
    scored = collect(engine, prompt, SamplingParams(max_tokens=2, temperature=0.0, prompt_logprobs=1), "c")
    assert scored.num_cached_tokens == 0
    assert scored.prompt_logprobs is not None and len(scored.prompt_logprobs) == len(prompt) - 1
    assert collect(engine, prompt, plain, "d").num_cached_tokens > 0  # the cache is still there for the others


def test_logprobs_beside_requests_that_do_not_ask(make_engine, prompt, greedy: Collected) -> None:
    """Rows that ask and rows that do not share a step; each gets what it asked for, unchanged."""
    engine = make_engine()
    other = engine.tokenizer.apply_chat_template([ChatMessage("user", "Name three colors.")])
    engine.add_request("plain", other, SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True))
    engine.add_request("asks", prompt, SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True, logprobs=5))
    got: dict[str, list] = {"plain": [], "asks": []}
    while engine.has_unfinished():
        for out in engine.step():
            got[out.request_id] += out.logprobs if out.logprobs is not None else [None]
    assert got["plain"] == [None] * 12
    assert [e.token_id for e in got["asks"]] == greedy.token_ids
    assert all(abs(a.logprob - b.logprob) < TOLERANCE for a, b in zip(got["asks"], greedy.logprobs, strict=True))


@pytest.mark.parametrize("field_name", ["logprobs", "prompt_logprobs"])
def test_logprob_counts_are_bounded(field_name: str) -> None:
    SamplingParams(**{field_name: 0})
    SamplingParams(**{field_name: 20})
    for bad in (-1, 21):
        with pytest.raises(RequestError, match=field_name):
            SamplingParams(**{field_name: bad})
