"""A training step reads few values back from the device, however many weights the model has.

On a GPU every read (`.item()`, `float(tensor)`, `bool(tensor)`) makes the host wait until the
device has run everything queued, so the host can no longer queue the next kernels while the
device works. The divergence checks and the step log used to read one value per weight
(~270 a step on the default model, measured on an H100 where a step is bound by the host);
now each check reads one. Counted on the CPU: every read is one `aten._local_scalar_dense`.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

from conftest import build_tiny_model
from obliviate.config import RunConfig
from obliviate.data.request import QAItem
from obliviate.training import train
from obliviate.training_callbacks import host_values

_spec = importlib.util.spec_from_file_location(
    "step_ops", Path(__file__).resolve().parents[1] / "benchmarks" / "step_ops.py")
step_ops = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(step_ops)

FORGET = [QAItem(f"Who wrote novel {i}?", f"Novel {i} was written by author number {i}.") for i in range(8)]
RETAIN = [QAItem(f"What is {i} plus {i}?", f"It is {2 * i}.") for i in range(8)]


def reads_per_step(model, tokenizer, tmp_path, steps: int) -> float:
    config = RunConfig(method="graddiff", seed=0)
    config.train.batch_size, config.train.max_steps, config.train.save_steps = 2, steps, -1
    config.train.optim = "adamw_torch_fused"  # torch's unfused CPU AdamW reads each weight's step count
    counter = step_ops.OperatorCounter()
    with counter:
        train(model, tokenizer, forget=FORGET, retain=RETAIN, config=config, output_dir=tmp_path / str(steps))
    return counter.reads


def test_a_step_reads_a_few_values_whatever_the_number_of_weights(tmp_path, tiny_model_and_tokenizer):
    model, tokenizer = tiny_model_and_tokenizer
    deep = build_tiny_model(tokenizer, num_hidden_layers=8)
    assert sum(1 for _ in deep.parameters()) > 2 * sum(1 for _ in model.parameters())
    # per step: the difference between 3 and 1 steps leaves out what a run does once
    shallow_reads = (reads_per_step(model, tokenizer, tmp_path / "a", 3) - reads_per_step(model, tokenizer, tmp_path / "b", 1)) / 2
    deep_reads = (reads_per_step(deep, tokenizer, tmp_path / "c", 3) - reads_per_step(deep, tokenizer, tmp_path / "d", 1)) / 2
    assert deep_reads == shallow_reads, f"reads per step grow with the weights: {shallow_reads} vs {deep_reads}"
    assert shallow_reads <= 6, f"{shallow_reads} device reads per training step (4 with transformers 5.24)"


def test_the_step_log_reads_its_values_in_one_copy():
    terms = {"loss": [torch.tensor(0.5), torch.tensor(0.25)], "forget_nll": [torch.tensor(2.0)],
             "tokens": [torch.tensor(7), torch.tensor(5)], "beta": [0.1]}
    counter = step_ops.OperatorCounter()
    with counter:
        values = host_values(terms)
    assert values == {"loss": [0.5, 0.25], "forget_nll": [2.0], "tokens": [7.0, 5.0], "beta": [0.1]}
    assert counter.reads == 0  # tolist: one copy, no read per value


def test_the_step_log_keeps_large_counts_and_float64_terms_exact():
    values = host_values({"tokens": [torch.tensor(2**24 + 1)], "term": [torch.tensor(0.1, dtype=torch.float64)]})
    assert values == {"tokens": [float(2**24 + 1)], "term": [0.1]}
