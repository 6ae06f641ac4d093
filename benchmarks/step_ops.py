"""Operators dispatched and values read back per training step: what a step costs the host.

    PYTHONPATH=src python benchmarks/step_ops.py --shape runs/train_shape_135m
    PYTHONPATH=src python benchmarks/step_ops.py --shape runs/train_shape_1b --configs trainer-fused

A GPU runs a small model's step faster than the host can queue it: each PyTorch operator costs
the host tens of microseconds (dispatch, and on CUDA a kernel launch) whatever its size, and each
value read back (`.item()`, `float(t)`) waits for the device to finish what is queued. This counts
both for one GradDiff step of each configuration of train_throughput.py (the same items, batch and
model), on the CPU: the counts are the same on any device but for the optimizer (torch's AdamW
takes one kernel per tensor on the CPU, `foreach` lists on CUDA; `trainer-fused` is the same on
both). Divide a GPU run's seconds per step by the operators per step for the host's cost per
operator. Counted with a `TorchDispatchMode` (every aten operator that reaches a kernel).
"""

from __future__ import annotations

import argparse
import collections
import sys
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
import train_throughput  # noqa: E402

CONFIGS = ("plain", "trainer", "trainer-fused", "trainer-shared")


class OperatorCounter(TorchDispatchMode):
    """Counts every aten operator that reaches a kernel while active, by operator (``ops``); a
    read of a value back from the device is ``aten._local_scalar_dense``."""

    def __init__(self):
        super().__init__()
        self.ops = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops[func.overloadpacket] += 1
        return func(*args, **(kwargs or {}))

    @property
    def reads(self) -> int:
        return self.ops[torch.ops.aten._local_scalar_dense]


def count(config: str, args) -> tuple[float, float]:
    """(operators, device reads) per step: the difference of a 3-step and a 1-step run over 2."""
    totals = []
    for steps in (2, 0):  # train_throughput runs steps + 1 (one warm-up)
        run = train_throughput.parse(["--batch", str(args.batch), "--seq", str(args.seq), "--steps", str(steps),
                                      "--device", "cpu"] + (["--shape", args.shape] if args.shape else []))
        model, tokenizer = train_throughput.load(run)
        forget, retain = train_throughput.load_items(400, 3600, run.shape)
        counter = OperatorCounter()
        with counter:
            if config == "plain":
                train_throughput.plain_loop(model, tokenizer, forget, retain, run, "fp32")
            else:
                train_throughput.trainer_run(model, tokenizer, forget, retain, run, "fp32", config.partition("-")[2])
        totals.append((sum(counter.ops.values()), counter.reads))
    (ops3, reads3), (ops1, reads1) = totals
    return (ops3 - ops1) / 2, (reads3 - reads1) / 2


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default=None, metavar="DIR", help="random weights of a --save-shape DIR "
                        "(train_throughput.py); default: the default model")
    parser.add_argument("--configs", default=",".join(CONFIGS), help=f"comma-separated subset of {CONFIGS}")
    parser.add_argument("--batch", type=int, default=2, help="forget items per step (and as many retain items)")
    parser.add_argument("--seq", type=int, default=256, help="max tokens per item")
    args = parser.parse_args(argv)
    configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    unknown = [c for c in configs if c not in CONFIGS]
    if unknown:
        parser.error(f"--configs: unknown {', '.join(unknown)}; choose from {', '.join(CONFIGS)}")
    print(f"GradDiff step, {args.shape or 'the default model'}, batch {args.batch} + {args.batch}, fp32 on the CPU\n")
    print("| config | operators per step | device reads per step |")
    print("|---|--:|--:|")
    for config in configs:
        ops, reads = count(config, args)
        print(f"| {config} | {ops:.0f} | {reads:.0f} |", flush=True)


if __name__ == "__main__":
    main()
