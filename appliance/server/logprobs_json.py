"""Log-probabilities in OpenAI's two shapes: chat's `logprobs.content` entries and completions' parallel lists."""

from __future__ import annotations

from appliance.engine.logprobs import TokenLogprobs
from appliance.engine.tokenizer import TextTokenizer


def chat_logprobs(entries: list[TokenLogprobs], tokenizer: TextTokenizer) -> dict:
    """`{"content": [{token, logprob, bytes, top_logprobs: [{token, logprob, bytes}]}]}`."""
    def one(token_id: int, logprob: float) -> dict:
        raw = tokenizer.token_bytes(token_id)
        return {"token": raw.decode("utf-8", errors="replace"), "logprob": logprob, "bytes": list(raw)}

    return {"content": [one(e.token_id, e.logprob) | {"top_logprobs": [one(t, lp) for t, lp in e.top]}
                        for e in entries]}


def completion_logprobs(entries: list[TokenLogprobs], tokenizer: TextTokenizer, offset: int = 0,
                        first_token: int | None = None) -> dict:
    """`{tokens, token_logprobs, top_logprobs, text_offset}` (legacy completions). `first_token`: an echoed
    prompt's first token, which nothing predicts (its logprob and top are null, as OpenAI returns them).
    `offset`: where the first token's text starts in the choice's text."""
    tokens: list[str] = []
    values: list[float | None] = []
    tops: list[dict[str, float] | None] = []
    offsets: list[int] = []
    listed: list[tuple[int, TokenLogprobs | None]] = [(e.token_id, e) for e in entries]
    if first_token is not None:
        listed.insert(0, (first_token, None))
    for token_id, e in listed:
        text = _text(tokenizer, token_id)
        tokens.append(text)
        values.append(e.logprob if e else None)
        tops.append({_text(tokenizer, t): lp for t, lp in e.top} if e else None)
        offsets.append(offset)
        offset += len(text)
    return {"tokens": tokens, "token_logprobs": values, "top_logprobs": tops, "text_offset": offsets}


def _text(tokenizer: TextTokenizer, token_id: int) -> str:
    return tokenizer.token_bytes(token_id).decode("utf-8", errors="replace")
