"""Describe the machine a benchmark ran on (CPU, cores, memory, ISA, library versions).

`describe_machine()` returns a flat dict of strings that every benchmark prints and writes next
to its figures, so a number is never read without the machine it came from.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
from pathlib import Path

_ISA_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16")


def _cpuinfo() -> dict[str, str]:
    """First processor block of /proc/cpuinfo ({} where it does not exist)."""
    path = Path("/proc/cpuinfo")
    if not path.is_file():
        return {}
    info: dict[str, str] = {}
    for line in path.read_text(errors="replace").splitlines():
        if not line.strip():
            if info:
                break
            continue
        key, _, value = line.partition(":")
        info.setdefault(key.strip(), value.strip())
    return info


def _memory_gib() -> str:
    path = Path("/proc/meminfo")
    if path.is_file():
        for line in path.read_text().splitlines():
            if line.startswith("MemTotal:"):
                return f"{int(line.split()[1]) / 2**20:.1f} GiB"
    return "unknown"


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def describe_machine() -> dict[str, str]:
    """CPU model, usable cores, memory, ISA extensions, torch threads, library versions and load.

    The load average is there because other work on the machine (a test run, a build) slows every
    system; a benchmark should start on an idle machine and say if it did not.
    """
    import torch

    cpu = _cpuinfo()
    flags = set(cpu.get("flags", "").split())
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "cpu": cpu.get("model name", platform.processor() or platform.machine()),
        "cores": str(cores),
        "memory": _memory_gib(),
        "isa": " ".join(f for f in _ISA_FLAGS if f in flags) or "n/a",
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": str(torch.get_num_threads()),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none",
        "transformers": _version("transformers"),
        "llama_cpp_python": _version("llama-cpp-python"),
        "load_average": " ".join(f"{x:.2f}" for x in os.getloadavg()) + " (1/5/15 min, when described)",
    }


def machine_markdown(machine: dict[str, str]) -> str:
    """The description as a markdown bullet list."""
    return "\n".join(f"- **{key}**: {value}" for key, value in machine.items())
