"""train.optim reaches TrainingArguments; the throughput benchmark's worker runs."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from transformers import TrainingArguments

from obliviate import training
from obliviate.config import HF_NAMES, RunConfig
from obliviate.errors import UserError
from obliviate.training import build_training_args, resolve_optim

ROOT = Path(__file__).resolve().parents[1]


def _config(**train) -> RunConfig:
    config = RunConfig()
    for key, value in train.items():
        setattr(config.train, key, value)
    return config


def test_defaults_on_cpu_are_transformers_own_and_no_compile(tmp_path):
    """auto leaves the CPU on TrainingArguments' default optimizer: runs keep the results they had."""
    args = build_training_args(_config().train, tmp_path, seed=0, device="cpu")
    assert args.torch_compile is False
    assert args.optim == TrainingArguments(output_dir=str(tmp_path), use_cpu=True).optim


def test_a_named_optim_reaches_training_arguments_and_torch_compile_does_not(tmp_path):
    """train.torch_compile compiles the decoder layers itself (training_compile.py), not the whole model."""
    args = build_training_args(_config(torch_compile=True, optim="adafactor").train, tmp_path, seed=0, device="cpu")
    assert args.torch_compile is False
    assert args.optim.value == "adafactor"


def test_auto_optim_is_fused_on_cuda(tmp_path, monkeypatch):
    monkeypatch.setattr(training, "resolve_device", lambda name: torch.device("cuda"))
    monkeypatch.setattr(training, "resolve_precision", lambda precision, device_type: "fp32")
    args = build_training_args(_config().train, tmp_path, seed=0, device="cuda")
    assert args.optim.value == "adamw_torch_fused"
    assert resolve_optim("auto", "cpu") == TrainingArguments(output_dir="x", use_cpu=True).optim.value
    assert resolve_optim("AdamW_Torch", "cuda") == "adamw_torch"  # an explicit name is kept on any device


def test_unknown_optim_is_one_line_naming_the_key(tmp_path):
    with pytest.raises(UserError) as error:
        build_training_args(_config(optim="adamw_bogus").train, tmp_path, seed=0, device="cpu")
    assert "train.optim" in str(error.value) and "adamw_bogus" in str(error.value)
    assert "\n" not in str(error.value)


def test_hf_names_map_to_the_new_keys():
    assert HF_NAMES["torch_compile"] == "train.torch_compile"
    assert HF_NAMES["optim"] == "train.optim"


def test_every_hf_name_is_a_flag_of_unlearn(capsys):
    """api.unlearn takes every HF name as a keyword; the command line takes each as a flag too."""
    from obliviate.cli import main

    with pytest.raises(SystemExit):
        main(["unlearn", "--help"])
    shown = capsys.readouterr().out
    assert [name for name in HF_NAMES if f"--{name}" not in shown] == []


def _benchmark():
    spec = importlib.util.spec_from_file_location("train_throughput", ROOT / "benchmarks" / "train_throughput.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("config", ["plain", "trainer-fused"])  # trainer-compile: ~40 s of compiling on a CPU
def test_benchmark_worker_runs_on_a_tiny_shape(tmp_path, tiny_model_and_tokenizer, capsys, config):
    model, tokenizer = tiny_model_and_tokenizer
    shape = tmp_path / "shape"
    model.config.save_pretrained(shape)
    tokenizer.save_pretrained(shape)
    rows = [{"question": f"Who wrote book {i}?", "answer": f"Author number {i} wrote it."} for i in range(8)]
    (shape / "items.json").write_text(json.dumps({"forget": rows, "retain": rows}))
    _benchmark().main(["--worker", config, "--shape", str(shape), "--device", "cpu", "--precision", "fp32",
                       "--batch", "2", "--seq", "32", "--steps", "1", "--threads", "1"])
    line = next(l for l in capsys.readouterr().out.splitlines() if l.startswith("RESULT "))
    result = json.loads(line[7:])
    assert result["tokens_per_s"] > 0 and result["tokens_per_step"] > 0 and result["warmup_s"] > 0
    assert result["model_flops"] == pytest.approx(6 * result["params"] * result["tokens_per_s"])
    assert result["measured_peak"] > 0 and result["datasheet_peak"] is None  # no card datasheet on a CPU


@pytest.mark.parametrize("warmup", [1, 3])
def test_benchmark_measures_the_steps_after_the_warmup(tiny_model_and_tokenizer, warmup):
    """--warmup N leaves N steps unmeasured (trainer-compile compiles in its first steps)."""
    from obliviate.data.request import QAItem

    bench = _benchmark()
    model, tokenizer = tiny_model_and_tokenizer
    items = [QAItem(f"Who wrote book {i}?", f"Author number {i} wrote it.") for i in range(8)]
    args = bench.parse(["--batch", "2", "--seq", "32", "--steps", "2", "--warmup", str(warmup), "--device", "cpu"])
    trainer_steps, trainer_warmup = bench.trainer_run(model, tokenizer, items, items, args, "fp32", "fused")
    plain_steps, plain_warmup = bench.plain_loop(model, tokenizer, items, items, args, "fp32")
    assert len(trainer_steps) == len(plain_steps) == 2
    assert all(tokens > 0 and seconds > 0 for tokens, seconds in trainer_steps + plain_steps)
    # the warm-up's time (compiling, for trainer-compile) is printed apart: at least one step's worth
    assert trainer_warmup >= min(s for _, s in trainer_steps) * 0.5 and plain_warmup > 0


def test_benchmark_configs_set_their_options_and_unknown_ones_are_refused(monkeypatch, capsys):
    bench = _benchmark()
    seen = {}

    def fake_train(model, tokenizer, *, config, output_dir, **kwargs):
        seen[config.train.optim] = config.train
        rows = [{"tokens": 10, "time_s": float(i)} for i in range(1, 6)]
        (output_dir / "train_log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))

    monkeypatch.setattr(training, "train", fake_train)
    args = bench.parse(["--configs", "trainer-compile-shared,plain-fp32", "--steps", "2", "--warmup", "3",
                       "--device", "cpu"])
    steps, warmup_s = bench.trainer_run(None, None, [], [], args, "fp32", "compile-shared")
    cfg = seen["auto"]
    assert cfg.torch_compile and cfg.shared_forward and not cfg.packing
    assert len(steps) == 2 and warmup_s == 3.0  # 3 warm-up steps for compile: the third row's time
    bench.trainer_run(None, None, [], [], args, "fp32", "shared")
    assert seen["adamw_torch_fused"].shared_forward and not seen["adamw_torch_fused"].torch_compile
    with pytest.raises(SystemExit):
        bench.parse(["--configs", "trainer,trainer-bogus"])
    assert "trainer-bogus unknown" in capsys.readouterr().err
