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
