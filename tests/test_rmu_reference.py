"""RMU as the references run it: both terms on answer tokens only, WMDP's layers and modules
scaled to the model's depth, and open-unlearning's own TOFU RMU (`objective.rmu_train_modules=all`).
Split from test_reference_alignment.py, whose batch and context helpers it uses."""

from __future__ import annotations

import copy

import pytest
import torch
from test_reference_alignment import _batch, _ctx, _frozen

from obliviate.config import ObjectiveConfig, load_config
from obliviate.objectives import OBJECTIVES, rmu


# -- 2. RMU: answer tokens only, WMDP's layers and modules ---------------------------------------

def test_rmu_mse_ignores_prompt_tokens(tiny_model_and_tokenizer):
    model, tokenizer = tiny_model_and_tokenizer
    batch = _batch(tokenizer)
    enc = batch["forget"]
    h = rmu.layer_output(model, enc, 0).detach()
    answer = enc["labels"] != -100
    target = h.clone()
    target[~answer] += 100.0  # differs only on prompt and padding positions
    assert float(rmu.masked_mse(h, target, rmu.token_mask(enc, "answer"))) == 0.0
    assert float(rmu.masked_mse(h, target, rmu.token_mask(enc, "all"))) > 1.0  # the old reduction
    # open-unlearning's reduction: per sequence over its answer tokens, then over the batch
    target = h + torch.arange(h.shape[0], dtype=h.dtype)[:, None, None]
    per_seq = torch.arange(h.shape[0], dtype=torch.float32) ** 2
    assert torch.allclose(rmu.masked_mse(h, target, answer), per_seq.mean(), atol=1e-5)


def test_rmu_trains_down_proj_of_wmdp_scaled_layers(tiny_model_and_tokenizer):
    model, tokenizer = tiny_model_and_tokenizer
    config = ObjectiveConfig(rmu_layer=1)
    rmu.prepare(model, config)
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"model.layers.0.mlp.down_proj.weight", "model.layers.1.mlp.down_proj.weight"}
    whole = ObjectiveConfig(rmu_layer=1)
    whole.rmu_train_modules = "mlp"  # the old choice, as an option
    model.requires_grad_(True)
    rmu.prepare(model, whole)
    assert {n for n, p in model.named_parameters() if p.requires_grad} > trainable
    assert rmu.chosen_layers(model, ObjectiveConfig())[0] == 0  # 2 layers: round(7/32 * 2) = 0
    for depth, expected in ((32, 7), (30, 7), (24, 5), (2, 0)):
        assert min(round(rmu.WMDP_DEPTH * depth), depth - 1) == expected


def test_rmu_all_trains_what_open_unlearnings_tofu_rmu_moves(tiny_model_and_tokenizer):
    """open-unlearning's TOFU RMU (configs/trainer/RMU.yaml) makes every weight trainable; the ones
    its loss gives a gradient are what AdamW moves. rmu_train_modules=all trains exactly those."""
    from conftest import build_tiny_model

    model, tokenizer = tiny_model_and_tokenizer
    batch = _batch(tokenizer)
    config = load_config(None, ["method=rmu", "objective.rmu_layer=0", "objective.rmu_steering_coeff=2",
                                "objective.rmu_alpha=1", "objective.rmu_train_modules=all"]).objective
    reference = build_tiny_model(tokenizer)  # the same start, all weights trainable as in the reference
    reference.requires_grad_(True)
    ctx = _ctx(_frozen(model))
    ctx.config = config
    OBJECTIVES["rmu"].loss(reference, batch, ctx).backward()
    moved = {name for name, p in reference.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    rmu.prepare(model, config)
    assert {name for name, p in model.named_parameters() if p.requires_grad} == moved
    assert "model.layers.0.self_attn.q_proj.weight" in moved and "model.layers.1.mlp.up_proj.weight" not in moved


def test_rmu_default_layer_is_wmdp_depth_of_the_model_itself(tiny_tokenizer):
    """chosen_layers on deep models (the test above checks the formula on its own copy of it)."""
    from conftest import build_tiny_model

    for depth, layer in ((32, 7), (24, 5)):
        model = build_tiny_model(tiny_tokenizer, num_hidden_layers=depth)
        assert rmu.chosen_layers(model, ObjectiveConfig()) == (layer, [layer - 2, layer - 1, layer])
    assert rmu.chosen_layers(model, ObjectiveConfig(rmu_layer=0)) == (0, [0])  # an explicit 0 is not "auto"
    assert rmu.chosen_layers(model, ObjectiveConfig(rmu_layer=23)) == (23, [21, 22, 23])
    with pytest.raises(Exception, match="rmu_layer"):  # one past the last layer: refused, not an IndexError
        rmu.chosen_layers(model, ObjectiveConfig(rmu_layer=24))


def test_rmu_trains_mlp_weights_not_biases(tiny_model_and_tokenizer):
    from transformers import LlamaForCausalLM

    model, _ = tiny_model_and_tokenizer
    config = copy.deepcopy(model.config)
    config.mlp_bias = True
    model = LlamaForCausalLM(config)
    rmu.prepare(model, ObjectiveConfig(rmu_layer=1, rmu_train_layers=[1]))
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {"model.layers.1.mlp.down_proj.weight"}
    whole = ObjectiveConfig(rmu_layer=1, rmu_train_layers=[1])
    whole.rmu_train_modules = "mlp"
    model.requires_grad_(True)
    rmu.prepare(model, whole)
    assert "model.layers.1.mlp.down_proj.bias" in {n for n, p in model.named_parameters() if p.requires_grad}


def test_rmu_trained_module_by_name_or_the_mlps_last_linear():
    layer = torch.nn.Module()
    layer.mlp = torch.nn.Module()
    layer.mlp.fc_in, layer.mlp.gate = torch.nn.Linear(4, 8), torch.nn.Linear(4, 8)
    layer.mlp.act, layer.mlp.fc_out = torch.nn.GELU(), torch.nn.Linear(8, 4)
    assert rmu.trained_module(layer, 0, "fc_in") is layer.mlp.fc_in  # named: that module
    assert rmu.trained_module(layer, 0, "down_proj") is layer.mlp.fc_out  # no down_proj: the last linear
    assert rmu.trained_module(layer, 0, "mlp") is layer.mlp
    layer.mlp = torch.nn.GELU()
    with pytest.raises(Exception, match="no linear layer"):
        rmu.trained_module(layer, 0, "down_proj")


def test_rmu_steering_vector_has_norm_c_and_all_tokens_means_real_tokens(tiny_model_and_tokenizer):
    u = rmu.steering_vector(32, seed=3, coeff=6.5, device="cpu")
    assert torch.isclose(u.norm(), torch.tensor(6.5)) and (u >= 0).all()
    assert torch.equal(u, rmu.steering_vector(32, seed=3, coeff=6.5, device="cpu"))
    model, tokenizer = tiny_model_and_tokenizer
    enc = _batch(tokenizer)["forget"]
    assert (enc["attention_mask"] == 0).any()  # the batch has padding
    assert torch.equal(rmu.token_mask(enc, "all"), enc["attention_mask"].bool())
    h = torch.zeros(2, 3, 4)
    target = torch.ones(2, 3, 4)
    mask = torch.tensor([[1, 1, 0], [0, 0, 0]])  # the second row has no answer token
    assert float(rmu.masked_mse(h, target, mask)) == 0.5  # (1 + 0) / 2, not NaN
