"""On a machine without CUDA, triton or flashinfer, every module of the project imports and loads no GPU library.

Runs in a fresh interpreter: `torch.cuda` reports no device, and an import hook makes the GPU libraries
unimportable (as on a CPU-only install) and records every attempt to import one: there must be none.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

GPU_LIBRARIES = ("triton", "flashinfer", "cupy", "pynvml", "cuda", "nvidia")

PROGRAM = r"""
import importlib, importlib.abc, json, pkgutil, sys
GPU = set(sys.argv[1].split(","))

asked = []

class Absent(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in GPU:
            asked.append(name)
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

import torch  # probes for cuda-python and pynvml itself: the hook starts after it
torch.cuda.is_available = lambda: False
torch.cuda.device_count = lambda: 0
sys.meta_path.insert(0, Absent())
imported = []
for package in ("appliance", "kernels", "retrieval"):
    root = importlib.import_module(package)
    imported.append(package)
    for info in pkgutil.walk_packages(root.__path__, package + "."):
        importlib.import_module(info.name)
        imported.append(info.name)
from kernels.base import get_backend
backend = get_backend("auto", torch.device("cpu")).name
loaded = sorted(m for m in sys.modules if m.split(".")[0] in GPU)
print(json.dumps({"imported": imported, "loaded": loaded, "asked": asked, "backend": backend}))
"""


def test_whole_package_imports_without_gpu_libraries() -> None:
    done = subprocess.run([sys.executable, "-c", PROGRAM, ",".join(GPU_LIBRARIES)], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    assert done.returncode == 0, done.stderr[-4000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["loaded"] == [] and report["asked"] == []  # not even tried: no import-time probing
    assert report["backend"] == "torch"
    # the GPU backends' own modules are among those imported: their libraries load only when used
    assert {"kernels.triton_attn", "kernels.flashinfer_attn", "retrieval.index", "appliance.cli"} <= set(
        report["imported"])
