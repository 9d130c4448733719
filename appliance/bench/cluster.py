"""`appliance bench cluster`: document-affinity routing against round-robin and power-of-two choices, on a Ray Serve
cluster of 2 engine replicas asked through the HTTP API as a user would.

Workload: the bench's questions grouped into topics (the questions of one page), topics drawn with Zipf popularity,
each request in one of `rag_workload`'s phrasings, so requests on a topic share most of their passages without
repeating exactly; every router gets the same requests in the same order, `concurrency` in flight at once
(`POST /api/ask`, streamed: TTFT to the first `token` event). The first `warm` requests fill the caches and are not
measured: a server that has run a while has paid for its first reading of each passage (a miss under any router),
and what routing changes is what happens after.

Sizes: each replica's chunk tier (memory) holds `TIER_SHARE` of the working set (the distinct passages' tokens over
the whole mix, times the KV bytes per token); its paged pool holds `concurrency` of the longest prompts
`POOL_HEADROOM` times over. The disk tier is off: the replicas of one host share it, so a replica would load what
the other one encoded and the routing's effect would be hidden.

Per run (a fresh cluster per router and repeat, routers interleaved in time since this VM drifts 20-30% over a run):
the chunk tier's hit rate (from `/api/admin/cluster`'s counters before and after the measured requests), TTFT
p50/p95, requests/s over their wall time and the busiest replica's share of them. Figures: medians over repeats.
"""

from __future__ import annotations

import math
import random
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from contextlib import ExitStack
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from appliance.bench.itl import percentile
from appliance.bench.machine import describe_machine
from appliance.bench.rag_corpus import ensure_collection
from appliance.bench.rag_workload import PHRASINGS_A, BenchPrompt, Question, build_prompts, load_questions, phrase
from appliance.bench.retrieval import CORPUS
from appliance.bench.served import free_port

if TYPE_CHECKING:
    from appliance.config import Settings
    from appliance.engine.loader import LoadedModel

ROUTER_ORDER = ("affinity", "round-robin", "pow2")
REPLICAS = 2
COLLECTION = "pydoc"
K = 5  # passages per question (`/api/ask`'s default)
CHUNK_TOKENS = 256  # as bench rag ingests
ZIPF = 1.1  # topic popularity's exponent
TIER_SHARE = 0.6  # each replica's chunk tier: this share of the working set
POOL_HEADROOM = 2  # the paged pool holds `concurrency` of the longest prompts this many times over
REPORT_WAIT_S = 2.5  # replicas report about once a second: counters read this long after the last request are fresh
READY_TIMEOUT_S = 600.0
# (label, figure, bar, higher is better): affinity against round-robin, and affinity's balance
TARGETS = (("document-cache hit rate, affinity / round-robin", "hit_rate_ratio", 1.5, True),
           ("TTFT p50, affinity / round-robin", "ttft_p50_ratio", 0.7, False),
           ("busiest replica's share of requests, affinity", "busiest_share", 0.65, False))
FIGURES = ("hit_rate", "ttft_p50_ms", "ttft_p95_ms", "requests_per_s", "busiest_share")
Step = Callable[[str, int, int], None]  # (run label, requests done, requests in the run)


def topic_traffic(questions: list[Question], requests: int, seed: int = 0, exponent: float = ZIPF) -> list[str]:
    """`requests` question texts: topics (questions grouped by page) drawn with Zipf(exponent) popularity over a
    shuffled order, then one of the topic's questions and a phrasing, uniformly."""
    rng = random.Random(seed)
    by_page: dict[str, list[Question]] = {}
    for q in questions:
        by_page.setdefault(q.page, []).append(q)
    topics = list(by_page.values())
    rng.shuffle(topics)
    weights = [1 / (rank + 1) ** exponent for rank in range(len(topics))]
    return [phrase(rng.choice(topic).text, rng.choice(PHRASINGS_A))
            for topic in rng.choices(topics, weights=weights, k=requests)]


def plan_sizes(prompts: list[BenchPrompt], kv_bytes_per_token: int, concurrency: int, max_tokens: int
               ) -> dict[str, Any]:
    """Each replica's KV budget (`kv_cache_mb`, `doc_cache_share`): a chunk tier of TIER_SHARE of the working set
    plus a paged pool of POOL_HEADROOM x `concurrency` of the longest prompts and their answers."""
    passages = {(s.doc_id, s.chunk_id): s.length for p in prompts for s in p.layout.chunks}
    tokens = sum(passages.values())
    tier = TIER_SHARE * tokens * kv_bytes_per_token
    longest = max(len(p.token_ids) for p in prompts) + max_tokens
    pool = POOL_HEADROOM * concurrency * longest * kv_bytes_per_token
    kv_cache_mb = math.ceil((tier + pool) / 2**20)
    share = round(tier / (kv_cache_mb * 2**20), 4)
    return {"kv_bytes_per_token": kv_bytes_per_token, "distinct_passages": len(passages),
            "working_set_tokens": tokens, "working_set_mb": round(tokens * kv_bytes_per_token / 2**20, 1),
            "kv_cache_mb": kv_cache_mb, "doc_cache_share": share, "chunk_tier_mb": round(kv_cache_mb * share, 1),
            "pool_mb": round(kv_cache_mb * (1 - share), 1), "longest_prompt_tokens": longest - max_tokens,
            "prompt_tokens_mean": round(statistics.mean(len(p.token_ids) for p in prompts))}


