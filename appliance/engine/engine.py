"""The engine: add requests, call `step()` until they finish (nano-vllm's loop, vLLM v1's counters).

    engine = LLMEngine.from_config(EngineConfig())
    engine.add_request("r1", prompt_ids, SamplingParams(max_tokens=32, temperature=0))
    while engine.has_unfinished(): outputs = engine.step()
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import time
from dataclasses import dataclass

import torch

from appliance.config import DOC_CACHE_MODES, EngineConfig
from appliance.engine.block_manager import BlockManager
from appliance.engine.compiled_decode import CompiledDecode
from appliance.engine.decode_graphs import decode_graph_mode
from appliance.engine.device import resolve_device, resolve_dtype
from appliance.engine.doc_cache.blend import KVMover
from appliance.engine.doc_cache.build import build_doc_cache
from appliance.engine.doc_cache.capacity import WarmPlan, plan_warm
from appliance.engine.doc_cache.connector import DocCacheConnector
from appliance.engine.doc_cache.disk import disk_bytes_per_token
from appliance.engine.doc_cache.layout import PromptLayout
from appliance.engine.fused_decode import FusedDecode, fusable
from appliance.engine.grammar import GrammarCompiler
from appliance.engine.info import EngineInfo
from appliance.engine.loader import LoadedModel, load_model
from appliance.engine.logprobs import TokenLogprobs
from appliance.engine.model import CausalLM, head_weights
from appliance.engine.outputs import OutputProcessor, RequestOutput
from appliance.engine.quant import int4_kernel_available
from appliance.engine.request import Request
from appliance.engine.runner import ModelRunner, StepSamples
from appliance.engine.sampling import SamplingParams, TokenizerAware
from appliance.engine.scheduler import ScheduledBatch, Scheduler
from appliance.engine.tokenizer import TextTokenizer
from appliance.errors import RequestError
from kernels.base import get_backend, installed

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
    IDLE_WAIT_S = 0.005  # a step with nothing to run but disk reads in flight waits this long for one

    def __init__(self, loaded: LoadedModel, config: EngineConfig) -> None:
        self.threads = config.threads or len(os.sched_getaffinity(0))
        self._use_threads()
        self.config = config
        self.device = resolve_device(config.device)
        self.dtype = resolve_dtype(config.dtype, self.device)
        self.model_name = loaded.name
        self.model_config = loaded.config
        self.tokenizer: TextTokenizer = loaded.tokenizer
        small_batch = config.int4_decode_tokens if self._int4_decode() else 0
        self.model = CausalLM(loaded.config, loaded.weights, self.dtype, self.device, loaded.int4, small_batch)
        self.backend = get_backend(config.attention_backend, self.device)
        self.kv_bytes_per_token = loaded.config.kv_bytes_per_token(self.dtype.itemsize)
        budget = config.kv_cache_mb * 2**20
        chunk_budget = int(budget * config.doc_cache_share)
        bytes_per_block = self.kv_bytes_per_token * config.block_size
        num_blocks = config.kv_blocks or max(2, (budget - chunk_budget) // bytes_per_block)
        pool_tokens = num_blocks * config.block_size
        self.max_model_len = min(config.max_model_len, loaded.config.max_position, pool_tokens)
        self.runner = ModelRunner(self.model, self.backend, num_blocks, config.block_size, self._decode_graphs(),
                                  config.max_num_seqs, -(-self.max_model_len // config.block_size))
        salt = hashlib.sha256(f"{loaded.fingerprint}|{loaded.config.to_json()}|{self.dtype}".encode()).digest()
        self.block_manager = BlockManager(num_blocks, config.block_size, salt, config.enable_prefix_caching)
        self.doc_cache = build_doc_cache(config, salt, self.dtype, chunk_budget, loaded.config.num_layers)
        mover = KVMover(self.model, self.runner.kv_caches, config.block_size)
        self.connector = DocCacheConnector(self.doc_cache, mover, self.backend, loaded.config.num_layers)
        self.runner.connector = self.connector
        if config.compiled_decode and self.device.type == "cpu" and self.backend.name == "torch":
            self.runner.compiled = CompiledDecode(self.model, self.backend, config.block_size,
                                                  config.data_dir / "compiled")
            self.runner.compiled.start()
            if config.fused_decode_rows and small_batch and fusable(self.model, loaded.int4):
                head = head_weights(loaded.config, loaded.weights)
                self.runner.fused = FusedDecode(self.model, loaded.int4, head, config.data_dir / "compiled",
                                                min(config.fused_decode_rows, small_batch))
                mover.fused = self.runner.fused
                self.runner.fused.start()
        self.scheduler = Scheduler(self.block_manager, self.connector, config.max_num_seqs,
                                   config.max_num_batched_tokens, loaded.config.num_layers,
                                   config.decode_step_tokens if self.device.type == "cpu" else 0)  # GPU: steps flat
        self.outputs = OutputProcessor(self.tokenizer, self.max_model_len)
        self.requests: dict[str, Request] = {}
        self.stats = EngineStats()
        self.info = EngineInfo(self.model_name, self.max_model_len, loaded.config.vocab_size, str(self.device),
                               str(self.dtype).removeprefix("torch."), self.backend.name, config.doc_cache)
        log.info("engine ready: %s on %s/%s, backend %s, %d KV blocks of %d tokens (%d tokens), %d KB of KV per "
                 "token, chunk tier %d MB", loaded.name, self.device, self.dtype, self.backend.name, num_blocks,
                 config.block_size, pool_tokens, self.kv_bytes_per_token // 1024, chunk_budget // 2**20)

    def _use_threads(self) -> None:
        """Give the calling thread the engine's intra-op thread count. Torch threads take their count from a
        process-wide default when they first compute, and any thread's `torch.set_num_threads` changes that
        default (the query embedder runs on one thread), so the thread that steps sets its own."""
        if torch.get_num_threads() != self.threads:
            torch.set_num_threads(self.threads)

    def _decode_graphs(self) -> str:
        """The runner's decode-graph mode (`decode_graph_mode`), logged when decode steps run on triton while
        the other steps run on another backend."""
        mode = decode_graph_mode(self.config.decode_graphs, self.device.type, self.config.attention_backend,
                                 installed("triton"))
        if mode != "off" and self.backend.name != "triton":
            log.info("decode steps: %s graphs with triton attention; other steps: %s", mode, self.backend.name)
        return mode

    def _int4_decode(self) -> bool:
        """Small batches run on the GGUF's own 4-bit weights (and an int8 LM head) on a CPU with the kernels."""
        return self.device.type == "cpu" and int4_kernel_available()

    @classmethod
    def from_config(cls, config: EngineConfig) -> LLMEngine:
        return cls(load_model(config.model, config.data_dir), config)

    def validate_prompt(self, prompt_token_ids: list[int]) -> None:
        """Raise RequestError if the prompt can never be served."""
        self.info.check_prompt(prompt_token_ids)

    def add_request(self, request_id: str, prompt_token_ids: list[int], params: SamplingParams,
                    layout: PromptLayout | None = None, doc_cache: str | None = None) -> Request:
        """Queue a request; raises RequestError if it can never fit.

        `layout` says where the passages are (RAG prompts); with `doc_cache` (default: the engine's mode)
        `blend` or `reuse`, their KV comes from the chunk tier. `off` skips the prefix cache as well (so does a
        request that scores its prompt: `prompt_logprobs`). A grammar is compiled here, once per grammar; each
        `TokenizerAware` logits processor is bound to the engine's tokenizer here.
        """
        self.validate_prompt(prompt_token_ids)
        if request_id in self.requests:
            raise RequestError(f"duplicate request id {request_id}")
        mode = doc_cache or self.config.doc_cache
        if mode not in DOC_CACHE_MODES:
            raise RequestError(f"unknown doc_cache mode {mode!r} (one of {', '.join(DOC_CACHE_MODES)})")
        if params.prompt_logprobs is not None:
            mode = "off"
        req = Request(request_id, list(prompt_token_ids), params, doc_mode=mode)
        for proc in params.logits_processors:
            if isinstance(proc, TokenizerAware):
                proc.bind(self.tokenizer)
        if params.grammar is not None:
            req.grammar = self.grammars.state(params.grammar)
        if mode in ("blend", "reuse") and layout is not None and layout.chunks:
            try:
                layout.validate(len(prompt_token_ids))
            except ValueError as exc:
                raise RequestError(str(exc)) from exc
            req.reuse_from, req.reuse_salt = layout.chunks[0].start, self.doc_cache.variant_salt(mode)
            for job in self.connector.add(req, layout):
                self.scheduler.add(job)
        self.requests[request_id] = req
        self.outputs.add(req)
        self.scheduler.add(req)
        return req

    def warm(self, prefix: list[int], chunks: list[tuple[list[int], str]]) -> int:
        """Queue encode jobs for every chunk (token ids, doc id) not cached yet; returns how many were queued.
        Run `step()` until `has_unfinished()` is False to encode them."""
        queued = 0
        for tokens, doc_id in chunks:
            job = self.doc_cache.warm_job(prefix, tokens, doc_id)
            if job is not None:
                self.scheduler.add(job)
                queued += 1
        return queued

    def warm_plan(self, prefix: list[int], chunks: list[list[int]]) -> WarmPlan:
        """Which of `chunks` (token ids, in the order to keep them) a warm can write to the disk tier without it
        evicting anything: those not cached yet, in order, while they fit in the budget left."""
        disk = self.doc_cache.disk
        assert disk is not None, "the disk tier is off"
        per_token = disk_bytes_per_token(disk.kv_format, self.model.config, self.dtype.itemsize)
        cached = [self.doc_cache.is_cached(prefix, chunk) for chunk in chunks]
        return plan_warm([len(c) for c in chunks], cached, per_token, disk.budget_bytes - disk.bytes_used)

    @functools.cached_property
    def grammars(self) -> GrammarCompiler:
        """The grammar compiler for this model's vocabulary (built on the first grammar: ~0.3 s)."""
        return GrammarCompiler(self.tokenizer, self.model.config.vocab_size)

    def invalidate_document(self, doc_id: str) -> int:
        """Forget the cached chunk KV of a deleted or replaced document (memory and disk)."""
        return self.doc_cache.invalidate(doc_id)

    def abort(self, request_id: str) -> None:
        req = self.requests.pop(request_id, None)
        if req is not None and not req.finished:
            self.scheduler.finish(req, "abort")
        self.outputs.remove(request_id)

    def has_unfinished(self) -> bool:
        """Work left in the scheduler (requests waiting for their reused KV included)."""
        return self.scheduler.has_work()

    @property
    def num_running(self) -> int:
        return len(self.scheduler.running)

    @property
    def num_waiting(self) -> int:
        return len(self.scheduler.waiting)

    def step(self) -> list[RequestOutput]:
        """Schedule, run the model once over the step's work items, and report what each request produced."""
        started = time.perf_counter()
        self._use_threads()
        batch = self.scheduler.schedule()
        self.stats.preemptions += len(batch.preempted)
        outputs: list[RequestOutput] = []
        if batch.items:
            sampled = self.runner.execute(batch.items)
            self.scheduler.update(batch, sampled.tokens)
            outputs = self._postprocess(batch, sampled)
            self.stats.tokens_computed += batch.num_tokens
            self.stats.steps += 1
        self.stats.busy_seconds += time.perf_counter() - started
        if not batch.items:
            self.connector.wait_for_reads(self.IDLE_WAIT_S)
        return outputs

    def _postprocess(self, batch: ScheduledBatch, sampled: StepSamples) -> list[RequestOutput]:
        """Finish encode jobs whose KV the connector saved; turn sampled tokens into outputs and finish what is
        done."""
        now = time.monotonic()
        outputs = []
        for i, (item, token) in enumerate(zip(batch.items, sampled.tokens, strict=True)):
            req = item.request
            scored = sampled.prompt_logprobs.get(i)
            if scored:  # scored[j] is of prompt token positions[0] + j + 1; a recompute after preemption rescores
                req.prompt_logprobs.extend(scored[len(req.prompt_logprobs) - item.positions[0]:])
            if req.prefill_only:
                if req.num_computed_tokens == req.num_tokens:
                    self.scheduler.finish(req, "encoded")
                continue
            if token is None:
                continue
            self.stats.generation_tokens += 1
            first = req.first_token_time is None
            if first:
                req.first_token_time = now
            if req.grammar is not None and not req.grammar.accept(token):
                log.warning("request %s: token %d is outside its grammar", req.request_id, token)
            text, reason = self.outputs.process(req, token)
            # an end-of-sequence or stop token is not part of the output's text, nor of its log-probabilities
            ended_by_token = reason == "stop" and (
                token in self.tokenizer.stop_token_ids or token in req.params.stop_token_ids)
            if reason is not None:
                self.scheduler.finish(req, reason)
                self.requests.pop(req.request_id, None)
                self.outputs.remove(req.request_id)
            queue_s = (req.first_scheduled_time or now) - req.arrival_time
            outputs.append(RequestOutput(req.request_id, text, [token], reason is not None, reason,
                                         req.num_prompt_tokens, req.num_output_tokens, req.num_cached_tokens,
                                         queue_s, req.num_recomputed_tokens, req.num_encoded_tokens, req.doc_mode,
                                         req.fill_seconds, None if ended_by_token else _listed(sampled.logprobs[i]),
                                         req.prompt_logprobs if first and req.params.prompt_logprobs is not None
                                         else None))
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


def _listed(entry: TokenLogprobs | None) -> list[TokenLogprobs] | None:
    return None if entry is None else [entry]


@dataclass
class GenerationResult:
    token_ids: list[int]
    text: str
    finish_reason: str | None
    num_cached_tokens: int
