#!/usr/bin/env bash
# The GPU measurements for the targets still open, one command, from the repository root on a
# CUDA machine (about 7 minutes on an H200):
#
#     CREDITLAB_DATA=../shared/data bash benchmarks/gpu_open_targets.sh [LOGDIR]
#
# Part 1 runs alone on the GPU, because it times things: the bp epoch and the 16 stacked
# networks with the optimiser inside the CUDA graph, each in strict float32 and in TF32 (issue
# 8), then CapsNet for 3 epochs against the plain PyTorch CapsNet (issue 10). Part 2 runs side by
# side, because it measures errors and ratios taken within one process: every CUDA test, the
# DCGAN race against plain PyTorch (issue 11), dfa's LeNet variants and CapsNet with shifts.
# Each block has its own time limit, so one slow block cannot take the others' time; the DCGAN
# race writes its rows every epoch, so a limit keeps what it measured. PYTHON picks the
# interpreter (default: python); LOGDIR (default benchmarks/runs/gpu-open) gets one log per block.
set -uo pipefail
# shellcheck source=benchmarks/gpu_common.sh
source "$(dirname "$0")/gpu_common.sh"
LOG=${1:-benchmarks/runs/gpu-open}
mkdir -p "$LOG"
started=$SECONDS
timed() {  # LIMIT LOGFILE COMMAND...: one block, its command and wall seconds in its log
    local limit=$1 log=$2 start=$SECONDS
    shift 2
    {
        echo "=== $*"
        timeout "$limit" "$@"
        echo "--- exit $?, $((SECONDS - start)) s"
    } >>"$log" 2>&1
}
{
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    $PY -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())"
} >"$LOG/part1.log" 2>&1

# Part 1: timings, one at a time.
for precision in highest high; do
    timed 90 "$LOG/part1.log" $PY benchmarks/mlp_epoch.py --device cuda --compile --rounds 6 \
        --matmul-precision $precision
done
for precision in highest high; do
    timed 90 "$LOG/part1.log" $PY benchmarks/stack_epoch.py --device cuda --compile --rounds 6 \
        --matmul-precision $precision
done
# The paper's setting: all 60,000 training images (one held back), no shifts, 4% decay an epoch.
timed 90 "$LOG/part1.log" $PY benchmarks/capsnet_mnist.py --device cuda --epochs 3 \
    --augment none --val-size 1 --schedule step --gamma 0.96
echo "part 1 done at $((SECONDS - started)) s" >>"$LOG/part1.log"

# Part 2: side by side.
timed 200 "$LOG/tests.log" $PY -m pytest -q -p no:cacheprovider -k "cuda or CUDA" tests/ &
timed 240 "$LOG/dcgan.log" $PY benchmarks/gan_mnist.py --device cuda --conv --epochs 10 \
    --out "$LOG/dcgan-run" &
timed 150 "$LOG/capsnet-shift.log" $PY benchmarks/capsnet_mnist.py --device cuda --epochs 3 \
    --val-size 1 --schedule step --gamma 0.96 --no-torch &
lenet="--device cuda --epochs 20 --rules dfa --no-torch --optimizer adam --schedule cosine"
# shellcheck disable=SC2086  # $lenet is a list of options
{
    timed 200 "$LOG/lenet-dfa.log" $PY benchmarks/lenet_mnist.py $lenet --lr 1e-3 \
        --augment shift:2 --batch-size 32 --seed 1 &
    timed 200 "$LOG/lenet-dfa-lr5e-4.log" $PY benchmarks/lenet_mnist.py $lenet --lr 5e-4 \
        --augment shift:2 --batch-size 32 &
    timed 200 "$LOG/lenet-dfa-drawn-output.log" $PY benchmarks/lenet_mnist.py $lenet --lr 1e-3 \
        --augment shift:2 --batch-size 32 --zero-output &
    timed 200 "$LOG/lenet-dfa-shift1.log" $PY benchmarks/lenet_mnist.py $lenet --lr 1e-3 \
        --augment shift:1 --batch-size 32 &
    wait
}
wait
echo "all done in $((SECONDS - started)) s" >>"$LOG/part1.log"
cp "$LOG/dcgan-run/creditlab-bp-bp/samples.png" "$LOG/dcgan-creditlab.png" 2>/dev/null
last=$(ls "$LOG"/dcgan-run/pytorch/epoch-*.png 2>/dev/null | tail -n 1)
[ -n "$last" ] && cp "$last" "$LOG/dcgan-pytorch.png"
cat "$LOG"/lenet-dfa*.log >"$LOG/lenet.log" 2>/dev/null && rm -f "$LOG"/lenet-dfa*.log
rm -rf "$LOG/dcgan-run"
tail -n 30 "$LOG"/*.log
