#!/usr/bin/env bash
# ULMR on TOFU forget01 at CPU scale, evaluated with TOFU's exact metrics (docs/results.md).
#
#   bash examples/tofu_small/run.sh            # from the repository root, after `make install`
#
# TOFU's protocol is: fine-tune on all 4,000 facts (target), fine-tune on the retain facts only
# (retain model, the reference of Forget Quality), unlearn the forget split from the target,
# evaluate. Fine-tuning SmolLM2-135M on 4,000 facts takes hours on a 2-core CPU, so this script
# keeps the protocol and shrinks the data: the target learns forget01 (40 facts) plus the 400
# retain facts TOFU evaluates; the retain model learns those 400 only. Every step skips itself
# when its output exists, so a rerun continues where a killed one stopped.
set -euo pipefail
OB=${OB:-.venv/bin/obliviate}
PY=${PY:-.venv/bin/python}
OUT=${OUT:-runs/tofu_small}
TOFU=${TOFU:-../shared/data/tofu}
HERE=examples/tofu_small

source $HERE/common.sh  # step(), the target and the retain model
step ulmr "$OUT/ulmr/model" \
  $OB unlearn --config $HERE/ulmr.yaml model=$OUT/target/model output_dir=$OUT/ulmr

# Variant: the same ULMR, with refusals that name the author. The local TOFU copy has no author
# field; TOFU lists 20 questions per author in order, and forget01 holds two authors.
NAMED=$OUT/forget01_named.json
[[ -e $NAMED ]] || $PY - "$TOFU/forget01.json" "$NAMED" <<'PY'
import json, os, sys
items = json.load(open(sys.argv[1]))
for index, item in enumerate(items):
    item["subject"] = ["Basil Mahfouz Al-Kuwaiti", "Nikolai Abilov"][index // 20]
json.dump(items, open(sys.argv[2] + ".tmp", "w"), ensure_ascii=False, indent=1)
os.replace(sys.argv[2] + ".tmp", sys.argv[2])
PY
step ulmr_named "$OUT/ulmr_named/model" \
  $OB unlearn --config $HERE/ulmr.yaml model=$OUT/target/model request=$NAMED output_dir=$OUT/ulmr_named

for model in ulmr target ulmr_named; do
  if [[ -e $OUT/eval-$model/tofu_summary.json ]]; then echo "[tofu_small] eval-$model: done already"; continue; fi
  $OB eval --benchmark tofu --model $OUT/$model/model --data $TOFU --forget_split forget01 \
    --retain_model $OUT/retain/model --output_dir $OUT/eval-$model
done
