"""`appliance bench conversation`: what does a follow-up cost, once its conversation's earlier turns are cached?

The conversations are `data/pydoc_conversations.json` (five hand-written turns each, over the demo selection of
python3.11-doc pages). Each turn is asked as the server asks it: the saved turns (`ConversationStore`) become
the prompt's history (`conversations.history.history_of`, the server's budget), the follow-up is rewritten for
retrieval, and the finished turn is saved. Right after (or right before: the order alternates by turn), the same
question with the same history is asked with no cache at all (`doc_cache="off"`: the same prompt, every token
computed). Figures per turn number, medians over the conversations: prompt tokens, tokens reused from the
prefix cache, the answer's TTFT (from the prompt's submission: the user-visible TTFT less the rewrite and the
search, which both variants pay alike), the same with no cache, and the rewrite's cost. Results: the section
"Conversations: TTFT per turn" of docs/BENCHMARKS.md.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from appliance.bench.machine import describe_machine
from appliance.bench.rag_corpus import ensure_collection
from appliance.bench.retrieval import CORPUS
from appliance.config import Settings

if TYPE_CHECKING:
    from appliance.conversations.store import ConversationStore
    from appliance.engine.loader import LoadedModel
    from appliance.rag.history import History
    from appliance.rag.pipeline import Answered, AskPipeline, DoneEvent
    from retrieval.service import RetrievalService

CONVERSATIONS = Path(__file__).with_name("data") / "pydoc_conversations.json"
COLLECTION = "demo"
# written down before the first run
EXPECTED = ("turn 1 about the same TTFT cached or not (only the system prefix is shared); from turn 2 on, the "
            "cached turn computes only its new passages and question (~700-1,400 tokens) while the uncached one "
            "grows to 2,000-4,000 tokens: the answer's TTFT about flat across turns 2-5 cached, 2-4x lower than "
            "uncached by turn 4-5; the rewrite 200-600 ms a follow-up.")


def load_conversations(path: Path = CONVERSATIONS, limit: int | None = None, turns: int = 5) -> list[list[str]]:
    conversations = [c[:turns] for c in json.loads(path.read_text())["conversations"]]
    return conversations[:limit]


async def _ask(pipeline: AskPipeline, question: str, k: int, max_tokens: int, doc_cache: str | None,
               history: History | None) -> Answered:
    from appliance.engine.sampling import SamplingParams
    from appliance.rag.pipeline import answered

    params = SamplingParams(max_tokens=max_tokens, temperature=0.0)
    return await answered(pipeline.ask(question, [COLLECTION], k, params, doc_cache, history))


def _figures(done: DoneEvent) -> dict[str, float]:
    return {"prompt_tokens": done.prompt_tokens, "reused": done.tokens_reused, "computed": done.tokens_computed,
            "ttft_ms": done.ttft_ms, "answer_ttft_ms": round(done.ttft_ms - done.rewrite_ms - done.retrieval_ms, 1),
            "rewrite_ms": done.rewrite_ms}


async def _converse(pipeline: AskPipeline, store: ConversationStore, service: RetrievalService,
                    conversations: list[list[str]], k: int, max_tokens: int, budget: int,
                    say: Callable[[str], None]) -> list[dict]:
    from appliance.conversations.history import chunk_ids_of, history_of, turn_record
    from appliance.rag.answer_json import citations_json

    await _ask(pipeline, "How do I shuffle a list in place?", k, max_tokens, None, None)  # warm-up, not counted
    rows = []
    for c, questions in enumerate(conversations):
        conversation_id = f"bench-{c}"
        for t, question in enumerate(questions, start=1):
            turns = store.turns(conversation_id)
            history = history_of(turns, service.chunks(chunk_ids_of(turns)), budget)
            runs = {}
            for mode in (("cached", "off") if t % 2 else ("off", "cached")):
                runs[mode] = await _ask(pipeline, question, k, max_tokens, "off" if mode == "off" else None, history)
            done = runs["cached"].done
            citations = citations_json(runs["cached"].citations)
            store.add_turn(conversation_id, "bench", COLLECTION, turn_record(question, runs["cached"].sources,
                                                                           citations, done))
            cached, off = _figures(done), _figures(runs["off"].done)
            row = {"conversation": c, "turn": t, "question": question, "retrieval_query": done.retrieval_query,
                   "turns_in_prompt": done.turns_in_prompt, "cached": cached, "off": off}
            say(f"conversation {c} turn {t}: {cached['prompt_tokens']} prompt tokens, {cached['reused']} reused; "
                f"answer TTFT {cached['answer_ttft_ms']:.0f} ms cached, {off['answer_ttft_ms']:.0f} ms with no cache")
            rows.append(row)
    return rows


def run_conversation_bench(corpus: Path = CORPUS, limit: int | None = None, turns: int = 5, k: int = 5,
                           max_tokens: int = 48, budget: int | None = None, loaded: LoadedModel | None = None,
                           conversations_file: Path = CONVERSATIONS, say: Callable[[str], None] = print
                           ) -> dict[str, Any]:
    """Ingest the demo pages into a temporary data dir, hold every conversation, and return the figures."""
    from appliance.commands.demo import demo_pages
    from appliance.config import EngineConfig
    from appliance.conversations.store import ConversationStore
    from appliance.engine.async_engine import AsyncEngine
    from appliance.engine.engine import LLMEngine
    from appliance.engine.loader import load_model
    from appliance.rag.pipeline import AskPipeline
    from retrieval.service import RetrievalService

    budget = Settings().conversation_history_tokens if budget is None else budget
    conversations = load_conversations(conversations_file, limit, turns)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        loaded = loaded or load_model("default", root)
        service = RetrievalService.open(root, loaded.tokenizer)
        store = ConversationStore(root / "conversations.db")
        engine = None
        try:
            ingested = ensure_collection(service, COLLECTION, demo_pages(corpus))
            engine = AsyncEngine(LLMEngine(loaded, EngineConfig(data_dir=root, compiled_decode=False)))
            rows = asyncio.run(_converse(AskPipeline(engine, service), store, service, conversations, k, max_tokens,
                                         budget, say))
        finally:
            if engine is not None:
                engine.close()
            store.close()
            service.close()
    by_turn = {}
    for t in sorted({r["turn"] for r in rows}):
        at = [r for r in rows if r["turn"] == t]
        by_turn[t] = {f"{variant}_{key}": statistics.median(r[variant][key] for r in at)
                      for variant in ("cached", "off") for key in at[0]["cached"]}
    return {"machine": describe_machine(), "corpus": ingested, "conversations": len(conversations), "k": k,
            "max_tokens": max_tokens, "budget": budget, "by_turn": by_turn, "rows": rows}


def conversation_markdown(result: dict[str, Any]) -> str:
    m, c, by_turn = result["machine"], result["corpus"], result["by_turn"]
    first = by_turn[min(by_turn)]["cached_answer_ttft_ms"]
    lines = [
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory']}, torch {m['torch']} ({m['torch_threads']} threads). "
        f"Load average at the start: {m['load_average']}.",
        f"`appliance bench conversation`: {result['conversations']} hand-written five-turn conversations "
        f"(`{CONVERSATIONS.name}`) over {c['documents']} python3.11-doc pages ({c['chunks']} chunks), k = "
        f"{result['k']}, answers greedy and at most {result['max_tokens']} tokens, the default `exact` mode, "
        f"history budget {result['budget']} tokens; each turn also asked with no cache (`off`: the same prompt, every "
        "token computed), the order alternating by turn. Medians over the conversations. *Answer TTFT* runs from "
        "the prompt's submission to the first token (the user-visible TTFT less the rewrite and the search).",
        "",
        "| turn | prompt tokens | reused | computed | answer TTFT ms | no cache ms | no cache / cached "
        "| / turn 1 | rewrite ms |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for t, f in by_turn.items():
        cached, off = f["cached_answer_ttft_ms"], f["off_answer_ttft_ms"]
        lines.append(f"| {t} | {f['cached_prompt_tokens']:.0f} | {f['cached_reused']:.0f} | {f['cached_computed']:.0f} "
                     f"| {cached:.0f} | {off:.0f} | {off / cached:.2f}x | {cached / first:.2f}x "
                     f"| {f['cached_rewrite_ms']:.0f} |")
    lines += ["", f"Expected before the first run (written down then): {EXPECTED}"]
    return "\n".join(lines)


def bench_conversation(
    corpus: Annotated[Path, typer.Option(help="python3.11-doc's library pages")] = CORPUS,
    limit: Annotated[int | None, typer.Option(min=1, help="the first N conversations only")] = None,
    turns: Annotated[int, typer.Option(min=1, max=5, help="turns of each conversation")] = 5,
    max_tokens: Annotated[int, typer.Option(min=1, max=512, help="longest answer")] = 48,
    json_file: Annotated[Path | None, typer.Option("--json", help="also write the full result here")] = None,
    docs: Annotated[bool, typer.Option("--docs/--no-docs", help="update docs/BENCHMARKS.md")] = True,
) -> None:
    """TTFT of each turn of a conversation, with its earlier turns cached and with no cache at all."""
    from rich.console import Console

    from appliance.bench.report import publish
    from appliance.errors import ApplianceError

    console = Console()
    try:
        result = run_conversation_bench(corpus, limit, turns, max_tokens=max_tokens,
                                        say=lambda msg: console.print(msg, style="dim", markup=False, highlight=False))
    except (ApplianceError, FileNotFoundError) as exc:
        console.print(f"[bold red]error:[/] {exc}")
        raise typer.Exit(1) from exc
    publish(console, result, conversation_markdown(result), "Conversations: TTFT per turn", json_file, docs)
