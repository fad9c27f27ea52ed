#!/usr/bin/env bash
# The H200 measurements (benchmarks/h200.py) in one command, its phases within a 450 s budget on the device:
#   bash benchmarks/h200.sh            results in $OUT (the device's output folder) or benchmarks/results
# The device's image has jax, flax, optax, torch and timm; the benchmark needs no TensorFlow.
set -euo pipefail
cd "$(dirname "$0")/.."
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm --format=csv || true
PYTHONUNBUFFERED=1 python3 -m benchmarks.h200 --out "${OUT:-benchmarks/results}" "$@"
