#!/usr/bin/env bash
# The prepared GPU run, under 8 minutes on one H100 / H200: end-to-end indexing crops/s (file
# reads, nvjpeg decode and resize on the GPU, float16 encoder), text query latency and search
# over 1M vectors (faiss-gpu when installed). Writes bench/results/gpu_<gpu name>.json.
#
#   bash bench/gpu_bench.sh                 # everything, defaults of bench/gpu_bench.py
#   bash bench/gpu_bench.sh --crops 20000   # extra arguments go to bench/gpu_bench.py
#
# Needs the project installed there (`make setup-gpu`: faiss-gpu in place of faiss-cpu; the
# Linux torch wheel is the CUDA one). PYTHON names the interpreter (default .venv/bin/python).
# The CPU path of the same code runs in the test suite: python -m bench.gpu_bench --device cpu --short
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
  echo "gpu_bench.sh: no NVIDIA GPU visible here (nvidia-smi); nothing measured" >&2
  exit 2
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
name=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1 | tr ' ' '_' | tr -cd '[:alnum:]_-')
out=${OUT:-bench/results/gpu_${name}.json}
"$PYTHON" -c "import faiss, torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'faiss gpus', faiss.get_num_gpus() if hasattr(faiss, 'get_num_gpus') else 0)"
exec timeout 470 "$PYTHON" -m bench.gpu_bench --device cuda --out "$out" "$@"
