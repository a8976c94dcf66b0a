#!/usr/bin/env bash
# The GPU checks of the conv, capsule and GAN work, one command, from the repository root on a
# CUDA machine:
#
#     CREDITLAB_DATA=../shared/data bash benchmarks/gpu_conv_gan.sh [LOGDIR]
#
# Independent runs go side by side on the one GPU (each is launch-bound at these batch sizes,
# so several processes keep it busier than one); each writes LOGDIR/NAME.log (default
# benchmarks/runs/gpu). EPOCHS_LENET (default 20) and EPOCHS_CAPS (default 5) set the budgets.
set -uo pipefail
PY=${PYTHON:-python}
LOG=${1:-benchmarks/runs/gpu}
mkdir -p "$LOG"
export CREDITLAB_DATA=${CREDITLAB_DATA:-../shared/data}
export PYTHONPATH=${PYTHONPATH:-$PWD}
export PYTHONUNBUFFERED=1
EPOCHS_LENET=${EPOCHS_LENET:-20}
EPOCHS_CAPS=${EPOCHS_CAPS:-5}
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
start=$SECONDS
for rule in bp fa dfa usf brsf frsf; do
    $PY benchmarks/lenet_mnist.py --device cuda --epochs "$EPOCHS_LENET" --rules $rule \
        >"$LOG/lenet-$rule.log" 2>&1 &
done
for rule in bp fa dfa usf; do
    $PY -m creditlab train --dataset mnist --model capsnet:small --rule $rule --epochs "$EPOCHS_CAPS" \
        --optimizer adam --lr 1e-3 --batch-size 128 --augment shift:2 --probe-every 0 --quiet \
        --device cuda --out "$LOG/capsnet-small-$rule" >"$LOG/capsnet-small-$rule.log" 2>&1 &
done
$PY benchmarks/es_mnist.py speed --device cuda >"$LOG/es-speed.log" 2>&1
$PY -m pytest -q -p no:cacheprovider -k "cuda or CUDA" tests/test_gan.py tests/test_gan_signals.py \
    >"$LOG/gan-cuda-tests.log" 2>&1
$PY benchmarks/gan_mnist.py --device cuda --epochs "${EPOCHS_GAN:-5}" --out "$LOG/gan" \
    >"$LOG/gan.log" 2>&1 &
wait
echo "all done in $((SECONDS - start)) s"
for f in "$LOG"/*.log; do echo "=== $f"; tail -n 12 "$f"; done
