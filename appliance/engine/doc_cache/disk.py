"""The persistent chunk tier: one safetensors file per passage under `<data_dir>/kvcache/<salt>/`.

Files are written atomically (temp file + `os.replace`), so another process (`appliance warm`) can fill the
directory while the server reads it. The `int8` format stores each (layer, token, head) vector as int8 with
a bfloat16 scale (absmax / 127): about half the bytes of bfloat16. Reads are memory-mapped by safetensors.
Over its byte budget, the least recently used files (by mtime, refreshed on read) are deleted.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Literal

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from appliance.engine.doc_cache.tier import ChunkEntry
from appliance.engine.model_config import ModelConfig

KVFormat = Literal["model", "int8"]


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
        self.bytes_used = sum(p.stat().st_size for p in self._files())

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
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        self.bytes_used += path.stat().st_size
        if self.bytes_used > self.budget_bytes:
            self._evict()

    def get(self, key: str) -> ChunkEntry | None:
        path = self.path(key)
        try:
            with safe_open(str(path), framework="pt") as f:
                metadata = f.metadata() or {}
            tensors = load_file(str(path))
            os.utime(path)
        except (FileNotFoundError, OSError, ValueError):
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
            except (OSError, ValueError):
                continue
            if doc_id in doc_ids:
                self._remove(path)
                removed += 1
        return removed

    def _files(self) -> list[Path]:
        return list(self.root.glob("*/*.safetensors"))

    def _remove(self, path: Path) -> None:
        try:
            size = path.stat().st_size
            path.unlink()
            self.bytes_used -= size
        except FileNotFoundError:
            pass

    def _evict(self) -> None:
        files = sorted(self._files(), key=lambda p: p.stat().st_mtime)
        self.bytes_used = sum(p.stat().st_size for p in files)
        for path in files:
            if self.bytes_used <= self.budget_bytes:
                break
            self._remove(path)
