#!/usr/bin/env bash
# LeNet-5 on MNIST by bp, fa, dfa, usf, brsf and frsf, 20 epochs, by one or two training recipes,
# every (recipe, rule) run side by side on one CUDA GPU; from the repository root:
#
#     CREDITLAB_DATA=../shared/data bash benchmarks/gpu_lenet.sh [RECIPE...]
#
# RECIPE is a name below (default: both). Each run writes LOGDIR/lenet-RECIPE-RULE.log (LOGDIR
# defaults to benchmarks/runs/gpu-lenet); a summary table follows. bp's run trains the plain
# PyTorch LeNet by the same recipe beside it (same weights, batches, shifts and learning rates).
# fa and dfa start from zero output weights (benchmarks/lenet_mnist.py --zero-output, the
# library's --output-init zero), the other rules from the drawn ones. EPOCHS (default 20).
set -uo pipefail
# shellcheck source=benchmarks/gpu_common.sh
source "$(dirname "$0")/gpu_common.sh"
LOG=${LOGDIR:-benchmarks/runs/gpu-lenet}
mkdir -p "$LOG"
EPOCHS=${EPOCHS:-20}
# The recipes: the same for every rule (README, "Convolutions and capsules"; every CPU run that
# chose them is in benchmarks/results/lenet_recipes.md).
declare -A RECIPES=(
    [adam]="--optimizer adam --lr 1e-3 --schedule cosine --augment shift:2 --batch-size 64"
    [adam32]="--optimizer adam --lr 1e-3 --schedule cosine --augment shift:2 --batch-size 32"
)
names=("$@")
[ ${#names[@]} -eq 0 ] && names=(adam adam32)
for name in "${names[@]}"; do
    if [ -z "${RECIPES[$name]+x}" ]; then
        echo "unknown recipe $name; valid: ${!RECIPES[*]}" >&2
        exit 2
    fi
done
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
start=$SECONDS
for name in "${names[@]}"; do
    for rule in bp fa dfa usf brsf frsf; do
        # shellcheck disable=SC2086  # the recipe is a list of options
        $PY benchmarks/lenet_mnist.py --device cuda --epochs "$EPOCHS" --rules $rule \
            ${RECIPES[$name]} >"$LOG/lenet-$name-$rule.log" 2>&1 &
    done
done
wait
echo "all done in $((SECONDS - start)) s"
for name in "${names[@]}"; do
    echo
    echo "recipe $name: ${RECIPES[$name]}, $EPOCHS epochs"
    printf '%-6s %10s %7s %10s %8s\n' rule "test error" target "best epoch" s/epoch
    for rule in bp fa dfa usf brsf frsf; do
        f="$LOG/lenet-$name-$rule.log"
        rows=$(sed -n '/^rule /,$p' "$f" | tail -n +2)
        [ -n "$rows" ] && echo "$rows" || echo "$rule: no result, see $f"
        grep -h "^pytorch reference" "$f"
    done
done
