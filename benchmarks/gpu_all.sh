#!/usr/bin/env bash
# Every GPU check and benchmark, one command; each benchmark prints its ratio against plain
# PyTorch run in the same process. Run from the repository root on a CUDA machine:
#
#     CREDITLAB_DATA=../shared/data bash benchmarks/gpu_all.sh
#
# PYTHON picks the interpreter (default: python). Each block is headed by what it measures and
# followed by its seconds, and runs under its own time limit (LIMIT seconds, default 240) so that
# one slow block cannot take the others' time. The CUDA tests come first, then the benchmarks,
# most important first. SKIP_COMPARE=1 leaves out the compare timing (CPU against GPU);
# STACK_TF32=1 adds the stacked benchmark with TF32 matrix products (both sides).
set -uo pipefail
LIMIT=${LIMIT:-240}
# shellcheck source=benchmarks/gpu_common.sh
source "$(dirname "$0")/gpu_common.sh"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
$PY -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())"
run $PY -m pytest -q -p no:cacheprovider -k "cuda or CUDA" tests/
run $PY benchmarks/mlp_epoch.py --device cuda --compile --rounds 4
run $PY benchmarks/capsnet_mnist.py --device cuda --epochs 3
run $PY benchmarks/stack_epoch.py --device cuda --compile --rounds 3
if [ -n "${STACK_TF32:-}" ]; then  # 16 x 646 GFLOP in 160 ms is above strict fp32's peak
    run $PY benchmarks/stack_epoch.py --device cuda --compile --rounds 3 --tf32
fi
run $PY benchmarks/es_mnist.py speed --device cuda
if [ -z "${SKIP_COMPARE:-}" ]; then
    run $PY benchmarks/compare_timing.py --devices cpu,cuda --rounds 1
fi
exit $status
