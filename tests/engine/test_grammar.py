"""Grammar-constrained decoding on the real engine: outputs match their grammar (JSON schema, regex, choice),
a grammar changes nothing for its unconstrained neighbours in a batch, bad grammars are refused with their
reason, the grammar's end ends the output, and the grammar wins over a logits processor that would leave no
token. Plus the tokenizer's byte view of its vocabulary, which xgrammar and OpenAI's `bytes` read."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
import torch

from appliance.engine.grammar import GrammarCompiler, GrammarSpec
from appliance.engine.grammar_llguidance import LlguidanceGrammar, bounds_string_length, closed_schema
from appliance.engine.sampler import Sampler
from appliance.engine.sampling import SamplingParams
from appliance.engine.tokenizer import ChatMessage
from appliance.errors import RequestError
from appliance.rag.citations import CitationConstraint

PERSON = {"type": "object", "properties": {
    "name": {"type": "string", "maxLength": 24},
    "age": {"type": "integer", "minimum": 18, "maximum": 65},
    "role": {"type": "string", "enum": ["admin", "editor", "viewer"]},
    "active": {"type": "boolean"}},
    "required": ["name", "age", "role", "active"], "additionalProperties": False}
ORDER = {"type": "object", "properties": {
    "id": {"type": "integer", "minimum": 1000, "maximum": 9999},
    "customer": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 16},
                                                  "vip": {"type": "boolean"}},
                 "required": ["city", "vip"], "additionalProperties": False},
    "items": {"type": "array", "minItems": 1, "maxItems": 3, "items": {
        "type": "object", "properties": {"sku": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]{2}$"},
                                         "qty": {"type": "integer", "minimum": 1, "maximum": 9}},
        "required": ["sku", "qty"], "additionalProperties": False}}},
    "required": ["id", "customer", "items"], "additionalProperties": False}
READING = {"type": "object", "properties": {
    "celsius": {"type": "number", "minimum": -40, "maximum": 50},
    "tags": {"type": "array", "maxItems": 2, "items": {"type": "string", "enum": ["indoor", "outdoor", "wet"]}}},
    "required": ["celsius", "tags"], "additionalProperties": False}


def violations(value: Any, schema: dict[str, Any], at: str = "$") -> list[str]:
    """What in `value` breaks `schema` (the keywords the schemas above use), checked by hand: [] when valid."""
    kind = schema.get("type")
    if "enum" in schema and value not in schema["enum"]:
        return [f"{at}: {value!r} not in {schema['enum']}"]
    if kind == "object":
        if not isinstance(value, dict):
            return [f"{at}: not an object"]
        props = schema.get("properties", {})
        found = [f"{at}: missing {k}" for k in schema.get("required", []) if k not in value]
        if schema.get("additionalProperties") is False:
            found += [f"{at}: extra {k}" for k in value if k not in props]
        for k, v in value.items():
            if k in props:
                found += violations(v, props[k], f"{at}.{k}")
        return found
    if kind == "array":
        if not isinstance(value, list):
            return [f"{at}: not an array"]
        found = [f"{at}: {len(value)} items"] if not (schema.get("minItems", 0) <= len(value)
                                                      <= schema.get("maxItems", 10 ** 9)) else []
        for i, v in enumerate(value):
            found += violations(v, schema["items"], f"{at}[{i}]")
        return found
    if kind == "string":
        if not isinstance(value, str):
            return [f"{at}: not a string"]
        if len(value) > schema.get("maxLength", 10 ** 9):
            return [f"{at}: longer than {schema['maxLength']}"]
        if "pattern" in schema and not re.search(schema["pattern"], value):
            return [f"{at}: {value!r} does not match {schema['pattern']}"]
        return []
    if kind == "boolean":
        return [] if isinstance(value, bool) else [f"{at}: not a boolean"]
    if kind in ("integer", "number"):
        numeric = isinstance(value, int) if kind == "integer" else isinstance(value, int | float)
        if isinstance(value, bool) or not numeric:
            return [f"{at}: not an {kind}"]
        if not schema.get("minimum", -1e300) <= value <= schema.get("maximum", 1e300):
            return [f"{at}: {value} out of bounds"]
        return []
    raise AssertionError(f"the checker does not know {schema}")


def test_the_checker_catches_what_it_checks() -> None:
    """The hand-written checker is itself able to fail (else every schema test below would pass vacuously)."""
    good = {"id": 1234, "customer": {"city": "Oslo", "vip": False}, "items": [{"sku": "ABC-12", "qty": 2}]}
    assert violations(good, ORDER) == []
    bad = [{**good, "id": 99}, {**good, "customer": {"city": "Oslo"}}, {**good, "items": []},
           {**good, "items": [{"sku": "abc-12", "qty": 2}]}, {**good, "extra": 1}, {**good, "id": "1234"},
           {**good, "customer": {"city": "Oslo", "vip": 1}}]
    assert all(violations(b, ORDER) for b in bad)
    assert violations({"celsius": 51.5, "tags": []}, READING) and violations({"celsius": 3, "tags": ["x"]}, READING)


@pytest.fixture(scope="module")
def engine(make_engine):
    """The serving decode path (int4 weights for steps of at most 32 tokens): what grammars constrain in
    production, and 4x faster on a CPU than the dense float32 reference."""
    return make_engine(int4_decode_tokens=32)


def chat(engine, text: str) -> list[int]:
    return engine.tokenizer.apply_chat_template([ChatMessage("user", text)])


@pytest.mark.parametrize(("schema", "ask"), [
    (PERSON, "Describe a fictional employee as JSON."),
    (ORDER, "Write a shop order as JSON."),
    (READING, "Give a weather reading as JSON."),
], ids=["flat", "nested", "numbers"])
def test_json_schema_outputs_parse_and_validate(engine, schema: dict, ask: str) -> None:
    """Greedy and six seeded draws at temperature 1 (outputs a small model would rarely get right alone),
    batched together: every one is complete JSON valid against the schema, ended by the grammar."""
    spec = GrammarSpec.json_schema(schema)
    params = [SamplingParams(max_tokens=120, temperature=0.0, grammar=spec)] + \
        [SamplingParams(max_tokens=120, temperature=1.0, seed=s, grammar=spec) for s in range(6)]
    results = engine.generate([chat(engine, ask)] * len(params), params)
    texts = {r.text for r in results}
    assert len(texts) > 3  # the draws really differ
    for r in results:
        assert r.finish_reason == "stop", r.text
        assert violations(json.loads(r.text), schema) == [], r.text


def test_json_object_gives_an_object(engine) -> None:
    results = engine.generate([chat(engine, "Say hello.")] * 3,
                              [SamplingParams(max_tokens=80, temperature=t, seed=1, grammar=GrammarSpec("json_object"))
                               for t in (0.0, 0.8, 1.0)])
    for r in results:
        assert r.finish_reason == "stop" and isinstance(json.loads(r.text), dict), r.text


def test_regex_and_choice_outputs_match(engine) -> None:
    regex = r"[A-Z][a-z]{2,6}-[0-9]{3}"
    options = ["red", "green", "blue", "dark purple"]
    prompt = chat(engine, "Name a product code, then a colour.")
    params = [SamplingParams(max_tokens=20, temperature=t, seed=s, grammar=GrammarSpec("regex", regex))
              for t, s in ((0.0, None), (1.0, 1), (1.0, 2), (1.5, 3))] + \
             [SamplingParams(max_tokens=20, temperature=t, seed=s, grammar=GrammarSpec.choice(options))
              for t, s in ((0.0, None), (1.0, 1), (1.0, 2), (1.5, 3))]
    results = engine.generate([prompt] * len(params), params)
    for r in results[:4]:
        assert re.fullmatch(regex, r.text) and r.finish_reason == "stop", r.text
    for r in results[4:]:
        assert r.text in options and r.finish_reason == "stop", r.text


def test_a_grammar_leaves_its_unconstrained_neighbours_unchanged(make_engine) -> None:
    """The batched mask touches only the rows that have a grammar: an unconstrained greedy request gives the
    same tokens beside constrained ones as alone (the dense float32 reference engine, whose outputs do not
    depend on the batch)."""
    reference = make_engine(enable_prefix_caching=False)
    plain = SamplingParams(max_tokens=16, temperature=0.0, ignore_eos=True)
    prompts = [chat(reference, "What is the capital of France?"), chat(reference, "Name three colors.")]
    alone = [reference.generate([p], plain)[0].token_ids for p in prompts]
    constrained = [SamplingParams(max_tokens=16, temperature=0.0, grammar=GrammarSpec.json_schema(PERSON)),
                   SamplingParams(max_tokens=16, temperature=0.9, seed=3, grammar=GrammarSpec("regex", "[0-9]+"))]
    results = reference.generate([prompts[0], prompts[1], prompts[0], prompts[1]],
                                 [constrained[0], plain, plain, constrained[1]])
    assert [results[2].token_ids, results[1].token_ids] == [alone[0], alone[1]]
    assert re.fullmatch("[0-9]+", results[3].text)  # the constrained rows were constrained in the same steps
    assert results[0].text.startswith('{"name"')


@pytest.mark.parametrize(("spec", "reason"), [
    (GrammarSpec.json_schema({"type": "object", "properties": {"a": {"type": "nonsense"}}}), "nonsense"),
    (GrammarSpec("regex", "([a-z"), "regex"),
    (GrammarSpec("ebnf", "root ::= undefined_rule"), "undefined_rule"),
    (GrammarSpec.choice([]), "non-empty"),
], ids=["schema", "regex", "ebnf", "choice"])
def test_an_invalid_grammar_raises_request_error_with_the_reason(engine, spec: GrammarSpec, reason: str) -> None:
    with pytest.raises(RequestError, match=reason) as caught:
        engine.add_request("bad-grammar", chat(engine, "hi"), SamplingParams(max_tokens=4, grammar=spec))
    assert str(caught.value).startswith(f"cannot use this {spec.kind.replace('_', ' ')}: ")
    assert "bad-grammar" not in engine.requests and not engine.has_unfinished()  # nothing was queued


def test_ignore_eos_still_stops_at_the_grammars_end(engine) -> None:
    prompt = chat(engine, "Is the sky blue? Answer yes or no.")
    for spec, check in ((GrammarSpec.choice(["yes", "no"]), lambda t: t in ("yes", "no")),
                        (GrammarSpec.json_schema(READING), lambda t: not violations(json.loads(t), READING))):
        r = engine.generate([prompt], SamplingParams(max_tokens=100, temperature=0.0, ignore_eos=True,
                                                     grammar=spec))[0]
        assert r.finish_reason == "stop" and len(r.token_ids) < 100 and check(r.text), r.text
    plain = engine.generate([prompt], SamplingParams(max_tokens=30, temperature=0.0, ignore_eos=True))[0]
    assert plain.finish_reason == "length"  # ignore_eos alone runs on


def test_the_grammar_wins_over_a_citation_constraint_that_would_leave_no_token(engine) -> None:
    """After `[` the citation constraint allows only passage numbers; a grammar that wants letters there
    leaves their intersection empty. The row keeps the grammar's mask (never all -inf), so the output still
    matches the grammar."""
    constraint = CitationConstraint(engine.tokenizer, [1, 2])
    emptied = []

    def recording(generated: list[int], logits: torch.Tensor) -> torch.Tensor:
        out = constraint(generated, logits)
        emptied.append(not bool(torch.isfinite(out).any()))
        return out

    regex = r"See \[[a-z]{1,3}\]\."
    prompt = chat(engine, "Cite your source.")
    results = engine.generate([prompt] * 2, [
        SamplingParams(max_tokens=16, temperature=t, seed=5, grammar=GrammarSpec("regex", regex),
                       logits_processors=(recording,)) for t in (0.0, 1.0)])
    assert any(emptied)  # the constraint did meet the grammar's letters with nothing allowed
    for r in results:
        assert re.fullmatch(regex, r.text) and r.finish_reason == "stop", r.text


def test_a_citation_constraint_still_narrows_what_the_grammar_allows(engine) -> None:
    """Where the intersection is not empty both apply: the grammar allows any digit, the constraint only 7."""
    constraint = CitationConstraint(engine.tokenizer, [7])
    prompt = chat(engine, "Cite your source.")
    grammar = GrammarSpec("regex", r"See \[[0-9]\]\.")
    free = engine.generate([prompt], SamplingParams(max_tokens=12, temperature=0.0, grammar=grammar))[0]
    cited = engine.generate([prompt], SamplingParams(max_tokens=12, temperature=0.0, grammar=grammar,
                                                     logits_processors=(constraint,)))[0]
    assert free.text != "See [7]."  # the constraint makes the difference
    assert cited.text == "See [7]." and cited.finish_reason == "stop"


def test_the_compiler_caches_compiled_grammars(engine) -> None:
    compiler = GrammarCompiler(engine.tokenizer, engine.model.config.vocab_size, cache_size=2)
    first = compiler.compile(GrammarSpec.json_schema(PERSON))
    assert compiler.compile(GrammarSpec("json_schema", json.dumps(PERSON))) is first  # equal spec, same object
    regex = compiler.compile(GrammarSpec("regex", "a+"))
    assert regex is not first and compiler.compile(GrammarSpec("regex", "a+")) is regex
    compiler.compile(GrammarSpec.json_schema(PERSON))  # used last: kept when the cache is full
    compiler.compile(GrammarSpec("regex", "b+"))  # evicts "a+", the least recently used
    assert compiler.compile(GrammarSpec.json_schema(PERSON)) is first
    assert compiler.compile(GrammarSpec("regex", "a+")) is not regex
    assert engine.grammars is engine.grammars  # one compiler per engine


def test_the_engines_compiler_compiles_a_grammar_once(engine) -> None:
    spec = GrammarSpec("regex", "[xyz]{2}")
    engine.generate([chat(engine, "hi")], SamplingParams(max_tokens=4, temperature=0.0, grammar=spec))
    compiled = engine.grammars.compile(spec)
    engine.generate([chat(engine, "hi")], SamplingParams(max_tokens=4, temperature=0.0, grammar=spec))
    assert engine.grammars.compile(spec) is compiled


def test_only_schemas_that_bound_a_strings_length_go_to_llguidance(engine) -> None:
    assert bounds_string_length(PERSON) and bounds_string_length(ORDER)  # maxLength, nested in ORDER
    assert not bounds_string_length(READING) and not bounds_string_length({"minItems": 3, "maximum": 4})
    assert bounds_string_length({"anyOf": [{"type": "null"}, {"type": "string", "minLength": 2}]})
    assert isinstance(engine.grammars.compile(GrammarSpec.json_schema(PERSON)), LlguidanceGrammar)
    for spec in (GrammarSpec.json_schema(READING), GrammarSpec("regex", "a{1,3}"), GrammarSpec("json_object")):
        assert not isinstance(engine.grammars.compile(spec), LlguidanceGrammar)


BOUNDED = {"type": "array", "minItems": 3, "maxItems": 3,
           "items": {"type": "string", "minLength": 2, "maxLength": 5}}


def test_bounded_strings_keep_their_bounds_in_a_batch_with_xgrammar_rows(engine) -> None:
    """Draws at temperature 1 (which would run past a bound if the mask let them), batched with rows that
    xgrammar constrains in the same steps: every string holds 2-5 characters, every xgrammar row its grammar."""
    bounded = GrammarSpec.json_schema(BOUNDED)
    params = [SamplingParams(max_tokens=60, temperature=1.0, seed=s, grammar=bounded) for s in range(6)] + \
        [SamplingParams(max_tokens=60, temperature=1.0, seed=s, grammar=GrammarSpec.json_schema(READING))
         for s in range(2)]
    results = engine.generate([chat(engine, "List three city names as a JSON array.")] * len(params), params)
    for r in results[:6]:
        value = json.loads(r.text)
        assert r.finish_reason == "stop" and len(value) == 3, r.text
        assert all(isinstance(v, str) and 2 <= len(v) <= 5 for v in value), r.text
    assert len({r.text for r in results[:6]}) > 2  # the draws really differ
    for r in results[6:]:
        assert violations(json.loads(r.text), READING) == [], r.text


def test_closed_schema_closes_every_object_that_does_not_say_otherwise() -> None:
    schema = {"type": "object", "properties": {"properties": {"type": "string"},
                                               "inner": {"$ref": "#/$defs/Inner"}},
              "$defs": {"Inner": {"properties": {"a": {"anyOf": [{"type": "object"}, {"type": "null"}]}}}},
              "prefixItems": [{"type": "object", "additionalProperties": True}]}
    closed = closed_schema(schema)
    assert closed["additionalProperties"] is False and closed["items"] is False
    assert closed["properties"]["properties"] == {"type": "string"}  # a property's name is not a keyword
    assert closed["$defs"]["Inner"]["additionalProperties"] is False
    assert closed["$defs"]["Inner"]["properties"]["a"]["anyOf"][0] == {"type": "object", "additionalProperties": False}
    assert closed["prefixItems"][0]["additionalProperties"] is True  # said explicitly: kept
    assert "additionalProperties" not in schema  # the caller's schema is left alone


def test_a_bounded_schema_admits_no_undeclared_keys_as_xgrammar_would(engine) -> None:
    """Pydantic's schemas do not say `additionalProperties`; xgrammar's strict mode then allows no other keys,
    and so must llguidance's grammar, or a model adds keys of its own (seen: `"surface_mass_km³"`)."""
    schema = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 20},
                                               "km": {"type": "integer", "minimum": 0, "maximum": 9999}},
              "required": ["name", "km"]}
    params = [SamplingParams(max_tokens=60, temperature=1.2, seed=s, grammar=GrammarSpec.json_schema(schema))
              for s in range(6)]
    results = engine.generate([chat(engine, "Describe a volcano in JSON with many fields.")] * 6, params)
    for r in results:
        assert r.finish_reason == "stop" and set(json.loads(r.text)) == {"name", "km"}, r.text


