"""The compute limit both speed benchmarks print: FLOP/s of a model's own weight matmuls.

Each distinct ``nn.Linear`` weight shape (the output layer included) is timed once on ``rows``
random rows at ``dtype``, best of ``repeats`` after a warm-up call, and counted as often as the
shape occurs; the result is total FLOPs over total seconds, the throughput a pass through the
model could reach on this machine if it did nothing but its matmuls.
"""

from __future__ import annotations

import collections
import time


def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def weight_matmul_flops(model, dtype, rows: int, repeats: int = 5) -> float:
    """FLOP/s of ``model``'s weight matmuls on ``rows`` rows at ``dtype`` (module docstring)."""
    import torch

    device = next(model.parameters()).device
    shapes = collections.Counter(tuple(m.weight.shape) for m in model.modules() if isinstance(m, torch.nn.Linear))
    seconds, flops = 0.0, 0
    for (out_features, in_features), count in shapes.items():
        x = torch.randn(rows, in_features, device=device, dtype=dtype)
        w = torch.randn(out_features, in_features, device=device, dtype=dtype)
        best = float("inf")
        for _ in range(repeats + 1):  # the first call warms up
            sync(device)
            tick = time.perf_counter()
            x @ w.T
            sync(device)
            best = min(best, time.perf_counter() - tick)
        seconds += best * count
        flops += 2 * rows * in_features * out_features * count
    return flops / seconds
