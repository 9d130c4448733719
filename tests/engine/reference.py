"""Hugging Face transformers as the reference implementation (tests only)."""

from __future__ import annotations

import torch

from appliance.engine.loader import default_model_path


def load_reference_model() -> torch.nn.Module:
    """transformers' own GGUF loader (its dequantization and weight layout, independent of ours)."""
    from transformers import AutoModelForCausalLM

    path = default_model_path()
    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
    return model.eval()


@torch.no_grad()
def reference_greedy(model: torch.nn.Module, prompt: list[int], max_new_tokens: int) -> list[int]:
    """Plain greedy decoding with transformers' KV cache, no stopping at EOS."""
    out = model(torch.tensor([prompt]), use_cache=True)
    tokens: list[int] = []
    for _ in range(max_new_tokens):
        token = int(out.logits[0, -1].argmax())
        tokens.append(token)
        out = model(torch.tensor([[token]]), past_key_values=out.past_key_values, use_cache=True)
    return tokens
