"""Grammar-constrained decoding: what a request's output must match, compiled once per grammar.

A `GrammarSpec` is plain data (it crosses to the engine process inside `SamplingParams`); the engine's
`GrammarCompiler` turns it into a compiled grammar (cached: a schema is compiled once, ~5 ms) and gives each
request its own `GrammarState`. Each step `GrammarMasks` fills the rows of the step's constrained requests into
one bitmask and applies it on the logits' device in one call; after sampling the engine advances each state by
the token drawn. The library is xgrammar, except for JSON schemas that bound a string's length, which llguidance
handles far faster (`grammar_llguidance.py`); both are imported on first use: a server that never sees a
grammar never loads them.
"""

from __future__ import annotations

import json
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol

import torch

from appliance.engine.grammar_llguidance import LlguidanceGrammars, bounds_string_length
from appliance.errors import RequestError

if TYPE_CHECKING:
    import xgrammar

    from appliance.engine.tokenizer import TextTokenizer

GrammarKind = Literal["json_object", "json_schema", "regex", "choice", "ebnf"]


@dataclass(frozen=True)
class GrammarSpec:
    """What the output must be: `json_object` (any JSON object; `source` unused), `json_schema` (`source`: the
    schema as JSON text), `regex`, `choice` (`source`: a JSON list of the allowed strings) or `ebnf` (xgrammar's
    EBNF, root rule `root`)."""

    kind: GrammarKind
    source: str = ""

    @classmethod
    def json_schema(cls, schema: dict[str, Any]) -> GrammarSpec:
        return cls("json_schema", json.dumps(schema))

    @classmethod
    def choice(cls, options: list[str]) -> GrammarSpec:
        return cls("choice", json.dumps(options))


class GrammarState(Protocol):
    """One request's position in its grammar."""

    def fill(self, bitmask: torch.Tensor, row: int) -> None:
        """bitmask: [N, ceil(V/32)] int32 on the CPU; row `row` set to the tokens the grammar allows next."""

    def accept(self, token_id: int) -> bool:
        """Advance by the token drawn; False if the grammar does not allow it (it cannot, when drawn under the
        mask, except where a request ignores end-of-sequence past the grammar's end)."""

    @property
    def finished(self) -> bool:
        """The output is complete: the grammar has reached its end."""


class CompiledGrammar(Protocol):
    def new_state(self) -> GrammarState:
        """A fresh state at the grammar's start, for one request."""


def xgrammar_compiler(tokenizer: TextTokenizer, vocab_size: int) -> xgrammar.GrammarCompiler:
    """xgrammar's compiler over the tokenizer's vocabulary (its own cache off: ours is `GrammarCompiler`'s)."""
    import xgrammar as xgr

    encoding = {"byte_level": xgr.VocabType.BYTE_LEVEL, "byte_fallback": xgr.VocabType.BYTE_FALLBACK,
                "raw": xgr.VocabType.RAW}[tokenizer.vocabulary_encoding]
    vocab = [tokenizer.id_to_token(i) or "" for i in range(tokenizer.vocab_size)]
    info = xgr.TokenizerInfo(vocab, encoding, vocab_size=vocab_size, stop_token_ids=sorted(tokenizer.stop_token_ids))
    return xgr.GrammarCompiler(info, max_threads=1, cache_enabled=False)


class GrammarCompiler:
    """Compiles `GrammarSpec`s for one tokenizer and vocabulary (the logits' width); keeps the last
    `cache_size` compiled grammars. A grammar the library refuses raises `RequestError` (HTTP 400) with its
    reason. A JSON schema with `minLength`/`maxLength` anywhere goes to llguidance, everything else to xgrammar."""

    def __init__(self, tokenizer: TextTokenizer, vocab_size: int, cache_size: int = 64) -> None:
        self._compiler = xgrammar_compiler(tokenizer, vocab_size)
        self._llguidance = LlguidanceGrammars(tokenizer, vocab_size)
        self._cache: OrderedDict[GrammarSpec, CompiledGrammar] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()  # a server checks grammars on worker threads
        self.vocab_size = vocab_size

    def compile(self, spec: GrammarSpec) -> CompiledGrammar:
        with self._lock:
            compiled = self._cache.get(spec)
            if compiled is None:
                schema = _parsed_schema(spec.source) if spec.kind == "json_schema" else None
                if bounds_string_length(schema):
                    compiled = self._llguidance.compile_json_schema(schema)
                else:
                    try:
                        compiled = XgrammarGrammar(self._compile(spec))
                    except (RuntimeError, ValueError, TypeError) as exc:  # xgrammar's errors for a bad grammar
                        raise RequestError(f"cannot use this {spec.kind.replace('_', ' ')}: {_reason(exc)}") from exc
                self._cache[spec] = compiled
                if len(self._cache) > self._cache_size:
                    self._cache.popitem(last=False)
            self._cache.move_to_end(spec)
            return compiled

    def state(self, spec: GrammarSpec) -> GrammarState:
        """A fresh state of `spec` for one request."""
        return self.compile(spec).new_state()

    def _compile(self, spec: GrammarSpec) -> xgrammar.CompiledGrammar:
        if spec.kind == "json_object":
            return self._compiler.compile_json_schema('{"type": "object"}', any_whitespace=False)
        if spec.kind == "json_schema":
            # compact JSON: whitespace the schema allows anywhere would let a small model loop on it
            return self._compiler.compile_json_schema(spec.source, any_whitespace=False)
        if spec.kind == "regex":
            return self._compiler.compile_regex(spec.source)
        if spec.kind == "choice":
            options = json.loads(spec.source)
            if not options or not all(isinstance(o, str) and o for o in options):
                raise ValueError("choices must be a non-empty list of non-empty strings")
            return self._compiler.compile_regex("|".join(re.escape(o) for o in options))
        return self._compiler.compile_grammar(spec.source)