def test_a_bounded_schema_llguidance_refuses_is_a_request_error_with_its_reason(engine) -> None:
    spec = GrammarSpec.json_schema({"type": "string", "maxLength": 4, "pattern": "(["})
    with pytest.raises(RequestError, match=r"^cannot use this json schema: \S") as caught:
        engine.add_request("bad-bounded", chat(engine, "hi"), SamplingParams(max_tokens=4, grammar=spec))
    assert "regex" in str(caught.value).lower() or "pattern" in str(caught.value).lower(), caught.value
    assert "bad-bounded" not in engine.requests


def test_token_bytes_of_the_byte_level_vocabulary(engine) -> None:
    tok = engine.tokenizer
    assert tok.vocabulary_encoding == "byte_level"
    for text in ["héllo wörld", "日本語のテキスト", "emoji 🎉🙂 end", "naïve café – “quotes”", "plain ascii"]:
        assert b"".join(tok.token_bytes(i) for i in tok.encode(text)) == text.encode("utf-8")
    for text in ["日本語", "🎉"]:  # characters split over tokens: some token's bytes alone are not UTF-8
        pieces = [tok.token_bytes(i) for i in tok.encode(text)]
        assert len(pieces) > len(text) and not all(_is_utf8(p) for p in pieces)
        assert b"".join(pieces).decode("utf-8") == text
    assert tok.token_bytes(tok.encode(" the")[0]) == b" the"  # GPT-2's Ġ is a space
    assert tok.token_bytes(tok.encode("\n")[0]) == b"\n"


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


