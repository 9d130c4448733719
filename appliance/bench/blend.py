"""`appliance bench blend`: how closely blend's choice of tokens to recompute tracks full prefill, and its cost.

Fresh questions over the pages that answer them (workload B of `bench rag`, without the peer): every variant
answers the same prompts from the same pre-encoded chunks, one request at a time, in a fresh engine that
finds the chunks on disk. Per variant: mean TTFT, tokens recomputed, and fidelity against `off`, two ways:
- free-running greedy, as in `bench rag`: first-token agreement and token F1 of the answers. One early flip
  changes the rest of a small model's answer, so these move in steps;
- teacher-forced on off's answer: at each of its tokens, the variant's next-token distribution against off's
  (mean KL in nats, top-1 agreement), a smooth measure of how close the reused KV is to the true one.

Variants: `reuse`; `blend@R` (recompute a share R chosen by KV deviation, measured as many layers deep as
the engine's default, `config.BLEND_SELECT_LAYERS`, on the share `config.BLEND_CANDIDATES` carried there from
layer 2); `blend@R/L` (deviations measured L layers deep); `blend@R/L/C` (a share C carried past layer 2; 1.0:
a dense pass); `random@R` and `random@R/L` (the same share chosen at random: the control that says what the
deviation is worth).
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from statistics import mean
from typing import TYPE_CHECKING, Annotated, Any

import typer

from appliance.bench.machine import describe_machine, machine_markdown
from appliance.bench.rag_fidelity import token_f1
from appliance.bench.rag_workload import BenchPrompt, Question, build_prompts, fresh_questions, load_questions
from appliance.config import BLEND_CANDIDATES, BLEND_SELECT_LAYERS

if TYPE_CHECKING:
    import torch

    from appliance.engine.engine import LLMEngine
    from appliance.engine.loader import LoadedModel

VARIANTS = ("reuse", "random@0.15", "blend@0.15/2", "blend@0.15", "blend@0.15/4/1", "random@0.3", "blend@0.3",
            "blend@0.5")


@dataclass(frozen=True)
class Variant:
    """One way of answering from reused chunk KV (see the module doc for the spec syntax)."""

    spec: str
    mode: str  # reuse | blend
    ratio: float = 0.0
    select_layers: int = BLEND_SELECT_LAYERS
    random: bool = False
    candidates: float = BLEND_CANDIDATES

    @classmethod
    def parse(cls, spec: str) -> Variant:
        if spec == "reuse":
            return cls(spec, "reuse")
        kind, _, rest = spec.partition("@")
        ratio, _, rest = rest.partition("/")
        layers, _, candidates = rest.partition("/")
        try:
            variant = cls(spec, "blend", float(ratio), int(layers or BLEND_SELECT_LAYERS), kind == "random",
                          float(candidates or BLEND_CANDIDATES))
        except ValueError:
            variant = None
        if kind not in ("blend", "random") or variant is None or not 0 <= variant.ratio <= 1 \
                or variant.select_layers < 2 or not 0 <= variant.candidates <= 1:
            raise ValueError(f"unknown variant {spec!r} (reuse, blend@R, blend@R/L, blend@R/L/C, random@R; "
                             "0 <= R, C <= 1, L >= 2)")
        return variant


@dataclass
class Answer:
    """One prompt answered by one variant: its tokens, per-step log-probabilities and costs."""

    token_ids: list[int]
    logprobs: list[torch.Tensor]  # one [V] per generated token
    ttft_s: float
    recomputed: int


class StepRecorder:
    """Logits processor keeping each step's log-probabilities; with `forced`, it makes that token the next one."""

    def __init__(self, forced: list[int] | None = None) -> None:
        self.forced = forced
        self.logprobs: list[torch.Tensor] = []

    def __call__(self, history: list[int], logits: torch.Tensor) -> torch.Tensor:
        import torch

        self.logprobs.append(logits.float().log_softmax(-1))
        if self.forced is None:
            return logits
        only = torch.full_like(logits, float("-inf"))
        only[self.forced[len(history)]] = 0.0
        return only


