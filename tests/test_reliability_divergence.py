"""Divergence is caught before it is saved: NaN gradients behind a finite loss stop the run before
the optimiser step, the checkpoint named as last good holds finite weights, and config
validation refuses inf and nan."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from obliviate.config import RunConfig, load_config
from obliviate.data.request import QAItem
from obliviate.errors import UserError
from obliviate.objectives import OBJECTIVES, Objective
from obliviate.objectives.common import answer_nll
from obliviate.training import NonFiniteLossError, train
from obliviate.training_checkpoints import last_good_checkpoint

FORGET = [QAItem(f"Who wrote the novel number {i}?", f"The author of novel {i} was born in a small town.")
          for i in range(6)]


def nan_gradients_at_step_2(model, batch, ctx):
    """A finite loss whose gradient is NaN: d/dx sqrt(x) at 0 is inf, times 0 is NaN."""
    nll = answer_nll(model, batch["forget"])
    ctx.log("forget_nll", nll)
    if ctx.step < 2:
        return nll
    weights = next(model.parameters()).sum()
    return nll + 0.0 * torch.sqrt(weights - weights.detach())


def test_nan_gradients_stop_before_the_step_and_before_any_checkpoint(tmp_path, tiny_model_and_tokenizer,
                                                                      monkeypatch):
    monkeypatch.setitem(OBJECTIVES, "nan_grads", Objective(nan_gradients_at_step_2, retain="none"))
    model, tokenizer = tiny_model_and_tokenizer
    config = RunConfig(method="graddiff", seed=3)
    config.train.batch_size, config.train.learning_rate = 2, 1e-3
    config.train.max_steps, config.train.save_steps, config.train.save_total_limit = 5, 1, 10
    with pytest.raises(NonFiniteLossError) as caught:
        train(model, tokenizer, forget=FORGET, retain=[], config=config, output_dir=tmp_path, objective="nan_grads")
    message = str(caught.value)
    assert "\n" not in message and "gradient norm" in message and "step 3" in message
    assert "not applied" in message and "checkpoint-2" in message
    assert all(torch.isfinite(p).all() for p in model.parameters()), "the NaN update was applied"
    checkpoints = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert checkpoints == ["checkpoint-1", "checkpoint-2"]
    for name in checkpoints:
        assert all(torch.isfinite(t).all() for t in load_file(tmp_path / "checkpoints" / name / "model.safetensors").values())


def test_the_last_good_checkpoint_is_verified_finite(tmp_path):
    for step, value in ((1, 1.0), (2, float("nan"))):
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        save_file({"w": torch.full((2,), value)}, folder / "model.safetensors")
        (folder / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    assert last_good_checkpoint(tmp_path).name == "checkpoint-1"


@pytest.mark.parametrize("override", ["train.learning_rate=inf", "train.learning_rate=.inf",
                                      "train.learning_rate=nan", "objective.beta=-.inf", "train.num_epochs=1e999"])
def test_config_refuses_non_finite_numbers(override):
    with pytest.raises(UserError, match="finite number") as caught:
        load_config(None, [override])
    assert "\n" not in str(caught.value)


def test_config_file_refuses_inf(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("train:\n  learning_rate: .inf\n")
    with pytest.raises(UserError, match="train.learning_rate.*finite"):
        load_config(path)


NAN_ON_ONE_PROCESS = """
import sys, torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from obliviate.config import RunConfig
from obliviate.data.request import QAItem
from obliviate.objectives import OBJECTIVES, Objective
from obliviate.objectives.common import answer_nll
from obliviate.training import train

def nan_value_on_process_1(model, batch, ctx):
    nll = answer_nll(model, batch["forget"])
    if torch.distributed.get_rank() == 1 and ctx.step >= 2:
        return nll + torch.tensor(float("nan"))  # the value only: every gradient stays finite
    return nll

OBJECTIVES["nan_on_1"] = Objective(nan_value_on_process_1, retain="none")
model_dir, out = sys.argv[1], sys.argv[2]
config = RunConfig(method="graddiff", seed=3)
config.train.batch_size, config.train.max_steps, config.train.save_steps = 2, 6, -1
forget = [QAItem(f"Who wrote the novel number {i}?", f"The author of novel {i} was born in a small town.") for i in range(8)]
train(AutoModelForCausalLM.from_pretrained(model_dir), AutoTokenizer.from_pretrained(model_dir), forget=forget,
      retain=[], config=config, output_dir=out, objective="nan_on_1")
"""


@pytest.mark.multiprocess
def test_a_non_finite_loss_on_one_process_stops_every_process(tmp_path, tiny_model_dir):
    """Only process 1's loss is NaN and no gradient is: process 0 learns it from the shared check
    before the optimiser step and stops too (alone it would step on and wait for process 1)."""
    from conftest import launch_two

    script = tmp_path / "nan_on_1.py"
    script.write_text(NAN_ON_ONE_PROCESS)
    done = launch_two([str(script), str(tiny_model_dir), str(tmp_path / "run")], timeout=120)
    assert done.returncode != 0
    assert "loss is nan" in done.stderr, done.stderr[-3000:]
    assert "non-finite on another process" in done.stderr, done.stderr[-3000:]
    assert "step 3" in done.stderr


def huge_but_finite_in_float64(model, batch, ctx):
    """A float64 loss beyond float32's range, with finite gradients: nothing diverged."""
    return answer_nll(model, batch["forget"]) + torch.tensor(1e300, dtype=torch.float64)


def test_the_guard_checks_each_value_in_its_own_dtype_and_skips_empty_weights(tmp_path, tiny_model_and_tokenizer,
                                                                              monkeypatch):
    monkeypatch.setitem(OBJECTIVES, "huge_f64", Objective(huge_but_finite_in_float64, retain="none"))
    model, tokenizer = tiny_model_and_tokenizer
    model = model.double()
    model.register_parameter("empty", torch.nn.Parameter(torch.zeros(0, dtype=torch.float64)))  # no elements
    config = RunConfig(method="graddiff", seed=3)
    config.train.batch_size, config.train.max_steps, config.train.save_steps = 2, 2, -1
    config.train.precision = "fp32"
    train(model, tokenizer, forget=FORGET, retain=[], config=config, output_dir=tmp_path, objective="huge_f64")
    assert all(torch.isfinite(p).all() for p in model.parameters())
