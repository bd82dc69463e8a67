#!/usr/bin/env bash
# One prepared run for a lent GPU machine (H100/H200 class), under 8 minutes in all:
#   1. the gpu-marked tests (CUDA against CPU: training, the sparse paths, the pinned reader);
#   2. the training benchmark in bfloat16 at d 768 × 24,576 and d 2,304 × 65,536, every sparse
#      architecture with kernels dense and auto: tokens/s and MFU against the bf16 peak.
# Usage (from the repository root, with the project's virtualenv):  bash scripts/bench/gpu.sh
# Output: the tests' summary and a markdown table on stdout, also written to $OUT (default runs/gpu).
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-.venv/bin/python}
OUT=${OUT:-runs/gpu}
mkdir -p "$OUT"
export PYTHONPATH=$PWD
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
# 1. gpu-marked tests (skip nothing silently: -rs lists any skip)
timeout 200 "$PY" -m pytest -m gpu -q -rs -p no:cacheprovider tests 2>&1 | tee "$OUT/tests.txt"
# 2. the benchmark (20 timed steps per row; 2,304 × 65,536 needs ~12 GB)
timeout 240 "$PY" scripts/bench/gpu_train.py --shapes 768x24576,2304x65536 --steps 20 2>&1 | tee "$OUT/train.md"
