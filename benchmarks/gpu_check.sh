#!/usr/bin/env bash
# The GPU check, one short script (under 8 minutes on one GPU): the CUDA tests (every model's step captured as CUDA
# graphs equals eager, no host sync in the sampling loop), then eager vs captured sampling at batches 1, 16 and 256
# and the bf16-mixed training throughput of every shipped config. With $OUT set, the tables also go to
# $OUT/RESULTS.md (paste them into benchmarks/RESULTS.md).
#   bash benchmarks/gpu_check.sh
# Packages the GPU machine lacks (wandb, soundfile, ...) may travel as wheels in .whl/: they are installed first.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py
python3 -m benchmarks.bench_capture --device cuda --batches 1 16 256 --train ${OUT:+--results "$OUT/RESULTS.md"}
