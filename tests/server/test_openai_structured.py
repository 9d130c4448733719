"""Structured output, log-probabilities and tools on the OpenAI API, driven by the official `openai` client
against a real server: `chat.completions.parse` with Pydantic models (20 concurrent sampled requests per
schema, all valid), `json_object`, vLLM's `guided_*`, grammar errors as 400s, chat and completions
log-probabilities (checked against the engine's own prompt scoring), and forced, named and answered tool calls."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from enum import StrEnum

import httpx
import openai
import pytest
from pydantic import BaseModel, Field

from appliance.config import Settings
from appliance.engine.async_engine import AsyncEngine
from appliance.server.app import create_app
from tests.server.conftest import served

CONCURRENT = 20
TOLERANCE = 2e-4  # float32 (the `exact` server): a decode step and a prompt pass sum in different orders


@pytest.fixture(scope="module")
def base_url(make_engine, tmp_path_factory) -> Iterator[str]:
    """The serving configuration's decode path (Q4 weights through the int4 kernel, bf16 activations, for steps
    of at most 32 tokens): 20 concurrent requests decode 4x faster than in dense float32 on a CPU."""
    engine = make_engine(max_num_seqs=CONCURRENT + 4, int4_decode_tokens=32)
    settings = Settings(data_dir=tmp_path_factory.mktemp("srv"), max_queue=CONCURRENT + 4)
    with served(create_app(settings, AsyncEngine(engine, max_queue=CONCURRENT + 4), "smollm2")) as url:
        yield url


@pytest.fixture(scope="module")
def exact_url(make_engine, tmp_path_factory) -> Iterator[str]:
    """The reference engine (dense float32 in every step) for the log-probability checks: a decode step and a
    prompt pass then agree to float32 rounding (the int4 path's bf16 activations move them by ~0.1)."""
    settings = Settings(data_dir=tmp_path_factory.mktemp("exact"), max_queue=4)
    with served(create_app(settings, AsyncEngine(make_engine(), max_queue=4), "smollm2")) as url:
        yield url


def _client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=300)


@pytest.fixture(scope="module")
def client(base_url: str) -> Iterator[openai.OpenAI]:
    with _client(base_url) as c:
        yield c


@pytest.fixture(scope="module")
def exact(exact_url: str) -> Iterator[openai.OpenAI]:
    with _client(exact_url) as c:
        yield c


# --- chat.completions.parse with Pydantic models ---------------------------------------------------------------

class Role(StrEnum):
    admin = "admin"
    editor = "editor"
    viewer = "viewer"


class Employee(BaseModel):
    """Flat: a bounded string, an Enum, an int with bounds, a bool."""

    name: str = Field(max_length=16)
    role: Role
    age: int = Field(ge=18, le=65)
    remote: bool


class Address(BaseModel):
    city: str = Field(max_length=16)
    postcode: int = Field(ge=10000, le=99999)


class Customer(BaseModel):
    """Nested objects."""

    name: str = Field(max_length=16)
    address: Address
    vip: bool


class Item(BaseModel):
    sku: str = Field(max_length=8)
    qty: int = Field(ge=1, le=9)


class Order(BaseModel):
    """An array of objects, bounded."""

    items: list[Item] = Field(min_length=1, max_length=3)
    note: str = Field(max_length=20)


class Reading(BaseModel):
    """Numbers with bounds."""

    celsius: float = Field(ge=-40, le=50)
    humidity: int = Field(ge=0, le=100)
    pressure: float = Field(gt=900, lt=1100)


SCHEMAS = [(Employee, "Describe a fictional employee of a bakery."),
           (Customer, "Describe a customer of a bike shop."),
           (Order, "Write an order for a stationery shop."),
           (Reading, "Give a weather station reading for a cold day.")]


MAX_TOKENS = 160


SEEDS = list(range(20))


@pytest.mark.parametrize(("model", "ask"), SCHEMAS, ids=[m.__name__ for m, _ in SCHEMAS])
def test_parse_gives_a_valid_instance_every_time(client: openai.OpenAI, model: type[BaseModel], ask: str) -> None:
    """20 sampled requests at once (20 seeds, batched by the engine): every one parses into the model with its
    bounds (the client raises on invalid JSON, a failed validation or a `length` finish)."""
    def one(seed: int) -> BaseModel:
        resp = client.chat.completions.parse(
            model="smollm2", temperature=0.7, seed=seed, max_tokens=MAX_TOKENS, response_format=model,
            messages=[{"role": "system", "content": "You reply in JSON."}, {"role": "user", "content": ask}])
        choice = resp.choices[0]
        assert choice.finish_reason == "stop" and choice.message.refusal is None
        assert isinstance(choice.message.parsed, model)
        assert model.model_validate_json(choice.message.content) == choice.message.parsed
        return choice.message.parsed

    with ThreadPoolExecutor(CONCURRENT) as pool:
        parsed = list(pool.map(one, SEEDS))
    assert len(parsed) == CONCURRENT
    assert len({p.model_dump_json() for p in parsed}) > CONCURRENT // 4  # the seeds really drew differently


