"""Training throughput of one GradDiff step on the default model: tokens/s and peak memory.

    python benchmarks/train_throughput.py                      # plain loop vs UnlearnTrainer, fp32 and bf16
    python benchmarks/train_throughput.py --steps 5 --threads 1 --repeats 2
    python benchmarks/train_throughput.py --configs trainer-fp32 --batch 4

Each configuration runs in its own process (so its peak memory is its own) and trains
SmolLM2-135M-Instruct (`models.load_model("smollm2-135m-instruct")`) with GradDiff on TOFU
forget10 / retain90 questions (chat template, max 128 tokens): a batch of B forget + B retain
items per optimiser step, AdamW, lr 1e-5.

* plain-fp32: the naive loop: random batches, `model(**batch).loss` (logits over every position
  and the whole vocabulary), two forward passes, AdamW. The reference point.
* trainer-fp32 / trainer-bf16: `obliviate.training.train`, exactly what users run
  (UnlearnTrainer, length-windowed batches, logits only at answer positions); bf16 is autocast
  over fp32 master weights. bf16 is skipped where the CPU has no AMX / AVX512-BF16 (there bf16
  matmuls are emulated and ~10x slower than fp32; `--force-bf16` runs it anyway).

tokens/s counts the non-pad tokens of the forget and retain batches, each of which goes once
through the model's forward (and backward) pass, over the measured steps (the first step is
warm-up). Peak memory is the process's peak resident set (CUDA: max allocated). On a shared
machine the figures move with the load: the table prints the load average, and --repeats keeps
the best run of each configuration.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TOFU = ROOT.parent / "shared" / "data" / "tofu"
CONFIGS = ("plain-fp32", "trainer-fp32", "trainer-bf16")


def load_items(limit_forget: int, limit_retain: int):
    from obliviate.data.request import QAItem, load_request

    if (TOFU / "forget10.json").is_file():
        request = load_request({"forget": str(TOFU / "forget10.json"), "retain": str(TOFU / "retain90.json")})
        return request.forget[:limit_forget], request.retain[:limit_retain]
    rng = random.Random(0)  # no shared data: synthetic questions of TOFU-like lengths
    words = "the author wrote many novels about history science family travel and war".split()
    make = lambda i: QAItem(" ".join(rng.choices(words, k=12)) + "?", " ".join(rng.choices(words, k=rng.randint(15, 60))))
    return [make(i) for i in range(limit_forget)], [make(i) for i in range(limit_retain)]


def peak_mb() -> float:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def plain_loop(model, tokenizer, forget, retain, args) -> list[tuple[int, float]]:
    """(tokens, seconds) per step of the naive loop."""
    import torch

    from obliviate.prompts import encode_qa, pad_batch

    encode = lambda item: encode_qa(tokenizer, item.question, item.answer, max_length=args.seq)
    rng = random.Random(0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, weight_decay=0.01)
    model.train()
    steps = []
    for _ in range(args.steps + 1):
        start = time.perf_counter()
        f = pad_batch([encode(i) for i in rng.sample(forget, args.batch)], tokenizer.pad_token_id)
        r = pad_batch([encode(i) for i in rng.sample(retain, args.batch)], tokenizer.pad_token_id)
        loss = -model(**f).loss + model(**r).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad()
        tokens = int(f["attention_mask"].sum() + r["attention_mask"].sum())
        steps.append((tokens, time.perf_counter() - start))
    return steps[1:]


def trainer_run(model, tokenizer, forget, retain, args, precision: str) -> list[tuple[int, float]]:
    from obliviate.config import RunConfig
    from obliviate.training import train

    config = RunConfig(method="graddiff", seed=0)
    train_cfg = config.train
    train_cfg.batch_size, train_cfg.max_length, train_cfg.max_steps = args.batch, args.seq, args.steps + 1
    train_cfg.learning_rate, train_cfg.precision = 1e-5, precision
    train_cfg.save_steps, train_cfg.logging_steps = 10**9, 10**9  # no checkpoint inside the timing
    with tempfile.TemporaryDirectory() as out:
        train(model, tokenizer, forget=forget, retain=retain, config=config, output_dir=Path(out))
        rows = [json.loads(line) for line in (Path(out) / "train_log.jsonl").read_text().splitlines()]
    return [(row["tokens"], row["time_s"] - before["time_s"]) for before, row in zip(rows, rows[1:])]


def worker(args) -> None:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    sys.path.insert(0, str(ROOT / "src"))
    from obliviate.models import load_model

    model, tokenizer = load_model("smollm2-135m-instruct")
    forget, retain = load_items(400, 3600)
    if args.worker == "plain-fp32":
        steps = plain_loop(model, tokenizer, forget, retain, args)
    else:
        steps = trainer_run(model, tokenizer, forget, retain, args, args.worker.split("-")[1])
    tokens, seconds = sum(t for t, _ in steps), sum(s for _, s in steps)
    print("RESULT " + json.dumps({
        "config": args.worker, "tokens_per_s": tokens / seconds, "s_per_step": seconds / len(steps),
        "tokens_per_step": tokens / len(steps), "peak_mb": peak_mb(), "threads": torch.get_num_threads(),
        "weights_dtype": str(next(model.parameters()).dtype),
    }), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default=",".join(CONFIGS), help=f"comma-separated subset of {CONFIGS}")
    parser.add_argument("--batch", type=int, default=8, help="forget items per step (and as many retain items)")
    parser.add_argument("--seq", type=int, default=128, help="max tokens per item")
    parser.add_argument("--steps", type=int, default=3, help="measured steps (after one warm-up step)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--repeats", type=int, default=1, help="runs per configuration; the best is kept")
    parser.add_argument("--force-bf16", action="store_true", help="run bf16 even without bf16 hardware")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)

    sys.path.insert(0, str(ROOT / "src"))
    from obliviate.hardware import bf16_is_fast

    configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    results, notes = {}, []
    for _ in range(args.repeats):
        for config in configs:
            if config == "trainer-bf16" and not (bf16_is_fast() or args.force_bf16):
                notes.append("trainer-bf16 skipped: no AMX / AVX512-BF16 here (bf16 would be emulated, ~10x slower "
                             "than fp32); --force-bf16 runs it")
                continue
            load = os.getloadavg()[0]
            command = [sys.executable, __file__, "--worker", config, "--batch", str(args.batch), "--seq",
                       str(args.seq), "--steps", str(args.steps), "--threads", str(args.threads)]
            done = subprocess.run(command, capture_output=True, text=True,
                                  env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
            line = next((l for l in done.stdout.splitlines() if l.startswith("RESULT ")), None)
            if line is None:
                sys.exit(f"{config} failed:\n{done.stderr[-3000:]}")
            result = {**json.loads(line[7:]), "load": load}
            print(f"[{config}] {result['tokens_per_s']:.1f} tokens/s (load {load:.1f})", file=sys.stderr, flush=True)
            if config not in results or result["tokens_per_s"] > results[config]["tokens_per_s"]:
                results[config] = result

    import torch

    base = results.get("plain-fp32", {}).get("tokens_per_s")
    print(f"\nGradDiff step, SmolLM2-135M-Instruct, batch {args.batch} forget + {args.batch} retain, max {args.seq} "
          f"tokens, {args.steps} measured steps, best of {args.repeats}; torch {torch.__version__}, "
          f"{os.cpu_count()} CPUs\n")
    print("| config | tokens/s | s/step | tokens/step | vs plain | peak MB | threads | load avg |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for config in configs:
        if config in results:
            r = results[config]
            ratio = f"{r['tokens_per_s'] / base:.2f}x" if base else "-"
            print(f"| {config} | {r['tokens_per_s']:.1f} | {r['s_per_step']:.2f} | {r['tokens_per_step']:.0f} | "
                  f"{ratio} | {r['peak_mb']:.0f} | {r['threads']} | {r['load']:.1f} |")
    for note in dict.fromkeys(notes):
        print(f"\n{note}")


if __name__ == "__main__":
    main()
