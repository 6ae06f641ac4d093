"""Training throughput of one GradDiff step: tokens/s and model FLOPs utilisation (MFU) per option.

    python benchmarks/train_throughput.py                      # plain loop vs UnlearnTrainer options
    python benchmarks/train_throughput.py --steps 5 --threads 1 --repeats 2
    python benchmarks/train_throughput.py --configs trainer,trainer-fused --precision fp32 --batch 4
    python benchmarks/train_throughput.py --save-shape runs/train_shape_135m             # config+tokenizer+items
    python benchmarks/train_throughput.py --save-shape runs/train_shape_1b --shape-of llama-1b
    python benchmarks/train_throughput.py --shape runs/train_shape_135m --device cuda --batch 32

The model is SmolLM2-135M-Instruct (`models.load_model("smollm2-135m-instruct")`) or, with
`--shape DIR`, random weights (seed 0) of the config a `--save-shape DIR` wrote; that directory
also holds the tokenizer and the TOFU items, so a GPU machine that no weights can reach runs the
same items. `--shape-of llama-1b` writes Llama-3.2-1B's published config (hidden 2048, 16 layers,
32 heads, 8 kv heads, intermediate 8192, vocab 128256, tied embeddings) with the default model's
tokenizer (token ids stay below its vocabulary; the cost per token is the 1B model's).
GradDiff on TOFU forget10 / retain90 (chat template, max --seq tokens): B forget + B retain items
per optimiser step, AdamW, lr 1e-5; every configuration sees the same items.

* plain: the naive loop: random batches, `model(**batch).loss` (logits over every position and
  the whole vocabulary), two forward passes, torch AdamW. The reference point.
* trainer: `obliviate.training.train`, exactly what users run (UnlearnTrainer, length-windowed
  batches, logits only at answer positions), train.optim=adamw_torch.
* trainer-fused: the same with train.optim=adamw_torch_fused (what train.optim=auto picks on CUDA).
* trainer-compile: the same with train.torch_compile=true (and train.optim=auto);
* trainer-packed: trainer with train.packing=true (no padding computed).
* trainer-shared: trainer-fused with train.shared_forward=true (forget and retain in one forward).
* trainer-compile-shared: trainer-compile with train.shared_forward=true (both: the fewest operators).
--precision (auto, fp32, bf16; bf16 = autocast over fp32 weights) applies to every configuration;
the old names plain-fp32, trainer-fp32, trainer-bf16 still work (config-precision).

tokens/s counts the non-pad tokens of the forget and retain batches over the measured steps, after
--warmup steps (default 1; 3 for trainer-compile, whose first steps compile the model for the
first batch shapes and then again with dynamic shapes); "warm-up s" is their time (trainer-compile:
mostly compiling, one decoder layer's graph since train.torch_compile compiles the layers apart). MFU = 6 * parameters * tokens/s / peak, where peak is the matmul
throughput measured on the spot (every distinct weight shape of the model times batch*seq rows,
at the run's precision) and, on a known CUDA card, also its datasheet dense peak. Peak memory is
the process's peak resident set (CUDA: max allocated). On a shared machine the figures move with
the load: the table prints the load average, and --repeats keeps the best run of each config.
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
sys.path.insert(0, str(Path(__file__).resolve().parent))
from matmul_peak import sync, weight_matmul_flops  # noqa: E402
TOFU = ROOT.parent / "shared" / "data" / "tofu"
CONFIGS = ("plain", "trainer", "trainer-fused", "trainer-compile", "trainer-packed", "trainer-shared",
           "trainer-compile-shared")
#: the issue's targets (#19 item 2), printed beside the figures
TARGETS = ">= 40% MFU for a 1B model, >= 100k tokens/s for the default model's shape (both on an H100)"
#: datasheet dense peaks (FLOP/s) by card name and precision; fp32 is TF32 tensor-core
DATASHEET = {"H100": {"bf16": 989e12, "fp32": 494e12}, "H200": {"bf16": 989e12, "fp32": 494e12},
             "A100": {"bf16": 312e12, "fp32": 156e12}}
LLAMA_1B = dict(hidden_size=2048, num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8,
                intermediate_size=8192, vocab_size=128256, tie_word_embeddings=True, head_dim=64,
                max_position_embeddings=131072, rope_theta=500000.0, rms_norm_eps=1e-5, hidden_act="silu")


def load_items(limit_forget: int, limit_retain: int, shape: str | None = None):
    from obliviate.data.request import QAItem, load_request

    if shape:
        saved = json.loads((Path(shape) / "items.json").read_text())
        make = lambda rows: [QAItem(r["question"], r["answer"]) for r in rows]
        return make(saved["forget"])[:limit_forget], make(saved["retain"])[:limit_retain]
    if (TOFU / "forget10.json").is_file():
        request = load_request({"forget": str(TOFU / "forget10.json"), "retain": str(TOFU / "retain90.json")})
        return request.forget[:limit_forget], request.retain[:limit_retain]
    rng = random.Random(0)  # no shared data: synthetic questions of TOFU-like lengths
    words = "the author wrote many novels about history science family travel and war".split()
    make = lambda i: QAItem(" ".join(rng.choices(words, k=12)) + "?", " ".join(rng.choices(words, k=rng.randint(15, 60))))
    return [make(i) for i in range(limit_forget)], [make(i) for i in range(limit_retain)]


def save_shape(target: str, kind: str) -> None:
    """Config, tokenizer and TOFU items (no weights) for --shape on a machine without them."""
    from obliviate.models import load_model

    model, tokenizer = load_model("smollm2-135m-instruct")
    config = model.config
    if kind == "llama-1b":
        from transformers import LlamaConfig

        config = LlamaConfig(**LLAMA_1B, bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id,
                             pad_token_id=config.pad_token_id)
    out = Path(target)
    out.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(out)
    tokenizer.save_pretrained(out)
    forget, retain = load_items(400, 3600)
    rows = lambda items: [{"question": i.question, "answer": i.answer} for i in items]
    (out / "items.json").write_text(json.dumps({"forget": rows(forget), "retain": rows(retain)}))
    print(f"wrote {out} ({kind}: config, tokenizer, {len(forget)} + {len(retain)} items; no weights)")


def load(args):
    """(model, tokenizer) on args.device: the default model, or random weights of --shape."""
    import torch

    if args.shape:
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

        torch.manual_seed(0)
        with torch.device(device_of(args)):  # initialised where it runs: a 1B init on the host takes ~20 s
            model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(args.shape), dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(args.shape)
    else:
        from obliviate.models import load_model

        model, tokenizer = load_model("smollm2-135m-instruct")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model.to(device_of(args)), tokenizer


def device_of(args):
    from obliviate.hardware import resolve_device

    return resolve_device(args.device)


def matmul_peak(model, precision: str, rows: int, repeats: int = 5) -> float:
    """FLOP/s of the model's own weight matmuls on `rows` rows at the run's precision: the
    machine's limit for this model (matmul_peak.py)."""
    import torch

    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    return weight_matmul_flops(model, dtype, rows, repeats)


