"""The follow-up rewriter's policy: the question as asked without history, the engine's checked rewrite, and the
deterministic fallback whenever the engine fails or answers with something unusable; then the real model."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest

from appliance.engine.engine import LLMEngine
from appliance.engine.outputs import RequestOutput
from appliance.engine.sampling import SamplingParams
from appliance.engine.tokenizer import ChatMessage
from appliance.errors import QueueFullError
from appliance.rag.rewrite import (
    ANSWER_WORDS,
    MAX_TURNS,
    POLICIES,
    FollowUpRewriter,
    Policy,
    PriorTurn,
    Rewrite,
    fallback_query,
)

HISTORY = [PriorTurn("What does json.dumps do?", "It serializes an object to a JSON formatted string.")]
FOLLOW_UP = "and how do I make it sort the keys?"


class FakeTokenizer:
    def __init__(self) -> None:
        self.chats: list[list[ChatMessage]] = []

    def apply_chat_template(self, messages: list[ChatMessage], add_generation_prompt: bool = True) -> list[int]:
        self.chats.append(messages)
        return [1, 2, 3]


class FakeEngine:
    """Streams `reply` in two pieces, or raises `error`; records each request's sampling parameters."""

    def __init__(self, reply: str = "", error: Exception | None = None) -> None:
        self.tokenizer = FakeTokenizer()
        self.reply = reply
        self.error = error
        self.params: list[SamplingParams] = []

    async def generate(self, prompt: list[int], params: SamplingParams) -> AsyncIterator[RequestOutput]:
        self.params.append(params)
        if self.error is not None:
            raise self.error
        half = len(self.reply) // 2
        for i, text in enumerate((self.reply[:half], self.reply[half:])):
            yield RequestOutput("r", text, [], i == 1, "stop" if i == 1 else None, len(prompt), i + 1, 0)


def rewrite(engine: FakeEngine, history: list[PriorTurn] = HISTORY, question: str = FOLLOW_UP,
            policy: Policy = "model+terms", **kwargs: object) -> Rewrite:
    """`FollowUpRewriter.rewrite` under `policy` (one that asks the engine, unless a test says otherwise)."""
    rewriter = FollowUpRewriter(engine, policy=policy, **kwargs)  # type: ignore[arg-type]
    return asyncio.run(rewriter.rewrite(history, question))


@pytest.mark.parametrize("policy", POLICIES)
def test_a_first_question_is_searched_as_asked_without_the_engine(policy: Policy) -> None:
    engine = FakeEngine("What does json.dumps do?")
    assert rewrite(engine, [], policy=policy) == Rewrite(FOLLOW_UP, "none", 0.0)
    assert engine.params == []


def test_the_default_policy_is_the_measured_fallback() -> None:
    engine = FakeEngine("How do I sort the keys in json.dumps?")
    out = asyncio.run(FollowUpRewriter(engine).rewrite(HISTORY, FOLLOW_UP))  # type: ignore[arg-type]
    assert (out.query, out.method) == (fallback_query(HISTORY, FOLLOW_UP), "fallback") and engine.params == []


def test_a_good_rewrite_is_used_with_the_earlier_question_terms_it_lacks() -> None:
    engine = FakeEngine("How do I sort the keys in a JSON string?")
    out = rewrite(engine)
    assert out.method == "model" and out.ms > 0
    assert out.query == "How do I sort the keys in a JSON string? json.dumps"
    assert rewrite(FakeEngine("Question: How do I sort keys with json.dumps?"), policy="model").query == \
        "How do I sort keys with json.dumps?"  # label stripped; nothing to add under the plain policy


@pytest.mark.parametrize("reply", [
    "",  # empty
    "\n",  # nothing before the stop
    "Banana bread needs ripe bananas.",  # shares no word with the conversation
    "Previous question: What does json.dumps do? Follow-up: and how do I make it sort the keys?",  # echo
    " ".join(["json.dumps sort keys"] * 30),  # far too long
    "It serializes an object to a JSON formatted string.",  # the previous answer copied
])
def test_an_unusable_rewrite_falls_back(reply: str) -> None:
    out = rewrite(FakeEngine(reply))
    assert out.method == "fallback"
    assert out.query == "What does json.dumps do? and how do I make it sort the keys?" == fallback_query(HISTORY,
                                                                                                         FOLLOW_UP)


@pytest.mark.parametrize("error", [QueueFullError("full"), RuntimeError("the engine broke")])
def test_an_engine_error_falls_back_and_never_raises(error: Exception) -> None:
    out = rewrite(FakeEngine(error=error))
    assert (out.query, out.method) == (fallback_query(HISTORY, FOLLOW_UP), "fallback")


def test_the_fallback_policy_never_asks_the_engine() -> None:
    engine = FakeEngine("How do I sort the keys in json.dumps?")
    assert rewrite(engine, policy="fallback").method == "fallback" and engine.params == []
    with pytest.raises(ValueError):
        FollowUpRewriter(engine, policy="always")  # type: ignore[arg-type]


def test_the_prompt_is_a_chat_of_the_last_turns_and_decoding_is_greedy_to_the_first_newline() -> None:
    history = [PriorTurn(f"What does mod{i}.func do?", " ".join(["word"] * 100)) for i in range(5)]
    history.append(PriorTurn("What is pathlib.Path?", "A class for paths."))
    engine = FakeEngine("How do I list a directory with pathlib.Path?")
    assert rewrite(engine, history, "How do I list a directory with it?", max_tokens=20).method == "model"
    (params,) = engine.params
    assert params.greedy and params.max_tokens == 20 and "\n" in params.stop
    (chat,) = engine.tokenizer.chats
    assert chat[0].role == "system" and chat[-1].role == "user"
    task = chat[-1].content
    shown = [t for t in history if t.question in task]
    assert shown == history[-MAX_TURNS:]
    assert task.endswith("How do I list a directory with it?")
    longest = max(len(line.split()) for line in task.splitlines() if line.startswith("Previous answer:"))
    assert longest <= ANSWER_WORDS + 3  # label, words, ellipsis


def test_the_fallback_keeps_the_last_two_questions() -> None:
    history = [PriorTurn("What is zipfile.ZipFile?", "a"), PriorTurn("How do I open one?", "b"),
               PriorTurn("And write to it?", "c")]
    assert fallback_query(history, "what about a password?") == \
        "How do I open one? And write to it? what about a password?"


def test_the_real_model_names_the_function_and_is_deterministic(make_engine: Callable[..., LLMEngine]) -> None:
    from appliance.engine.async_engine import AsyncEngine

    engine = AsyncEngine(make_engine())
    try:
        rewriter = FollowUpRewriter(engine, policy="model+terms")

        async def twice() -> list[tuple[str, Rewrite]]:
            return [(await rewriter.model_rewrite(HISTORY, FOLLOW_UP), await rewriter.rewrite(HISTORY, FOLLOW_UP))
                    for _ in range(2)]

        (raw, first), (raw_again, second) = asyncio.run(twice())
    finally:
        engine.close()
    assert raw and raw == raw_again
    assert first.method in ("model", "fallback") and "json.dumps" in first.query
    assert (second.query, second.method) == (first.query, first.method)