def ask(client: httpx.Client, question: str, max_tokens: int) -> float:
    """One streamed `POST /api/ask`, read to its `done` event; its TTFT in ms (to the first `token` event; an
    answer without tokens: to `done`)."""
    body = {"question": question, "collection": COLLECTION, "stream": True, "max_tokens": max_tokens}
    start = time.perf_counter()
    first: float | None = None
    event = ""
    with client.stream("POST", "/api/ask", json=body) as reply:
        reply.raise_for_status()
        for line in reply.iter_lines():
            if line.startswith("event: "):
                event = line.removeprefix("event: ")
                if event in ("token", "done") and first is None:
                    first = time.perf_counter()
                if event == "done":
                    break
            elif event == "error" and line.startswith("data: "):
                raise RuntimeError(f"/api/ask ended with an error: {line.removeprefix('data: ')}")
    if first is None or event != "done":
        raise RuntimeError(f"/api/ask's stream ended before its done event: {question!r}")
    return (first - start) * 1000


def replica_counters(client: httpx.Client) -> dict[str, dict[str, int]]:
    """Each replica's cumulative `served`, `doc_hits` and `doc_misses`, by replica id (`/api/admin/cluster`)."""
    reply = client.get("/api/admin/cluster")
    reply.raise_for_status()
    return {r["replica_id"]: {k: r[k] for k in ("served", "doc_hits", "doc_misses")} for r in reply.json()["replicas"]}


def wait_ready(client: httpx.Client) -> None:
    """Until `/ready` answers 200 and every replica has reported since its warm-up (RuntimeError after
    READY_TIMEOUT_S)."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            if client.get("/ready").status_code == 200:
                time.sleep(REPORT_WAIT_S)
                if len(replica_counters(client)) == REPLICAS:
                    return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"the cluster was not ready with {REPLICAS} replicas in {READY_TIMEOUT_S:.0f} s")


def run_figures(before: dict[str, dict[str, int]], after: dict[str, dict[str, int]], ttfts: list[float],
                wall_s: float) -> dict[str, Any]:
    """One run's figures from the replicas' counters before and after the mix and the requests' TTFTs."""
    delta = {rid: {k: v - before.get(rid, {}).get(k, 0) for k, v in c.items()} for rid, c in after.items()}
    hits, misses = (sum(d[k] for d in delta.values()) for k in ("doc_hits", "doc_misses"))
    served = sorted((d["served"] for d in delta.values()), reverse=True)
    total = sum(served) or 1
    return {"requests": len(ttfts), "wall_s": round(wall_s, 2), "doc_hits": hits, "doc_misses": misses,
            "hit_rate": hits / (hits + misses) if hits + misses else 0.0,
            "ttft_p50_ms": percentile(ttfts, 0.5), "ttft_p95_ms": percentile(ttfts, 0.95),
            "requests_per_s": len(ttfts) / wall_s, "shares": [s / total for s in served],
            "busiest_share": served[0] / total}


def _ask_all(client: httpx.Client, questions: list[str], concurrency: int, max_tokens: int,
             tick: Callable[[int, int], None]) -> list[float]:
    """Ask every question, `concurrency` at once (`tick(done, all)` after each); their TTFTs in ms."""
    with ThreadPoolExecutor(concurrency) as pool:
        futures = [pool.submit(ask, client, q, max_tokens) for q in questions]
        ttfts = []
        for future in as_completed(futures):
            ttfts.append(future.result())
            tick(len(ttfts), len(questions))
    return ttfts


def measure(settings: Settings, router: str, warm: list[str], questions: list[str], concurrency: int,
            max_tokens: int, tick: Callable[[int, int], None]) -> dict[str, Any]:
    """Start a cluster of REPLICAS replicas behind `router`, ask the `warm` questions (not measured: the caches
    fill, as on a server that has run a while), then every one of `questions` (`tick(done, all)` after each of
    both), stop it; the run's figures, of `questions` only."""
    from appliance.cluster.app import ClusterPlan
    from appliance.cluster.serve import start_cluster, stop_cluster

    plan = ClusterPlan(replicas=REPLICAS, router=router, threads_per_replica=1)
    headers = {"Authorization": f"Bearer {settings.admin_key}"} if settings.admin_key else {}
    start_cluster(settings, plan)
    try:
        with httpx.Client(base_url=f"http://{settings.host}:{settings.port}", headers=headers, timeout=600) as client:
            wait_ready(client)
            _ask_all(client, warm, concurrency, max_tokens, lambda done, _: tick(done, len(warm) + len(questions)))
            time.sleep(REPORT_WAIT_S)
            before = replica_counters(client)
            start = time.perf_counter()
            ttfts = _ask_all(client, questions, concurrency, max_tokens,
                             lambda done, _: tick(len(warm) + done, len(warm) + len(questions)))
            wall_s = time.perf_counter() - start
            time.sleep(REPORT_WAIT_S)
            after = replica_counters(client)
    finally:
        stop_cluster(plan)
    return run_figures(before, after, ttfts, wall_s)


