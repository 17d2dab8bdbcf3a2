#!/usr/bin/env bash
# The measurements that ship a new embedded tiny SAM (runs/tiny-sam-v3/README.md, "Shipping a new embedded model"),
# on the checkpoint already copied to src/sam_prompt_learner/pretrained/tiny-sam, in the order they ran for the
# shipped ones; the figures then go into the card, README.md and BENCHMARKS.md by hand.
#
#   bash tools/measure_embedded_model.sh "step 48,000 (shipped 2026-12-07 19:47)" runs/tiny-sam-v3-cooldown-35k/best \
#       "step N" outputs/ship
#
# 1. the method's four claims (`benchmarks/paper_claims.py --package_defaults --jobs 2`, about 25 minutes on two
#    cores; outputs/paper_claims/<the checkpoint's SHA-256, 12 characters>/) with the card's eight
#    `sam-prompt-learner evaluate` commands beside it (OUT/evals/<task>-<split>-<points|box>.json);
# 2. the size breakdown against the model it replaces (benchmarks/results/pretraining/by_size.json: rename the one
#    it replaces to by_size-<date>-<time>.json first, as BENCHMARKS.md links it);
# 3. the no-argument main job, alone, with its wall time and peak memory (OUT/main_job.log; outputs/plates/);
# 4. the quickstart notebook, offline in a Jupyter kernel as tests/test_notebook.py runs it, writing to its own
#    OUTPUT_DIR, outputs/quickstart (OUT/notebook.ipynb, executed, for its figures);
# 5. the README's demo screenshot: the demo's browser test on the notebook's adapted model, outputs/quickstart
#    (OUT/demo/.../demo.png; copy it to docs/demo.png; needs Chromium: apt-get install -y chromium chromium-driver).
# STEPS="3 4 5" runs only those (e.g. again after a failure); the default is all five.
set -euo pipefail
if [[ $# -lt 3 ]]; then
  echo "usage: $0 OLD_LABEL OLD_CHECKPOINT NEW_LABEL [OUT (default outputs/ship)]" >&2
  exit 2
fi
old_label=$1 old_checkpoint=$2 new_label=$3
# Absolute: the notebook's kernel runs in examples/notebooks, and a relative cache path would land there.
out=$(realpath -m "${4:-outputs/ship}")
model=src/sam_prompt_learner/pretrained/tiny-sam
for path in "$old_checkpoint/config.json" "$model/config.json" .venv/bin/python; do
  [[ -e $path ]] || { echo "missing: $path" >&2; exit 2; }
done
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
mkdir -p "$out/evals"
log() { echo "$(date -u +%H:%M:%S) $*" | tee -a "$out/measure.log"; }
wants() { [[ " ${STEPS:-1 2 3 4 5} " == *" $1 "* ]]; }

if wants 1; then
  log "1. paper_claims and the card's evaluations"
  OMP_NUM_THREADS=1 .venv/bin/python benchmarks/paper_claims.py --package_defaults --jobs 2 >"$out/paper_claims.log" 2>&1 &
  claims=$!
  for task in generic simple; do
    for split in validation test; do
      OMP_NUM_THREADS=1 nice .venv/bin/sam-prompt-learner evaluate --model "$model" --dataset "$task" --split "$split" \
        --point_placement interior --no-cache_embeddings --prompt_mode points --selections predicted_iou oracle \
        --output "$out/evals/$task-$split-points.json" >>"$out/evals.log" 2>&1
      OMP_NUM_THREADS=1 nice .venv/bin/sam-prompt-learner evaluate --model "$model" --dataset "$task" --split "$split" \
        --point_placement interior --no-cache_embeddings --prompt_mode box --selections single \
        --output "$out/evals/$task-$split-box.json" >>"$out/evals.log" 2>&1
    done
  done
  log "   evaluations done"
  wait "$claims"
  log "   paper_claims done"
fi

if wants 2; then
  log "2. size breakdown"
  .venv/bin/python benchmarks/pretraining_by_size.py --num_threads 2 --models "$old_label=$old_checkpoint" \
    "$new_label=$model" --output benchmarks/results/pretraining/by_size.json >"$out/by_size.log" 2>&1
fi

if wants 3; then
  log "3. main job"
  /usr/bin/time -v .venv/bin/accelerate launch examples/train.py >"$out/main_job.log" 2>&1
fi

if wants 4; then
  log "4. notebook"
  OMP_NUM_THREADS=1 HF_DATASETS_CACHE="$out/datasets-cache" .venv/bin/python - "$out" >"$out/notebook.log" 2>&1 <<'EOF'
import sys
from pathlib import Path

import nbclient
import nbformat

out = Path(sys.argv[1]).resolve()
path = Path("examples/notebooks/quickstart.ipynb").resolve()
notebook = nbformat.read(path, as_version=4)
nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3",
                        resources={"metadata": {"path": str(path.parent)}}).execute()
nbformat.write(notebook, out / "notebook.ipynb")
EOF
fi

if wants 5; then
  log "5. demo screenshot"
  SAM_PROMPT_LEARNER_DEMO_MODEL=outputs/quickstart .venv/bin/python -m pytest -q tests/test_demo_browser.py \
    --basetemp "$out/demo" >"$out/demo.log" 2>&1
  log "   $(find "$out/demo" -name demo.png | head -n 1)"
fi
log "done"
