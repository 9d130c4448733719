"""One place for configuration.

`Settings` reads flags and `APPLIANCE_*` environment variables (pydantic-settings); the rest of the
code receives the frozen dataclasses built from it (`EngineConfig`, ...), never the pydantic object.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Every setting of the appliance; each is also the env var `APPLIANCE_<NAME>`."""

    model_config = SettingsConfigDict(env_prefix="APPLIANCE_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = 8000
    data_dir: Path = Path("./data")
    model: str = "default"
    embedder: str = "default"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    attention_backend: str = "auto"
    admin_key: str | None = None
    kv_cache_mb: int = 512
    block_size: int = 16
    max_num_seqs: int = 32
    max_num_batched_tokens: int = 1024
    max_model_len: int = 8192
    max_queue: int = 256
    doc_cache: Literal["off", "exact", "blend", "reuse"] = "exact"
    threads: int = 0

    @classmethod
    def with_flags(cls, **flags: Any) -> Settings:
        """Settings from the environment, with the command-line flags that were given (not None) on top."""
        return cls(**{k: v for k, v in flags.items() if v is not None})

    @property
    def retrieval_device(self) -> str:
        """Where the embedder and FAISS run: the CPU when asked, else wherever is best."""
        return "cpu" if self.device == "cpu" else "auto"

    def engine_config(self) -> EngineConfig:
        return EngineConfig(
            model=self.model,
            data_dir=self.data_dir,
            device=self.device,
            dtype=self.dtype,
            attention_backend=self.attention_backend,
            kv_cache_mb=self.kv_cache_mb,
            block_size=self.block_size,
            max_num_seqs=self.max_num_seqs,
            max_num_batched_tokens=self.max_num_batched_tokens,
            max_model_len=self.max_model_len,
            max_queue=self.max_queue,
            enable_prefix_caching=self.doc_cache != "off",
            threads=self.threads,
        )


@dataclass(frozen=True)
class EngineConfig:
    """What the engine needs to start. `kv_cache_mb` sizes the paged KV pool."""

    model: str = "default"
    data_dir: Path = Path("./data")
    device: str = "auto"
    dtype: str = "auto"
    attention_backend: str = "auto"
    kv_cache_mb: int = 512
    block_size: int = 16
    max_num_seqs: int = 32
    max_num_batched_tokens: int = 1024
    max_model_len: int = 8192
    max_queue: int = 256
    enable_prefix_caching: bool = True
    threads: int = 0
    kv_blocks: int | None = None  # overrides kv_cache_mb with an exact block count (tests, benchmarks)
    int4_decode_tokens: int = 32  # steps of at most this many tokens use 4-bit GGUF weights (CPU, bfloat16)
