"""The engine: add requests, call `step()` until they finish (nano-vllm's loop, vLLM v1's counters).

    engine = LLMEngine.from_config(EngineConfig())
    engine.add_request("r1", prompt_ids, SamplingParams(max_tokens=32, temperature=0))
    while engine.has_unfinished(): outputs = engine.step()
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from dataclasses import dataclass

import torch

from appliance.config import EngineConfig
from appliance.engine.block_manager import BlockManager
from appliance.engine.device import resolve_device, resolve_dtype
from appliance.engine.loader import LoadedModel, load_model
from appliance.engine.model import CausalLM
from appliance.engine.outputs import OutputProcessor, RequestOutput
from appliance.engine.quant import int4_kernel_available
from appliance.engine.request import Request
from appliance.engine.runner import ModelRunner
from appliance.engine.sampling import SamplingParams
from appliance.engine.scheduler import Scheduler
from appliance.engine.tokenizer import TextTokenizer
from appliance.errors import RequestError
from kernels.base import get_backend

log = logging.getLogger("appliance.engine")


@dataclass
class EngineStats:
    """Running totals for metrics (tokens, steps, seconds)."""

    steps: int = 0
    tokens_computed: int = 0  # every token pushed through the model (prompt, recompute and decode)
    generation_tokens: int = 0
    preemptions: int = 0
    busy_seconds: float = 0.0


class LLMEngine:
    def __init__(self, loaded: LoadedModel, config: EngineConfig) -> None:
        if config.threads:
            torch.set_num_threads(config.threads)
        self.config = config
        self.device = resolve_device(config.device)
        self.dtype = resolve_dtype(config.dtype, self.device)
        self.model_name = loaded.name
        self.model_config = loaded.config
        self.tokenizer: TextTokenizer = loaded.tokenizer
        small_batch = config.int4_decode_tokens if self._int4_decode() else 0
        self.model = CausalLM(loaded.config, loaded.weights, self.dtype, self.device, loaded.int4, small_batch)
        backend = get_backend(config.attention_backend, self.device)
        bytes_per_block = loaded.config.kv_bytes_per_token(self.dtype.itemsize) * config.block_size
        num_blocks = config.kv_blocks or max(2, config.kv_cache_mb * 2**20 // bytes_per_block)
        self.runner = ModelRunner(self.model, backend, num_blocks, config.block_size)
        salt = hashlib.sha256(f"{loaded.source}|{loaded.config.to_json()}|{self.dtype}".encode()).digest()
        self.block_manager = BlockManager(num_blocks, config.block_size, salt, config.enable_prefix_caching)
        self.scheduler = Scheduler(self.block_manager, config.max_num_seqs, config.max_num_batched_tokens)
        pool_tokens = num_blocks * config.block_size
        self.max_model_len = min(config.max_model_len, loaded.config.max_position, pool_tokens)
        self.outputs = OutputProcessor(self.tokenizer, self.max_model_len)
        self.requests: dict[str, Request] = {}
        self.stats = EngineStats()
        log.info("engine ready: %s on %s/%s, backend %s, %d KV blocks of %d tokens (%d tokens)", loaded.name,
                 self.device, self.dtype, backend.name, num_blocks, config.block_size, pool_tokens)

    def _int4_decode(self) -> bool:
        """Small batches run on the GGUF's own 4-bit weights: CPU, bfloat16, and the kernel present."""
        return self.device.type == "cpu" and self.dtype == torch.bfloat16 and int4_kernel_available()

    @classmethod
    def from_config(cls, config: EngineConfig) -> LLMEngine:
        return cls(load_model(config.model, config.data_dir), config)

    def validate_prompt(self, prompt_token_ids: list[int]) -> None:
        """Raise RequestError if the prompt can never be served (safe to call from any thread)."""
        if not prompt_token_ids:
            raise RequestError("the prompt is empty")
        if len(prompt_token_ids) >= self.max_model_len:
            raise RequestError(f"the prompt has {len(prompt_token_ids)} tokens; this engine serves at most "
                               f"{self.max_model_len - 1} prompt tokens")
        vocab = self.model_config.vocab_size
        if any(not 0 <= t < vocab for t in prompt_token_ids):
            raise RequestError("the prompt contains token ids outside the vocabulary")

    def add_request(self, request_id: str, prompt_token_ids: list[int], params: SamplingParams) -> Request:
        """Queue a request; raises RequestError if it can never fit."""
        self.validate_prompt(prompt_token_ids)
        if request_id in self.requests:
            raise RequestError(f"duplicate request id {request_id}")
        req = Request(request_id, list(prompt_token_ids), params)
        self.requests[request_id] = req
        self.outputs.add(req)
        self.scheduler.add(req)
        return req

    def abort(self, request_id: str) -> None:
        req = self.requests.pop(request_id, None)
        if req is not None and not req.finished:
            self.scheduler.finish(req, "abort")
        self.outputs.remove(request_id)

    def has_unfinished(self) -> bool:
        return self.scheduler.has_work()

    @property
    def num_running(self) -> int:
        return len(self.scheduler.running)

    @property
    def num_waiting(self) -> int:
        return len(self.scheduler.waiting)

    def step(self) -> list[RequestOutput]:
        """Schedule, run the model once, and report what each request produced."""
        started = time.perf_counter()
        batch = self.scheduler.schedule()
        self.stats.preemptions += len(batch.preempted)
        if not batch.items:
            return []
        sampled = self.runner.execute(batch.items)
        self.scheduler.update(batch, sampled)
        now = time.monotonic()
        outputs = []
        self.stats.tokens_computed += batch.num_tokens
        for req, token in zip((req for req, _ in batch.items), sampled, strict=True):
            if token is None:
                continue
            self.stats.generation_tokens += 1
            if req.first_token_time is None:
                req.first_token_time = now
            text, reason = self.outputs.process(req, token)
            if reason is not None:
                self.scheduler.finish(req, reason)
                self.requests.pop(req.request_id, None)
                self.outputs.remove(req.request_id)
            queue_s = (req.first_scheduled_time or now) - req.arrival_time
            outputs.append(RequestOutput(req.request_id, text, [token], reason is not None, reason,
                                         req.num_prompt_tokens, req.num_output_tokens, req.num_cached_tokens,
                                         queue_s))
        self.stats.steps += 1
        self.stats.busy_seconds += time.perf_counter() - started
        return outputs

    def generate(self, prompts: list[list[int]], params: SamplingParams | list[SamplingParams]
                 ) -> list[GenerationResult]:
        """Run `prompts` to completion together (continuous batching) and return them in order."""
        plist = params if isinstance(params, list) else [params] * len(prompts)
        ids = [f"gen-{os.getpid()}-{time.monotonic_ns()}-{i}" for i in range(len(prompts))]
        results = {rid: GenerationResult([], "", None, 0) for rid in ids}
        for rid, prompt, p in zip(ids, prompts, plist, strict=True):
            self.add_request(rid, prompt, p)
        while any(results[rid].finish_reason is None for rid in ids):
            for out in self.step():
                res = results.get(out.request_id)
                if res is not None:
                    res.token_ids.extend(out.token_ids)
                    res.text += out.text
                    res.finish_reason = out.finish_reason
                    res.num_cached_tokens = out.num_cached_tokens
        return [results[rid] for rid in ids]


@dataclass
class GenerationResult:
    token_ids: list[int]
    text: str
    finish_reason: str | None
    num_cached_tokens: int
