"""A request's state inside the engine: token ids and counters, never phases.

`num_computed_tokens < num_tokens` means there is prompt (or recomputed) work left; when a step brings
`num_computed_tokens` up to `num_tokens`, the model samples one more token.
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field

import torch

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
    generator: torch.Generator | None = None

    def __post_init__(self) -> None:
        self.token_ids = list(self.prompt_token_ids)
        if self.params.seed is not None:
            self.generator = torch.Generator().manual_seed(self.params.seed)

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
