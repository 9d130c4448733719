"""The systems the RAG benchmark compares, behind one `complete(prompt)` call.

`OurEngine` is this appliance's engine in one document-cache mode (a fresh engine per system, sharing the
loaded weights); `LlamaCppServer` is llama.cpp's OpenAI server (`llama-cpp-python[server]`, its prompt
cache on) run as a subprocess on the same GGUF file, fed the same prompt token ids.
"""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from appliance.bench.llama_ids_server import encode_ids
from appliance.bench.rag_workload import BenchPrompt

if TYPE_CHECKING:
    from appliance.engine.loader import LoadedModel


@dataclass
class Completion:
    """One answered prompt, timed from submission (retrieval excluded: every system gets the same prompt)."""

    ttft_s: float
    total_s: float
    token_ids: list[int]
    text: str
    phases: dict[str, float] = field(default_factory=dict)  # queue_s, fill_s, ... where the system reports them


class System(Protocol):
    name: str

    async def complete(self, prompt: BenchPrompt, max_tokens: int) -> Completion: ...

    def close(self) -> None: ...


class OurEngine:
    """The appliance's engine serving every request in `mode` (off | exact | blend | reuse)."""

    def __init__(self, loaded: LoadedModel, mode: str, data_dir: Path, kv_cache_mb: int,
                 blend_ratio: float | None = None) -> None:
        from appliance.config import EngineConfig
        from appliance.engine.async_engine import AsyncEngine
        from appliance.engine.engine import LLMEngine

        config = EngineConfig(data_dir=data_dir, kv_cache_mb=kv_cache_mb, doc_cache=mode,
                              enable_prefix_caching=mode != "off", compiled_decode=False)  # no build under the TTFTs
        if blend_ratio is not None:
            config = replace(config, blend_ratio=blend_ratio)
        self.engine = LLMEngine(loaded, config)
        self.async_engine = AsyncEngine(self.engine, max_queue=1024)
        self.name = mode if blend_ratio is None else f"{mode}@{blend_ratio:g}"

    async def complete(self, prompt: BenchPrompt, max_tokens: int) -> Completion:
        from appliance.engine.sampling import SamplingParams

        params = SamplingParams(max_tokens=max_tokens, temperature=0.0)
        start = time.perf_counter()
        ttft, tokens, text, last = 0.0, [], "", None
        async for out in self.async_engine.generate(prompt.token_ids, params, layout=prompt.layout):
            if last is None:
                ttft = time.perf_counter() - start
            tokens += out.token_ids
            text += out.text
            last = out
        assert last is not None
        phases = {"queue_s": last.queue_s, "fill_s": last.fill_s, "reused": last.num_cached_tokens,
                  "recomputed": last.num_recomputed_tokens, "encoded": last.num_encoded_tokens,
                  "computed": last.num_computed_prompt_tokens}
        return Completion(ttft, time.perf_counter() - start, tokens, text, phases)

    def close(self) -> None:
        self.async_engine.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LlamaCppServer:
    """llama.cpp's OpenAI-compatible server on `gguf`, prompt cache in RAM (`cache_bytes`; None: no prompt cache),
    greedy, streamed; prompts go as token ids (see llama_ids_server.py)."""

    name = "llama.cpp"

    def __init__(self, gguf: Path, threads: int, n_ctx: int = 4096, cache_bytes: int | None = 4 << 30) -> None:
        import httpx

        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tempfile.TemporaryFile()  # noqa: SIM115 (closed by close()) the server's stderr, shown on failure
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "appliance.bench.llama_ids_server", "--model", str(gguf), "--host", "127.0.0.1",
             "--port", str(self.port), "--n_ctx", str(n_ctx), "--n_threads", str(threads),
             "--n_threads_batch", str(threads), "--verbose", "false",
             *(["--cache", "true", "--cache_type", "ram", "--cache_size", str(cache_bytes)] if cache_bytes else []),
             "--interrupt_requests", "false"],  # queue concurrent requests instead of cutting the running stream
            stdout=subprocess.DEVNULL, stderr=self.log)
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                tail = self._log_tail()
                self.log.close()
                raise RuntimeError(f"llama.cpp server exited at start (is llama-cpp-python[server] installed?){tail}")
            try:
                if httpx.get(self.url + "/v1/models", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.5)
        self.close()
        raise RuntimeError("llama.cpp server did not start in 180 s")

    async def complete(self, prompt: BenchPrompt, max_tokens: int) -> Completion:
        import httpx

        body: dict[str, Any] = {"prompt": encode_ids(prompt.token_ids), "max_tokens": max_tokens, "temperature": 0.0,
                                "top_k": 1, "stream": True}
        start = time.perf_counter()
        ttft, text = 0.0, ""
        try:
            async with httpx.AsyncClient(timeout=900) as client, \
                    client.stream("POST", self.url + "/v1/completions", json=body) as response:
                response.raise_for_status()
                async for line in response.aiter_lines():
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    delta = json.loads(line[6:])["choices"][0].get("text", "")
                    if delta and not ttft:
                        ttft = time.perf_counter() - start
                    text += delta
        except httpx.HTTPError as exc:
            died = self.proc.poll()
            status = f" and exited with status {died}" if died is not None else ""
            raise RuntimeError(f"llama.cpp server failed a {len(prompt.token_ids)}-token prompt{status}: {exc!r}"
                               f"{self._log_tail()}") from exc
        return Completion(ttft or time.perf_counter() - start, time.perf_counter() - start, [], text)

    def _log_tail(self, lines: int = 20) -> str:
        self.log.seek(0)
        tail = self.log.read().decode(errors="replace").splitlines()[-lines:]
        return "; its log ends:\n" + "\n".join(tail) if tail else ""

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


async def run_level(system: System, prompts: list[BenchPrompt], concurrency: int, max_tokens: int
                    ) -> tuple[list[Completion], float]:
    """Send every prompt with at most `concurrency` in flight; completions in prompt order, and the wall time."""
    gate = asyncio.Semaphore(concurrency)

    async def gated(prompt: BenchPrompt) -> Completion:
        async with gate:
            return await system.complete(prompt, max_tokens)

    start = time.perf_counter()
    done = await asyncio.gather(*(gated(p) for p in prompts))
    return list(done), time.perf_counter() - start
