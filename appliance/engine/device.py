"""Device and dtype choice. Importing this module never imports a GPU library."""

from __future__ import annotations

import functools
from pathlib import Path

import torch

from appliance.errors import ModelLoadError


def resolve_device(name: str) -> torch.device:
    """`auto` -> cuda when available, else cpu; `cuda` without a GPU is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError("APPLIANCE_DEVICE=cuda but no CUDA device is available")
    return torch.device(name)


@functools.cache
def cpu_has_bf16() -> bool:
    """Whether the CPU multiplies bfloat16 natively (AVX512-BF16 or AMX), per /proc/cpuinfo."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """`auto` -> bfloat16 on CUDA and on CPUs with native bf16 (measured faster: docs/BENCHMARKS.md), else float32."""
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" or cpu_has_bf16() else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16}[name]
