#!/usr/bin/env bash
# SKU on the built-in private-details request, at CPU scale (docs/results-sku.md):
#   1. teach SmolLM2-135M-Instruct the unwanted behaviour (it never saw these fictitious people)
#   2. score it with the harmful-prompt benchmark (forget prompts, held-out prompts, utility)
#   3. SKU: harmful LoRA with its three losses, then negation (lambda 1, and 0.5 as a sweep)
#   4. score the result against the taught model's outputs
# Usage: bash examples/sku/run.sh [output root, default runs/sku-exp]
set -euo pipefail
OB=${OB:-.venv/bin/obliviate}
OUT=${1:-runs/sku-exp}
REQ=src/obliviate/data/demo/sku_request.json
EVAL=(--ds_size "${DS_SIZE:-40}" --max_new_tokens 48)
STEPS=${SKU_STEPS:-100}

if [ ! -f "$OUT/taught/model/config.json" ]; then
  $OB finetune model=smollm2-135m-instruct request=$REQ output_dir=$OUT/taught train.learning_rate=1e-4 \
    train.num_epochs=10 train.batch_size=8 train.weight_decay=0.0 train.save_steps=-1
fi
[ -f "$OUT/eval-taught/harmful_eval.json" ] || \
  $OB eval --benchmark harmful --model $OUT/taught/model "${EVAL[@]}" --output_dir $OUT/eval-taught
if [ ! -f "$OUT/sku/model/config.json" ]; then
  $OB unlearn --method sku model=$OUT/taught/model request=$REQ output_dir=$OUT/sku \
    train.max_steps=$STEPS train.save_steps=-1 sku.lambda_sweep=[0.5]
fi
for M in model model_lambda0.5; do
  [ -f "$OUT/eval-sku-$M/harmful_eval.json" ] || \
    $OB eval --benchmark harmful --model $OUT/sku/$M "${EVAL[@]}" \
      --reference_outputs $OUT/eval-taught/harmful_eval.json --output_dir $OUT/eval-sku-$M
done
