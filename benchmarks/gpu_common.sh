# What the GPU scripts share (sourced, not run): the interpreter, the environment, and `run`,
# which heads a block with its command, runs it under LIMIT seconds (each script sets its own
# default) so one slow block cannot take the others' time, and follows it with its seconds;
# a block that fails or runs out of time sets `status` to 1.
PY=${PYTHON:-python}
export CREDITLAB_DATA=${CREDITLAB_DATA:-../shared/data}
export PYTHONPATH=${PYTHONPATH:-$PWD}
export PYTHONUNBUFFERED=1
status=0
run() {
    echo
    echo "=== $* ==="
    local start=$SECONDS
    timeout "$LIMIT" "$@" || status=1
    echo "--- $((SECONDS - start)) s"
}
