#!/usr/bin/env bash
# SNAP on TOFU forget01 at CPU scale (docs/results.md): the target and retain models of run.sh,
# then SNAP on the target, then the TOFU evaluator with Forget Quality for target and SNAP.
set -euo pipefail
OB=${OB:-.venv/bin/obliviate}
PY=${PY:-.venv/bin/python}
OUT=${OUT:-runs/tofu_small}
TOFU=${TOFU:-../shared/data/tofu}
HERE=examples/tofu_small

step() {  # step NAME DONE_FILE COMMAND...
  local name=$1 done_file=$2; shift 2
  if [[ -e $done_file ]]; then echo "[tofu_small] $name: done already ($done_file)"; return; fi
  echo "[tofu_small] $name: $*"
  local resume=()
  [[ -d $OUT/$name/checkpoints ]] && resume=(--resume)
  "$@" "${resume[@]}"
}

step target "$OUT/target/model" \
  $OB finetune --config $HERE/teach.yaml request=$HERE/target.yaml output_dir=$OUT/target
step retain "$OUT/retain/model" \
  $OB finetune --config $HERE/teach.yaml request=$HERE/retain_model.yaml output_dir=$OUT/retain
[[ -e $OUT/snap_request.json ]] || $PY $HERE/snap_request.py "$TOFU" "$OUT/snap_request.json"
step snap "$OUT/snap/model" \
  $OB unlearn --config $HERE/snap.yaml model=$OUT/target/model request=$OUT/snap_request.json output_dir=$OUT/snap
for model in target snap; do
  if [[ -e $OUT/eval-$model/tofu_summary.json ]]; then echo "[tofu_small] eval-$model: done already"; continue; fi
  $OB eval --benchmark tofu --model $OUT/$model/model --data $TOFU --forget-split forget01 \
    --retain-model $OUT/retain/model --output-dir $OUT/eval-$model
done
