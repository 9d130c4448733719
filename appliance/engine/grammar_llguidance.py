"""The second grammar library: llguidance, for JSON schemas that bound a string's length.

xgrammar (the engine's first choice, `grammar.py`) turns `minLength`/`maxLength` into a bounded repetition that
its precomputed token masks do not cover: such a schema compiles in ~190 ms instead of ~5 and a mask fill takes
up to several milliseconds as a string nears its bound (docs/BENCHMARKS.md, "Structured output"). llguidance
reads a string with a lexer and fills the same mask in ~0.1 ms. Both fill the same bitmask layout ([N,
ceil(V/32)] int32, bit j of word w = token 32w + j), so `GrammarMasks` applies either one's rows in one call.
llguidance is imported on first use.
"""

from __future__ import annotations

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
_SCHEMA_MAPS = ("properties", "patternProperties", "$defs", "definitions")  # name -> subschema
_SCHEMA_LISTS = ("prefixItems", "anyOf", "oneOf", "allOf")
_SCHEMA_VALUES = ("items", "additionalProperties", "not", "if", "then", "else", "contains")


def bounds_string_length(schema: Any) -> bool:
    """Whether any (sub)schema of `schema` sets `minLength` or `maxLength` (a JSON schema as parsed JSON)."""
    if isinstance(schema, dict):
        if any(isinstance(schema.get(k), int) for k in _LENGTH_KEYWORDS):
            return True
        return any(bounds_string_length(v) for v in schema.values())
    if isinstance(schema, list):
        return any(bounds_string_length(v) for v in schema)
    return False


def closed_schema(schema: Any) -> Any:
    """`schema` with xgrammar's strict defaults made explicit, so both libraries admit the same documents: an
    object schema that does not say `additionalProperties` admits no other keys, and `prefixItems` without
    `items` no further items. Returns a new schema; subschemas are walked through the keywords that hold them."""
    if not isinstance(schema, dict):
        return schema
    out = dict(schema)
    for key in _SCHEMA_MAPS:
        if isinstance(out.get(key), dict):
            out[key] = {name: closed_schema(sub) for name, sub in out[key].items()}
    for key in _SCHEMA_LISTS:
        if isinstance(out.get(key), list):
            out[key] = [closed_schema(sub) for sub in out[key]]
    for key in _SCHEMA_VALUES:
        if key in out:
            out[key] = closed_schema(out[key])
    is_object = out.get("type") == "object" or "properties" in out
    if is_object and "additionalProperties" not in out and "unevaluatedProperties" not in out:
        out["additionalProperties"] = False
    if "prefixItems" in out and "items" not in out:
        out["items"] = False
    return out


class LlguidanceGrammars:
    """Compiles JSON schemas with llguidance for one tokenizer and vocabulary (the logits' width). Building it
    reads the vocabulary into llguidance's tokenizer (~0.2 s for 49k tokens)."""

    def __init__(self, tokenizer: TextTokenizer, vocab_size: int) -> None:
        import llguidance

        self._tokenizer = llguidance.LLTokenizer(tokenizer.tokenizer_json(), n_vocab=vocab_size,
                                                 eos_token=sorted(tokenizer.stop_token_ids))

    def compile_json_schema(self, schema: Any) -> LlguidanceGrammar:
        """The grammar of `schema` (parsed JSON; closed as xgrammar's strict mode closes it, `closed_schema`),
        checked; raises RequestError with llguidance's reason if it cannot be used."""
        import llguidance

        tokenizer = self._tokenizer
        try:
            grammar = llguidance.LLMatcher.grammar_from_json_schema(closed_schema(schema), defaults=JSON_OPTIONS)
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
