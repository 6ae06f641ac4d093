"""One answer to "is bf16 fast here?", shared by training, generation and scoring.

bf16 autocast over fp32 master weights pays off only where the hardware multiplies bf16
natively: CUDA GPUs that support it, and CPUs with AMX or AVX512-BF16. Elsewhere (e.g. AVX2-only
CPUs) bf16 is emulated and measured 60x slower than fp32 (docs/training.md), so `auto` means fp32.
"""

from __future__ import annotations

import functools

import torch


@functools.cache
def bf16_is_fast(device_type: str | None = None) -> bool:
    """Whether bf16 matmuls are native on this device type ('cuda' or 'cpu'; None: CUDA if present)."""
    if device_type is None:
        device_type = "cuda" if torch.cuda.is_available() else "cpu"
    if device_type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device_type != "cpu":
        return False
    capabilities = torch.cpu.get_capabilities() if hasattr(torch.cpu, "get_capabilities") else {}
    return bool(capabilities.get("amx_bf16") or capabilities.get("avx512_bf16"))
