#!/usr/bin/env bash
# Every GPU check and benchmark of issue 8 (creditlab on the GPU), one command; each benchmark
# prints its ratio against plain PyTorch run in the same process. Run from the repository root:
#
#     CREDITLAB_DATA=../shared/data bash benchmarks/gpu_all.sh
#
# Set PYTHON to pick the interpreter (default: python). Figures go to stdout, each block headed
# by what it measures and followed by its seconds. The CUDA tests come first, then the
# benchmarks, most important first; the compare timing (CPU and GPU, a few minutes) comes last
# and SKIP_COMPARE=1 leaves it out; STACK_TF32=1 adds the stacked benchmark with TF32 matrix
# products (both sides).
set -uo pipefail
PY=${PYTHON:-python}
export CREDITLAB_DATA=${CREDITLAB_DATA:-../shared/data}
export PYTHONPATH=${PYTHONPATH:-$PWD}
status=0
run() {
    echo
    echo "=== $* ==="
    local start=$SECONDS
    "$@" || status=1
    echo "--- $((SECONDS - start)) s"
}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
run $PY -m pytest -q -p no:cacheprovider -k "cuda or CUDA" tests/
run $PY benchmarks/mlp_epoch.py --device cuda --compile --rounds 4
run $PY benchmarks/stack_epoch.py --device cuda --compile --rounds 3
if [ -n "${STACK_TF32:-}" ]; then  # 16 x 646 GFLOP in 160 ms is above strict fp32's peak
    run $PY benchmarks/stack_epoch.py --device cuda --compile --rounds 3 --tf32
fi
run $PY benchmarks/es_mnist.py speed --device cuda
if [ -z "${SKIP_COMPARE:-}" ]; then
    run $PY benchmarks/compare_timing.py --devices cpu,cuda --rounds 1
fi
exit $status
