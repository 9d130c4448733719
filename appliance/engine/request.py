"""A request's state inside the engine: token ids and counters, never phases.

`num_computed_tokens < num_tokens` means there is prompt (or recomputed) work left; when a step brings
`num_computed_tokens` up to `num_tokens`, the model samples one more token.

A request served from the document cache (`blend`/`reuse`) is worked on by the cache's connector while its
prompt is filled with reused KV and the chosen tokens recomputed; when that is done `num_computed_tokens`
jumps to the end of the prompt.
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field

from appliance.engine.grammar import GrammarState
from appliance.engine.logprobs import TokenLogprobs
from appliance.engine.sampling import SamplingParams


class RequestStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass(eq=False)
class Request:
    request_id: str
    prompt_token_ids: list[int]
    params: SamplingParams
    arrival_time: float = field(default_factory=time.monotonic)
    token_ids: list[int] = field(default_factory=list)  # prompt + generated so far
    num_computed_tokens: int = 0  # tokens whose K/V are in this request's blocks
    num_cached_tokens: int = 0  # prompt tokens taken from the prefix cache at first admission
    num_hashed_blocks: int = 0  # leading full blocks already registered in the prefix cache
    block_table: list[int] = field(default_factory=list)
    status: RequestStatus = RequestStatus.WAITING
    finish_reason: str | None = None
    num_preemptions: int = 0
    first_scheduled_time: float | None = None
    first_token_time: float | None = None
    grammar: GrammarState | None = None  # where its output stands in `params.grammar`
    prompt_logprobs: list[TokenLogprobs] = field(default_factory=list)  # scored so far (`params.prompt_logprobs`)
    # the document cache (appliance/engine/doc_cache; its connector keeps the per-request state)
    doc_mode: str = "exact"  # off | exact | blend | reuse
    prefill_only: bool = False  # an encode job: computes its prompt's KV for the chunk tier, samples nothing
    # from this position on the KV is reused/blended, not exact: its blocks are cached under `reuse_salt`,
    # a chain only requests of the same mode and settings share (None: every block is exact KV)
    reuse_from: int | None = None
    reuse_salt: bytes = b""
    num_reused_tokens: int = 0  # prompt tokens whose KV came from the chunk tier (not recomputed)
    num_recomputed_tokens: int = 0  # chunk tokens that had cached KV but were recomputed (blend)
    num_encoded_tokens: int = 0  # chunk tokens this request had to encode first (chunk-tier misses)
    fill_seconds: float = 0.0  # writing reused KV into its blocks and choosing what to recompute

    def __post_init__(self) -> None:
        self.token_ids = list(self.prompt_token_ids)

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def output_token_ids(self) -> list[int]:
        return self.token_ids[self.num_prompt_tokens:]

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_ids) - self.num_prompt_tokens

    @property
    def finished(self) -> bool:
        return self.status is RequestStatus.FINISHED
