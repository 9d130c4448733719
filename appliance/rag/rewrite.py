"""A follow-up question rewritten into a standalone retrieval query.

Retrieval runs on one query, but a follow-up ("what is its default?") names nothing. `FollowUpRewriter.rewrite`
turns (the conversation's recent turns, the new question) into the query retrieval searches for:

- no prior turns: the question as asked (`method="none"`);
- under the policies that ask the engine ("model", "model+terms"), the engine rewrites it (the chat template,
  the last `MAX_TURNS` turns with answers cut to `ANSWER_WORDS` words, greedy, at most `max_tokens` tokens,
  stopped at the first newline); a rewrite that passes `check_rewrite` is the query, under "model+terms" with
  the earlier questions' key terms it dropped appended (`method="model"`);
- under the default policy ("fallback"), or when the rewrite is empty, unusable or the engine fails: the
  deterministic fallback (`fallback_query`), the last `FALLBACK_QUESTIONS` questions joined with the follow-up
  (`method="fallback"`).

The policy (`POLICIES`) was chosen by `appliance bench followups` (docs/BENCHMARKS.md, "Conversations:
follow-up retrieval"). `rewrite` never raises for an engine error: it falls back.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from appliance.engine.outputs import RequestOutput
from appliance.engine.sampling import SamplingParams
from appliance.engine.tokenizer import ChatMessage, TextTokenizer
from appliance.errors import ApplianceError

log = logging.getLogger(__name__)

MAX_TURNS = 3  # prior turns shown to the model
ANSWER_WORDS = 30  # each shown answer cut to this many words
FALLBACK_QUESTIONS = 2  # prior questions the fallback (and the kept terms) draw from
Policy = Literal["model", "model+terms", "fallback"]
# "model": the checked rewrite as is; "model+terms": plus the earlier questions' key terms it lacks;
# "fallback": never ask the engine
POLICIES: tuple[Policy, ...] = ("model", "model+terms", "fallback")
# measured by `appliance bench followups` (32 hand-written follow-ups over python3.11-doc, hybrid search, k=5):
# the fallback found every answering page, at rank 1 (as asked: 19/32 in the top 5; the 135M model's rewrite
# alone: 28/32, as it mostly answers the question instead of rewriting it); the rewrite plus the fallback's terms
# did exactly as well for ~0.3 s median (0.8 s p90) on 2 cores: the fallback, with no engine call, is the default
DEFAULT_POLICY: Policy = "fallback"

SYSTEM = ("Rewrite the user's follow-up question as a standalone question that names what it is about. "
          "Reply with the question only.")
# worked examples shown as earlier exchanges: (question, answer, follow-up, rewrite), over modules outside the
# benchmark's set; chosen on a separate handful of dev follow-ups, never on bench/data/pydoc_followups.json
EXAMPLES = (
    ("What does gzip.open do?", "It opens a gzip-compressed file and returns a file object.",
     "what compression level does it use by default?", "What compression level does gzip.open use by default?"),
    ("What is the array module?", "It defines arrays of basic numeric values.",
     "and how do I add an item to one?", "How do I add an item to an array from the array module?"),
    ("What does shlex.split do?", "It splits a string using shell-like syntax.",
     "Does it keep the quotes?", "Does shlex.split keep the quotes?"),
)
_LABELS = re.compile(r"^(?:standalone question|rewritten question|rewritten|question|query|q)\s*:\s*", re.I)
_ECHO = ("<|", "previous question", "previous answer", "follow-up:")
_WORD = re.compile(r"[A-Za-z_][\w.]*\w|\w+")
STOPWORDS = frozenset("""
a about after again all also am an and any are as at be been being but by can could did do does doing done for from
get gets had has have having he her here his how i if in into is it its it's itself just let me might more most my
no not of on once one only or other our out over own same she should so some such than that the their them then
there these they this those through to too under until up use used using very was way we were what when where which
while who whom why will with would you your yours thing things something anything instead ways
""".split())


@dataclass(frozen=True)
class PriorTurn:
    question: str
    answer: str


@dataclass(frozen=True)
class Rewrite:
    query: str  # what retrieval searches for
    method: str  # "none" (no prior turns: the question as asked), "model" (the engine's rewrite), "fallback"
    ms: float  # time spent rewriting (0 for "none")


class RewriteEngine(Protocol):
    """What the rewriter needs of an engine (`appliance.engine.front.EngineFront` has it)."""

    tokenizer: TextTokenizer

    def generate(self, prompt: list[int], params: SamplingParams) -> AsyncIterator[RequestOutput]: ...


def words(text: str) -> list[str]:
    """Lower-cased words of `text`; dotted names (`json.dumps`) stay whole."""
    return [w.lower().strip(".") for w in _WORD.findall(text)]


def key_terms(text: str) -> list[str]:
    """The words of `text` that are not stop words, in order, each once."""
    return list(dict.fromkeys(w for w in words(text) if w not in STOPWORDS and len(w) > 1))


def _cut(text: str, limit: int) -> str:
    parts = text.split()
    return " ".join(parts[:limit]) + (" ..." if len(parts) > limit else "")


def _exchange(turns: Sequence[tuple[str, str]], question: str) -> str:
    lines = [f"Previous question: {_cut(q, 60)}\nPrevious answer: {_cut(a, ANSWER_WORDS)}" for q, a in turns]
    return "\n".join([*lines, f"Follow-up: {_cut(question, 60)}"])


def rewrite_messages(history: Sequence[PriorTurn], question: str) -> list[ChatMessage]:
    """The chat the engine completes: the instruction, the worked examples, then the last `MAX_TURNS` turns
    (answers cut to `ANSWER_WORDS` words) and the follow-up."""
    messages = [ChatMessage("system", SYSTEM)]
    for q, a, follow_up, rewrite in EXAMPLES:
        messages += [ChatMessage("user", _exchange([(q, a)], follow_up)), ChatMessage("assistant", rewrite)]
    turns = [(t.question, t.answer) for t in history[-MAX_TURNS:]]
    return [*messages, ChatMessage("user", _exchange(turns, question))]


def fallback_query(history: Sequence[PriorTurn], question: str) -> str:
    """The deterministic query: the last `FALLBACK_QUESTIONS` prior questions, then the follow-up."""
    return " ".join([t.question.strip() for t in history[-FALLBACK_QUESTIONS:]] + [question.strip()])


def clean_rewrite(text: str) -> str:
    """The model's line without a label ("Question: ...") or surrounding quotes."""
    text = _LABELS.sub("", text.strip().splitlines()[0].strip() if text.strip() else "")
    return text.strip().strip("\"'`").strip()


