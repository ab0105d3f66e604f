#!/usr/bin/env bash
# GPU readiness check (issue 14, item 9; issue 15): CUDA training steps with autocast, k = 1, 2, 4, 8 trials per GPU,
# tiled prediction, a short campaign in rungs. About 5 minutes on one GPU (limit: 8); results in
# benchmarks/results/gpu_check.json (and $OUT/gpu_check.json when $OUT is set).
set -euo pipefail
cd "$(dirname "$0")/.."
python -c "import arborseg" 2>/dev/null || python -m pip install -q -e .
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
timeout 480 python benchmarks/gpu_check.py "$@"
