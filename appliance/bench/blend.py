"""`appliance bench blend`: how closely blend's choice of tokens to recompute tracks full prefill, and its cost.

Fresh questions over the pages that answer them (workload B of `bench rag`, without the peer): every variant
answers the same prompts from the same pre-encoded chunks, one request at a time, in a fresh engine that
finds the chunks on disk. Per variant: mean TTFT, tokens recomputed, and fidelity against `off`, two ways:
- free-running greedy, as in `bench rag`: first-token agreement and token F1 of the answers. One early flip
  changes the rest of a small model's answer, so these move in steps;
- teacher-forced on off's answer: at each of its tokens, the variant's next-token distribution against off's
  (mean KL in nats, top-1 agreement), a smooth measure of how close the reused KV is to the true one.

Variants: `exact` (lossless: the prefix cache and full prefill; its distance from `off` is the noise floor of
this dtype and of the 4-bit decode path, whose numerics follow a step's token count) and `reuse`;
`blend@R` (recompute a share R chosen by KV deviation, measured as many layers deep
as the engine's default, `config.BLEND_SELECT_LAYERS`, on the share `config.BLEND_CANDIDATES` carried there
from layer 2); `blend@R/L` (deviations measured L layers deep); `blend@R/L/C` (a share C carried past layer 2;
1.0: a dense pass); `random@R`, `random@R/L` (the same share chosen at random: the control that says what the
deviation is worth); `query@R` (the reused tokens the question attends to most, at layer
`config.BLEND_QUERY_LAYER`), `mixed@R` (deviation weighted by that attention); a suffix `:Q` reads the
question's attention at layer Q instead (`query@0.15:12`). Any variant with the suffix `+int8` reads the chunks
from a disk tier in the 8-bit format (`APPLIANCE_DOC_CACHE_KV_FORMAT=int8`, encoded beside the model-dtype one).

Questions: a gold set (`gold_sets.py`: `modules` by default, or `versions`; accuracy against gold answers, the
ratio to off's with a paired bootstrap interval) or the hand-written retrieval questions (fidelity only).
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, replace
from pathlib import Path
from statistics import mean
from typing import TYPE_CHECKING, Annotated, Any

import typer

from appliance.bench.gold_eval import accuracy_ratio, right_answers
from appliance.bench.gold_sets import SETS, GoldQuestions
from appliance.bench.machine import describe_machine, machine_markdown
from appliance.bench.rag_fidelity import token_f1
from appliance.bench.rag_workload import BenchPrompt, Question, build_prompts, fresh_questions, load_questions
from appliance.config import BLEND_CANDIDATES, BLEND_QUERY_LAYER, BLEND_SELECT_LAYERS

if TYPE_CHECKING:
    import torch

    from appliance.engine.engine import LLMEngine
    from appliance.engine.loader import LoadedModel

VARIANTS = ("exact", "reuse", "random@0.15", "blend@0.15", "query@0.15", "mixed@0.15", "blend@0.3", "query@0.3",
            "blend@0.5")
_SELECT = {"blend": "deviation", "random": "deviation", "query": "query", "mixed": "mixed"}


@dataclass(frozen=True)
class Variant:
    """One way of answering from reused chunk KV (see the module doc for the spec syntax)."""

    spec: str
    mode: str  # exact | reuse | blend
    ratio: float = 0.0
    select_layers: int = BLEND_SELECT_LAYERS
    random: bool = False
    candidates: float = BLEND_CANDIDATES
    select: str = "deviation"  # BlendConfig.select
    query_layer: int = BLEND_QUERY_LAYER
    kv_format: str = "model"  # the disk tier's format: model (the engine's dtype) or int8

    @classmethod
    def parse(cls, spec: str) -> Variant:
        base, plus, kv_format = spec.partition("+")
        if plus and kv_format != "int8":
            raise ValueError(f"unknown variant {spec!r} (the only format suffix is +int8)")
        return replace(cls._parse(base), spec=spec, kv_format=kv_format or "model")

    @classmethod
    def _parse(cls, spec: str) -> Variant:
        if spec in ("exact", "reuse"):
            return cls(spec, spec)
        kind, _, rest = spec.partition("@")
        rest, colon, query_layer = rest.partition(":")
        ratio, _, rest = rest.partition("/")
        layers, _, candidates = rest.partition("/")
        try:
            variant = cls(spec, "blend", float(ratio), int(layers or BLEND_SELECT_LAYERS), kind == "random",
                          float(candidates or BLEND_CANDIDATES), _SELECT.get(kind, ""),
                          int(query_layer or BLEND_QUERY_LAYER))
        except ValueError:
            variant = None
        if kind not in _SELECT or variant is None or not 0 <= variant.ratio <= 1 or variant.select_layers < 2 \
                or not 0 <= variant.candidates <= 1 or variant.query_layer < 0 \
                or (colon and kind not in ("query", "mixed")):
            raise ValueError(f"unknown variant {spec!r} (exact, reuse, blend@R, blend@R/L, blend@R/L/C, random@R, "
                             "query@R, mixed@R, query@R:Q; 0 <= R, C <= 1, L >= 2, Q >= 0)")
        return variant


@dataclass
class Answer:
    """One prompt answered by one variant: its tokens, per-step log-probabilities and costs."""

    token_ids: list[int]
    text: str
    logprobs: list[torch.Tensor]  # one [V] per generated token
    ttft_s: float
    recomputed: int


class StepRecorder:
    """Logits processor keeping each step's log-probabilities (unless `keep` is false); with `forced`, it makes
    that token the next one."""

    def __init__(self, forced: list[int] | None = None, keep: bool = True) -> None:
        self.forced = forced
        self.keep = keep
        self.logprobs: list[torch.Tensor] = []

    def __call__(self, history: list[int], logits: torch.Tensor) -> torch.Tensor:
        import torch

        if self.keep:
            self.logprobs.append(logits.float().log_softmax(-1))
        if self.forced is None:
            return logits
        only = torch.full_like(logits, float("-inf"))
        only[self.forced[len(history)]] = 0.0
        return only


def randomize_selection(engine: LLMEngine) -> None:
    """Replace the engine's deviation measure with random scores, in the dense pass and in the carried tokens'
    (same layers computed, same shares carried and recomputed)."""
    import torch

    def random_scores(before: tuple[torch.Tensor, torch.Tensor], after: tuple[torch.Tensor, torch.Tensor]
                      ) -> torch.Tensor:
        return torch.rand(len(before[0]))

    engine.connector.mover.deviation = random_scores  # type: ignore[method-assign]


def answer_all(loaded: LoadedModel, kv_dir: Path, mode: str, prompts: list[BenchPrompt], max_tokens: int,
               variant: Variant | None = None, forced: list[list[int]] | None = None, dtype: str = "auto",
               keep_logprobs: bool = True, dense: bool = False) -> list[Answer]:
    """Answer every prompt, one at a time, in a fresh engine whose disk tier is `kv_dir` (or its int8 twin,
    `tier_dir`, for a `+int8` variant). `dense`: dense weights in every step (no 4-bit decode path, whose bf16
    activations make a step's numerics depend on its token count): `exact` is then bit-identical to `off`."""
    from appliance.config import EngineConfig
    from appliance.engine.engine import LLMEngine
    from appliance.engine.sampling import SamplingParams

    variant = variant or Variant(mode, mode)
    config = EngineConfig(data_dir=tier_dir(kv_dir, variant.kv_format), dtype=dtype, kv_cache_mb=2048,
                          compiled_decode=False, doc_cache=mode, doc_cache_kv_format=variant.kv_format,
                          enable_prefix_caching=mode != "off", blend_ratio=variant.ratio,
                          blend_select_layers=variant.select_layers, blend_candidates=variant.candidates,
                          blend_select=variant.select, blend_query_layer=variant.query_layer)
    if dense:
        config = dataclasses.replace(config, int4_decode_tokens=0)
    engine = LLMEngine(loaded, config)
    if variant.random:
        randomize_selection(engine)
    answers = []
    for i, prompt in enumerate(prompts):
        recorder = StepRecorder(forced[i] if forced else None, keep_logprobs)
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
        answers.append(Answer(tokens, loaded.tokenizer.decode(tokens), recorder.logprobs, ttft,
                              req.num_recomputed_tokens))
    return answers


def tier_dir(kv_dir: Path, kv_format: str) -> Path:
    """The data dir of the disk tier in `kv_format`: `kv_dir` itself for the model's dtype, a twin for int8."""
    return kv_dir if kv_format == "model" else kv_dir.with_name(f"{kv_dir.name}-{kv_format}")


def compare(reference: list[Answer], free: list[Answer], forced: list[Answer]) -> dict[str, float]:
    """Fidelity of a variant against off: greedy (`free`) and teacher-forced on off's answers (`forced`, on the
    first questions only when it is shorter)."""
    kl, top1 = [], []
    for ref, tf in zip(reference[:len(forced)], forced, strict=True):
        for p, q in zip(ref.logprobs, tf.logprobs, strict=True):  # [V] log-probabilities of off and the variant
            kl.append(float((p.exp() * (p - q)).sum()))
            top1.append(float(p.argmax() == q.argmax()))
    pairs = list(zip(reference, free, strict=True))
    return {"first_token_agreement": mean(r.token_ids[:1] == c.token_ids[:1] for r, c in pairs),
            "token_f1": mean(token_f1(r.token_ids, c.token_ids) for r, c in pairs),
            "forced_top1": mean(top1), "forced_kl": mean(kl)}


def costs(answers: list[Answer]) -> dict[str, float]:
    ttft = sorted(a.ttft_s for a in answers)
    return {"ttft_ms": 1000 * mean(ttft), "ttft_p50_ms": 1000 * ttft[len(ttft) // 2],
            "recomputed": mean(a.recomputed for a in answers)}


def bench_questions(question_set: str, limit: int) -> tuple[list[str], list[str], list[str | None]]:
    """(question texts, the pages that answer them, gold answers or None) of the first `limit` questions: a gold
    set as written (`gold_sets.SETS`; each asks for a short answer), or the hand-written ones (`hand`) in
    workload B's phrasings."""
    if question_set in SETS:
        gold = GoldQuestions.from_set(question_set, limit)
        return gold.texts, gold.pages, list(gold.golds)
    asked: list[Question] = load_questions(limit)
    return fresh_questions(asked), [q.page for q in asked], [None] * len(asked)


def encoded_prompts(root: Path, texts: list[str], answer_pages: list[str], collection: str, k: int, dtype: str,
                    say: Callable[[str], None], corpus_dir: Path | None = None, loaded: LoadedModel | None = None,
                    kv_formats: tuple[str, ...] = ("model",), dense: bool = False
                    ) -> tuple[LoadedModel, Path, list[BenchPrompt], dict[str, Any]]:
    """Ingest the pages that answer `texts` into `collection` of the data dir `root` (reused when there),
    build each question's RAG prompt from its top `k` passages and encode the chunks they use into a disk
    tier in each of `kv_formats`. Returns the model, the model-format tier's directory (`tier_dir` names the
    others), the prompts and the corpus figures."""
    from appliance.bench.rag_corpus import ensure_collection
    from appliance.bench.retrieval import CORPUS
    from appliance.engine.loader import load_model
    from retrieval.service import RetrievalService

    loaded = loaded or load_model("default", root)
    service = RetrievalService.open(root, loaded.tokenizer, chunk_tokens=256)
    try:
        pages = [p for p in sorted((corpus_dir or CORPUS).glob("*")) if p.name in set(answer_pages)]
        say(f"ingesting the {len(pages)} pages that answer {len(texts)} questions (reused when already there)")
        corpus = ensure_collection(service, collection, pages)
        prompts = build_prompts(service, loaded.tokenizer, collection, texts, k)
    finally:
        service.close()
    kv_dir = root / "kv-blend"
    for kv_format in kv_formats:
        say(f"encoding the chunks the prompts use, {kv_format} format (kept on disk for every variant)")
        answer_all(loaded, kv_dir, "reuse", prompts, 1, Variant("reuse", "reuse", kv_format=kv_format),
                   dtype=dtype, keep_logprobs=False, dense=dense)
    return loaded, kv_dir, prompts, corpus


def run_blend_bench(data_dir: Path | None, num_questions: int, variants: list[Variant], max_tokens: int = 32,
                    k: int = 5, dtype: str = "auto", say: Callable[[str], None] = lambda _: None,
                    corpus_dir: Path | None = None, questions: tuple[list[str], list[str], list[str | None]]
                    | None = None, loaded: LoadedModel | None = None, question_set: str = "modules",
                    forced_questions: int | None = None, dense: bool = False) -> dict[str, Any]:
    """Ingest the pages answering the first `num_questions` questions of `question_set`, encode the chunks their
    prompts use, then answer with off and every variant in the engine `dtype` (teacher-forced on the first
    `forced_questions`, default all); return the figures. Tests pass a small corpus, their own (texts, pages,
    golds) and model, and `dense` (see `answer_all`) where they check that the lossless variants are exact."""
    from appliance.bench.rag import WARM_COLLECTION

    texts, answer_pages, golds = questions or bench_questions(question_set, num_questions)
    texts, answer_pages, golds = texts[:num_questions], answer_pages[:num_questions], golds[:num_questions]
    with ExitStack() as stack:
        root = data_dir or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-blend-")))
        collection = f"{WARM_COLLECTION}-{question_set}-{len(texts)}"
        kv_formats = tuple(sorted({"model", *(v.kv_format for v in variants)}))
        loaded, kv_dir, prompts, corpus = encoded_prompts(root, texts, answer_pages, collection, k, dtype, say,
                                                          corpus_dir, loaded, kv_formats, dense)
        say("off: full prefill, the reference")
        reference = answer_all(loaded, kv_dir, "off", prompts, max_tokens, dtype=dtype, dense=dense)
        forced = [a.token_ids for a in reference][:forced_questions]
        graded = None not in golds
        off_right = right_answers([a.text for a in reference], golds) if graded else []  # type: ignore[arg-type]
        rows = {"off": costs(reference) | ({"accuracy": mean(off_right)} if graded else {})}
        for variant in variants:
            say(f"{variant.spec}: free-running, then teacher-forced on off's answers")
            free = answer_all(loaded, kv_dir, variant.mode, prompts, max_tokens, variant, dtype=dtype,
                              keep_logprobs=False, dense=dense)
            tf = answer_all(loaded, kv_dir, variant.mode, prompts[:len(forced)], max_tokens, variant, forced, dtype,
                            dense=dense)
            rows[variant.spec] = costs(free) | compare(reference, free, tf)
            if graded:
                right = right_answers([a.text for a in free], golds)  # type: ignore[arg-type]
                rows[variant.spec] |= accuracy_ratio(off_right, right)
            say(f"  {rows[variant.spec]}")
    return {"machine": describe_machine(), "corpus": corpus, "question_set": question_set, "questions": len(texts),
            "forced_questions": len(forced), "max_tokens": max_tokens, "k": k, "dtype": dtype,
            "mean_prompt_tokens": mean(len(p.token_ids) for p in prompts), "variants": rows}


def blend_markdown(result: dict[str, Any]) -> str:
    """The "RAG: blend selection" section of docs/BENCHMARKS.md (gold accuracy columns when graded)."""
    rows = result["variants"]
    off = rows["off"]
    graded = "accuracy" in off
    gold_file, _, method = SETS.get(result["question_set"], (Path(), None, ""))
    asked = (f"{result['questions']} gold-answer questions of the `{result['question_set']}` set "
             f"(`appliance/bench/data/{gold_file.name}`, method in `{method}`; right: the gold answer in the "
             "answer's first line)" if graded
             else f"{result['questions']} fresh hand-written questions")
    lines = [
        f"How close `blend`'s recompute choices keep the answer to full prefill (`appliance bench blend`): "
        f"{asked} over the pages that answer them ({result['corpus']['chunks']} chunks), k={result['k']}, mean "
        f"prompt {result['mean_prompt_tokens']:.0f} tokens, chunks pre-encoded on disk, one request at a time, "
        f"greedy, {result['max_tokens']} tokens, dtype {result['dtype']}. `exact` is lossless (its distance from "
        "off is this dtype's noise floor). `blend@R/L/C`: a share R chosen by KV deviation measured L layers deep "
        f"(L={BLEND_SELECT_LAYERS} when not given) among a share C carried there from layer 2 "
        f"(C={BLEND_CANDIDATES} when not given); `random@R`: the same share at random; `query@R`: the reused "
        f"tokens the question attends to most at layer {BLEND_QUERY_LAYER} (`:Q`: at layer Q); `mixed@R`: "
        f"deviation weighted by that attention. Teacher-forced (the first {result['forced_questions']} "
        "questions): along off's answer, the variant's next-token distribution against off's. Token F1 against "
        "off's free-running answer: information only.",
        "",
    ]
    gold_head, gold_rule = ("| accuracy | / off [95% CI] | same verdict ", "|---:|---:|---:") if graded else ("", "")
    lines += [f"| variant {gold_head}| tokens recomputed | TTFT p50 ms | TTFT mean ms | off / this (p50) "
              "| teacher-forced top-1 | teacher-forced KL (nats) | token F1 |",
              f"|---{gold_rule}|---:|---:|---:|---:|---:|---:|---:|"]
    for name, r in rows.items():
        gold = ""
        if graded and name == "off":
            gold = f"| {r['accuracy']:.3f} | 1 | 100% "
        elif graded:
            gold = (f"| {r['accuracy']:.3f} | {r['ratio']:.2f} [{r['ratio_low']:.2f}, {r['ratio_high']:.2f}] "
                    f"| {r['same_verdict']:.0%} ")
        fidelity = ("| 100% | 0 | 1.00 |" if name == "off" else
                    f"| {r['forced_top1']:.1%} | {r['forced_kl']:.3f} | {r['token_f1']:.2f} |")
        recomputed = "all" if name == "off" else f"{r['recomputed']:.0f}"
        lines.append(f"| {name} {gold}| {recomputed} "
                     f"| {r['ttft_p50_ms']:.0f} | {r['ttft_ms']:.0f} | {off['ttft_p50_ms'] / r['ttft_p50_ms']:.1f}x "
                     + fidelity)
    lines += ["", "Machine:", "", machine_markdown(result["machine"]), "",
              "Reproduce: `appliance bench blend --data-dir DIR` (needs `python3.11-doc`; `--variants` picks "
              "the rows, `--question-set hand` the hand-written questions)."]
    return "\n".join(lines)


FRONTIER_PLOT = "bench_blend_frontier.png"


def plot_frontier(result: dict[str, Any], png: Path) -> bool:
    """Gold accuracy / off's (with its 95% interval) against TTFT p50 off / variant, one point per variant;
    False when there is nothing graded or matplotlib is missing."""
    rows = {name: r for name, r in result["variants"].items() if name != "off" and "ratio" in r}
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    if not rows:
        return False
    off_ms = result["variants"]["off"]["ttft_p50_ms"]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, r in rows.items():
        speed = off_ms / r["ttft_p50_ms"]
        ax.errorbar([speed], [r["ratio"]], yerr=[[r["ratio"] - r["ratio_low"]], [r["ratio_high"] - r["ratio"]]],
                    fmt="o", capsize=3)
        ax.annotate(name, (speed, r["ratio"]), textcoords="offset points", xytext=(5, 4), fontsize=8)
    ax.plot([1.0], [1.0], "k*", markersize=10)
    ax.annotate("off", (1.0, 1.0), textcoords="offset points", xytext=(5, 4), fontsize=8)
    ax.axhline(0.97, color="grey", linestyle="--", linewidth=0.8)
    ax.axvline(4.0, color="grey", linestyle=":", linewidth=0.8)
    ax.set_xlabel("TTFT p50: off / variant (x faster)")
    ax.set_ylabel("gold accuracy / off's (95% CI)")
    ax.set_title(f"blend's frontier: {result['questions']} gold questions, dtype {result['dtype']}", fontsize=9)
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return True


def bench_blend(
    json_file: Annotated[Path | None, typer.Option("--json", help="also write the full result here")] = None,
    questions: Annotated[int, typer.Option(min=1, help="questions asked (their pages are ingested)")] = 240,
    question_set: Annotated[str, typer.Option(help="modules or versions (graded against gold answers), or hand "
                                                   "(fidelity only)")] = "modules",
    variants: Annotated[str, typer.Option(help="comma-separated: exact, reuse, blend@R (or "
                                               "blend@R/L, blend@R/L/C), random@R, query@R (or query@R:Q), "
                                               "mixed@R (or mixed@R:Q); any +int8 (an 8-bit disk tier)")
                        ] = ",".join(VARIANTS),
    max_tokens: Annotated[int, typer.Option(min=1, help="tokens generated per answer at most")] = 16,
    forced: Annotated[int | None, typer.Option(min=1, help="teacher-force only the first N questions "
                                                          "(default: all)")] = None,
    dtype: Annotated[str, typer.Option(help="engine dtype: auto, float32 or bfloat16")] = "auto",
    data_dir: Annotated[Path | None, typer.Option(help="keep (and reuse) the ingested pages and model here")
                        ] = None,
    docs: Annotated[bool, typer.Option("--docs/--no-docs", help="update docs/BENCHMARKS.md")] = True,
) -> None:
    """Blend's token selection against full prefill: fidelity (greedy and teacher-forced) and TTFT per variant."""
    from rich.console import Console

    from appliance.bench.report import publish

    console = Console()
    try:
        parsed = [Variant.parse(spec) for spec in variants.split(",")]
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--variants") from exc
    if question_set not in (*SETS, "hand"):
        raise typer.BadParameter(f"one of {', '.join(SETS)}, hand", param_hint="--question-set")
    result = run_blend_bench(data_dir, questions, parsed, max_tokens, dtype=dtype,
                             say=lambda msg: console.print(f"[dim]{msg}[/dim]"), question_set=question_set,
                             forced_questions=forced)
    markdown = blend_markdown(result)
    if docs and plot_frontier(result, Path("docs") / FRONTIER_PLOT):
        markdown += f"\n\n![accuracy against speed-up]({FRONTIER_PLOT})"
    publish(console, result, markdown, "RAG: blend selection", json_file, docs)
