"""`obliviate bench`: the method comparison table on TOFU, every stage cached and resumable.

    obliviate bench --config examples/bench/tofu_small.yaml --output_dir runs/bench-tofu

Stages (bench/plan.py): target (fine-tune on the forget + retain facts), oracle (the same base on
the retain facts only: the reference of Forget Quality), one unlearning run per row of the row
YAML (bench/rows.py), one TOFU evaluation per model, then the report (table, plot, HTML). Each
stage writes its marker last (bench/stages.py); a rerun redoes only the stages without one.
"""
