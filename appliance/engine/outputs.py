"""Turns sampled tokens into text deltas and finish decisions (EOS, stop strings, length)."""

from __future__ import annotations

from dataclasses import dataclass, field

from appliance.engine.logprobs import TokenLogprobs
from appliance.engine.request import Request
from appliance.engine.tokenizer import IncrementalDetokenizer, TextTokenizer


@dataclass
class RequestOutput:
    """What one step produced for one request. `text` is the new text since the previous output."""

    request_id: str
    text: str
    token_ids: list[int]
    finished: bool
    finish_reason: str | None
    num_prompt_tokens: int
    num_output_tokens: int
    num_cached_tokens: int  # prompt tokens reused from the KV cache (exact prefix and chunk tier)
    queue_s: float = 0.0  # from arrival in the engine to first scheduled
    num_recomputed_tokens: int = 0  # chunk tokens with cached KV that were recomputed anyway (blend)
    num_encoded_tokens: int = 0  # chunk tokens that had to be encoded first (chunk-tier misses)
    doc_mode: str = "exact"
    fill_s: float = 0.0  # document cache: writing the reused KV and choosing the tokens to recompute
    logprobs: list[TokenLogprobs] | None = None  # of `token_ids`, where the request asks
    prompt_logprobs: list[TokenLogprobs] | None = None  # of the prompt's tokens after the first (first output)

    @property
    def num_computed_prompt_tokens(self) -> int:
        return self.num_prompt_tokens - self.num_cached_tokens


@dataclass
class TextState:
    """Per-request detokenization and stop-string state."""

    detok: IncrementalDetokenizer
    text: str = ""
    emitted: int = 0  # characters of `text` already sent
    stops: tuple[str, ...] = ()
    holdback: int = field(init=False)

    def __post_init__(self) -> None:
        self.holdback = max((len(s) for s in self.stops), default=1) - 1


class OutputProcessor:
    """Decides when a request is finished and what text to send, one sampled token at a time."""

    def __init__(self, tokenizer: TextTokenizer, max_model_len: int) -> None:
        self.tokenizer = tokenizer
        self.max_model_len = max_model_len
        self.states: dict[str, TextState] = {}

    def add(self, req: Request) -> None:
        detok = IncrementalDetokenizer(self.tokenizer, req.prompt_token_ids)
        self.states[req.request_id] = TextState(detok, stops=req.params.stop)

    def remove(self, request_id: str) -> None:
        self.states.pop(request_id, None)

    def process(self, req: Request, token: int) -> tuple[str, str | None]:
        """Account for `token` (already appended to req); return (text delta, finish reason or None)."""
        st = self.states[req.request_id]
        p = req.params
        reason: str | None = None
        if (not p.ignore_eos and token in self.tokenizer.stop_token_ids) or token in p.stop_token_ids:
            reason = "stop"
        else:
            st.text += st.detok.push(token)
            for stop in p.stop:
                at = st.text.find(stop, max(0, st.emitted - len(stop)))
                if at != -1:
                    st.text = st.text[:at]
                    reason = "stop"
                    break
        if reason is None and req.grammar is not None and req.grammar.finished:
            reason = "stop"  # the grammar's end is the output's end, even where end-of-sequence is ignored
        if reason is None and (req.num_output_tokens >= p.max_tokens or req.num_tokens >= self.max_model_len):
            reason = "length"
        end = len(st.text) if reason else max(st.emitted, len(st.text) - st.holdback)
        delta = st.text[st.emitted:end]
        st.emitted = end
        return delta, reason