def datasheet_peak(device, precision: str) -> tuple[str, float | None]:
    import torch

    if device.type != "cuda":
        return "cpu", None
    name = torch.cuda.get_device_name(device)
    card = next((k for k in DATASHEET if k in name), None)
    return name, DATASHEET[card][precision] if card else None


def peak_mb() -> float:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def plain_loop(model, tokenizer, forget, retain, args, precision: str) -> tuple[list[tuple[int, float]], float]:
    """(tokens, seconds) per measured step of the naive loop, and the warm-up steps' seconds."""
    import contextlib

    import torch

    from obliviate.prompts import encode_qa, pad_batch

    device = next(model.parameters()).device
    encode = lambda item: encode_qa(tokenizer, item.question, item.answer, max_length=args.seq)
    put = lambda batch: {k: v.to(device) for k, v in batch.items()}
    autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bf16"
                else contextlib.nullcontext())
    rng = random.Random(0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, weight_decay=0.01)
    model.train()
    steps = []
    profiler = step_profiler(device) if args.profile else contextlib.nullcontext()
    warmup = args.warmup or 1
    for step in range(args.steps + warmup):
        if step == warmup:
            profiler.__enter__()
        sync(device)
        start = time.perf_counter()
        f = put(pad_batch([encode(i) for i in rng.sample(forget, args.batch)], tokenizer.pad_token_id))
        r = put(pad_batch([encode(i) for i in rng.sample(retain, args.batch)], tokenizer.pad_token_id))
        with autocast:
            loss = -model(**f).loss + model(**r).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad()
        tokens = int(f["attention_mask"].sum() + r["attention_mask"].sum())
        sync(device)
        steps.append((tokens, time.perf_counter() - start))
    profiler.__exit__(None, None, None)
    if args.profile:
        print_profile(profiler, device)
    return steps[warmup:], sum(seconds for _, seconds in steps[:warmup])


