#!/usr/bin/env bash
# ResNet-20 on CIFAR-10 by bp, fa, dfa, usf, brsf and frsf, by BioTorch's published recipe, on
# one CUDA GPU; from the repository root:
#
#     bash benchmarks/cifar10.sh [RULE...]
#
# The recipe (jsalbert/biotorch, benchmark_configs/cifar10/resnet_20/sgd/*.yaml; the figures it
# gave are in its Benchmarks.md, and docs/results/cifar10.md sets them beside ours): SGD, lr 0.1
# (dfa: 0.001), momentum 0.9, weight decay 1e-4, batch 128, 250 epochs, lr x0.1 as epochs 100,
# 150 and 200 begin (MultiStepLR), Xavier (Glorot) initialisation, random horizontal flips and
# 32x32 crops of the image padded by 4, 45k/5k train/validation split, test error of the epoch
# with the best validation accuracy. Where creditlab differs (docs/results/cifar10.md): the
# validation split is the last 5,000 training images (BioTorch draws 5,000 at random); the
# per-channel normalisation uses the 45,000 training images' statistics (BioTorch's constants
# are the usual 50,000-image ones); the crop pads with the mean colour (BioTorch pads with black
# before normalising); the resnet20 preset has option-B (projection) shortcuts where the shape
# changes and He-initialised convolutions (BioTorch's ResNet-20: option A, Xavier); the preset
# takes no --init.
#
# The data: cifar-10-binary.tar.gz or cifar-10-batches-bin/ in DATA (default: $CREDITLAB_DATA,
# else the cache, else it is downloaded and checked). Each rule writes LOGDIR/RULE/ (a run folder:
# results.json, history, checkpoint; LOGDIR defaults to benchmarks/runs/cifar10) and
# LOGDIR/RULE.log; a rerun resumes each run from its checkpoint. The runs go side by side on the
# GPU (PARALLEL=1 runs one at a time). EPOCHS (default 250), SEED (default 0), DEVICE (default
# cuda; cpu for a smoke test), EXTRA (more options, e.g. "--train-subset 512").
set -uo pipefail
PY=${PYTHON:-python}
export PYTHONPATH=${PYTHONPATH:-$PWD}
export PYTHONUNBUFFERED=1
LOG=${LOGDIR:-benchmarks/runs/cifar10}
EPOCHS=${EPOCHS:-250}
SEED=${SEED:-0}
DEVICE=${DEVICE:-cuda}
mkdir -p "$LOG"
rules=("$@")
[ ${#rules[@]} -eq 0 ] && rules=(bp fa dfa usf brsf frsf)
data=()
[ -n "${DATA:-}" ] && data=(--data-dir "$DATA")

recipe() {  # the options of rule $1
    local lr=0.1
    [ "$1" = dfa ] && lr=0.001
    echo "--dataset cifar10 --model resnet20 --rule $1 --optimizer sgd --lr $lr" \
        "--momentum 0.9 --weight-decay 1e-4 --batch-size 128 --epochs $EPOCHS" \
        "--schedule step --milestones 100,150,200 --gamma 0.1 --output-init random" \
        "--augment crop:4,flip --seed $SEED --probe-every 0 --device $DEVICE ${EXTRA:-}"
}

[ "$DEVICE" = cuda ] && nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
start=$SECONDS
for rule in "${rules[@]}"; do
    resume=()
    [ -f "$LOG/$rule/checkpoint.pt" ] && resume=(--resume)
    # shellcheck disable=SC2046  # the recipe is a list of options
    cmd=("$PY" -m creditlab.cli train $(recipe "$rule") "${data[@]}" --out "$LOG/$rule" \
        --quiet "${resume[@]}")
    echo "${cmd[*]}" >"$LOG/$rule.log"
    if [ "${PARALLEL:-0}" = 1 ]; then
        "${cmd[@]}" >>"$LOG/$rule.log" 2>&1
    else
        "${cmd[@]}" >>"$LOG/$rule.log" 2>&1 &
    fi
done
wait
echo "all done in $((SECONDS - start)) s"
echo
echo "ResNet-20, CIFAR-10, $EPOCHS epochs, seed $SEED: test error (%) at the best validation epoch"
printf '%-6s %10s %10s %11s %9s\n' rule "test error" "BioTorch" "best epoch" "s/epoch"
declare -A BIOTORCH=([bp]=8.63 [fa]=32.16 [dfa]=45.94 [usf]=10.05 [brsf]=11.02 [frsf]=11.20)
for rule in "${rules[@]}"; do
    results="$LOG/$rule/results.json"
    if [ ! -f "$results" ]; then
        echo "$rule: no result, see $LOG/$rule.log"
        continue
    fi
    "$PY" - "$results" "$rule" "${BIOTORCH[$rule]:-?}" <<'PYTHON'
import json, sys
r = json.load(open(sys.argv[1]))
seconds = r["seconds_per_epoch"]
seconds = sum(seconds) / len(seconds) if isinstance(seconds, list) else seconds
error = 100 * r["test_error"]
print(f"{sys.argv[2]:<6} {error:10.2f} {sys.argv[3]:>10} {r['best_epoch']!s:>11} {seconds:9.1f}")
PYTHON
done
