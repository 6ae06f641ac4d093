"""Engine settings shared by every part: its version (part of every cache key) and precision."""

from __future__ import annotations

import contextlib

import torch

from obliviate.hardware import model_device
from obliviate.hardware import resolve_precision as _hardware_precision

#: Bump when a change alters cached values or keys (tokenisation, stop rules, what is stored).
ENGINE_VERSION = 3  # 3: prompt + answer tokenised as one text without a chat template
PRECISIONS = ("auto", "bf16", "fp32")


def resolve_precision(model, precision: str = "auto") -> str:
    """The precision a run will actually use: ``"bf16"`` or ``"fp32"`` (or the weights' dtype
    when they are not fp32, e.g. ``"bfloat16"`` weights).

    ``auto`` is bf16 autocast where the model's device multiplies bf16 natively (CUDA with
    bf16, CPUs with AMX / AVX512-BF16) and fp32 elsewhere: see :mod:`obliviate.hardware`.
    """
    resolved = _hardware_precision(precision, model_device(model).type)
    weight_dtype = next(model.parameters()).dtype
    if weight_dtype != torch.float32:
        return str(weight_dtype).replace("torch.", "")
    return resolved


def precision_context(model, precision: str):
    """bf16 autocast on the model's device for ``precision == "bf16"``, else nothing."""
    if precision == "bf16":
        return torch.autocast(model_device(model).type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
