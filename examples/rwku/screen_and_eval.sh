#!/usr/bin/env bash
# RWKU on the default model: evaluate three targets with small sets (minutes on 2 CPU cores).
# Data: RWKU's processed layout (../shared/data/rwku here; or the hub name jinzhuoran/RWKU).
set -euo pipefail
DATA=${DATA:-../shared/data/rwku}
obliviate eval --benchmark rwku --model smollm2-135m-instruct --data "$DATA" \
  --targets 1,2,3 --ds_size 4 --utility mmlu,truthfulqa,triviaqa --output_dir runs/rwku-smollm2
# Full sets, all utility columns (slow on CPU): drop --ds_size and --utility.
