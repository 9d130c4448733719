"""The retrieval service a command opens: the configured data dir, chunking with the configured LLM's tokenizer."""

from __future__ import annotations

from pathlib import Path

from appliance.config import Settings
from retrieval.service import RetrievalService


def open_service(data_dir: Path | None, model: str | None, embedder: str | None, chunk_tokens: int) -> RetrievalService:
    """The retrieval service of the configured data dir, chunking with the configured LLM's tokenizer."""
    from appliance.engine.loader import load_tokenizer

    settings = Settings.with_flags(data_dir=data_dir, model=model, embedder=embedder)
    tokenizer = load_tokenizer(settings.model, data_dir=settings.data_dir)
    return RetrievalService.open(
        settings.data_dir,
        tokenizer,
        embedder=settings.embedder,
        chunk_tokens=chunk_tokens,
        device=settings.retrieval_device,
        limits=settings.ingest_limits(),
    )
