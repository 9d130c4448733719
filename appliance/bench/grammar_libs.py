"""Two grammar libraries side by side on the embedded model's vocabulary: xgrammar (what the engine uses,
`appliance/engine/grammar.py`) and llguidance (what it uses for JSON schemas that bound a string's length,
`appliance/engine/grammar_llguidance.py`).

For each, through the engine's own classes: the tokenizer's setup (xgrammar: `xgrammar_compiler`; llguidance:
`LlguidanceGrammars`, its `LLTokenizer` from the tokenizer's JSON), a schema's compile and a fresh state on it
(xgrammar: `compile_json_schema` and a `GrammarMatcher`; llguidance: the grammar and an `LLMatcher` over it, which
is where it builds its parser, the rest being lazy), the fill of one row of the token bitmask at
every position of a valid document walked token by token, and each library's apply of one bitmask to [16, V]
logits (the same bitmask for both, the layout being the same: 16 of xgrammar's masks met on those walks). Both
emit compact JSON with `", "` and `": "` between items (xgrammar's format without `any_whitespace`, which the
engine uses), so they walk the same token ids.
"""

from __future__ import annotations

import functools
import json
import statistics
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from appliance.engine.grammar import GrammarState
    from appliance.engine.tokenizer import TextTokenizer

APPLY_ROWS = 16


def _ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1e3


def _fill_figures(seconds: list[float]) -> dict[str, float]:
    return {"fill_us_median": statistics.median(seconds) * 1e6, "fill_us_mean": statistics.mean(seconds) * 1e6,
            "fill_us_max": max(seconds) * 1e6, "positions": len(seconds)}


def _timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    started = time.perf_counter()
    value = fn()
    return time.perf_counter() - started, value