def step_profiler(device):
    import torch

    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    return torch.profiler.profile(activities=activities)


def print_profile(profiler, device) -> None:
    """Where the measured steps' time goes: the host's operators, and on CUDA the device's
    kernels, with the device's busy time beside the host's (a step the host bounds shows a
    busy device time far below the wall time)."""
    events = profiler.key_averages()
    print(events.table(sort_by="self_cpu_time_total", row_limit=15, max_name_column_width=60), file=sys.stderr)
    if device.type == "cuda":
        print(events.table(sort_by="self_device_time_total", row_limit=15, max_name_column_width=60), file=sys.stderr)
        busy = sum(e.self_device_time_total for e in events) / 1e6
        host = sum(e.self_cpu_time_total for e in events) / 1e6
        print(f"profile: device kernels busy {busy:.3f} s, host operators {host:.3f} s over the measured steps",
              file=sys.stderr)


def trainer_run(model, tokenizer, forget, retain, args, precision: str,
                option: str) -> tuple[list[tuple[int, float]], float]:
    """(tokens, seconds) per measured step of `obliviate.training.train`, and the seconds from the
    start of training to the end of the warm-up steps (trainer-compile: mostly compiling)."""
    from obliviate.config import RunConfig
    from obliviate.training import train

    config = RunConfig(method="graddiff", seed=0, device=args.device)
    train_cfg = config.train
    warmup = args.warmup or 1
    train_cfg.batch_size, train_cfg.max_length, train_cfg.max_steps = args.batch, args.seq, args.steps + warmup
    train_cfg.learning_rate, train_cfg.precision = 1e-5, precision
    train_cfg.save_steps, train_cfg.logging_steps = -1, 10**9  # no checkpoint inside the timing
    options = set(option.split("-"))  # "compile-shared": both
    train_cfg.optim = ("auto" if "compile" in options else "adamw_torch_fused" if options & {"fused", "shared"}
                       else "adamw_torch")
    train_cfg.torch_compile = "compile" in options
    train_cfg.packing = "packed" in options
    train_cfg.shared_forward = "shared" in options
    with tempfile.TemporaryDirectory() as out:
        train(model, tokenizer, forget=forget, retain=retain, config=config, output_dir=Path(out))
        rows = [json.loads(line) for line in (Path(out) / "train_log.jsonl").read_text().splitlines()]
    # a row's time_s counts from the start of training: step i took rows[i] - rows[i - 1]
    steps = [(row["tokens"], row["time_s"] - before["time_s"]) for before, row in zip(rows, rows[1:])]
    return steps[warmup - 1:], rows[warmup - 1]["time_s"]


