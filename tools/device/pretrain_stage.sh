#!/usr/bin/env bash
# One stage of the tiny SAM's pre-training on a lent GPU machine, started from the repository root through the
# `device` tool (after tools/device/fetch_wheels.sh here):
#
#     run(command="bash tools/device/pretrain_stage.sh runs/NAME 7 --patch_size 4 --batch_size 64",
#         carry=[".whl"], timeout_s=600)
#
# RUN_DIR MINUTES [FLAGS]: a RUN_DIR holding a LATEST state is resumed (FLAGS may then only be stage flags, see
# `PretrainingConfig`); otherwise a new run starts there with FLAGS. MINUTES is the stage's whole budget, rendering
# included (a command may run 10 minutes; the tool's device time is 15 in all). The stage runs with `--device cuda
# --bf16` and every CPU core (rendering and sampling stay on the CPU), then the whole RUN_DIR comes back in $OUT as
# `run.tar.part-*` (the tool returns at most 8 files of 16 MiB); unpack it here with
#
#     cat <files_at>/run.tar.part-* | tar -x -C runs/
#
# PRETRAIN_DEVICE=cpu, PYTHON=.venv/bin/python and PRETRAIN_THREADS=1 run the same on this machine (its test does).
set -uo pipefail
run_dir=${1:?usage: pretrain_stage.sh RUN_DIR MINUTES [FLAGS]}
minutes=${2:?usage: pretrain_stage.sh RUN_DIR MINUTES [FLAGS]}
shift 2
device=${PRETRAIN_DEVICE:-cuda}
python=${PYTHON:-python3}
wheels=${WHEELS:-.whl}
: "${OUT:?OUT must name the folder whose files come back}"

export PYTHONPATH=src HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
if [ -d "$wheels" ]; then
    "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        "$wheels"/*.whl || exit 1
    export PYTHONPATH=/tmp/site:src
fi
flags=(--device "$device" --num_threads "${PRETRAIN_THREADS:-$(nproc)}")
if [ "$device" = cuda ]; then
    flags+=(--bf16)
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
fi
# A missing GPU or package fails the run within seconds: the model moves to the device before rendering starts.
resume=()
[ -f "$run_dir/LATEST" ] && resume=(--resume)
mkdir -p "$run_dir"
"$python" examples/pretrain_tiny_sam.py --output_dir "$run_dir" "${resume[@]}" --time_budget_minutes "$minutes" \
    "${flags[@]}" "$@" 2>&1 | tee "$run_dir/log-$device-$(date -u +%Y%m%dT%H%M%S).txt"
status=${PIPESTATUS[0]}
tar -C "$(dirname "$run_dir")" -cf - "$(basename "$run_dir")" | split -b 15M - "$OUT/run.tar.part-"
ls -l "$OUT"
exit "$status"