# --- json_object, guided_*, grammar errors ---------------------------------------------------------------------

def test_json_object_gives_a_json_object(client: openai.OpenAI) -> None:
    resp = client.chat.completions.create(
        model="smollm2", temperature=0, max_tokens=120, response_format={"type": "json_object"},
        messages=[{"role": "user", "content": "Give me the capital of France as JSON."}])
    assert resp.choices[0].finish_reason == "stop"
    assert isinstance(json.loads(resp.choices[0].message.content), dict)


def test_guided_regex_and_choice(client: openai.OpenAI) -> None:
    ask = [{"role": "user", "content": "Is Paris in France?"}]
    regex = r"(Yes|No), [a-z]{2,8}\."
    for seed in range(3):
        resp = client.chat.completions.create(model="smollm2", temperature=1.0, seed=seed, max_tokens=20,
                                              messages=ask, extra_body={"guided_regex": regex})
        assert re.fullmatch(regex, resp.choices[0].message.content), resp.choices[0].message.content
        choices = ["oui", "non", "peut-être"]
        resp = client.chat.completions.create(model="smollm2", temperature=1.0, seed=seed, max_tokens=20,
                                              messages=ask, extra_body={"guided_choice": choices})
        assert resp.choices[0].message.content in choices and resp.choices[0].finish_reason == "stop"
    text = client.completions.create(model="smollm2", prompt="The answer is", temperature=0, max_tokens=10,
                                     extra_body={"guided_choice": ["42", "seven"]})
    assert text.choices[0].text in ("42", "seven")


def test_two_constraints_at_once_are_a_400(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="smollm2", max_tokens=5, response_format={"type": "json_object"},
                                       messages=[{"role": "user", "content": "hi"}],
                                       extra_body={"guided_regex": "[a-z]+"})
    assert caught.value.status_code == 400 and "at most one" in caught.value.message


@pytest.mark.parametrize(("extra", "reason"), [
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "bad", "schema": {
        "type": "object", "properties": {"a": {"type": "nonsense"}}}}}}, "cannot use this json schema: "),
    ({"extra_body": {"guided_json": {"type": "object", "properties": {"a": {"$ref": "#/$defs/missing"}}}}},
     "cannot use this json schema: "),
    ({"extra_body": {"guided_regex": "([a-z"}}, "cannot use this regex: "),
    ({"extra_body": {"guided_grammar": "root ::= undefined_rule"}}, "cannot use this ebnf: "),
], ids=["schema-type", "schema-ref", "regex", "ebnf"])
def test_an_invalid_grammar_is_a_400_with_the_reason(base_url: str, client: openai.OpenAI, extra: dict,
                                                     reason: str) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="smollm2", max_tokens=5, messages=[{"role": "user", "content": "hi"}],
                                       **extra)
    assert caught.value.status_code == 400
    error = caught.value.body
    assert isinstance(error, dict) and error["type"] == "invalid_request"
    assert error["message"].startswith(reason) and len(error["message"]) > len(reason)
    # the server is fine afterwards
    assert httpx.get(f"{base_url}/ready").status_code == 200


def test_an_invalid_schema_message_names_the_problem(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model="smollm2", max_tokens=5, messages=[{"role": "user", "content": "hi"}],
            response_format={"type": "json_schema", "json_schema": {"name": "bad", "schema": {
                "type": "object", "properties": {"a": {"type": "nonsense"}}}}})
    assert "nonsense" in caught.value.message


# --- log-probabilities ------------------------------------------------------------------------------------------

QUESTION = [{"role": "user", "content": "Explain photosynthesis in two sentences."}]  # a long answer: `length`


def check_entry(entry, width: int) -> None:
    """One chat logprobs entry: its alternatives descending, at most probability 1, bytes that spell them."""
    tops = entry.top_logprobs
    assert len(tops) == width
    values = [t.logprob for t in tops]
    assert values == sorted(values, reverse=True)
    assert sum(math.exp(v) for v in values) <= 1 + 1e-6
    for t in [entry, *tops]:
        assert t.logprob <= 0 and t.bytes is not None
        assert bytes(t.bytes).decode("utf-8", errors="replace") == t.token


