#!/usr/bin/env bash
# Unlearn one RWKU target with GA, NPO (passage level, raw text), RT and ULMR, and evaluate each
# with RWKU's evaluator (docs/results-rwku.md has the figures and their reading).
#
#   bash examples/rwku/unlearn_one.sh          # from the repository root, after `make install`
#
# SmolLM2-135M-Instruct barely knows RWKU's targets (`obliviate probe`: 0-16% of FB + QA on
# targets 1-10), so the script first picks the best-known target with a shipped training corpus
# (8, Paris Hilton) and teaches the model that target's Wikipedia passages (raw text, as TOFU's
# protocol teaches its target model the facts it later forgets). Each method then starts from the
# taught model. Every step skips itself when its output exists, so a rerun continues where a
# killed one stopped. One thread per process (the machine is shared).
# STAGE=train runs steps 1-4 only, STAGE=eval steps 5-6 only (it skips models not trained yet), so
# evaluations can run beside the training: `STAGE=train bash ...` and `STAGE=eval bash ...`.
set -euo pipefail
OB=${OB:-.venv/bin/obliviate}
PY=${PY:-.venv/bin/python}
OUT=${OUT:-runs/rwku-one}
DATA=${DATA:-../shared/data/rwku}
HERE=examples/rwku
STAGE=${STAGE:-all}
TARGET=8
EVAL_ARGS=(--benchmark rwku --data "$DATA" --targets $TARGET --utility_size 8 --batch_size 16)
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} MKL_NUM_THREADS=${MKL_NUM_THREADS:-1}
mkdir -p "$OUT"

step() {  # step NAME DONE_FILE COMMAND...: run unless DONE_FILE exists; resume a killed training run
  local name=$1 done_file=$2; shift 2
  if [[ -e $done_file ]]; then echo "[rwku] $name: done already ($done_file)"; return; fi
  echo "[rwku] $name: $*"
  local resume=() start=$SECONDS
  [[ -d $OUT/$name/checkpoints ]] && resume=(--resume)
  "$@" "${resume[@]}"
  printf '%s\t%s\n' "$name" "$((SECONDS - start))" >> "$OUT/wall_s.tsv"
}

if [[ $STAGE != eval ]]; then
# 1. Which target does the model know? (FB + QA ROUGE-L recall before unlearning, targets 1-10)
step probe "$OUT/probe.json" $OB probe --model smollm2-135m-instruct --data "$DATA" --targets 1-10 \
  --output "$OUT/probe.json"
# 2. The target model: the default model taught target 8's Wikipedia passages.
step target "$OUT/target/model" $OB finetune --config $HERE/teach.yaml output_dir=$OUT/target
# 3. RT trains towards reject.json's own refusal phrasings.
[[ -e $OUT/refusals.txt ]] || $PY - "$DATA" "$OUT/refusals.txt" <<'PY'
import json, os, sys
from obliviate.data import rwku
target = rwku.resolve_targets(sys.argv[1], 8)[0]
outputs = dict.fromkeys(r["output"].strip() for r in rwku.load_set(sys.argv[1], target, "reject"))
open(sys.argv[2] + ".tmp", "w").write("".join(o + "\n" for o in outputs if o))
os.replace(sys.argv[2] + ".tmp", sys.argv[2])
PY
# 4. Unlearn from the target model.
for method in ga npo rt ulmr; do
  extra=()
  [[ $method == rt ]] && extra=(objective.refusals=$OUT/refusals.txt)
  step $method "$OUT/$method/model" $OB unlearn --config $HERE/$method.yaml model=$OUT/target/model \
    output_dir=$OUT/$method "${extra[@]}"
done
fi
[[ $STAGE == train ]] && exit 0
# 5. Evaluate: the default model, the taught target model, and each unlearned model.
step eval-base "$OUT/eval-base/rwku_summary.json" $OB eval "${EVAL_ARGS[@]}" --model smollm2-135m-instruct \
  --output_dir $OUT/eval-base
for model in target ga npo rt ulmr; do
  [[ -e $OUT/$model/model ]] || { echo "[rwku] eval-$model: $OUT/$model/model not trained yet"; continue; }
  step eval-$model "$OUT/eval-$model/rwku_summary.json" $OB eval "${EVAL_ARGS[@]}" --model $OUT/$model/model \
    --output_dir $OUT/eval-$model
done
# 6. One table, before / after per method.
$PY $HERE/table.py "$OUT" base target ga npo rt ulmr > "$OUT/table.md"
cat "$OUT/table.md"