def summarize(runs: list[dict[str, Any]], routers: Sequence[str]) -> dict[str, Any]:
    """Per router the medians of its runs' figures; affinity / round-robin ratios and the targets when both ran."""
    medians = {r: {f: statistics.median(run[f] for run in runs if run["router"] == r) for f in FIGURES}
               for r in routers}
    out: dict[str, Any] = {"routers": medians}
    if {"affinity", "round-robin"} <= set(routers):
        a, rr = medians["affinity"], medians["round-robin"]
        reached = {"hit_rate_ratio": a["hit_rate"] / rr["hit_rate"] if rr["hit_rate"] else None,
                   "ttft_p50_ratio": a["ttft_p50_ms"] / rr["ttft_p50_ms"], "busiest_share": a["busiest_share"]}
        out["ratios"] = {k: reached[k] for k in ("hit_rate_ratio", "ttft_p50_ratio")}
        out["targets"] = [{"label": label, "bar": bar, "higher": higher, "reached": reached[key],
                           "met": reached[key] is not None and (reached[key] >= bar if higher else reached[key] <= bar)}
                          for label, key, bar, higher in TARGETS]
    return out


def run_cluster_bench(data_dir: Path | None, requests: int = 80, concurrency: int = 2, repeats: int = 2,
                      routers: Sequence[str] = ROUTER_ORDER, max_tokens: int = 16, corpus_dir: Path = CORPUS,
                      questions: list[Question] | None = None, loaded: LoadedModel | None = None,
                      say: Callable[[str], None] = lambda _: None, step: Step = lambda *_: None,
                      warm: int = 80) -> dict[str, Any]:
    """Ingest (or reuse) the corpus under `data_dir` (None: a temporary dir), build the mix (`warm` requests that
    fill the caches, then `requests` measured ones, drawn alike) and size the replicas, run every router `repeats`
    times, interleaved; return every run's figures and the summary. Tests pass a small `corpus_dir` (HTML or
    markdown pages), their own `questions` and a `loaded` model."""
    import ray
    from ray import serve

    from appliance.config import Settings
    from appliance.engine.device import resolve_device, resolve_dtype
    from appliance.engine.loader import load_model
    from retrieval.service import RetrievalService

    machine = describe_machine()
    with ExitStack() as stack:
        root = data_dir or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-cluster-")))
        loaded = loaded or load_model("default", root)  # also writes the conversion cache the replicas load
        pages = sorted(p for p in corpus_dir.iterdir() if p.suffix in (".html", ".md")) if corpus_dir.is_dir() else []
        say(f"ingesting {corpus_dir} (reused when already there)")
        questions = questions or load_questions()
        service = RetrievalService.open(root, loaded.tokenizer, chunk_tokens=CHUNK_TOKENS)
        try:  # closed before the cluster starts: its Api replica opens the store and indexes itself
            corpus = ensure_collection(service, COLLECTION, pages)
            texts = topic_traffic(questions, warm + requests)
            prompts = build_prompts(service, loaded.tokenizer, COLLECTION, texts, K)
        finally:
            service.close()
        dtype = resolve_dtype("auto", resolve_device("auto"))
        sizes = plan_sizes(prompts, loaded.config.kv_bytes_per_token(dtype.itemsize), concurrency, max_tokens)
        say(f"each replica: KV {sizes['kv_cache_mb']} MB, chunk tier {sizes['chunk_tier_mb']} MB "
            f"({TIER_SHARE:.0%} of a {sizes['working_set_mb']} MB working set)")
        settings = Settings(data_dir=root, port=free_port(), doc_cache="blend", doc_cache_disk_mb=0,
                            kv_cache_mb=sizes["kv_cache_mb"], doc_cache_share=sizes["doc_cache_share"],
                            compiled_decode=False)  # no torch.compile build competing with the mix for the CPUs
        runs = []
        try:
            for repeat in range(repeats):
                for router in routers:
                    label = f"{router} #{repeat + 1}"
                    say(f"{label}: starting {REPLICAS} replicas")
                    figures = measure(settings, router, texts[:warm], texts[warm:], concurrency, max_tokens,
                                      partial(step, label))
                    runs.append({"router": router, "repeat": repeat, **figures})
        finally:
            serve.shutdown()
            ray.shutdown()
    return {"machine": machine, "corpus": corpus, "sizes": {**sizes, "dtype": str(dtype).removeprefix("torch.")},
            "workload": {"model": loaded.name, "requests": requests, "warm": warm, "concurrency": concurrency,
                         "max_tokens": max_tokens, "k": K, "repeats": repeats, "replicas": REPLICAS,
                         "topics": len({q.page for q in questions}), "zipf": ZIPF,
                         "tier_share": TIER_SHARE},
            "runs": runs, **summarize(runs, routers)}
