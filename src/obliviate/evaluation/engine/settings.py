"""Engine settings shared by every part: its version (part of every cache key) and precision."""

from __future__ import annotations

import contextlib

import torch

from obliviate.errors import UserError
from obliviate.hardware import model_device, physical_memory
from obliviate.hardware import resolve_precision as _hardware_precision

#: Bump when a change alters cached values or keys (tokenisation, stop rules, what is stored).
ENGINE_VERSION = 4  # 3: prompt + answer tokenised as one text without a chat template; 4: BOS only where the
#   tokenizer adds one, a generation known from its reference ends at the reference's first stop token
PRECISIONS = ("auto", "bf16", "fp32")
#: Decoding paths: ``plain`` (per-step shapes, :mod:`.slot_decoder`), ``static`` (fixed shapes,
#: one CUDA graph per call on CUDA, :mod:`.static_decoder`), ``auto`` (static on CUDA, else plain).
DECODES = ("auto", "plain", "static")
#: Rows decoded together on a CPU when ``decode_batch_size`` is left to the engine, at most, and
#: the memory their key/value buffers may take (and never over a quarter of the RAM): inside a
#: decoding step the matrix products run at about half their 256-row throughput at 64 rows
#: (docs/speed.md, "The whole TOFU forget01 suite").
AUTO_DECODE_ROWS = 256
AUTO_DECODE_MEMORY = 4 * 2**30


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


def resolve_decode(model, decode: str = "auto") -> str:
    """The decoding path a run will use: ``"plain"`` or ``"static"`` (``auto``: static on CUDA,
    where per-step overhead bounds decoding, plain elsewhere)."""
    if decode not in DECODES:
        raise UserError(f"decode must be one of {', '.join(DECODES)}, got {decode!r}")
    if decode == "auto":
        return "static" if model_device(model).type == "cuda" else "plain"
    return decode


def precision_context(model, precision: str, cache_enabled: bool = True):
    """bf16 autocast on the model's device for ``precision == "bf16"``, else nothing.
    ``cache_enabled=False`` for code captured in a CUDA graph (autocast's weight cache is
    freed when the context exits, which a replayed graph would still read)."""
    if precision == "bf16":
        return torch.autocast(model_device(model).type, dtype=torch.bfloat16, cache_enabled=cache_enabled)
    return contextlib.nullcontext()


def decode_rows(device: torch.device, batch_size: int, requested: int | None, row_bytes: int, *,
                precision: str, processes: int = 1) -> int:
    """Rows decoded together: ``requested`` when given; else, on a CPU at fp32, as many rows of
    ``row_bytes`` key/value buffers as fit ``AUTO_DECODE_MEMORY`` and a quarter of the RAM
    (:func:`~obliviate.hardware.physical_memory`), shared by the ``processes`` of a launch, up to
    ``AUTO_DECODE_ROWS`` and never fewer than ``batch_size``; elsewhere ``batch_size``. At fp32 the
    rows do not change a greedy output (measured, docs/speed.md), only the speed and the memory;
    under bf16 they change the rounding of the matrix products, so bf16 keeps ``batch_size``."""
    if requested is not None:
        return requested
    if device.type != "cpu" or precision != "fp32":
        return batch_size
    ram = physical_memory()
    budget = (AUTO_DECODE_MEMORY if ram is None else min(AUTO_DECODE_MEMORY, ram // 4)) // max(processes, 1)
    return max(batch_size, min(AUTO_DECODE_ROWS, budget // max(row_bytes, 1)))
