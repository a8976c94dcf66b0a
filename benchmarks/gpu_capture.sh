#!/usr/bin/env bash
# Issue 8's captured step on a GPU, one command (about 3 minutes on an H100/H200): the CUDA
# tests of the compiled step (optimiser inside the CUDA graph, graphs captured by hand and
# torch.compile's), then the bp epoch and the 16 stacked networks, each in strict float32 and in
# TF32, each against plain PyTorch (eager, and for bp also a CUDA graph of the whole step and
# the same compiled step in torch.compile's graphs) under the same precision in one process.
# Run from the repository root on a CUDA machine:
#
#     CREDITLAB_DATA=../shared/data bash benchmarks/gpu_capture.sh
#
# PYTHON picks the interpreter (default: python); each block runs under LIMIT seconds (default
# 120) and is followed by its wall seconds.
set -uo pipefail
LIMIT=${LIMIT:-120}
# shellcheck source=benchmarks/gpu_common.sh
source "$(dirname "$0")/gpu_common.sh"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
run $PY -m pytest -q -p no:cacheprovider -k "cuda or CUDA" tests/test_compile.py \
    tests/test_cuda_graphs.py
for precision in highest high; do
    run $PY benchmarks/mlp_epoch.py --device cuda --compile --rounds 6 --matmul-precision $precision
done
for precision in highest high; do
    run $PY benchmarks/stack_epoch.py --device cuda --compile --rounds 3 --matmul-precision $precision
done
exit $status