def randomize_selection(engine: LLMEngine) -> None:
    """Replace the engine's deviation scores with random ones, in the dense pass and in the carried tokens' (same
    layers computed, same shares carried and recomputed)."""
    import torch

    def randomized(measure: Callable[..., tuple[torch.Tensor, torch.Tensor]]) -> Callable[..., Any]:
        def random_scores(*args: Any, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
            deviation, hidden = measure(*args, **kwargs)  # <= 0 where nothing was measured
            return torch.where(deviation > 0, torch.rand(deviation.shape), deviation), hidden
        return random_scores

    engine.kv_mover.deviations = randomized(engine.kv_mover.deviations)  # type: ignore[method-assign]
    engine.kv_mover.refine = randomized(engine.kv_mover.refine)  # type: ignore[method-assign]


def answer_all(loaded: LoadedModel, kv_dir: Path, mode: str, prompts: list[BenchPrompt], max_tokens: int,
               variant: Variant | None = None, forced: list[list[int]] | None = None, dtype: str = "auto"
               ) -> list[Answer]:
    """Answer every prompt, one at a time, in a fresh engine whose disk tier is `kv_dir`."""
    from appliance.config import EngineConfig
    from appliance.engine.engine import LLMEngine
    from appliance.engine.sampling import SamplingParams

    variant = variant or Variant(mode, mode)
    config = EngineConfig(data_dir=kv_dir, dtype=dtype, kv_cache_mb=2048, doc_cache=mode,
                          enable_prefix_caching=mode != "off", blend_ratio=variant.ratio,
                          blend_select_layers=variant.select_layers, blend_candidates=variant.candidates)
    engine = LLMEngine(loaded, config)
    if variant.random:
        randomize_selection(engine)
    answers = []
    for i, prompt in enumerate(prompts):
        recorder = StepRecorder(forced[i] if forced else None)
        params = SamplingParams(max_tokens=len(forced[i]) if forced else max_tokens, temperature=0.0,
                                logits_processors=(recorder,))
        start = time.perf_counter()
        req = engine.add_request(f"blend-bench-{i}", prompt.token_ids, params, layout=prompt.layout)
        ttft, tokens = 0.0, []
        while engine.has_unfinished():
            for out in engine.step():
                if out.request_id == req.request_id:
                    ttft = ttft or time.perf_counter() - start
                    tokens += out.token_ids
        answers.append(Answer(tokens, recorder.logprobs, ttft, req.num_recomputed_tokens))
    return answers


def compare(reference: list[Answer], free: list[Answer], forced: list[Answer]) -> dict[str, float]:
    """Fidelity of a variant against off: greedy (`free`) and teacher-forced on off's answers (`forced`)."""
    kl, top1 = [], []
    for ref, tf in zip(reference, forced, strict=True):
        for p, q in zip(ref.logprobs, tf.logprobs, strict=True):  # [V] log-probabilities of off and the variant
            kl.append(float((p.exp() * (p - q)).sum()))
            top1.append(float(p.argmax() == q.argmax()))
    pairs = list(zip(reference, free, strict=True))
    return {"first_token_agreement": mean(r.token_ids[:1] == c.token_ids[:1] for r, c in pairs),
            "token_f1": mean(token_f1(r.token_ids, c.token_ids) for r, c in pairs),
            "forced_top1": mean(top1), "forced_kl": mean(kl)}


def costs(answers: list[Answer]) -> dict[str, float]:
    return {"ttft_ms": 1000 * mean(a.ttft_s for a in answers), "recomputed": mean(a.recomputed for a in answers)}


def run_blend_bench(data_dir: Path | None, num_questions: int, variants: list[Variant], max_tokens: int = 32,
                    k: int = 5, dtype: str = "auto", say: Callable[[str], None] = lambda _: None,
                    corpus_dir: Path | None = None, questions: list[Question] | None = None,
                    loaded: LoadedModel | None = None) -> dict[str, Any]:
    """Ingest the pages answering the first `num_questions` questions, encode the chunks their prompts use,
    then answer with off and every variant in the engine `dtype`; return the figures. Tests pass a small
    corpus and model."""
    from appliance.bench.rag import WARM_COLLECTION, ensure_collection
    from appliance.bench.retrieval import CORPUS
    from appliance.engine.loader import load_model
    from retrieval.service import RetrievalService

    asked = (questions or load_questions())[:num_questions]
    corpus_dir = corpus_dir or CORPUS
    with ExitStack() as stack:
        root = data_dir or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-blend-")))
        loaded = loaded or load_model("default", root)
        service = RetrievalService.open(root, loaded.tokenizer, chunk_tokens=256)
        stack.callback(service.close)
        pages = [p for p in sorted(corpus_dir.glob("*")) if p.name in {q.page for q in asked}]
        collection = f"{WARM_COLLECTION}-{len(asked)}"
        say(f"ingesting the {len(pages)} pages that answer {len(asked)} questions (reused when already there)")
        corpus = ensure_collection(service, collection, pages)
        prompts = build_prompts(service, loaded.tokenizer, collection, fresh_questions(asked), k)
        kv_dir = root / "kv-blend"
        say("encoding the chunks the prompts use (kept on disk for every variant)")
        answer_all(loaded, kv_dir, "reuse", prompts, 1, dtype=dtype)
        say("off: full prefill, the reference")
        reference = answer_all(loaded, kv_dir, "off", prompts, max_tokens, dtype=dtype)
        forced = [a.token_ids for a in reference]
        rows = {"off": costs(reference)}
        for variant in variants:
            say(f"{variant.spec}: free-running, then teacher-forced on off's answers")
            free = answer_all(loaded, kv_dir, variant.mode, prompts, max_tokens, variant, dtype=dtype)
            tf = answer_all(loaded, kv_dir, variant.mode, prompts, max_tokens, variant, forced, dtype)
            rows[variant.spec] = costs(free) | compare(reference, free, tf)
    return {"machine": describe_machine(), "corpus": corpus, "questions": len(asked), "max_tokens": max_tokens,
            "k": k, "dtype": dtype, "mean_prompt_tokens": mean(len(p.token_ids) for p in prompts), "variants": rows}


def blend_markdown(result: dict[str, Any]) -> str:
    """The "RAG: blend selection" section of docs/BENCHMARKS.md."""
    rows = result["variants"]
    off_ms = rows["off"]["ttft_ms"]
    lines = [
        f"How close `blend`'s recompute choices keep the answer to full prefill (`appliance bench blend`): "
        f"{result['questions']} fresh questions over the pages that answer them ({result['corpus']['chunks']} "
        f"chunks), k={result['k']}, mean prompt {result['mean_prompt_tokens']:.0f} tokens, chunks pre-encoded "
        f"on disk, one request at a time, greedy, {result['max_tokens']} tokens. `blend@R/L/C`: a share R chosen "
        f"by KV deviation measured L layers deep (L={BLEND_SELECT_LAYERS}, the default, when not given) among a "
        f"share C carried there from layer 2 (C={BLEND_CANDIDATES} when not given; 1: a dense pass); "
        "`random@R`: the same share at random. "
        "Teacher-forced: along off's answer, the variant's next-token distribution against off's.",
        "",
        "| variant | tokens recomputed | TTFT mean ms | off / this | first token agrees | token F1 "
        "| teacher-forced top-1 | teacher-forced KL (nats) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
        f"| off | all | {off_ms:.0f} | 1.0x | 100% | 1.00 | 100% | 0 |",
    ]
    for name, r in rows.items():
        if name != "off":
            lines.append(f"| {name} | {r['recomputed']:.0f} | {r['ttft_ms']:.0f} | {off_ms / r['ttft_ms']:.1f}x "
                         f"| {r['first_token_agreement']:.0%} | {r['token_f1']:.2f} | {r['forced_top1']:.1%} "
                         f"| {r['forced_kl']:.3f} |")
    lines += ["", "Machine:", "", machine_markdown(result["machine"]), "",
              "Reproduce: `appliance bench blend --data-dir DIR` (needs `python3.11-doc`; `--variants` picks "
              "the rows)."]
    return "\n".join(lines)


def bench_blend(
    json_file: Annotated[Path | None, typer.Option("--json", help="also write the full result here")] = None,
    questions: Annotated[int, typer.Option(min=1, help="fresh questions (their pages are ingested)")] = 12,
    variants: Annotated[str, typer.Option(help="comma-separated: reuse, blend@R, blend@R/L, random@R")
                        ] = ",".join(VARIANTS),
    max_tokens: Annotated[int, typer.Option(min=1, help="tokens generated per answer at most")] = 32,
    dtype: Annotated[str, typer.Option(help="engine dtype: auto, float32 or bfloat16")] = "auto",
    data_dir: Annotated[Path | None, typer.Option(help="keep (and reuse) the ingested pages and model here")
                        ] = None,
    docs: Annotated[bool, typer.Option("--docs/--no-docs", help="update docs/BENCHMARKS.md")] = True,
) -> None:
    """Blend's token selection against full prefill: fidelity (greedy and teacher-forced) and TTFT per variant."""
    from rich.console import Console

    from appliance.bench.report import update_section

    console = Console()
    try:
        parsed = [Variant.parse(spec) for spec in variants.split(",")]
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--variants") from exc
    result = run_blend_bench(data_dir, questions, parsed, max_tokens, dtype=dtype,
                             say=lambda msg: console.print(f"[dim]{msg}[/dim]"))
    markdown = blend_markdown(result)
    console.print(markdown)
    if json_file is not None:
        json_file.write_text(json.dumps(result, indent=2))
    if docs:
        update_section(Path("docs/BENCHMARKS.md"), "RAG: blend selection", markdown, result["machine"])
        console.print("wrote docs/BENCHMARKS.md (section RAG: blend selection)")
