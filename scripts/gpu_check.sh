#!/usr/bin/env bash
# On a CUDA machine: every GPU test, then `appliance bench engine` and `appliance bench rag` on the GPU.
# The benchmarks add their figures (with the GPU's name) to docs/BENCHMARKS.md; JSON results go to OUT_DIR.
#
#   scripts/gpu_check.sh [OUT_DIR]        (after `make setup` and `pip install '.[gpu]'` for flashinfer/faiss-gpu)
#   ENGINE_ARGS="--vs hf" scripts/gpu_check.sh      # extra flags for `appliance bench engine`
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-gpu-check}"
venv="${VENV:-.venv}"
mkdir -p "$out"

"$venv/bin/python" - <<'PY'
import importlib.util, sys, torch
if not torch.cuda.is_available():
    sys.exit("gpu_check: no CUDA device")
print(f"GPU: {torch.cuda.get_device_name(0)} | torch {torch.__version__} (CUDA {torch.version.cuda})")
for lib in ("triton", "flashinfer", "faiss"):
    print(f"  {lib}: {'installed' if importlib.util.find_spec(lib) else 'missing (its tests skip)'}")
PY

# gpu-marked tests (FlashInfer and faiss-gpu parity), then every kernel test compiled for the GPU (triton)
"$venv/bin/python" -m pytest -rs -m gpu tests
"$venv/bin/python" -m pytest -rs tests/kernels

# shellcheck disable=SC2086  # ENGINE_ARGS is a list of flags
"$venv/bin/appliance" bench engine --vs none --dtypes bfloat16 ${ENGINE_ARGS:-} --json "$out/engine.json"
if [ -d /usr/share/doc/python3.11/html/library ]; then
    "$venv/bin/appliance" bench rag --json "$out/rag.json"
else
    echo "gpu_check: bench rag skipped: its corpus is missing (apt-get install python3.11-doc)"
fi
