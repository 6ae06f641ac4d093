#!/usr/bin/env bash
# Every GPU figure of issue 19 in one call on a lent GPU machine (docs/speed.md, docs/speed-training.md):
# the CUDA decode test (static == plain), engine vs HF generate (static and plain decode), training
# throughput and MFU on the default model's shape and on a 1B Llama shape. No weights travel: each
# benchmark runs random weights of a saved shape (config, tokenizer, TOFU items; a few MB each).
#
#   bash benchmarks/gpu_figures.sh --prepare   # here, once: runs/{smollm2_shape,train_shape_135m,train_shape_1b,wheels}
#   # then the device tool: carry ["runs/smollm2_shape", "runs/train_shape_135m", "runs/train_shape_1b",
#   #   "runs/wheels"], command "bash benchmarks/gpu_figures.sh", timeout_s 600
#
# Each step has its own time limit (STEP_LIMIT seconds, default 110) and writes $OUT/<step>.log (and
# .json where the benchmark writes one); $OUT/steps.txt lists each step's exit status, so a step that
# fails or runs out of time leaves the others' figures.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
if [ "${1:-}" = "--prepare" ]; then
    set -e
    PY=.venv/bin/python
    PYTHONPATH=src $PY benchmarks/eval_speed.py --save-shape runs/smollm2_shape
    PYTHONPATH=src $PY benchmarks/train_throughput.py --save-shape runs/train_shape_135m
    PYTHONPATH=src $PY benchmarks/train_throughput.py --save-shape runs/train_shape_1b --shape-of llama-1b
    $PY -m pip download -q --no-deps -d runs/wheels transformers==5.24.0 pytest pluggy iniconfig
    du -sh runs/smollm2_shape runs/train_shape_135m runs/train_shape_1b runs/wheels
    exit 0
fi
OUT=${OUT:-runs/gpu-figures}
mkdir -p "$OUT"
$PY -m pip install -q --no-deps runs/wheels/*.whl > "$OUT/install.log" 2>&1
export PYTHONPATH=src TOKENIZERS_PARALLELISM=false
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.txt" 2>&1

step() {
    local name=$1; shift
    local start=$SECONDS
    timeout "${STEP_LIMIT:-110}" "$@" > "$OUT/$name.log" 2>&1
    echo "$name rc=$? $((SECONDS - start))s" | tee -a "$OUT/steps.txt"
}

# SMOKE=1 DEVICE=cpu: the same steps at toy sizes, to check this script on a machine without a GPU
DEVICE=${DEVICE:-cuda}
if [ "${SMOKE:-0}" = 1 ]; then P=(4 2 8); T=(2 1 96 1); else P=(256 64 200); T=(32 16 256 10); fi
EVAL=(benchmarks/eval_speed.py --generation --shape runs/smollm2_shape --device "$DEVICE" --batch-size 64
      --max-new-tokens "${P[2]}")
TRAIN=(benchmarks/train_throughput.py --device "$DEVICE" --precision bf16 --seq "${T[2]}" --steps "${T[3]}")
step decode_test $PY -m pytest -q tests/test_engine_decode.py
step eval_static $PY "${EVAL[@]}" --decode static --prompts "${P[0]}" --hf-prompts "${P[1]}" --json "$OUT/eval_static.json"
step eval_plain $PY "${EVAL[@]}" --decode plain --prompts "${P[0]}" --hf-prompts 0 --json "$OUT/eval_plain.json"
step train_135m $PY "${TRAIN[@]}" --shape runs/train_shape_135m --batch "${T[0]}"
step train_1b $PY "${TRAIN[@]}" --shape runs/train_shape_1b --batch "${T[1]}" \
    --configs plain,trainer,trainer-fused,trainer-compile  # trainer-packed on the 135M shape only: the step's time

