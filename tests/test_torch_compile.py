"""train.torch_compile compiles each decoder layer (accelerate's regional compilation: the layers
share one compiled graph, so the first step compiles one layer instead of the whole model), trains
as the uncompiled model does, and saves and returns the plain model."""

from __future__ import annotations

import copy

import pytest
import torch
from safetensors.torch import load_file
from test_training import FORGET, RETAIN, config, state

from obliviate import training
from obliviate.config import load_config
from obliviate.training import REGIONAL_COMPILATION, train

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _run(model, tokenizer, out, compiled: bool):
    cfg = config(max_steps=2, save_steps=2, precision="fp32", optim="adamw_torch", torch_compile=compiled)
    cfg.device = "cpu"
    return train(model, tokenizer, forget=FORGET, retain=RETAIN, config=cfg, output_dir=out)


def _layers(model):
    return list(model.get_decoder().layers)


@pytest.fixture
def models_seen(monkeypatch):
    """The model object each compute_loss call received (the Trainer's wrapped model)."""
    seen = []
    compute_loss = training.UnlearnTrainer.compute_loss

    def spy(self, model, *args, **kwargs):
        seen.append(model)
        return compute_loss(self, model, *args, **kwargs)

    monkeypatch.setattr(training.UnlearnTrainer, "compute_loss", spy)
    monkeypatch.delenv(REGIONAL_COMPILATION, raising=False)
    return seen


def test_compile_compiles_each_layer_and_trains_as_uncompiled(tmp_path, tiny_model_and_tokenizer, models_seen):
    model, tokenizer = tiny_model_and_tokenizer
    plain = _run(copy.deepcopy(model), tokenizer, tmp_path / "plain", compiled=False)
    models_seen.clear()
    compiled = _run(model, tokenizer, tmp_path / "compiled", compiled=True)
    wrapped = models_seen[0]
    assert wrapped is not compiled  # the loss ran on the compiled copy; the plain module is returned
    assert all(isinstance(layer, torch._dynamo.eval_frame.OptimizedModule) for layer in _layers(wrapped))
    assert not any(isinstance(layer, torch._dynamo.eval_frame.OptimizedModule) for layer in _layers(compiled))
    assert state(compiled).keys() == state(plain).keys()
    for name, value in state(plain).items():
        torch.testing.assert_close(state(compiled)[name], value, rtol=1e-4, atol=1e-5, msg=name)
    saved = load_file(tmp_path / "compiled" / "checkpoints" / "checkpoint-2" / "model.safetensors")
    assert not any("_orig_mod" in key for key in saved)  # a checkpoint loads into the plain model
    assert set(saved) <= set(state(plain))


def _eager_backend(monkeypatch):
    """dynamo's capture without inductor's code generation (seconds, not a minute): for tests of
    what is compiled and how it trains, not of inductor's kernels."""
    build = training.build_training_args

    def eager(*args, **kwargs):
        training_args = build(*args, **kwargs)
        training_args.torch_compile_backend = "eager"
        return training_args

    monkeypatch.setattr(training, "build_training_args", eager)


@pytest.mark.parametrize("method, options", [
    ("rmu", {}),  # hooks a decoder layer for its hidden states
    ("npo", {"lora.enabled": True}),  # the layers inside a PeftModel; the adapter merged on return
    ("simnpo", {"shared_forward": True, "packing": True}),
    ("graddiff", {"gradient_checkpointing": True}),
])
def test_methods_and_options_train_compiled_as_uncompiled(tmp_path, tiny_model_and_tokenizer, models_seen,
                                                          monkeypatch, method, options):
    _eager_backend(monkeypatch)
    model, tokenizer = tiny_model_and_tokenizer
    trained = []
    for compiled in (False, True):
        cfg = load_config(None, [f"method={method}", "device=cpu", "seed=3", "train.max_steps=2", "train.batch_size=2",
                                 "train.save_steps=-1", "train.precision=fp32", "train.optim=adamw_torch",
                                 "train.learning_rate=1e-3", f"train.torch_compile={str(compiled).lower()}"]
                          + [f"train.{key}={str(value).lower()}" for key, value in options.items()])
        trained.append(train(copy.deepcopy(model), tokenizer, forget=FORGET, retain=RETAIN, config=cfg,
                             output_dir=tmp_path / str(compiled)))
    assert all(isinstance(layer, torch._dynamo.eval_frame.OptimizedModule) for layer in _layers(models_seen[-1]))
    assert state(trained[1]).keys() == state(trained[0]).keys()
    for name, value in state(trained[0]).items():
        torch.testing.assert_close(state(trained[1])[name], value, rtol=1e-4, atol=1e-5, msg=name)


def test_the_environment_can_compile_the_whole_model_instead(tmp_path, tiny_model_and_tokenizer, models_seen,
                                                            monkeypatch):
    monkeypatch.setenv(REGIONAL_COMPILATION, "false")
    _eager_backend(monkeypatch)
    model, tokenizer = tiny_model_and_tokenizer
    _run(model, tokenizer, tmp_path / "whole", compiled=True)
    assert isinstance(models_seen[0], torch._dynamo.eval_frame.OptimizedModule)
    assert not any(isinstance(layer, torch._dynamo.eval_frame.OptimizedModule) for layer in _layers(models_seen[0]))
