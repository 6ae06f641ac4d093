#!/usr/bin/env bash
# SNAP on TOFU forget01 at CPU scale (docs/results.md): the target and retain models of run.sh,
# then SNAP on the target, then the TOFU evaluator with Forget Quality for target and SNAP.
set -euo pipefail
OB=${OB:-.venv/bin/obliviate}
PY=${PY:-.venv/bin/python}
OUT=${OUT:-runs/tofu_small}
TOFU=${TOFU:-../shared/data/tofu}
HERE=examples/tofu_small

source $HERE/common.sh  # step(), the target and the retain model
[[ -e $OUT/snap_request.json ]] || $PY $HERE/snap_request.py "$TOFU" "$OUT/snap_request.json"
step snap "$OUT/snap/model" \
  $OB unlearn --config $HERE/snap.yaml model=$OUT/target/model request=$OUT/snap_request.json output_dir=$OUT/snap
for model in target snap; do
  if [[ -e $OUT/eval-$model/tofu_summary.json ]]; then echo "[tofu_small] eval-$model: done already"; continue; fi
  $OB eval --benchmark tofu --model $OUT/$model/model --data $TOFU --forget_split forget01 \
    --retain_model $OUT/retain/model --output_dir $OUT/eval-$model
done
