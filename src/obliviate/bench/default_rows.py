"""The packaged default rows of `obliviate bench` (no --config): examples/bench/tofu_small.yaml with
its data path relative to the working directory (the repository root). Kept as text here because
the package ships no YAML data files; tests/test_bench.py checks that the two agree."""

DEFAULT_ROWS = """\
# The method comparison table on TOFU forget01 at CPU scale (docs/bench.md, docs/results-bench.md).
#
#   OMP_NUM_THREADS=1 .venv/bin/python -m obliviate.bench.cli --config examples/bench/tofu_small.yaml \\
#       --target runs/tofu_small/target/model --oracle runs/tofu_small/retain/model --output_dir runs/bench-tofu
#
# Protocol (reduced to fit ~60 min on a 2-core CPU with 13 rows):
# - target / oracle: examples/tofu_small's models (SmolLM2-135M-Instruct taught forget01 + the 400
#   retain_perturbed facts, resp. the 400 only; `teach:` below, 29 + 14 min fp32). Pass them with
#   --target / --oracle to reuse them; without, the bench trains them with `teach:`.
# - unlearning request: forget = forget01 (40 facts), retain = retain_perturbed (the 400 the target
#   learned: a retain term on facts the model never saw would teach, not keep).
# - evaluation: TOFU's metrics, all 40 forget01 (and holdout01) items, the first 20 of retain / real
#   authors / world facts (ds_size 20, the bench cuts those three only), greedy up to 64 new tokens
#   (TOFU answers are 1-2 sentences; 200 at full scale). ~2 min per model on the shared machine
#   instead of ~6 (full evaluation, 200 tokens).
# - methods: 2 epochs of 5 steps (batch 8 forget + batch 8 retain) unless the row says otherwise:
#   one step of a method with a retain term and a reference model costs ~15-20 s on one thread of
#   the shared 2-core machine, so 10 steps is what 13 rows afford. open-unlearning's TOFU runs use
#   lr 1e-5 for 10 epochs at effective batch 32 on 1B-8B models; with 10 steps the gradient-ascent
#   family gets lr 3e-5, the SFT-style methods (RT, ULMR) and RMU more, chosen so that each moves
#   the 135M target in 10 steps (see docs/results-bench.md for what they did).
description: TOFU forget01, SmolLM2-135M-Instruct, CPU scale
protocol:
  model: smollm2-135m-instruct
  data: ../shared/data/tofu
  forget_split: forget01
  retain_split: retain_perturbed
  ds_size: 20
  max_new_tokens: 64
teach:  # examples/tofu_small/teach.yaml: how target and oracle are taught when not given
  train.learning_rate: 1.0e-4
  train.num_epochs: 4
  train.batch_size: 8
  train.weight_decay: 0.0
  train.save_steps: 50
common:  # under every row's own overrides
  train.batch_size: 8
  train.num_epochs: 2
  train.weight_decay: 0.0
  train.save_total_limit: 1
# Row order: the rows the papers' claims rest on first (GA, GradDiff, NPO, ULMR), then the rest.
rows:
  - name: GA
    method: ga
    overrides: {train.learning_rate: 3.0e-5}
  - name: GradDiff
    method: graddiff
    overrides: {train.learning_rate: 3.0e-5}
  - name: NPO
    method: npo
    overrides: {train.learning_rate: 3.0e-5}
  - name: ULMR
    method: ulmr
    overrides: {train.learning_rate: 1.0e-4, ulmr.alpha: 0.4, generation.backend: template}
    note: the demo recipe (n = 2 template rewrites, template refusals, full SFT), alpha 0.4
  - name: IDK-DPO
    method: idk_dpo
    overrides: {train.learning_rate: 3.0e-5, objective.refusals: "{data}/idontknow.jsonl"}
  - name: KL
    method: kl
    overrides: {train.learning_rate: 3.0e-5}
  - name: SimNPO
    method: simnpo
    overrides: {train.learning_rate: 3.0e-5}
    note: open-unlearning's TOFU weights (forget 0.125, retain 1, beta 4.5) from the method's presets
  - name: RT
    method: rt
    overrides: {train.learning_rate: 5.0e-5, objective.refusals: "{data}/idontknow.jsonl"}
  - name: RMU
    method: rmu
    overrides: {train.learning_rate: 1.0e-4}
    note: steering 6.5, alpha 1200 (WMDP defaults); lr 1e-4 (WMDP 5e-5 over ~100+ steps)
  - name: ULMR+LoRA
    method: ulmr
    overrides: {train.learning_rate: 5.0e-4, ulmr.alpha: 0.4, generation.backend: template, train.lora.enabled: true}
    note: LoRA r 8 on q/k/v/o instead of full SFT; lr raised for the adapter
  - name: ULMR+retain mix
    method: ulmr
    overrides: {train.learning_rate: 1.0e-4, ulmr.alpha: 0.4, generation.backend: template, ulmr.retain_mix: true}
    requires: [ulmr.retain_mix]
    note: retain QA items mixed into ULMR's SFT set
  - name: SKU
    method: sku
    overrides: {train.max_steps: 15}
    note: LoRA r 32 q/v, lr 2e-4 (reference presets), 15 steps instead of 1000, lambda 1
  - name: SNAP
    method: snap
    overrides: {train.learning_rate: 5.0e-5, generation.backend: template, snap.hard_positive_answers: given}
    note: template negatives (4 per author), hard positives = the retain facts with their given answers, SW 0.1
"""
