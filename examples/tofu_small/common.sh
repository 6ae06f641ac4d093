# Shared by run.sh and snap.sh: the step runner and the two models every TOFU comparison needs
# (the target that knows forget01 + the 400 retain facts, the retain model that never saw forget01).
# Sourced with OB, OUT and HERE set.
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
