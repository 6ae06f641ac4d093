"""Representation misdirection for unlearning (RMU, Li et al. 2024, the WMDP paper):

    L = MSE_y(h_l(theta; x_f), c u) + alpha * MSE_y(h_l(theta; x_r), h_l(ref; x_r))

    MSE_y(a, b) = mean_batch [ sum_{t in answer} mean_d (a_td - b_td)^2 / |answer| ]

h_l is the output of decoder layer l; both terms average over the answer tokens only (the positions
whose label is not -100, as open-unlearning masks them), per sequence, then over the batch, so a
chat template's shared system prefix is neither pushed to c u nor pinned to the reference.
objective.rmu_tokens = "all" (proposed knob) averages over every non-pad token instead (the old
behaviour). u is a fixed random unit vector (uniform entries, normalised, seeded by the run seed,
as in the official code); c = rmu_steering_coeff, alpha = rmu_alpha (6.5 and 1200 for 7B models:
scale them to yours).

Layers and trained modules as the WMDP code, scaled to the model: WMDP steers layer 7 of 32 and
trains only `mlp.down_proj.weight` of layers 5, 6, 7. Here rmu_layer = -1 picks layer
round(7/32 * depth) and rmu_train_layers defaults to l and the two layers below it; the trained
module is the MLP's output projection (objective.rmu_train_modules, proposed knob: "down_proj",
or "mlp" for the whole MLP; a model without `down_proj` trains its MLP's last linear layer), or
"all": every weight up to layer l, as open-unlearning's TOFU config (configs/trainer/RMU.yaml:
trainable_params_regex ".*", steering_coeff 2, alpha 1, module model.layers.7; for it set
objective.rmu_layer=7, .rmu_steering_coeff=2, .rmu_alpha=1, .rmu_train_modules=all).
"""

from __future__ import annotations

import torch

from obliviate.errors import UserError
from obliviate.objectives.common import find_decoder_layers, supports_logits_to_keep, unwrap

WMDP_DEPTH = 7 / 32  # WMDP steers layer 7 of Zephyr-7B's 32


def decoder_layers(model) -> torch.nn.ModuleList:
    """The model's list of decoder layers (objectives.common.find_decoder_layers)."""
    layers = find_decoder_layers(model)
    if layers is None:
        base = unwrap(model)
        raise UserError(f"RMU: cannot find the decoder layers of {type(base).__name__}; use another method")
    return layers


def chosen_layers(model, config) -> tuple[int, list[int]]:
    """(the steered layer l, the layers whose MLP trains)."""
    count = len(decoder_layers(model))
    layer = config.rmu_layer if config.rmu_layer >= 0 else min(round(WMDP_DEPTH * count), count - 1)
    if layer >= count:
        raise UserError(f"config key 'objective.rmu_layer' = {layer} is invalid; the model has {count} layers")
    train = config.rmu_train_layers or [i for i in (layer - 2, layer - 1, layer) if i >= 0]
    if any(not 0 <= i <= layer for i in train):
        raise UserError(f"config key 'objective.rmu_train_layers' = {train} is invalid; expected layers 0..{layer}")
    return layer, train


def trained_module(layer_module, index: int, which: str) -> torch.nn.Module:
    """The module of decoder layer `index` that RMU trains: its MLP's output projection (WMDP's
    down_proj), or the whole MLP when `which` is "mlp"."""
    mlp = getattr(layer_module, "mlp", None)
    if mlp is None:
        raise UserError(f"RMU: layer {index} of this model has no .mlp module; use another method")
    if which == "mlp":
        return mlp
    named = getattr(mlp, which, None)
    if named is not None:
        return named
    linears = [m for m in mlp.modules() if isinstance(m, torch.nn.Linear)]
    if not linears:
        raise UserError(f"RMU: the MLP of layer {index} has no '{which}' and no linear layer; "
                        "set objective.rmu_train_modules=mlp")
    return linears[-1]  # the output projection is defined last (down_proj, c_proj, fc2)


def prepare(model, config, options=None) -> None:
    """Freeze every parameter except the trained modules' weights (LoRA: their adapters). With
    rmu_train_modules = "all", every weight the loss reaches trains (the input embeddings and
    layers 0..l): open-unlearning's TOFU RMU makes all trainable, and the ones above l get no
    gradient there, so AdamW never moves them; frozen here, DDP does not wait for their gradients."""
    layer, train = chosen_layers(model, config)
    layers = decoder_layers(model)
    which = getattr(config, "rmu_train_modules", "down_proj")
    if which == "all":
        reached = [*unwrap(model).get_input_embeddings().parameters(),
                   *(p for i in range(layer + 1) for p in layers[i].parameters())]
        keep = {id(p) for p in reached if p.requires_grad}
    else:
        keep = {id(p) for i in train for name, p in trained_module(layers[i], i, which).named_parameters()
                if p.requires_grad and (which == "mlp" or not name.endswith("bias"))}
    if not keep:
        raise UserError("RMU trains MLP weights, but none of them is trainable: with LoRA, add down_proj "
                        "(or your model's MLP names) to train.lora.target_modules")
    for parameter in model.parameters():
        parameter.requires_grad_(id(parameter) in keep)


def layer_output(model, enc: dict, layer: int) -> torch.Tensor:
    """h_l [B, T, H]: decoder layer `layer`'s output, caught by a forward hook."""
    caught = {}

    def hook(module, args, output):
        caught["h"] = output[0] if isinstance(output, tuple) else output

    handle = decoder_layers(model)[layer].register_forward_hook(hook)
    head = {"logits_to_keep": 1} if supports_logits_to_keep(model) else {}  # the logits are not needed
    try:
        model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], use_cache=False, **head)
    finally:
        handle.remove()
    return caught["h"]


def token_mask(enc: dict, tokens: str) -> torch.Tensor:
    """[B, T] positions the MSE averages over: the answer tokens (labels != -100), or with
    tokens = "all" every non-pad token."""
    if tokens == "all":
        return enc["attention_mask"] != 0
    return enc["labels"] != -100


def masked_mse(h: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """mean_b [sum_t mask_bt mean_d (h - target)^2 / sum_t mask_bt] (open-unlearning's
    compute_activation_loss)."""
    weights = mask.to(torch.float32)
    per_token = ((h.float() - target.float()) ** 2).mean(-1)
    return ((per_token * weights).sum(-1) / weights.sum(-1).clamp(min=1)).mean()


def steering_vector(hidden_size: int, seed: int, coeff: float, device) -> torch.Tensor:
    u = torch.rand(hidden_size, generator=torch.Generator().manual_seed(seed))
    return (coeff * u / u.norm()).to(device)


def loss(model, batch, ctx):
    cfg = ctx.config
    layer, _ = chosen_layers(model, cfg)
    forget, retain = batch["forget"], batch["retain"]
    h_forget = layer_output(model, forget, layer)
    target = steering_vector(h_forget.shape[-1], ctx.seed, cfg.rmu_steering_coeff, h_forget.device)
    tokens = getattr(cfg, "rmu_tokens", "answer")
    forget_mse = masked_mse(h_forget, target.expand_as(h_forget), token_mask(forget, tokens))
    with ctx.reference() as ref:
        h_ref = layer_output(ref, retain, layer)
    retain_mse = masked_mse(layer_output(model, retain, layer), h_ref, token_mask(retain, tokens))
    ctx.log("forget_mse", forget_mse)
    ctx.log("retain_mse", retain_mse)
    return forget_mse + cfg.rmu_alpha * retain_mse