def _parsed_schema(source: str) -> Any:
    try:
        return json.loads(source)
    except ValueError as exc:
        raise RequestError(f"cannot use this json schema: it is not JSON ({exc})") from exc


def _reason(exc: Exception) -> str:
    """xgrammar's message without its source location prefix (`[time] path/file.cc:123: `)."""
    text = str(exc).strip()
    return re.sub(r"^(\[[^\]]*\]\s*)?\S+\.(cc|h|py):\d+:\s*", "", text).splitlines()[0][:500] if text else repr(exc)


@dataclass(frozen=True)
class XgrammarGrammar:
    compiled: xgrammar.CompiledGrammar

    def new_state(self) -> _XgrammarState:
        import xgrammar as xgr

        return _XgrammarState(xgr.GrammarMatcher(self.compiled))


class _XgrammarState:
    """One request's position in an xgrammar grammar (the `GrammarState` contract)."""

    def __init__(self, matcher: xgrammar.GrammarMatcher) -> None:
        self.matcher = matcher

    def fill(self, bitmask: torch.Tensor, row: int) -> None:
        self.matcher.fill_next_token_bitmask(bitmask, row)

    def accept(self, token_id: int) -> bool:
        return bool(self.matcher.accept_token(token_id))

    @property
    def finished(self) -> bool:
        """The grammar has accepted its end (the stop token)."""
        return bool(self.matcher.is_terminated())


class GrammarMasks:
    """Applies the grammars of a step's rows to their logits, batched: one bitmask [N, ceil(V/32)] int32 filled
    on the CPU (xgrammar's matchers run there), then applied in one pass: on a GPU by xgrammar's kernel, on a
    CPU by adding each bitmask byte's row of a [256, 8] table of 0 / -inf (xgrammar's CPU kernel walks the
    bits: 2.4 ms for 16 rows of the embedded model's vocabulary that allow few tokens in `appliance bench
    structured`; the table took 0.7 ms in a one-off timing)."""

    def __init__(self, vocab_size: int) -> None:
        self.vocab_size = vocab_size
        self._bitmask: torch.Tensor | None = None  # [capacity, ceil(V/32)] int32, reused across steps

    def apply(self, logits: torch.Tensor, states: list[GrammarState | None]) -> None:
        """logits: [N, V] float32, rows with a state masked in place to the tokens their grammar allows."""
        rows = [i for i, s in enumerate(states) if s is not None and not s.finished]
        if not rows:
            return
        width = (self.vocab_size + 31) // 32
        if self._bitmask is None or self._bitmask.shape[0] < len(states):
            self._bitmask = torch.empty(max(len(states), 16), width, dtype=torch.int32)
        bitmask = self._bitmask[:len(states)]
        for i in rows:
            state = states[i]
            assert state is not None
            state.fill(bitmask, i)
        if logits.device.type == "cpu":
            _apply_on_cpu(logits, bitmask, rows)
            return
        import xgrammar as xgr

        device_mask = bitmask.to(logits.device, non_blocking=True)
        xgr.apply_token_bitmask_inplace(logits, device_mask, vocab_size=self.vocab_size, indices=rows)


# [256, 8] float32: for a bitmask byte (bit j = token 8b + j allowed, little-endian as an int32's bytes lie),
# 0 where its token is allowed, -inf where not
_BYTE_PENALTY = torch.where(((torch.arange(256)[:, None] >> torch.arange(8)) & 1).bool(), 0.0, float("-inf"))


def _apply_on_cpu(logits: torch.Tensor, bitmask: torch.Tensor, rows: list[int]) -> None:
    """logits: [N, V] += 0 / -inf per token of rows `rows`, from bitmask [N, ceil(V/32)] int32."""
    vocab = logits.shape[1]
    picked = bitmask if len(rows) == logits.shape[0] else bitmask[rows]  # [R, W]
    penalty = _BYTE_PENALTY[picked.view(torch.uint8).int()].view(len(rows), -1)[:, :vocab]  # [R, V]
    if len(rows) == logits.shape[0]:
        logits += penalty
    else:
        index = torch.tensor(rows)
        logits[index] += penalty