@pytest.mark.parametrize(("seed", "step"), [(11, 22), (9, 62)])
def test_a_seeded_draw_never_leaves_the_grammar(seed: int, step: int) -> None:
    """Seeds and output positions where some token's hash is all ones in its top 24 bits (found by scanning
    `exponential_noise`; such a hash once rounded to uniform 1.0, noise 0, and a masked token's 0 / 0 = NaN won
    the argmax): a row that allows ten tokens must still draw one of them."""
    logits = torch.full((1, 49152), float("-inf"))
    logits[0, :10] = torch.randn(10)  # what a grammar's mask leaves
    drawn = Sampler()(logits, [SamplingParams(temperature=0.7, seed=seed)], [[0] * step]).tokens.item()
    assert drawn < 10


def test_the_cpu_mask_equals_xgrammars_on_any_rows() -> None:
    """The CPU path adds a byte table's 0 / -inf; xgrammar's kernel is the reference (every bit, the sign bit
    and a vocabulary that does not fill its last word included), on all rows and on some."""
    import xgrammar as xgr

    from appliance.engine.grammar import _apply_on_cpu

    vocab = 1000  # 32 words, the last one partly outside the vocabulary
    generator = torch.Generator().manual_seed(5)
    bitmask = torch.randint(-2**31, 2**31 - 1, (4, (vocab + 31) // 32), dtype=torch.int32, generator=generator)
    bitmask[1] = -1  # all allowed
    bitmask[2] = 0  # none allowed
    logits = torch.randn(4, vocab, generator=generator)
    for rows in ([0, 1, 2, 3], [0, 2], [3]):
        ours, theirs = logits.clone(), logits.clone()
        _apply_on_cpu(ours, bitmask, rows)
        xgr.apply_token_bitmask_inplace(theirs, bitmask, vocab_size=vocab, indices=rows)
        assert torch.equal(ours, theirs)
        assert torch.isinf(ours[rows]).any() and torch.equal(ours[[r for r in range(4) if r not in rows]],
                                                              logits[[r for r in range(4) if r not in rows]])