def split_config(config: str, default_precision: str) -> tuple[str, str]:
    """'trainer-bf16' -> ('trainer', 'bf16'); 'trainer-fused' -> ('trainer-fused', default)."""
    name, _, tail = config.rpartition("-")
    return (name, tail) if tail in ("fp32", "bf16") else (config, default_precision)


def worker(args) -> None:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    sys.path.insert(0, str(ROOT / "src"))
    from obliviate.training import resolve_precision

    name, precision = split_config(args.worker, args.precision)
    device = device_of(args)
    precision = resolve_precision(precision, device.type)
    model, tokenizer = load(args)
    forget, retain = load_items(400, 3600, args.shape)
    params = sum(p.numel() for p in model.parameters())
    peak = matmul_peak(model, precision, rows=2 * args.batch * args.seq)
    if name == "plain":
        steps, warmup_s = plain_loop(model, tokenizer, forget, retain, args, precision)
    else:
        steps, warmup_s = trainer_run(model, tokenizer, forget, retain, args, precision, name.partition("-")[2])
    tokens, seconds = sum(t for t, _ in steps), sum(s for _, s in steps)
    card, sheet = datasheet_peak(device, precision)
    print("RESULT " + json.dumps({
        "config": args.worker, "precision": precision, "tokens_per_s": tokens / seconds,
        "s_per_step": seconds / len(steps), "tokens_per_step": tokens / len(steps), "warmup_s": warmup_s,
        "peak_mb": peak_mb(),
        "threads": torch.get_num_threads(), "params": params, "measured_peak": peak, "card": card,
        "datasheet_peak": sheet, "model_flops": 6 * params * tokens / seconds,
    }), flush=True)


