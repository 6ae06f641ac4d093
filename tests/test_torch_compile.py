"""train.torch_compile compiles each decoder layer apart (training_compile.py: the layers share one
compiled graph, so the first step compiles one layer instead of the whole model), trains as the
uncompiled model does, and saves and returns the plain model."""

from __future__ import annotations

import copy

import pytest
import torch
from safetensors.torch import load_file
from test_training import FORGET, RETAIN, state

from obliviate import training, training_compile
from obliviate.config import load_config
from obliviate.objectives.common import find_decoder_layers
from obliviate.training import train

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _config(method: str, compiled: bool, **options):
    # SGD: Adam would turn rounding noise in near-zero gradients (compiled kernels round differently)
    # into steps of +-lr, and the weights could not be compared.
    return load_config(None, [f"method={method}", "device=cpu", "seed=3", "train.max_steps=2", "train.batch_size=2",
                              "train.save_steps=2", "train.precision=fp32", "train.optim=sgd",
                              "train.learning_rate=1e-3", f"train.torch_compile={str(compiled).lower()}"]
                       + [f"train.{key}={str(value).lower()}" for key, value in options.items()])


def _compiled(layer) -> bool:
    return "forward" in vars(layer)  # the compiled forward shadows the class's for the time of training


@pytest.fixture
def layers_seen(monkeypatch):
    """Per compute_loss call: whether each decoder layer of the model it received was compiled."""
    seen = []
    compute_loss = training.UnlearnTrainer.compute_loss

    def spy(self, model, *args, **kwargs):
        seen.append([_compiled(layer) for layer in find_decoder_layers(model)])
        return compute_loss(self, model, *args, **kwargs)

    monkeypatch.setattr(training.UnlearnTrainer, "compute_loss", spy)
    return seen


def _train_both(model, tokenizer, tmp_path, method="graddiff", **options):
    return [train(copy.deepcopy(model), tokenizer, forget=FORGET, retain=RETAIN,
                  config=_config(method, compiled, **options), output_dir=tmp_path / str(compiled))
            for compiled in (False, True)]


def _assert_same_weights(plain, compiled):
    assert state(compiled).keys() == state(plain).keys()
    for name, value in state(plain).items():
        torch.testing.assert_close(state(compiled)[name], value, rtol=1e-4, atol=1e-5,
                                   msg=lambda message: f"{name}: {message}")


def test_compile_compiles_each_layer_and_trains_as_uncompiled(tmp_path, tiny_model_and_tokenizer, layers_seen):
    """inductor, as users run it."""
    model, tokenizer = tiny_model_and_tokenizer
    plain, compiled = _train_both(model, tokenizer, tmp_path)
    assert layers_seen[0] == [False, False] and layers_seen[-1] == [True, True]
    assert not any(_compiled(layer) for layer in find_decoder_layers(compiled))  # removed after training
    _assert_same_weights(plain, compiled)
    saved = load_file(tmp_path / "True" / "checkpoints" / "checkpoint-2" / "model.safetensors")
    assert set(saved) <= set(state(plain)) and not any("_orig_mod" in key for key in saved)


@pytest.mark.parametrize("method, options", [
    ("rmu", {}),  # hooks a decoder layer for its hidden states
    ("npo", {"lora.enabled": True}),  # the layers inside a PeftModel; the adapter merged on return
    ("simnpo", {"shared_forward": True, "packing": True}),
    ("graddiff", {"gradient_checkpointing": True}),
])
def test_methods_and_options_train_compiled_as_uncompiled(tmp_path, tiny_model_and_tokenizer, layers_seen,
                                                          monkeypatch, method, options):
    monkeypatch.setattr(training_compile, "BACKEND", "eager")  # dynamo's capture alone: seconds, not a minute
    model, tokenizer = tiny_model_and_tokenizer
    plain, compiled = _train_both(model, tokenizer, tmp_path, method, **options)
    assert layers_seen[-1] == [True, True]
    _assert_same_weights(plain, compiled)


def test_the_compiled_forward_is_removed_when_training_fails_and_a_hooks_forward_kept(tiny_model_and_tokenizer):
    model, _ = tiny_model_and_tokenizer
    first, second = find_decoder_layers(model)
    hooked = first.forward  # as accelerate's device-map / offload hooks set an instance forward
    first.forward = hooked
    with pytest.raises(RuntimeError, match="planted"):
        with training_compile.compiled_decoder_layers(model):
            assert first.forward is not hooked and _compiled(second)
            raise RuntimeError("planted")
    assert vars(first)["forward"] is hooked and not _compiled(second)


def test_one_compiled_graph_serves_every_layer(tmp_path, tiny_tokenizer, monkeypatch):
    """Graphs are compiled per distinct shape, not per layer: 6 layers cost what one does (dynamo's
    cache holds 8 entries per function; a graph per layer would leave deep models partly eager)."""
    from conftest import build_tiny_model
    from torch._dynamo.utils import counters

    monkeypatch.setattr(training_compile, "BACKEND", "eager")
    torch._dynamo.reset()
    counters.clear()
    model = build_tiny_model(tiny_tokenizer, num_hidden_layers=6)
    train(model, tiny_tokenizer, forget=FORGET, retain=RETAIN, config=_config("graddiff", True),
          output_dir=tmp_path)
    assert 1 <= counters["stats"]["unique_graphs"] <= 3  # the first shape, then one dynamic-shape graph


@pytest.mark.parametrize("method, options", [("rmu", {}), ("npo", {"lora.enabled": True})])
def test_no_layer_falls_back_to_eager_at_dynamos_cache_limit(tmp_path, tiny_tokenizer, monkeypatch, method, options):
    """Gradients on and off (a LoRA model's reference pass), trainable and frozen layers (RMU) and the
    shapes each need a compiled variant; dynamo's default limit (8) runs the rest uncompiled."""
    from conftest import build_tiny_model
    from torch._dynamo.utils import counters

    monkeypatch.setattr(training_compile, "BACKEND", "eager")
    torch._dynamo.reset()
    counters.clear()
    model = build_tiny_model(tiny_tokenizer, num_hidden_layers=12)
    train(model, tiny_tokenizer, forget=FORGET, retain=RETAIN, output_dir=tmp_path,
          config=_config(method, True, max_steps=8, **options))
    assert counters["frames"]["total"] == counters["frames"]["ok"]  # a frame past the limit is not compiled


def test_a_multimodal_models_language_layers_are_found():
    """Gemma-3 4B+ loads as Gemma3ForConditionalGeneration, whose config keeps num_hidden_layers in
    its text config (it was an AttributeError traceback for RMU and torch_compile)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model("gemma3")
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    layers = find_decoder_layers(model)
    assert layers is not None and len(layers) == config.get_text_config().num_hidden_layers
    assert type(layers[0]).__name__ == "Gemma3DecoderLayer"
