"""One place for configuration.

`Settings` reads flags and `APPLIANCE_*` environment variables (pydantic-settings); the rest of the
code receives the frozen dataclasses built from it (`EngineConfig`, ...), never the pydantic object.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, get_args

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

DocCacheMode = Literal["off", "exact", "blend", "reuse"]  # how a RAG prompt's passages get their KV (README)
DOC_CACHE_MODES: tuple[str, ...] = get_args(DocCacheMode)
BLEND_SELECT_LAYERS = 4  # blend measures KV deviation after this many layers (appliance bench blend)
BLEND_CANDIDATES = 0.3  # share of reused chunk tokens carried from layer 2 to BLEND_SELECT_LAYERS (gradual filtering)
BLEND_SELECT: Literal["deviation", "query", "mixed"] = "query"  # how blend chooses (BlendConfig; BENCHMARKS.md)
BLEND_QUERY_LAYER = 4  # the layer whose question attention scores passage tokens (query, mixed)

if TYPE_CHECKING:
    from retrieval.jobs import IngestLimits


@dataclass(frozen=True)
class EngineConfig:
    """What the engine needs to start. `kv_cache_mb` is the KV budget: the paged pool and the chunk tier.

    The one place of the engine's defaults: `Settings` takes them from here, and `Settings.engine_config`
    copies the fields of the same name (the rest are derived there, or set by tests and benchmarks)."""

    model: str = "default"
    data_dir: Path = Path("./data")
    device: str = "auto"
    dtype: str = "auto"
    attention_backend: str = "auto"
    kv_cache_mb: int = 1024
    block_size: int = 16
    max_num_seqs: int = 32
    max_num_batched_tokens: int = 1024
    decode_step_tokens: int = 28  # on a CPU, while requests decode: their tokens + document-cache work a step (0: any)
    max_model_len: int = 8192
    enable_prefix_caching: bool = True
    doc_cache: str = "exact"  # default mode of requests that do not choose one (DOC_CACHE_MODES)
    doc_cache_share: float = 0.4  # of kv_cache_mb, for the chunk tier (the paged pool gets the rest)
    blend_ratio: float = 0.15
    blend_first_tokens: int = 4
    blend_select_layers: int = BLEND_SELECT_LAYERS
    blend_candidates: float = BLEND_CANDIDATES
    blend_select: str = BLEND_SELECT
    blend_query_layer: int = BLEND_QUERY_LAYER
    doc_cache_disk_mb: int = 8192
    doc_cache_kv_format: str = "int8"
    threads: int = 0  # 0: every CPU this process may use
    kv_blocks: int | None = None  # overrides kv_cache_mb with an exact block count (tests, benchmarks)
    decode_graphs: str = "auto"  # auto (CUDA graphs on CUDA) | off | eager (the graph path uncaptured: tests)
    int4_decode_tokens: int = 32  # CPU steps of at most this many tokens use 4-bit GGUF weights (0: dense)
    compiled_decode: bool = True  # CPU decode steps run compiled code once built (in the background)
    fused_decode_rows: int = 32  # of those, steps of at most this many sequences: the fused C++ layer (0: never)


class Settings(BaseSettings):
    """Every setting of the appliance; each is also the env var `APPLIANCE_<NAME>`."""

    model_config = SettingsConfigDict(env_prefix="APPLIANCE_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = 8000
    data_dir: Path = EngineConfig.data_dir
    model: str = EngineConfig.model
    embedder: str = "default"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    attention_backend: str = EngineConfig.attention_backend
    admin_key: str | None = None
    kv_cache_mb: int = EngineConfig.kv_cache_mb
    block_size: int = EngineConfig.block_size
    max_num_seqs: int = EngineConfig.max_num_seqs
    max_num_batched_tokens: int = EngineConfig.max_num_batched_tokens
    decode_step_tokens: int = Field(default=EngineConfig.decode_step_tokens, ge=0)  # CPU: held doc-cache work (0: none)
    max_model_len: int = EngineConfig.max_model_len
    max_queue: int = 256
    engine_process: bool = True  # `appliance serve` steps the engine in its own process (false: on a thread)
    engine_nice: int = Field(default=10, ge=0, le=19)  # the engine's threads yield the CPU to the API's (priority.py)
    doc_cache: DocCacheMode = EngineConfig.doc_cache  # type: ignore[assignment]
    doc_cache_share: float = Field(default=EngineConfig.doc_cache_share, ge=0.0, lt=1.0)  # kv_cache_mb: chunk tier
    blend_ratio: float = Field(default=EngineConfig.blend_ratio, ge=0.0, le=1.0)  # reused tokens recomputed (blend)
    blend_first_tokens: int = Field(default=EngineConfig.blend_first_tokens, ge=0)  # of each chunk, always recomputed
    blend_select_layers: int = Field(default=EngineConfig.blend_select_layers, ge=2)  # deviation measured here
    blend_candidates: float = Field(default=EngineConfig.blend_candidates, ge=0.0, le=1.0)  # carried past layer 2
    blend_select: Literal["deviation", "query", "mixed"] = BLEND_SELECT  # how blend chooses (BlendConfig)
    blend_query_layer: int = Field(default=EngineConfig.blend_query_layer, ge=0)  # question attention measured here
    doc_cache_disk_mb: int = Field(default=EngineConfig.doc_cache_disk_mb, ge=0)  # under <data_dir>/kvcache (0: off)
    doc_cache_kv_format: Literal["model", "int8"] = EngineConfig.doc_cache_kv_format  # type: ignore[assignment]
    threads: int = Field(default=EngineConfig.threads, ge=0)  # engine intra-op threads (0: every CPU)
    cuda_graphs: bool = True  # on CUDA, decode steps replay captured graphs (needs triton)
    compiled_decode: bool = EngineConfig.compiled_decode  # on a CPU, decode steps run compiled layers
    fused_decode_rows: int = Field(default=EngineConfig.fused_decode_rows, ge=0)  # of those, the fused C++ layer
    conversation_history_tokens: int = Field(default=4096, ge=0)  # earlier turns a follow-up's prompt carries
    followup_rewrite: Literal["fallback", "model", "model+terms"] = "fallback"  # how a follow-up is searched for
    # how an answer is asked for (appliance/rag/answering.py; measured by `appliance bench answers`)
    passage_order: Literal["auto", "canonical", "relevance"] = "auto"  # auto: canonical under exact, else relevance
    answer_prompt: Literal["cite", "short", "short+examples"] = "short"
    steer_citations: bool = True  # at a sentence end a passage supports, the decoder is steered to cite it
    evidence_quotes: int = Field(default=1, ge=0, le=5)  # passage sentences shown as an answer's evidence
    copy_bias: float = Field(default=3.0, ge=0.0, le=10.0)  # logit bias toward the passages' tokens (0: none)
    loop_guard: bool = True  # an answer may not repeat a short block of tokens a third time in a row
    warmup_tokens: int = Field(default=1500, ge=0)  # warm-up prompt run before /ready (0: no warm-up)
    warmup_timeout_s: float = Field(default=120.0, gt=0)  # /ready turns 200 after this even if warm-up is not done
    # --- trust (issue 7): request and upload sizes, archives, parsers, generation bounds, rate limits ---
    max_body_mb: float = Field(default=4.0, gt=0)  # any request body but an upload (413)
    max_upload_mb: float = Field(default=512.0, gt=0)  # one multipart upload request (413)
    max_file_mb: float = Field(default=64.0, gt=0)  # each uploaded or ingested file (413)
    max_upload_files: int = Field(default=100, ge=1)  # files in one upload (413)
    archive_max_entries: int = Field(default=10_000, ge=1)  # files in one zip
    archive_max_mb: float = Field(default=512.0, gt=0)  # expanded size of one zip
    archive_max_ratio: float = Field(default=200.0, ge=1.0)  # expanded / compressed size of one zip entry (> 1 MB)
    parse_timeout_s: float = Field(default=60.0, gt=0)  # per file, in the parser worker process
    parse_memory_mb: int = Field(default=2048, ge=256)  # the parser worker's address space
    max_tokens_limit: int = Field(default=4096, ge=1)  # a request's max_tokens above it: 400
    rate_limit_per_minute: int = Field(default=600, ge=0)  # requests per API key (0: off); over it 429 + Retry-After
    rate_limit_burst: int = Field(default=60, ge=1)  # requests a key may make at once before the rate applies

    @classmethod
    def with_flags(cls, **flags: Any) -> Settings:
        """Settings from the environment, with the command-line flags that were given (not None) on top."""
        return cls(**{k: v for k, v in flags.items() if v is not None})

    @property
    def retrieval_device(self) -> str:
        """Where the embedder and FAISS run: the CPU when asked, else wherever is best."""
        return "cpu" if self.device == "cpu" else "auto"

    def ingest_limits(self) -> IngestLimits:
        """The limits of ingestion (files, archives, parser worker) for `RetrievalService.open`."""
        from retrieval.jobs import IngestLimits
        from retrieval.parse.zip import ArchiveLimits

        mb = 1024 * 1024
        archive = ArchiveLimits(max_entries=self.archive_max_entries, max_total_bytes=int(self.archive_max_mb * mb),
                                max_entry_bytes=int(self.max_file_mb * mb), max_ratio=self.archive_max_ratio)
        return IngestLimits(max_file_bytes=int(self.max_file_mb * mb), parse_timeout_s=self.parse_timeout_s,
                            parse_memory_bytes=self.parse_memory_mb * mb, archive=archive)

    def engine_config(self) -> EngineConfig:
        """The engine's configuration: each EngineConfig field that is a setting, by name, and two derived."""
        shared = {f.name: getattr(self, f.name) for f in fields(EngineConfig) if f.name in type(self).model_fields}
        return EngineConfig(**shared, enable_prefix_caching=self.doc_cache != "off",
                            decode_graphs="auto" if self.cuda_graphs else "off")

    def one_shot_engine_config(self) -> EngineConfig:
        """The engine of a command that runs once (`ask`, `eval`, `warm`): eager decode, since a compiled-decode
        build in the background would only compete with the work it was started for."""
        return replace(self.engine_config(), compiled_decode=False)
