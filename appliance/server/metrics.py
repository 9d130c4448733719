"""Prometheus metrics with vLLM's names plus `rag_*`, in one registry per app (so several apps can live in
one process). The latency histograms are observed by `metered_engine.py`; `routes/metrics.py` serves them.

Histograms and per-request counters are observed as requests run; gauges and the engine's running totals
are read from the engine and the store at scrape time by a custom collector. Labels: `model_name`, and in a
cluster `replica` (one engine replica), so no figure names a collection or a key (a reader key may scrape
without learning what it cannot read).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Protocol

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from appliance.engine.front import EngineFront
    from appliance.engine.snapshot import EngineSnapshot
    from retrieval.service import RetrievalService


class LiveSources(Protocol):
    """What the scrape-time figures are read from (the app's `LiveSources`): None while still loading."""

    model_name: str
    engine: EngineFront | None
    retrieval: RetrievalService | None

_TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
                 20.0, 40.0, 80.0, 160.0, 640.0)
_ITL_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0)
_E2E_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0,
                480.0, 960.0)
_RETRIEVAL_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    """The app's metrics. `state` is read at scrape time (engine counters, ingestion jobs in the store)."""

    def __init__(self, state: LiveSources) -> None:
        self.registry = CollectorRegistry()
        model = state.model_name
        labels = ("model_name",)

        def histogram(name: str, doc: str, buckets: tuple[float, ...]) -> Histogram:
            return Histogram(name, doc, labels, registry=self.registry, buckets=buckets).labels(model)

        def counter(name: str, doc: str) -> Counter:
            return Counter(name, doc, labels, registry=self.registry).labels(model)

        self.ttft = histogram("vllm:time_to_first_token_seconds", "Time to first token", _TTFT_BUCKETS)
        self.itl = histogram("vllm:inter_token_latency_seconds", "Time between streamed tokens", _ITL_BUCKETS)
        self.e2e = histogram("vllm:e2e_request_latency_seconds", "End-to-end request latency", _E2E_BUCKETS)
        self.prompt_tokens = counter("vllm:prompt_tokens", "Prompt tokens of finished requests")
        self.retrieval = histogram("rag_retrieval_latency_seconds", "Retrieval time of a question",
                                   _RETRIEVAL_BUCKETS)
        self.tokens_reused = counter("rag_tokens_reused", "Prompt tokens of questions reused from the KV cache")
        self.tokens_computed = counter("rag_tokens_computed", "Prompt tokens of questions computed")
        self.registry.register(_LiveCollector(state))

    def observe_rag(self, retrieval_s: float, tokens_reused: int, tokens_computed: int) -> None:
        self.retrieval.observe(retrieval_s)
        self.tokens_reused.inc(tokens_reused)
        self.tokens_computed.inc(tokens_computed)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class _LiveCollector(Collector):
    """Gauges and running totals read from the engine and the store when Prometheus scrapes."""

    def __init__(self, state: LiveSources) -> None:
        self.state = state

    def collect(self) -> Iterator[Metric]:
        model = self.state.model_name
        engine = self.state.engine
        if engine is not None:
            replicas = engine.replicas()
            if replicas is None:
                yield from _engine_figures([((model,), engine.snapshot())], ["model_name"])
            else:  # a cluster: one series per engine replica (sum them for the cluster's)
                yield from _engine_figures([((model, r.replica_id), r.snapshot) for r in replicas],
                                           ["model_name", "replica"])
        if self.state.retrieval is not None:
            yield from _ingestion(self.state.retrieval)


_GAUGES = (
    ("vllm:num_requests_running", "Requests in the running batch", "num_running"),
    ("vllm:num_requests_waiting", "Requests waiting to be scheduled", "num_waiting"),
    ("vllm:kv_cache_usage_perc", "Share of KV cache blocks in use (0-1)", "kv_usage"),
    ("rag_doc_cache_bytes", "Bytes of chunk KV held in memory", "doc_bytes"),
    ("rag_doc_cache_disk_bytes", "Bytes of chunk KV on disk", "doc_disk_bytes"),
    ("rag_doc_cache_entries", "Chunks held in memory", "doc_entries"),
)
# The chunk tier's lookups, encodes, evictions (memory and disk), and the prompt tokens found in blocks an
# earlier `blend`/`reuse` request of the same settings left. Reused KV counts in rag_doc_cache_prefix_hits,
# never in vllm:prefix_cache_hits (which only counts exact prefix blocks).
_COUNTERS = (
    ("vllm:prefix_cache_queries", "Prompt tokens looked up in the prefix cache", "prefix_queries"),
    ("vllm:prefix_cache_hits", "Prompt tokens found in the prefix cache", "prefix_hits"),
    ("vllm:generation_tokens", "Tokens generated", "generation_tokens"),
    ("vllm:num_preemptions", "Requests preempted", "preemptions"),
    ("rag_doc_cache_prefix_hits", "Prompt tokens found in blocks blended for an earlier request",
     "reused_prefix_hits"),
    ("rag_doc_cache_hits", "Chunk lookups found in the chunk tier", "doc_hits"),
    ("rag_doc_cache_misses", "Chunk lookups not in memory", "doc_misses"),
    ("rag_doc_cache_disk_hits", "Chunk lookups missed in memory and found on disk", "doc_disk_hits"),
    ("rag_doc_cache_encoded_chunks", "Chunks encoded into the chunk tier", "doc_encoded_chunks"),
    ("rag_doc_cache_evictions", "Chunk-tier entries evicted from memory", "doc_evictions"),
    ("rag_doc_cache_invalidations", "Chunk-tier entries dropped with their document", "doc_invalidations"),
)


def _engine_figures(rows: list[tuple[tuple[str, ...], EngineSnapshot]], labels: list[str]) -> Iterator[Metric]:
    """The engine's gauges and running totals, one sample per row (its label values, its figures)."""
    for family, table in ((GaugeMetricFamily, _GAUGES), (CounterMetricFamily, _COUNTERS)):
        for name, doc, attr in table:
            metric = family(name, doc, labels=labels)
            for values, figures in rows:
                metric.add_metric(list(values), getattr(figures, attr))
            yield metric


def _ingestion(retrieval: RetrievalService) -> Iterator[Metric]:
    """Ingestion jobs by state and the ready documents and chunks, from the store (shared with other
    processes that ingest into the same data dir)."""
    jobs = retrieval.jobs.counts_by_state()
    for job_state in ("queued", "running", "done", "failed"):
        gauge = GaugeMetricFamily(f"rag_ingestion_jobs_{job_state}", f"Ingestion jobs {job_state}")
        gauge.add_metric([], jobs.get(job_state, 0))
        yield gauge
    docs, chunks = retrieval.store.ready_totals()
    for name, value in (("rag_ingestion_documents", docs), ("rag_ingestion_chunks", chunks)):
        gauge = GaugeMetricFamily(name, f"Searchable {name.rsplit('_', 1)[1]}")
        gauge.add_metric([], value)
        yield gauge