def check_rewrite(rewrite: str, history: Sequence[PriorTurn], question: str) -> str | None:
    """Why `rewrite` is unusable as a query (None: usable): empty, far too long, an echo of the prompt or of an
    answer, or sharing no word with the question and the prior turns."""
    said = words(rewrite)
    if not said:
        return "empty"
    asked = words(question) + [w for t in history[-FALLBACK_QUESTIONS:] for w in words(t.question)]
    if len(said) > 2 * len(asked) + 8:
        return "too long"
    lowered = rewrite.lower()
    if any(mark in lowered for mark in _ECHO):
        return "echoes the prompt"
    if len(said) >= 8 and any(lowered in t.answer.lower() for t in history):
        return "copies an answer"
    seen = set(key_terms(question)).union(*(key_terms(f"{t.question} {t.answer}") for t in history[-MAX_TURNS:]))
    if not seen.intersection(key_terms(rewrite)):
        return "unrelated to the conversation"
    return None


def with_terms(rewrite: str, history: Sequence[PriorTurn]) -> str:
    """`rewrite` plus the key terms of the last `FALLBACK_QUESTIONS` prior questions that it does not contain."""
    have = set(words(rewrite))
    missing = [w for t in history[-FALLBACK_QUESTIONS:] for w in key_terms(t.question) if w not in have]
    return " ".join([rewrite, *dict.fromkeys(missing)])


def choose_query(policy: Policy, rewrite: str | None, history: Sequence[PriorTurn], question: str
                 ) -> tuple[str, str]:
    """(query, method) under `policy` given the engine's cleaned rewrite (None: the engine was not asked or
    failed): the checked rewrite ("model"), with the earlier key terms under "model+terms", else the fallback."""
    if policy != "fallback" and rewrite is not None:
        reason = check_rewrite(rewrite, history, question)
        if reason is None:
            return (with_terms(rewrite, history) if policy == "model+terms" else rewrite), "model"
        log.info("follow-up rewrite %r rejected (%s), using the fallback", rewrite, reason)
    return fallback_query(history, question), "fallback"


class FollowUpRewriter:
    """Turns a follow-up into a standalone retrieval query with the engine itself; safe to share between
    requests (it holds no per-request state)."""

    def __init__(self, engine: RewriteEngine, max_tokens: int = 48, *, policy: Policy = DEFAULT_POLICY) -> None:
        if policy not in POLICIES:
            raise ValueError(f"policy must be one of {', '.join(POLICIES)}")
        self.engine = engine
        self.max_tokens = max_tokens
        self.policy = policy

    async def model_rewrite(self, history: Sequence[PriorTurn], question: str) -> str:
        """The engine's rewrite, cleaned but unchecked ("" when it produced nothing). Raises what the engine
        raises (ApplianceError)."""
        prompt = self.engine.tokenizer.apply_chat_template(rewrite_messages(history, question))
        params = SamplingParams(max_tokens=self.max_tokens, temperature=0.0, stop=("\n",))
        text = ""
        async for out in self.engine.generate(prompt, params):
            text += out.text
        return clean_rewrite(text)

    async def rewrite(self, history: list[PriorTurn], question: str) -> Rewrite:
        """The query retrieval should search for `question` asked after `history` (oldest turn first)."""
        if not history:
            return Rewrite(question, "none", 0.0)
        started = time.perf_counter()
        text: str | None = None
        if self.policy != "fallback":
            try:
                text = await self.model_rewrite(history, question)
            except ApplianceError as exc:
                log.warning("follow-up rewrite failed, using the fallback: %s", exc)
            except Exception:  # a rewrite only sharpens retrieval: the answer goes on without it
                log.exception("follow-up rewrite failed, using the fallback")
        query, method = choose_query(self.policy, text, history, question)
        return Rewrite(query, method, (time.perf_counter() - started) * 1000)


def phrasings(rewrite: Rewrite, question: str) -> list[str]:
    """What retrieval searches for (`RetrievalService.search_phrasings`): the query, and for a follow-up also
    the question as asked, so that a turn that changes the subject still finds its own passages (the query
    alone, carrying the earlier questions, would keep to the old subject)."""
    return [rewrite.query] if rewrite.method == "none" else [rewrite.query, question]
