"""What bounds greedy decoding besides the matmuls: the key/value cache every step reads.

A decoding step multiplies each busy row by every weight (2 FLOPs per parameter per token, the
compute limit of ``eval_speed.py``) and, in attention, reads each busy row's cached keys and
values over the step's width: bytes that grow with the generation and do not shrink with more
rows. :func:`attended` counts them during the plain decoding path's steps; :func:`read_bandwidth`
measures how fast this machine streams memory (one thread summing 1 GiB, more than the
last-level cache); :func:`print_bound` prints the most a token can cost at least, matmul time at
the limit plus its cache bytes at that bandwidth, as tokens/s and as a fraction of the limit.
It is a floor on the time (every other operator, and memory that streams slower than a sum,
come on top), so the fraction it gives is a ceiling for identical fp32 outputs on this machine.
"""

from __future__ import annotations

import contextlib
import time

#: The fraction of the compute limit issue 19 (item 4) asks generation to reach on a CPU.
CPU_TARGET = 0.70


def read_bandwidth(gib: float = 1.0, repeats: int = 5) -> float:
    """Bytes/s of one thread summing a ``gib`` GiB fp32 tensor (best of ``repeats``)."""
    import torch

    x = torch.ones(int(gib * 2**30) // 4)
    best = float("inf")
    for _ in range(repeats + 1):
        tick = time.perf_counter()
        x.sum()
        best = min(best, time.perf_counter() - tick)
    return x.numel() * 4 / best


@contextlib.contextmanager
def attended():
    """Counts, while open, the plain decoder's steps: ``{"tokens": rows, "positions": rows x
    width}`` summed over steps, ``"rows"``: the most rows busy in a step, ``"bytes_per_position"``:
    keys + values of every layer."""
    from obliviate.evaluation.engine import slot_decoder

    counts = {"tokens": 0, "positions": 0, "rows": 0, "bytes_per_position": 0}
    original = slot_decoder.SlotDecoder.step

    def step(self):
        busy = [b for b, p in enumerate(self.prompts) if p is not None]
        if busy:
            width = int(self.length[busy].max()) + 1
            counts["tokens"] += len(busy)
            counts["positions"] += len(busy) * width
            counts["rows"] = max(counts["rows"], len(busy))
            counts["bytes_per_position"] = sum(
                t.shape[1] * t.shape[3] * t.element_size() for layer in self.layers
                for t in (layer.buffer_keys, layer.buffer_values))
        return original(self)

    slot_decoder.SlotDecoder.step = step
    try:
        yield counts
    finally:
        slot_decoder.SlotDecoder.step = original


def print_bound(counts: dict, limit_tps: float, reached_tps: float, device_type: str) -> dict:
    """Print the decoding bound of ``counts`` (from :func:`attended`) beside the compute limit
    and the figure reached, with the CPU target; returns the figures."""
    if not counts["tokens"]:
        print("decoding bound: no plain decoding steps were counted (decode static, or nothing decoded)")
        return {}
    width = counts["positions"] / counts["tokens"]
    kv_bytes = width * counts["bytes_per_position"]
    bandwidth = read_bandwidth()
    kv_s, matmul_s = kv_bytes / bandwidth, 1 / limit_tps
    bound_tps = 1 / (matmul_s + kv_s)
    print(f"decoding bound: each generated token read {kv_bytes / 2**20:.1f} MiB of cached keys/values "
          f"(mean width {width:.0f}); at {bandwidth / 1e9:.1f} GB/s (one thread summing 1 GiB, now) that is "
          f"{1e3 * kv_s:.2f} ms beside {1e3 * matmul_s:.2f} ms of matmul at the limit: at most {bound_tps:.0f} "
          f"tokens/s, {bound_tps / limit_tps:.0%} of the limit")
    figures = {"mean_width": width, "kv_bytes_per_token": kv_bytes, "read_bandwidth": bandwidth,
               "bound_tokens_per_s": bound_tps, "bound_fraction": bound_tps / limit_tps}
    if device_type == "cpu":
        fraction = reached_tps / limit_tps
        print(f"generation: {fraction:.0%} of the compute limit (target >= {CPU_TARGET:.0%}: "
              f"{'met' if fraction >= CPU_TARGET else 'NOT met'}); {reached_tps / bound_tps:.0%} of the bound")
        figures.update(target=CPU_TARGET, met=fraction >= CPU_TARGET)
    return figures
