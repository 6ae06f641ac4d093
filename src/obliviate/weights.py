"""Weight operations between training and evaluation: averaging (ULMR), task vectors (SKU).

All arithmetic is done in fp32 one tensor at a time and cast back to each tensor's dtype.
Integer and bool tensors (buffers such as position ids) are copied from the base unchanged.
Tied tensors (embeddings shared with the output layer) are visited once, since
`state_dict(keep_vars=True)` yields the same Parameter object under both names. The two models
may sit on different devices (a fine-tuned model the Trainer moved to the GPU, a base copy left
on the CPU): each tensor of one is brought to the other's device, one tensor at a time, and the
result stays where the target is.
"""

from __future__ import annotations

import torch


def _unwrap(model):
    """A PeftModel is merged first: weight arithmetic applies to the full weights."""
    return model.merge_and_unload() if hasattr(model, "merge_and_unload") else model


def _paired_tensors(model_a, model_b):
    """(name, tensor_a, tensor_b) for each distinct floating tensor, tied tensors once."""
    state_a = _unwrap(model_a).state_dict(keep_vars=True)
    state_b = _unwrap(model_b).state_dict(keep_vars=True)
    if state_a.keys() != state_b.keys():
        missing = sorted(set(state_a) ^ set(state_b))[:3]
        raise ValueError(f"the two models have different parameters (e.g. {missing}); they must share one architecture")
    seen: set[int] = set()
    for name, tensor_a in state_a.items():
        tensor_b = state_b[name]
        if id(tensor_a) in seen or not tensor_a.is_floating_point():
            continue
        seen.add(id(tensor_a))
        if tensor_a.shape != tensor_b.shape:
            raise ValueError(f"parameter {name}: shapes {tuple(tensor_a.shape)} and {tuple(tensor_b.shape)} differ")
        yield name, tensor_a, tensor_b


@torch.no_grad()
def interpolate_(target, base, alpha: float):
    """In place on `target`: theta = alpha * theta_target + (1 - alpha) * theta_base.

    ULMR's parameter averaging with target = the fine-tuned model, base = the original.
    alpha = 1 leaves theta_ft, alpha = 0 gives theta_0 exactly (not just approximately).
    """
    target = _unwrap(target)
    for _, tensor_t, tensor_b in _paired_tensors(target, base):
        if alpha == 0.0:
            tensor_t.copy_(tensor_b)  # copy_ moves across devices
        elif alpha != 1.0:
            mixed = alpha * tensor_t.float() + (1.0 - alpha) * tensor_b.to(tensor_t.device).float()
            tensor_t.copy_(mixed.to(tensor_t.dtype))
    return target


@torch.no_grad()
def task_vector(finetuned, base) -> dict[str, torch.Tensor]:
    """tau = theta_ft - theta_0 over every floating tensor (fp32, on theta_ft's device), tied tensors once."""
    return {name: tensor_f.float() - tensor_b.to(tensor_f.device).float()
            for name, tensor_f, tensor_b in _paired_tensors(finetuned, base)}


@torch.no_grad()
def apply_task_vector_(model, vector: dict[str, torch.Tensor], scale: float):
    """In place: theta = theta + scale * tau. SKU's negation is scale = -lambda on theta_0."""
    model = _unwrap(model)
    state = model.state_dict(keep_vars=True)
    for name, delta in vector.items():
        tensor = state[name]
        tensor.copy_((tensor.float() + scale * delta.to(tensor.device)).to(tensor.dtype))
    return model
