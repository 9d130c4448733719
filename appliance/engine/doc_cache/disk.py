"""The persistent chunk tier: one safetensors file per passage under `<data_dir>/kvcache/<salt>/`.

Files are written atomically (temp file + `os.replace`), so another process (`appliance warm`, another
replica) can fill the directory while the server reads it, and delete files from it (eviction, invalidation):
a file that is gone, cut short or not safetensors when it is opened is a miss, never an error.

The `int8` format stores each (layer, token, head) vector as int8 with a bfloat16 scale (absmax / 127): about
half the bytes of bfloat16. Reads are memory-mapped by safetensors. Over its byte budget, the least recently
used files (by mtime, refreshed on read) are deleted.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Literal

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from appliance.engine.doc_cache.tier import ChunkEntry
from appliance.engine.model_config import ModelConfig

KVFormat = Literal["model", "int8"]

# what opening a chunk file raises when it is gone (deleted between listing and opening: torch's memory map
# raises RuntimeError), cut short or not safetensors
UNREADABLE = (OSError, ValueError, RuntimeError, SafetensorError)


def quantize(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x: [..., D] -> (int8 [..., D], bfloat16 scale [..., 1]) with x ~= q * scale."""
    scale = (x.float().abs().amax(-1, keepdim=True) / 127).clamp_min(1e-8).to(torch.bfloat16)
    q = (x.float() / scale.float()).round().clamp(-127, 127).to(torch.int8)
    return q, scale


def dequantize(q: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return (q.float() * scale.float()).to(dtype)


def disk_bytes_per_token(kv_format: KVFormat, config: ModelConfig, itemsize: int) -> int:
    """Bytes one token's K and V take in a file: in the model dtype (`itemsize` bytes an element), or as int8
    with one bfloat16 scale per (layer, head) vector."""
    if kv_format == "int8":
        return config.kv_bytes_per_token(1) + config.kv_bytes_per_token(2) // config.head_dim
    return config.kv_bytes_per_token(itemsize)


class DiskTier:
    """Contract: `put` persists an entry (atomically); `get` returns it in `dtype` or None; `invalidate`
    deletes every file of a document; `bytes_used` is the directory's size as this process last saw it."""

    def __init__(self, root: Path, kv_format: KVFormat, budget_bytes: int, dtype: torch.dtype) -> None:
        self.root = root
        self.kv_format = kv_format
        self.budget_bytes = budget_bytes
        self.dtype = dtype
        root.mkdir(parents=True, exist_ok=True)
        self.bytes_used = sum(size for _, size, _ in self._listing())

    def path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.safetensors"

    def __contains__(self, key: str) -> bool:
        return self.path(key).exists()

    def put(self, entry: ChunkEntry) -> None:
        path = self.path(entry.key)
        if path.exists():
            return
        path.parent.mkdir(exist_ok=True)
        if self.kv_format == "int8":
            (kq, ks), (vq, vs) = quantize(entry.k), quantize(entry.v)
            tensors = {"k": kq, "k_scale": ks, "v": vq, "v_scale": vs}
        else:
            tensors = {"k": entry.k.contiguous(), "v": entry.v.contiguous()}
        metadata = {"doc_ids": json.dumps(sorted(entry.doc_ids)), "format": self.kv_format}
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        os.close(fd)
        try:
            save_file(tensors, tmp, metadata=metadata)
            size = os.path.getsize(tmp)  # the file itself may be evicted by another process at once
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        self.bytes_used += size
        if self.bytes_used > self.budget_bytes:
            self._evict()

    def get(self, key: str) -> ChunkEntry | None:
        path = self.path(key)
        try:
            with safe_open(str(path), framework="pt") as f:
                metadata = f.metadata() or {}
            tensors = load_file(str(path))
            os.utime(path)
        except UNREADABLE:
            return None
        if metadata.get("format") == "int8":
            k = dequantize(tensors["k"], tensors["k_scale"], self.dtype)
            v = dequantize(tensors["v"], tensors["v_scale"], self.dtype)
        else:
            k, v = tensors["k"].to(self.dtype), tensors["v"].to(self.dtype)
        return ChunkEntry(key, k, v, frozenset(json.loads(metadata.get("doc_ids", "[]"))))

    def invalidate(self, doc_id: str) -> int:
        """Delete the files built from `doc_id` (read from each file's header); returns how many."""
        removed = 0
        for path in self._files():
            try:
                with safe_open(str(path), framework="pt") as f:
                    doc_ids = json.loads((f.metadata() or {}).get("doc_ids", "[]"))
            except UNREADABLE:
                continue
            if doc_id in doc_ids and self._remove(path):
                removed += 1
        return removed

    def _files(self) -> list[Path]:
        return list(self.root.glob("*/*.safetensors"))

    def _listing(self) -> list[tuple[Path, int, float]]:
        """(path, size, mtime) of each file still there when it is looked at."""
        listing = []
        for path in self._files():
            try:
                st = path.stat()
            except FileNotFoundError:
                continue
            listing.append((path, st.st_size, st.st_mtime))
        return listing

    def _remove(self, path: Path) -> bool:
        """Delete one file; False when another process had already."""
        try:
            size = path.stat().st_size
            path.unlink()
        except FileNotFoundError:
            return False
        self.bytes_used -= size
        return True

    def _evict(self) -> None:
        files = sorted(self._listing(), key=lambda listed: listed[2])
        self.bytes_used = sum(size for _, size, _ in files)
        for path, _, _ in files:
            if self.bytes_used <= self.budget_bytes:
                break
            self._remove(path)
