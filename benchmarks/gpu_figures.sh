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
# The carried wheels (transformers 5.24: the image's 5.17 is below the floor) go to /tmp/site, put
# before the image's own packages on PYTHONPATH; the image's pytest is used as it is. Steps run in
# the order of what is still to measure (decode test, 1B MFU, 135M tokens/s, the static-vs-plain
# comparison, then a rerun of engine vs HF generate, met on 2026-11-27); each has its own time limit
# (seconds, times the integer LIMIT_SCALE; they sum to 565)
# and writes $OUT/<step>.log (and .json where the benchmark writes one); $OUT/steps.txt lists each
# step's exit status and seconds, so a step that fails or runs out of time leaves the others' figures.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$(command -v python3 || command -v python)}
if [ "${1:-}" = "--prepare" ]; then
    set -e
    PY=.venv/bin/python
    PYTHONPATH=src $PY benchmarks/eval_speed.py --save-shape runs/smollm2_shape
    PYTHONPATH=src $PY benchmarks/train_throughput.py --save-shape runs/train_shape_135m
    PYTHONPATH=src $PY benchmarks/train_throughput.py --save-shape runs/train_shape_1b --shape-of llama-1b
    rm -rf runs/wheels
    $PY -m pip download -q --no-deps -d runs/wheels transformers==5.24.0
    du -sh runs/smollm2_shape runs/train_shape_135m runs/train_shape_1b runs/wheels
    exit 0
fi
# The logs go to LOGS; after each step they are packed into $OUT/gpu-figures.tar.gz (the device tool
# brings back at most 8 files) and the step's last lines are printed.
RESULTS=${OUT:-runs}
LOGS=${LOGS:-runs/gpu-figures}
SITE=${SITE:-/tmp/site}
rm -rf "$LOGS"; mkdir -p "$LOGS" "$RESULTS"
OUT=$LOGS
$PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" runs/wheels/*.whl \
    > "$OUT/install.log" 2>&1 || { echo "wheels did not install: $OUT/install.log"; cat "$OUT/install.log"; exit 1; }
export PYTHONPATH="src:$SITE" TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  $PY -c 'import torch, transformers, accelerate, peft; print("torch", torch.__version__, "transformers",
transformers.__version__, "accelerate", accelerate.__version__, "peft", peft.__version__)'
} > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

step() {
    local name=$1 limit=$2; shift 2
    case " ${ONLY:-$name} " in *" $name "*) ;; *) return 0 ;; esac  # ONLY="eval_plain same_outputs": those alone
    local start=$SECONDS
    timeout "$(( limit * ${LIMIT_SCALE:-1} ))" "$@" > "$OUT/$name.log" 2>&1
    echo "$name rc=$? $((SECONDS - start))s" | tee -a "$OUT/steps.txt"
    tail -n "${TAIL_LINES:-25}" "$OUT/$name.log"
    tar -czf "$RESULTS/gpu-figures.tar.gz.part" -C "$(dirname "$LOGS")" "$(basename "$LOGS")" &&
        mv "$RESULTS/gpu-figures.tar.gz.part" "$RESULTS/gpu-figures.tar.gz"
}

# SMOKE=1 DEVICE=cpu: the same steps at toy sizes, to check this script on a machine without a GPU
DEVICE=${DEVICE:-cuda}
if [ "${SMOKE:-0}" = 1 ]; then P=(4 2 8); T=(2 1 96 1); else P=(256 64 200); T=(128 32 256 6); fi
EVAL=(benchmarks/eval_speed.py --generation --shape runs/smollm2_shape --device "$DEVICE" --batch-size 64
      --max-new-tokens "${P[2]}")
TRAIN=(benchmarks/train_throughput.py --device "$DEVICE" --precision bf16 --seq "${T[2]}" --steps "${T[3]}")
# Limits from the H100 run of 2026-11-27 (docs/speed-training.md): a configuration takes 35-50 s
# there (start, random init, peak, 7 steps), trainer-compile on the 1B shape did not finish in the
# 40 s left to it, the plain loop ran out of memory at batch 256 on the 135M shape, and plain
# decoding of 256 prompts did not finish in 45 s.
step decode_test 40 $PY -m pytest -q -p no:cacheprovider tests/test_engine_decode.py
# trainer-compile compiles one decoder layer since train.torch_compile compiles the layers apart
# (warm-up 50 s instead of 232 s on the CPU, docs/speed-training.md); the whole 1B model did not
# compile in the ~40 s its step had left. trainer-fused is the uncompiled baseline of the same call.
step train_1b 150 $PY "${TRAIN[@]}" --shape runs/train_shape_1b --batch "${T[1]}" \
    --configs trainer-fused,trainer-compile-shared
step train_135m 210 $PY "${TRAIN[@]}" --shape runs/train_shape_135m --batch "${T[0]}" \
    --configs trainer-fused,trainer-compile-shared,trainer-compile
step eval_plain 60 $PY "${EVAL[@]}" --decode plain --prompts "${P[1]}" --hf-prompts 0 --json "$OUT/eval_plain.json" \
    --texts "$OUT/texts_plain.json"
# the same prompts in both, so each decodes beside the same neighbours (rows change bf16 rounding)
step eval_static_same 25 $PY "${EVAL[@]}" --decode static --prompts "${P[1]}" --hf-prompts 0 \
    --json "$OUT/eval_static_same.json" --texts "$OUT/texts_static.json"
step same_outputs 10 $PY benchmarks/same_outputs.py "$OUT/texts_static.json" "$OUT/texts_plain.json"
# last: measured on 2026-11-27 (10.4x HF generate); a rerun where time is left
step eval_static 70 $PY "${EVAL[@]}" --decode static --prompts "${P[0]}" --hf-prompts "${P[1]}" \
    --json "$OUT/eval_static.json"