def test_chat_logprobs_are_the_engines(exact_url: str, exact: openai.OpenAI) -> None:
    """Greedy: the chosen token is the top one, with the same log-probability; the chat route reports what the
    engine gives a completion of the same prompt tokens; and those are the model's log-probabilities at the
    answer's positions: scoring the chat prompt + the answer as an echoed completion gives them back."""
    resp = exact.chat.completions.create(model="smollm2", temperature=0, max_tokens=12, logprobs=True,
                                          top_logprobs=5, messages=QUESTION)
    assert resp.choices[0].finish_reason == "length"
    content = resp.choices[0].logprobs.content
    assert len(content) == resp.usage.completion_tokens == 12
    for entry in content:
        check_entry(entry, 5)
        assert (entry.token, entry.logprob) == (entry.top_logprobs[0].token, entry.top_logprobs[0].logprob)
    text = bytes(b for entry in content for b in entry.bytes).decode()
    assert text == resp.choices[0].message.content

    prompt = httpx.post(f"{exact_url}/tokenize", json={"messages": QUESTION}).json()["tokens"]
    assert len(prompt) == resp.usage.prompt_tokens
    same = exact.completions.create(model="smollm2", prompt=prompt, logprobs=5, max_tokens=12, temperature=0)
    lp = same.choices[0].logprobs
    assert same.choices[0].text == text and lp.tokens == [e.token for e in content]
    # the same decode, but its prompt now comes from the prefix cache, so its last token is computed in another
    # shape: CPUs whose matmul kernels depend on the shape (oneDNN with AMX) differ in the 7th digit
    assert max(abs(a - e.logprob) for a, e in zip(lp.token_logprobs, content, strict=True)) < TOLERANCE
    for top, e in zip(lp.top_logprobs, content, strict=True):
        assert list(top) == [t.token for t in e.top_logprobs]
        assert max(abs(top[t.token] - t.logprob) for t in e.top_logprobs) < TOLERANCE

    answer = httpx.post(f"{exact_url}/tokenize", json={"prompt": text, "add_special_tokens": False}).json()["tokens"]
    assert len(answer) == 12  # the answer re-encodes to as many tokens as were generated (checked by text below)
    scored = exact.completions.create(model="smollm2", prompt=prompt + answer, echo=True, logprobs=5,
                                       max_tokens=1, temperature=0)
    lp = scored.choices[0].logprobs
    assert lp.tokens[len(prompt):len(prompt) + 12] == [e.token for e in content]
    rescored = lp.token_logprobs[len(prompt):len(prompt) + 12]
    assert max(abs(e.logprob - v) for e, v in zip(content, rescored, strict=True)) < TOLERANCE
    for entry, top in zip(content, lp.top_logprobs[len(prompt):], strict=False):
        assert list(top) == [t.token for t in entry.top_logprobs]
        assert max(abs(top[t.token] - t.logprob) for t in entry.top_logprobs) < TOLERANCE


def test_sampled_chat_logprobs_are_of_the_drawn_tokens(exact: openai.OpenAI) -> None:
    resp = exact.chat.completions.create(model="smollm2", temperature=1.0, seed=3, max_tokens=16, logprobs=True,
                                          top_logprobs=3, messages=QUESTION)
    assert resp.choices[0].finish_reason == "length"
    content = resp.choices[0].logprobs.content
    assert bytes(b for e in content for b in e.bytes).decode() == resp.choices[0].message.content
    assert any(e.token != e.top_logprobs[0].token for e in content)  # really drawn, not the argmax everywhere
    for entry in content:
        check_entry(entry, 3)
        assert entry.logprob <= entry.top_logprobs[0].logprob
        listed = {t.token: t.logprob for t in entry.top_logprobs}
        assert listed.get(entry.token, entry.logprob) == entry.logprob


def test_logprobs_without_top_logprobs_and_without_logprobs(exact: openai.OpenAI) -> None:
    bare = exact.chat.completions.create(model="smollm2", temperature=0, max_tokens=6, logprobs=True,
                                          messages=QUESTION)
    assert all(e.top_logprobs == [] for e in bare.choices[0].logprobs.content)
    assert len(bare.choices[0].logprobs.content) == bare.usage.completion_tokens
    none = exact.chat.completions.create(model="smollm2", temperature=0, max_tokens=6, messages=QUESTION)
    assert none.choices[0].logprobs is None