def parse(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default=",".join(CONFIGS), help=f"comma-separated subset of {CONFIGS}")
    parser.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"))
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    parser.add_argument("--shape", default=None, metavar="DIR", help="random weights of a --save-shape DIR")
    parser.add_argument("--save-shape", default=None, metavar="DIR", help="write config, tokenizer, items; exit")
    parser.add_argument("--shape-of", default="default", choices=("default", "llama-1b"),
                        help="--save-shape: the default model's shape or Llama-3.2-1B's")
    parser.add_argument("--batch", type=int, default=8, help="forget items per step (and as many retain items)")
    parser.add_argument("--seq", type=int, default=128, help="max tokens per item")
    parser.add_argument("--steps", type=int, default=3, help="measured steps (after the warm-up steps)")
    parser.add_argument("--warmup", type=int, default=None, help="unmeasured steps first (default: 1; 3 for "
                        "trainer-compile)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--repeats", type=int, default=1, help="runs per configuration; the best is kept")
    parser.add_argument("--force-bf16", action="store_true", help="run bf16 even without bf16 hardware")
    parser.add_argument("--profile", action="store_true",
                        help="plain: torch.profiler tables of the measured steps (host operators, device kernels)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    unknown = [c for c in args.configs.split(",") if c.strip() and split_config(c.strip(), "auto")[0] not in CONFIGS]
    if unknown:
        parser.error(f"--configs: {', '.join(unknown)} unknown; use {', '.join(CONFIGS)} (a -fp32 / -bf16 suffix "
                     "sets the precision)")
    if args.warmup is not None and args.warmup < 1:
        parser.error("--warmup: at least 1 (the first step's time is not known apart from the set-up)")
    return args


def run_config(config: str, args) -> dict | None:
    """One configuration in its own process (its own peak memory); None, with its error printed,
    where it fails, so the other configurations still give their figures."""
    command = [sys.executable, __file__, "--worker", config, "--batch", str(args.batch), "--seq", str(args.seq),
               "--steps", str(args.steps), "--threads", str(args.threads), "--precision", args.precision,
               "--warmup", str(args.warmup if args.warmup is not None else (3 if "compile" in config else 1)),
               "--device", args.device] + (["--shape", args.shape] if args.shape else []) + \
        (["--profile"] if args.profile else [])
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")]))}
    # --profile: the worker's tables go straight to stderr (a run stopped at its limit keeps them)
    done = subprocess.run(command, stdout=subprocess.PIPE, stderr=None if args.profile else subprocess.PIPE,
                          text=True, env=env)
    line = next((l for l in done.stdout.splitlines() if l.startswith("RESULT ")), None)
    if line is None:
        print(f"[{config}] FAILED (exit {done.returncode}):\n{(done.stderr or '')[-3000:]}", file=sys.stderr, flush=True)
        return None
    return json.loads(line[7:])


def print_table(results: dict, configs: list[str], args) -> None:
    import torch

    base = next((r["tokens_per_s"] for c, r in results.items() if c.startswith("plain")), None)
    any_r = next(iter(results.values()))
    model = f"random weights of {args.shape}" if args.shape else "SmolLM2-135M-Instruct"
    print(f"\nGradDiff step, {model} ({any_r['params'] / 1e6:.0f}M parameters), batch {args.batch} forget + "
          f"{args.batch} retain, max {args.seq} tokens, {args.steps} measured steps, best of {args.repeats}; "
          f"torch {torch.__version__}, {os.cpu_count()} CPUs, device {any_r['card']}\n")
    print("| config | precision | tokens/s | s/step | tokens/step | vs plain | MFU (measured peak) | "
          "MFU (datasheet) | warm-up s | peak MB | threads | load avg |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for config in configs:
        if config in results:
            r = results[config]
            ratio = f"{r['tokens_per_s'] / base:.2f}x" if base else "-"
            sheet = f"{r['model_flops'] / r['datasheet_peak']:.1%}" if r["datasheet_peak"] else "-"
            print(f"| {config} | {r['precision']} | {r['tokens_per_s']:.1f} | {r['s_per_step']:.2f} | "
                  f"{r['tokens_per_step']:.0f} | {ratio} | {r['model_flops'] / r['measured_peak']:.1%} | {sheet} | "
                  f"{r['warmup_s']:.1f} | "
                  f"{r['peak_mb']:.0f} | {r['threads']} | {r['load']:.1f} |")
    peaks = {f"{r['precision']} matmul {r['measured_peak'] / 1e12:.3g} TFLOP/s measured"
             + (f", datasheet {r['datasheet_peak'] / 1e12:.0f}" if r["datasheet_peak"] else "") for r in results.values()}
    print(f"\npeak: {'; '.join(sorted(peaks))}. MFU = 6 * parameters * tokens/s / peak.")
    print(f"targets (issue #19): {TARGETS}")


def main(argv=None) -> None:
    args = parse(argv)
    if args.worker:
        return worker(args)
    sys.path.insert(0, str(ROOT / "src"))
    if args.save_shape:
        return save_shape(args.save_shape, args.shape_of)
    from obliviate.hardware import bf16_is_fast

    configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    results, notes = {}, []
    device_type = device_of(args).type
    for _ in range(args.repeats):
        for config in configs:
            if split_config(config, args.precision)[1] == "bf16" and not (bf16_is_fast(device_type) or args.force_bf16):
                notes.append(f"{config} skipped: no fast bf16 here (bf16 would be emulated, ~10x slower "
                             "than fp32); --force-bf16 runs it")
                continue
            load = os.getloadavg()[0]
            if (result := run_config(config, args)) is None:
                notes.append(f"{config} failed (its error is above)")
                continue
            result["load"] = load
            print(f"[{config}] {result['tokens_per_s']:.1f} tokens/s (load {load:.1f}) RESULT {json.dumps(result)}",
                  file=sys.stderr, flush=True)  # each figure as it comes: a run stopped later keeps it
            if config not in results or result["tokens_per_s"] > results[config]["tokens_per_s"]:
                results[config] = result
    if results:
        print_table(results, configs, args)
    for note in dict.fromkeys(notes):
        print(f"\n{note}")
    if any(note.endswith("(its error is above)") for note in notes):
        sys.exit(1)


if __name__ == "__main__":
    main()
