"""Retrieval fixtures: the real LLM tokenizer and embedder, loaded once per session."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.engine.loader import load_tokenizer
from appliance.engine.tokenizer import TextTokenizer
from retrieval.embed import shared_embedder
from retrieval.service import RetrievalService


@pytest.fixture(scope="session")
def tokenizer() -> TextTokenizer:
    return load_tokenizer("default")


@pytest.fixture(scope="session", autouse=True)
def _embedder_loaded_once() -> None:
    shared_embedder("default", "auto").encode(["warm up"])


@pytest.fixture
def service(tmp_path: Path, tokenizer: TextTokenizer) -> Iterator[RetrievalService]:
    svc = RetrievalService.open(tmp_path / "data", tokenizer, chunk_tokens=128)
    yield svc
    svc.close()
