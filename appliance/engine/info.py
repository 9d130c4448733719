"""What a front needs to know of an engine without holding it: its model, its limits and where it runs."""

from __future__ import annotations

from dataclasses import dataclass

from appliance.errors import RequestError


@dataclass(frozen=True)
class EngineInfo:
    """Fixed for an engine's life; sent once by an engine process when it is ready."""

    model_name: str
    max_model_len: int  # prompt plus output tokens one request may hold
    vocab_size: int
    device: str
    dtype: str
    backend: str
    doc_cache: str  # the document-cache mode of a request that names none

    def check_prompt(self, prompt_token_ids: list[int]) -> None:
        """Raise RequestError if the prompt can never be served (cheap; any thread, any process)."""
        if not prompt_token_ids:
            raise RequestError("the prompt is empty")
        if len(prompt_token_ids) >= self.max_model_len:
            raise RequestError(f"the prompt has {len(prompt_token_ids)} tokens; this engine serves at most "
                               f"{self.max_model_len - 1} prompt tokens")
        if any(not 0 <= t < self.vocab_size for t in prompt_token_ids):
            raise RequestError("the prompt contains token ids outside the vocabulary")