def _built(build: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    """`build` run `repeats` times -> (median ms, the last one built)."""
    times, built = [], None
    for _ in range(repeats):
        seconds, built = _timed(build)
        times.append(seconds)
    return _ms(times), built


def _xgrammar_setup(tok: TextTokenizer, vocab: int) -> Callable[[str], GrammarState]:
    """xgrammar's compiler (its cache off: every compile is cold) -> schema text -> a fresh state."""
    from appliance.engine.grammar import XgrammarGrammar, xgrammar_compiler

    compiler = xgrammar_compiler(tok, vocab)
    return lambda text: XgrammarGrammar(compiler.compile_json_schema(text, any_whitespace=False)).new_state()


def _llguidance_setup(tok: TextTokenizer, vocab: int) -> Callable[[str], GrammarState]:
    """llguidance's tokenizer view (the engine's `LlguidanceGrammars`) -> schema text -> a fresh state (the
    grammar and its `LLMatcher`, which is where llguidance builds its parser)."""
    from appliance.engine.grammar_llguidance import LlguidanceGrammars

    grammars = LlguidanceGrammars(tok, vocab)
    return lambda text: grammars.compile_json_schema(json.loads(text)).new_state()


def _library_side(tok: TextTokenizer, vocab: int, schemas: dict[str, tuple[dict[str, Any], Any]], repeats: int,
                  setup: Callable[[TextTokenizer, int], Callable[[str], GrammarState]], library: str
                  ) -> tuple[dict[str, Any], list[list[torch.Tensor]]]:
    """One library's setup, compiles and mask fills (see the module doc) -> (figures, each document's masks)."""
    setup_s = [_timed(lambda: setup(tok, vocab))[0] for _ in range(repeats)]
    start = setup(tok, vocab)
    compile_ms: dict[str, float] = {}
    fills: list[float] = []
    per_schema: dict[str, dict[str, float]] = {}
    masks: list[list[torch.Tensor]] = []
    for name, (schema, doc) in schemas.items():
        compile_ms[name], state = _built(functools.partial(start, json.dumps(schema)), repeats)
        walk = _walk(tok.encode(json.dumps(doc)), vocab, fills, functools.partial(state.fill, row=0), state.accept,
                     f"{library} refused a token of the {name} document")
        masks.append(walk)
        per_schema[name] = _fill_figures(fills[len(fills) - len(walk):])
    return {"setup_s": statistics.median(setup_s), "compile_ms": compile_ms, "fill": per_schema,
            **_fill_figures(fills)}, masks


def _walk(tokens: list[int], vocab: int, fills: list[float], fill: Callable[[torch.Tensor], object],
          accept: Callable[[int], bool], refused: str) -> list[torch.Tensor]:
    """Walk a valid document token by token: each position's mask filled into row 0 of a [1, ceil(V/32)] bitmask
    (its time appended to `fills`), then the token accepted (else RuntimeError(`refused`)) -> the masks."""
    bitmask = torch.full((1, (vocab + 31) // 32), -1, dtype=torch.int32)
    walk = []
    for token in tokens:
        started = time.perf_counter()
        fill(bitmask)
        fills.append(time.perf_counter() - started)
        walk.append(bitmask[0].clone())
        if not accept(token):
            raise RuntimeError(f"{refused}: {token}")
    return walk


def _apply_us(apply: Callable[[torch.Tensor, torch.Tensor], None], bitmask: torch.Tensor, vocab: int,
              repeats: int) -> float:
    logits = torch.randn(bitmask.shape[0], vocab, generator=torch.Generator().manual_seed(0))
    for _ in range(3):  # a first call may build something (llguidance's apply is torch.compile'd)
        apply(logits.clone(), bitmask)
    times = []
    for _ in range(repeats):
        target = logits.clone()
        started = time.perf_counter()
        apply(target, bitmask)
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1e6


def _spread(walks: list[list[torch.Tensor]], rows: int) -> torch.Tensor:
    """`rows` masks taken at evenly spread positions of all walks, stacked: what a step of as many streams meets."""
    flat = [mask for walk in walks for mask in walk]
    return torch.stack([flat[i * len(flat) // rows] for i in range(rows)])


def _allowed(mask: torch.Tensor, vocab: int) -> torch.Tensor:
    bits = (mask[:, None] >> torch.arange(32, dtype=torch.int32)) & 1  # [W, 32]
    return bits.flatten()[:vocab].bool()


def compare_libraries(tok: TextTokenizer, vocab: int, schemas: dict[str, tuple[dict[str, Any], Any]],
                      repeats: int = 5, apply_repeats: int = 50) -> dict[str, Any]:
    """The side-by-side: per library its setup, compiles, mask fills and the apply on [16, V] (see the module doc).
    `schemas`: name -> (schema, a valid document)."""
    import xgrammar as xgr

    x, x_masks = _library_side(tok, vocab, schemas, repeats, _xgrammar_setup, "xgrammar")
    x_bitmask = _spread(x_masks, APPLY_ROWS)
    indices = list(range(APPLY_ROWS))
    x["apply_us"] = _apply_us(lambda lg, bm: xgr.apply_token_bitmask_inplace(lg, bm, vocab_size=vocab,
                                                                             indices=indices),
                              x_bitmask, vocab, apply_repeats)
    result: dict[str, Any] = {"vocab": vocab, "allowed_per_row": statistics.median(
        int(_allowed(row, vocab).sum()) for row in x_bitmask), "xgrammar": {
        "version": _version("xgrammar"), **x}}
    import llguidance.torch as llt

    g, g_masks = _library_side(tok, vocab, schemas, repeats, _llguidance_setup, "llguidance")
    g["apply_us"] = _apply_us(llt.apply_token_bitmask_inplace, x_bitmask, vocab, apply_repeats)  # the same masks
    same = sum(bool(torch.equal(_allowed(a, vocab), _allowed(b, vocab)))
               for xa, ga in zip(x_masks, g_masks, strict=True) for a, b in zip(xa, ga, strict=True))
    result["llguidance"] = {"version": _version("llguidance"), **g}
    result["same_masks"] = same
    return result


def _version(dist: str) -> str:
    import importlib.metadata

    return importlib.metadata.version(dist)