def test_an_answer_that_ends_has_no_logprob_for_its_end_of_turn_token(exact: openai.OpenAI) -> None:
    resp = exact.chat.completions.create(model="smollm2", temperature=0, max_tokens=200, logprobs=True,
                                         messages=[{"role": "user", "content": "Say hello."}])
    assert resp.choices[0].finish_reason == "stop"
    content = resp.choices[0].logprobs.content
    assert bytes(b for e in content for b in e.bytes).decode() == resp.choices[0].message.content
    assert "<|im_end|>" not in [e.token for e in content]


def test_streamed_chat_chunks_carry_their_logprobs(exact: openai.OpenAI) -> None:
    kwargs = dict(model="smollm2", temperature=0, max_tokens=10, logprobs=True, top_logprobs=2, messages=QUESTION)
    whole = exact.chat.completions.create(**kwargs).choices[0].logprobs.content
    chunks = [c for c in exact.chat.completions.create(stream=True, **kwargs) if c.choices]
    streamed = [e for c in chunks if c.choices[0].logprobs for e in c.choices[0].logprobs.content]
    assert sum(1 for c in chunks if c.choices[0].logprobs) > 3  # spread over the chunks, not at the end
    assert [(e.token, e.logprob) for e in streamed] == [(e.token, e.logprob) for e in whole]
    assert [[t.token for t in e.top_logprobs] for e in streamed] == [[t.token for t in e.top_logprobs] for e in whole]
    content = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert content == bytes(b for e in streamed for b in e.bytes).decode()


def test_completion_logprobs_with_echo(exact_url: str, exact: openai.OpenAI) -> None:
    prompt = "The capital of France is"
    n_prompt = len(httpx.post(f"{exact_url}/tokenize", json={"prompt": prompt}).json()["tokens"])
    resp = exact.completions.create(model="smollm2", prompt=prompt, echo=True, logprobs=3, max_tokens=6,
                                     temperature=0)
    choice = resp.choices[0]
    lp = choice.logprobs
    assert choice.text.startswith(prompt) and len(choice.text) > len(prompt)
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) \
        == n_prompt + resp.usage.completion_tokens
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None  # nothing predicts the first token
    assert all(v is not None and v <= 0 for v in lp.token_logprobs[1:])
    assert "".join(lp.tokens) == choice.text
    assert lp.text_offset[0] == 0 and lp.text_offset[n_prompt] == len(prompt)
    for i in range(len(lp.tokens)):
        assert choice.text[lp.text_offset[i]:].startswith(lp.tokens[i])
    for top in lp.top_logprobs[1:]:
        assert 1 <= len(top) <= 3 and sum(math.exp(v) for v in top.values()) <= 1 + 1e-6
    # greedy: each generated token is its position's best
    for token, value, top in zip(lp.tokens[n_prompt:], lp.token_logprobs[n_prompt:], lp.top_logprobs[n_prompt:],
                                 strict=True):
        assert max(top.values()) == value and top[token] == value
    # without echo: the generated part alone, the same values, offsets from 0
    plain = exact.completions.create(model="smollm2", prompt=prompt, logprobs=3, max_tokens=6, temperature=0)
    assert plain.choices[0].logprobs.tokens == lp.tokens[n_prompt:]
    assert plain.choices[0].logprobs.text_offset[0] == 0
    assert all(abs(a - b) < TOLERANCE for a, b in zip(plain.choices[0].logprobs.token_logprobs,
                                                        lp.token_logprobs[n_prompt:], strict=True))


def test_streamed_completion_echo_offsets_follow_the_text(exact: openai.OpenAI) -> None:
    prompt = "The capital of France is"
    chunks = list(exact.completions.create(model="smollm2", prompt=prompt, echo=True, logprobs=2, max_tokens=6,
                                            temperature=0, stream=True))
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    tokens = [t for c in chunks if c.choices and c.choices[0].logprobs for t in c.choices[0].logprobs.tokens]
    offsets = [o for c in chunks if c.choices and c.choices[0].logprobs for o in c.choices[0].logprobs.text_offset]
    assert text.startswith(prompt) and "".join(tokens) == text
    for token, offset in zip(tokens, offsets, strict=True):
        assert text[offset:].startswith(token), (token, offset)


# --- tools -----------------------------------------------------------------------------------------------------

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The current weather in a city.",
    "parameters": {"type": "object", "properties": {
        "city": {"type": "string", "maxLength": 20},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
        "required": ["city", "unit"], "additionalProperties": False}}}
