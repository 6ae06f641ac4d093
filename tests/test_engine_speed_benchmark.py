"""benchmarks/eval_speed.py --generation runs end to end on the tiny model (the form a GPU
machine runs with --shape): it prints the compute limit, the engine's and HF generate's
tokens/s, and writes its figures as JSON."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _benchmark():
    spec = importlib.util.spec_from_file_location("eval_speed", ROOT / "benchmarks" / "eval_speed.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generation_benchmark_on_a_shape_directory(tiny_model_dir, tmp_path, capsys):
    (tiny_model_dir / "questions.json").write_text(json.dumps(["Hi", "What is the capital of France?", "Hi"]))
    out = tmp_path / "figures.json"
    args = ["--generation", "--shape", str(tiny_model_dir), "--prompts", "3", "--hf-prompts", "2",
            "--batch-size", "2", "--max-new-tokens", "5", "--precision", "fp32", "--decode", "static",
            "--json", str(out)]
    assert _benchmark().main(args) == 0
    figures = json.loads(out.read_text())
    assert figures["decode"] == "static" and figures["prompts"] == 2  # repeated questions run once
    # same prompts, same greedy outputs: the same new tokens (the engine's first from the prompt's pass)
    assert figures["engine_new_tokens"] == figures["hf_new_tokens"] and 2 <= figures["hf_new_tokens"] <= 10
    assert figures["limit_tps"] > 0 and figures["speedup"] > 0
    printed = capsys.readouterr().out
    assert "compute limit" in printed and "engine / HF" in printed


def test_generation_benchmark_prints_the_decoding_bound(tiny_model_dir, tmp_path, capsys):
    (tiny_model_dir / "questions.json").write_text(json.dumps(["Hi", "What is the capital of France?"]))
    out = tmp_path / "figures.json"
    args = ["--generation", "--shape", str(tiny_model_dir), "--prompts", "2", "--hf-prompts", "0",
            "--max-new-tokens", "6", "--precision", "fp32", "--decode", "plain", "--json", str(out)]
    assert _benchmark().main(args) == 0
    figures = json.loads(out.read_text())
    bound = figures["bound"]
    assert figures["decode_rows"] == 2 and figures["decode_tokens"] > 0 and figures["decode_tps"] > 0
    assert 0 < bound["bound_fraction"] < 1 and bound["read_bandwidth"] > 1e8 and bound["met"] in (True, False)
    printed = capsys.readouterr().out
    assert "decoding bound: each generated token read" in printed and "(target >= 70%:" in printed


def test_attended_counts_rows_times_width_of_each_plain_step(tiny_model_and_tokenizer, monkeypatch):
    """One prompt of n tokens, 5 new tokens and no stop: the first comes from the prompt's own
    pass, then 4 steps read widths n + 1 .. n + 4 (the cache so far and the step's own entry)."""
    import sys

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from decode_bound import attended

    from obliviate.evaluation import engine
    from obliviate.prompts import format_prompt, prompt_token_ids

    model, tokenizer = tiny_model_and_tokenizer
    monkeypatch.setattr("obliviate.evaluation.engine.runner.stop_token_ids", lambda *a, **k: [])  # all 5 tokens
    n = len(prompt_token_ids(tokenizer, [format_prompt(tokenizer, "Hi")])[0])
    with attended() as counts:
        engine.greedy_generate(model, tokenizer, ["Hi"], max_new_tokens=5, precision="fp32", decode="plain")
    assert counts["tokens"] == 4 and counts["rows"] == 1
    assert counts["positions"] == sum(n + i for i in range(1, 5))
    config = model.config
    head_dim = config.hidden_size // config.num_attention_heads
    assert counts["bytes_per_position"] == 2 * config.num_hidden_layers * config.num_key_value_heads * head_dim * 4
