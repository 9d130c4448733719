"""POST /v1/embeddings: the retrieval embedder behind OpenAI's embeddings API (float or base64 vectors)."""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path

import numpy as np
from fastapi import APIRouter, Depends

from appliance.server.deps import AppState, Principal, current_principal, engine_of, get_state
from appliance.server.schemas import EmbeddingRequest
from appliance.server.schemas_retrieval import retrieval_of

router = APIRouter(prefix="/v1")


def embedder_name(spec: str) -> str:
    """The model name reported for the configured embedder ("default" is all-MiniLM-L6-v2)."""
    return "all-MiniLM-L6-v2" if spec == "default" else Path(spec).name


@router.post("/embeddings")
async def embeddings(body: EmbeddingRequest, state: AppState = Depends(get_state),
                     _: Principal = Depends(current_principal)) -> dict:
    """One unit-length vector per input text. `usage` counts tokens with the served LLM's tokenizer."""
    texts = body.texts()
    vectors = await asyncio.to_thread(retrieval_of(state).embed, texts)
    tokenizer = engine_of(state).tokenizer
    tokens = sum(len(tokenizer.encode(t)) for t in texts)

    def encode(vector: list[float]) -> list[float] | str:
        if body.encoding_format == "float":
            return vector
        return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode()

    return {"object": "list", "model": embedder_name(state.settings.embedder),
            "data": [{"object": "embedding", "index": i, "embedding": encode(v)} for i, v in enumerate(vectors)],
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}