TIME = {"type": "function", "function": {
    "name": "get_time", "description": "The current time in a timezone.",
    "parameters": {"type": "object", "properties": {"timezone": {"type": "string", "maxLength": 24}},
                   "required": ["timezone"], "additionalProperties": False}}}
ASK_WEATHER = [{"role": "user", "content": "What is the weather like in Paris?"}]


def check_weather_args(arguments: str) -> dict:
    args = json.loads(arguments)
    assert set(args) == {"city", "unit"}
    assert isinstance(args["city"], str) and len(args["city"]) <= 20 and args["unit"] in ("celsius", "fahrenheit")
    return args


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_tool_choice_required_forces_a_valid_call(client: openai.OpenAI, seed: int) -> None:
    resp = client.chat.completions.create(model="smollm2", temperature=0.8, seed=seed, max_tokens=100,
                                          messages=ASK_WEATHER, tools=[WEATHER, TIME], tool_choice="required")
    choice = resp.choices[0]
    assert choice.finish_reason == "tool_calls"
    [call] = choice.message.tool_calls
    assert call.type == "function" and call.id.startswith("call_")
    if call.function.name == "get_weather":
        check_weather_args(call.function.arguments)
    else:
        assert call.function.name == "get_time"
        args = json.loads(call.function.arguments)
        assert set(args) == {"timezone"} and len(args["timezone"]) <= 24


def test_a_named_tool_choice_calls_that_function(client: openai.OpenAI) -> None:
    """Even the function the question does not fit: the weather question must call get_time when it is named
    (with "required", it calls get_weather)."""
    for name in ("get_weather", "get_time"):
        resp = client.chat.completions.create(
            model="smollm2", temperature=0, max_tokens=100, messages=ASK_WEATHER, tools=[TIME, WEATHER],
            tool_choice={"type": "function", "function": {"name": name}})
        choice = resp.choices[0]
        assert choice.finish_reason == "tool_calls" and not choice.message.content
        [call] = choice.message.tool_calls
        assert call.function.name == name
        if name == "get_weather":
            check_weather_args(call.function.arguments)
        else:
            assert set(json.loads(call.function.arguments)) == {"timezone"}
    free = client.chat.completions.create(model="smollm2", temperature=0, max_tokens=100, messages=ASK_WEATHER,
                                          tools=[TIME, WEATHER], tool_choice="required")
    assert free.choices[0].message.tool_calls[0].function.name == "get_weather"


def test_a_forced_call_streams_as_a_tool_calls_delta(client: openai.OpenAI) -> None:
    chunks = [c for c in client.chat.completions.create(
        model="smollm2", temperature=0, max_tokens=100, messages=ASK_WEATHER, tools=[WEATHER], stream=True,
        tool_choice={"type": "function", "function": {"name": "get_weather"}}) if c.choices]
    deltas = [d for c in chunks for d in (c.choices[0].delta.tool_calls or [])]
    assert len(deltas) == 1 and deltas[0].index == 0 and deltas[0].function.name == "get_weather"
    check_weather_args(deltas[0].function.arguments)
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_tool_choice_naming_an_unknown_function_is_a_400(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="smollm2", max_tokens=5, messages=ASK_WEATHER, tools=[WEATHER],
                                       tool_choice={"type": "function", "function": {"name": "get_stock_price"}})
    assert caught.value.status_code == 400 and "get_stock_price" in caught.value.message


def test_a_conversation_with_a_tool_result_is_answered(client: openai.OpenAI) -> None:
    first = client.chat.completions.create(model="smollm2", temperature=0, max_tokens=100, messages=ASK_WEATHER,
                                           tools=[WEATHER], tool_choice="required")
    call = first.choices[0].message.tool_calls[0]
    messages = [*ASK_WEATHER,
                {"role": "assistant", "content": None, "tool_calls": [
                    {"id": call.id, "type": "function",
                     "function": {"name": call.function.name, "arguments": call.function.arguments}}]},
                {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"temperature": 21, "sky": "sunny"})}]
    resp = client.chat.completions.create(model="smollm2", temperature=0, max_tokens=40, messages=messages,
                                          tools=[WEATHER])
    choice = resp.choices[0]
    assert choice.finish_reason in ("stop", "length", "tool_calls")
    assert choice.message.content or choice.message.tool_calls
    assert resp.usage.prompt_tokens > first.usage.prompt_tokens  # the call and its result are in the prompt
    # the same conversation without tools offered is accepted too, and answered in text
    plain = client.chat.completions.create(model="smollm2", temperature=0, max_tokens=40, messages=messages)
    assert plain.choices[0].message.content and plain.choices[0].message.tool_calls is None
