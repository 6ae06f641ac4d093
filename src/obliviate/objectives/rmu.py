"""Representation misdirection for unlearning (RMU, Li et al. 2024, the WMDP paper):

    L = MSE(h_l(theta; x_f), c u) + alpha * MSE(h_l(theta; x_r), h_l(ref; x_r))

h_l is the output of decoder layer l at every non-pad token; u is a fixed random unit vector
(uniform entries, normalised, seeded by the run seed, as in the official code); c =
rmu_steering_coeff, alpha = rmu_alpha (6.5 and 1200 for 7B models: scale them to yours).
Only the MLP weights of rmu_train_layers train (default: l and the two layers below it).
rmu_layer = -1 picks the layer at 40% depth.
"""

from __future__ import annotations

import torch

from obliviate.errors import UserError
from obliviate.objectives.common import supports_logits_to_keep, unwrap


def decoder_layers(model) -> torch.nn.ModuleList:
    """The model's list of decoder layers (the ModuleList as long as config.num_hidden_layers)."""
    base = unwrap(model)
    count = base.config.num_hidden_layers
    for module in base.modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == count:
            return module
    raise UserError(f"RMU: cannot find the {count} decoder layers of {type(base).__name__}; use another method")


def chosen_layers(model, config) -> tuple[int, list[int]]:
    """(the steered layer l, the layers whose MLP trains)."""
    count = len(decoder_layers(model))
    layer = config.rmu_layer if config.rmu_layer >= 0 else int(0.4 * count)
    if layer >= count:
        raise UserError(f"config key 'objective.rmu_layer' = {layer} is invalid; the model has {count} layers")
    train = config.rmu_train_layers or [i for i in (layer - 2, layer - 1, layer) if i >= 0]
    if any(not 0 <= i <= layer for i in train):
        raise UserError(f"config key 'objective.rmu_train_layers' = {train} is invalid; expected layers 0..{layer}")
    return layer, train


def prepare(model, config, options=None) -> None:
    """Freeze every parameter except the MLPs of the trained layers (LoRA: their adapters)."""
    layer, train = chosen_layers(model, config)
    layers = decoder_layers(model)
    keep = set()
    for i in train:
        mlp = getattr(layers[i], "mlp", None)
        if mlp is None:
            raise UserError(f"RMU: layer {i} of this model has no .mlp module; use another method")
        keep |= {id(p) for p in mlp.parameters() if p.requires_grad}
    if not keep:
        raise UserError("RMU trains MLP weights, but none of them is trainable: with LoRA, add gate_proj, "
                        "up_proj, down_proj (or your model's MLP names) to train.lora.target_modules")
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


def masked_mse(h: torch.Tensor, target: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    mask = attention_mask.unsqueeze(-1).to(h.dtype)
    return ((h.float() - target.float()) ** 2 * mask).sum() / (mask.sum() * h.shape[-1])


def steering_vector(hidden_size: int, seed: int, coeff: float, device) -> torch.Tensor:
    u = torch.rand(hidden_size, generator=torch.Generator().manual_seed(seed))
    return (coeff * u / u.norm()).to(device)


def loss(model, batch, ctx):
    cfg = ctx.config
    layer, _ = chosen_layers(model, cfg)
    forget, retain = batch["forget"], batch["retain"]
    h_forget = layer_output(model, forget, layer)
    target = steering_vector(h_forget.shape[-1], ctx.seed, cfg.rmu_steering_coeff, h_forget.device)
    forget_mse = masked_mse(h_forget, target.expand_as(h_forget), forget["attention_mask"])
    with ctx.reference() as ref:
        h_ref = layer_output(ref, retain, layer)
    retain_mse = masked_mse(layer_output(model, retain, layer), h_ref, retain["attention_mask"])
    ctx.log("forget_mse", forget_mse)
    ctx.log("retain_mse", retain_mse)
    return forget_mse + cfg.rmu_alpha * retain_mse
