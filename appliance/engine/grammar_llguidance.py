"""The second grammar library: llguidance, for JSON schemas that bound a string's length.

xgrammar (the engine's first choice, `grammar.py`) turns `minLength`/`maxLength` into a bounded repetition that
its precomputed token masks do not cover: such a schema compiles in ~190 ms instead of ~5 and a mask fill takes
up to several milliseconds as a string nears its bound (docs/BENCHMARKS.md, "Structured output"). llguidance
reads a string with a lexer and fills the same mask in ~0.1 ms. Both fill the same bitmask layout ([N,
ceil(V/32)] int32, bit j of word w = token 32w + j), so `GrammarMasks` applies either one's rows in one call.
llguidance is imported on first use.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from appliance.errors import RequestError

if TYPE_CHECKING:
    import llguidance

    from appliance.engine.tokenizer import TextTokenizer

# JSON written exactly as xgrammar writes it without free whitespace (`any_whitespace=False`): compact, with
# ", " between items and ": " after keys, so a schema gives the same text whichever library constrains it
JSON_OPTIONS: Any = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
_LENGTH_KEYWORDS = ("minLength", "maxLength")


def bounds_string_length(schema: Any) -> bool:
    """Whether any (sub)schema of `schema` sets `minLength` or `maxLength` (a JSON schema as parsed JSON)."""
    if isinstance(schema, dict):
        if any(isinstance(schema.get(k), int) for k in _LENGTH_KEYWORDS):
            return True
        return any(bounds_string_length(v) for v in schema.values())
    if isinstance(schema, list):
        return any(bounds_string_length(v) for v in schema)
    return False


class LlguidanceGrammars:
    """Compiles JSON schemas with llguidance for one tokenizer and vocabulary (the logits' width). The
    tokenizer's llguidance view is built on the first schema (~0.2 s)."""

    def __init__(self, tokenizer: TextTokenizer, vocab_size: int) -> None:
        self._text_tokenizer = tokenizer
        self._vocab_size = vocab_size
        self._tokenizer: llguidance.LLTokenizer | None = None
        self._lock = threading.Lock()

    def _llg_tokenizer(self) -> llguidance.LLTokenizer:
        import llguidance

        with self._lock:
            if self._tokenizer is None:
                self._tokenizer = llguidance.LLTokenizer(
                    self._text_tokenizer.tokenizer_json(), n_vocab=self._vocab_size,
                    eos_token=sorted(self._text_tokenizer.stop_token_ids))
            return self._tokenizer

    def compile_json_schema(self, schema_json: str) -> LlguidanceGrammar:
        """The schema's grammar, checked; raises RequestError with llguidance's reason if it cannot be used."""
        import llguidance

        tokenizer = self._llg_tokenizer()
        try:
            grammar = llguidance.LLMatcher.grammar_from_json_schema(schema_json, defaults=JSON_OPTIONS)
        except ValueError as exc:
            raise RequestError(f"cannot use this json schema: {exc}") from exc
        error = llguidance.LLMatcher.validate_grammar(grammar, tokenizer)
        if error:
            raise RequestError(f"cannot use this json schema: {error.splitlines()[0][:500]}")
        return LlguidanceGrammar(tokenizer, grammar)


@dataclass(frozen=True)
class LlguidanceGrammar:
    """A checked llguidance grammar; `new_state()` starts a request on it (~0.2 ms: the parser is built)."""

    tokenizer: llguidance.LLTokenizer
    grammar: str

    def new_state(self) -> LlguidanceState:
        import llguidance

        return LlguidanceState(llguidance.LLMatcher(self.tokenizer, self.grammar, log_level=0))


class LlguidanceState:
    """One request's position in an llguidance grammar (the `GrammarState` contract of `grammar.py`)."""

    def __init__(self, matcher: llguidance.LLMatcher) -> None:
        self.matcher = matcher

    def fill(self, bitmask: torch.Tensor, row: int) -> None:
        """bitmask: [N, ceil(V/32)] int32 on the CPU; row `row` set to the tokens allowed next."""
        import llguidance.torch as llt

        llt.fill_next_token_bitmask(self.matcher, bitmask, row)

    def accept(self, token_id: int) -> bool:
        return bool(self.matcher.consume_token(token_id))

    @property
    def finished(self) -> bool:
        """The output is complete: nothing but end-of-sequence could follow (or it has been drawn)."""
        return bool(self.matcher.is_stopped())
