"""Wall time and peak memory of a TOFU forget01 evaluation (forget + retain + real authors +
world facts, with the holdout MIA extras) on the default model, and decoding speed.

    PYTHONPATH=src .venv/bin/python benchmarks/eval_speed.py
    PYTHONPATH=src .venv/bin/python benchmarks/eval_speed.py --precision fp32 --threads 1 --ds-size 10
    PYTHONPATH=src .venv/bin/python benchmarks/eval_speed.py --out runs/eval_speed --json speed.json
    PYTHONPATH=src .venv/bin/python benchmarks/eval_speed.py --ds-size 20 --rerun --plain 8

The model is loaded (and on the very first load converted from GGUF, ~30 s) before the clock
starts. The result cache is off unless --cache DIR (--rerun uses a fresh one in a temporary
directory). It prints a table of per-stage seconds, the summary numbers, the machine's load
average before and after (other processes on a 2-core machine change wall times a lot), and
the peak resident memory of the process. Wall-clock figures live here, not in the tests:

* ``--rerun``: the same evaluation again, served from the per-item result cache (seconds).
* ``--plain N``: scoring the first N forget items' pairs (answer, paraphrase, perturbed) with
  the engine vs one plain forward per pair (the definition), seconds and speed-up.

Beside the scoring and generation stages it prints the compute limit: 2 FLOPs per parameter
per token, at the matmul throughput measured on this machine for the model's own weight
shapes (``eval_speed_limits.py``), and the fraction of it reached. ``--generation`` measures
greedy decoding alone (the engine with ``--decode`` vs HF ``generate``, both at
``--batch-size``; ``--decode-batch-size`` decodes that many prompts together, default the
engine's choice) instead of the
suite; with ``--shape DIR`` (a config and tokenizer that ``--save-shape DIR`` wrote: no weights)
on random weights of that shape, which is how it runs on a GPU machine that no weights can reach::

    PYTHONPATH=src .venv/bin/python benchmarks/eval_speed.py --save-shape runs/smollm2_shape
    PYTHONPATH=src python benchmarks/eval_speed.py --generation --shape runs/smollm2_shape \
        --device cuda --decode static --batch-size 64
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from obliviate.io import atomic_write_json  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from decode_bound import attended, print_bound  # noqa: E402
from matmul_peak import sync, weight_matmul_flops  # noqa: E402

DEFAULT_DATA = ROOT.parent / "shared" / "data" / "tofu"


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def plain_vs_engine(model, tokenizer, args) -> dict:
    """Seconds to score N forget items' pairs with the engine and with one plain forward per
    pair (prompts.encode_qa, the definition), both in fp32, and the largest NLL difference."""
    import torch

    from obliviate.evaluation import engine, tofu
    from obliviate.prompts import encode_qa, pad_batch

    items = tofu.load_items(args.data, f"{args.forget_split}_perturbed", args.plain)
    pairs = [(i.question, a) for i in items for a in (i.answer, i.paraphrased_answer, *i.perturbed_answers)]
    tick = time.perf_counter()
    fast = engine.answer_losses(model, tokenizer, pairs, batch_size=args.batch_size, precision="fp32")
    engine_s = time.perf_counter() - tick
    tick = time.perf_counter()
    plain = []
    with torch.inference_mode():
        for q, a in pairs:
            batch = pad_batch([encode_qa(tokenizer, q, a)], tokenizer.pad_token_id)
            logits = model(input_ids=batch["input_ids"].to(model.device)).logits[0, :-1].float()
            labels = batch["labels"][0, 1:].to(logits.device)
            keep = labels != -100
            plain.append(float(torch.nn.functional.cross_entropy(logits[keep], labels[keep], reduction="sum")))
    plain_s = time.perf_counter() - tick
    worst = max(abs(f - p) / max(abs(p), 1e-9) for (f, _), p in zip(fast, plain))
    print(f"scoring {len(pairs)} pairs of {len(items)} items: engine {engine_s:.2f} s, plain per-pair forward "
          f"{plain_s:.2f} s ({plain_s / engine_s:.1f}x); largest relative NLL difference {worst:.1e}")
    return {"plain_pairs": len(pairs), "engine_s": engine_s, "plain_s": plain_s, "max_rel_nll_diff": worst}


def matmul_limit(model, precision: str, tokens: int = 256, repeats: int = 10) -> tuple[float, float]:
    """(matmul GFLOP/s, tokens/s limit): every weight matrix of ``model`` (each distinct shape
    timed once, counted as often as it occurs, the output layer included) multiplied by
    ``tokens`` rows in the run's precision; the limit is 2 FLOPs per parameter per token."""
    import torch

    dtype = torch.bfloat16 if precision == "bf16" else next(model.parameters()).dtype
    flops_per_s = weight_matmul_flops(model, dtype, tokens, repeats)
    gflops = flops_per_s / 1e9
    return gflops, gflops * 1e9 / (2 * sum(p.numel() for p in model.parameters()))


def load_now() -> str:
    return f"load {os.getloadavg()[0]:.2f}"


def print_limits(stages: dict, counters: dict, limit: tuple[float, float], precision: str,
                 rows_limit: tuple[int, float, float] | None = None) -> dict:
    """Tokens/s of the scoring and generation stages beside the compute limit (and, with
    ``rows_limit`` = (rows, GFLOP/s, tokens/s), the same limit at the decoding batch's rows)."""
    gflops, limit_tps = limit
    print(f"\ncompute limit: {precision} matmul {gflops:.1f} GFLOP/s on the model's weight shapes -> "
          f"{limit_tps:.0f} tokens/s at 2 FLOPs per parameter per token ({load_now()})")
    if rows_limit is not None:
        print(f"  at {rows_limit[0]} rows (the generation batch): {rows_limit[1]:.1f} GFLOP/s -> {rows_limit[2]:.0f} "
              f"tokens/s, {rows_limit[2] / limit_tps:.0%} of the limit (a decoding step of that many rows, all matmul)")
    print("| stage | seconds | tokens | tokens/s | limit tokens/s | fraction |")
    print("|---|--:|--:|--:|--:|--:|")
    rows = {"scoring": ("model: score", counters.get("prompt tokens", 0) + counters.get("answer tokens", 0)),
            "generation": ("model: generate", counters.get("generated tokens", 0))}
    figures = {}
    for name, (stage, tokens) in rows.items():
        seconds = stages.get(stage, 0.0)
        if seconds <= 0 or not tokens:
            continue
        rate = tokens / seconds
        figures[name] = {"seconds": seconds, "tokens": tokens, "tokens_per_s": rate, "fraction": rate / limit_tps}
        print(f"| {name} | {seconds:.1f} | {tokens} | {rate:.1f} | {limit_tps:.0f} | {rate / limit_tps:.0%} |")
    print("(scoring runs the output layer only where a prediction is needed: its fraction counts FLOPs it skips)")
    extra = {} if rows_limit is None else {"batch_rows_limit_tokens_per_s": rows_limit[2]}
    return {"limit_gflops": gflops, "limit_tokens_per_s": limit_tps, "stages": figures, **extra}


def save_shape(model_name: str, target: str, data: str, questions: int) -> None:
    """Config, tokenizer and TOFU questions (no weights) for --shape on a machine without them."""
    from obliviate.evaluation import tofu
    from obliviate.models import load_model

    model, tokenizer = load_model(model_name)
    out = Path(target)
    out.mkdir(parents=True, exist_ok=True)
    model.config.save_pretrained(out)
    model.generation_config.save_pretrained(out)
    tokenizer.save_pretrained(out)
    items = tofu.load_items(data, "forget10_perturbed", questions)
    atomic_write_json(out / "questions.json", [i.question for i in items])
    print(f"wrote {out}: config, tokenizer and {len(items)} questions (no weights)")


def generation_model(args):
    """(model, tokenizer, questions): --shape DIR gives random weights of that shape (seeded)."""
    import torch

    if args.shape:
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig

        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(args.shape), dtype=torch.float32)
        model.generation_config = GenerationConfig.from_pretrained(args.shape)
        tokenizer = AutoTokenizer.from_pretrained(args.shape)
        questions = json.loads((Path(args.shape) / "questions.json").read_text())
    else:
        from obliviate.evaluation import tofu
        from obliviate.models import load_model

        model, tokenizer = load_model(args.model)
        questions = [i.question for i in tofu.load_items(args.data, "forget10_perturbed", None)]
    questions = list(dict.fromkeys(questions))[: args.prompts]  # distinct: the engine runs a repeated prompt once
    return model.to(args.device).eval(), tokenizer, questions


def hf_generate(model, tokenizer, questions, args, precision: str) -> tuple[float, int]:
    """Seconds and new tokens (up to and including the first stop token) of HF ``generate``,
    greedy, ``--batch-size`` left-padded prompts at a time, in the engine's precision."""
    import torch

    from obliviate.evaluation.engine import stop_token_ids
    from obliviate.evaluation.engine.settings import precision_context
    from obliviate.prompts import format_prompt

    tokenizer.padding_side = "left"
    stops = set(stop_token_ids(model, tokenizer))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    new_tokens, tick = 0, time.perf_counter()
    for start in range(0, len(questions), args.batch_size):
        texts = [format_prompt(tokenizer, q) for q in questions[start:start + args.batch_size]]
        batch = tokenizer(texts, add_special_tokens=False, return_tensors="pt", padding=True).to(args.device)
        with torch.inference_mode(), precision_context(model, precision):
            out = model.generate(**batch, max_new_tokens=args.max_new_tokens, do_sample=False, pad_token_id=pad)
        for row in out[:, batch["input_ids"].shape[1]:].tolist():
            ends = [i for i, t in enumerate(row) if t in stops]
            new_tokens += ends[0] + 1 if ends else len(row)
    sync(model.device)
    return time.perf_counter() - tick, new_tokens


def generation_benchmark(args) -> dict:
    """New tokens/s of the engine (--decode) and of HF generate on the same prompts."""
    import torch

    from obliviate.evaluation import engine

    model, tokenizer, questions = generation_model(args)
    precision = engine.resolve_precision(model, args.precision)
    decode = engine.resolve_decode(model, args.decode)
    limit = matmul_limit(model, precision)
    options = dict(max_new_tokens=args.max_new_tokens, batch_size=args.batch_size, precision=args.precision,
                   decode=args.decode, decode_batch_size=args.decode_batch_size)
    engine.greedy_generate(model, tokenizer, questions[:2], **{**options, "max_new_tokens": 4})  # warm-up
    timings, counters = {}, {}
    profiler = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) if args.profile else None
    tick, cpu = time.perf_counter(), time.process_time()
    with profiler if profiler is not None else contextlib.nullcontext(), attended() as steps:
        _, texts = engine.score_and_generate(model, tokenizer, (), questions, timings=timings, counters=counters,
                                             **options)
        sync(model.device)
    cpu = time.process_time() - cpu
    # decoding steps' tokens + each prompt's first token, which the prompt's own pass gives
    engine_s, engine_tokens = time.perf_counter() - tick, counters["generated tokens"] + len(questions)
    if profiler is not None:  # where the engine's time goes, by operator
        print(profiler.key_averages().table(sort_by="self_cpu_time_total", row_limit=12, max_name_column_width=50))
    engine_load = load_now()
    rows = steps["rows"] or args.decode_batch_size or args.batch_size  # prompts decoded together
    rows_limit = matmul_limit(model, precision, tokens=rows)
    decode_tps = counters["generated tokens"] / timings["generate"] if timings["generate"] > 0 else 0.0
    figures = {"device": str(model.device), "precision": precision, "decode": decode, "prompts": len(questions),
               "batch_size": args.batch_size, "decode_rows": rows, "max_new_tokens": args.max_new_tokens,
               "engine_s": engine_s, "engine_cpu_s": cpu, "engine_new_tokens": engine_tokens,
               "engine_tps": engine_tokens / engine_s,
               "limit_gflops": limit[0], "limit_tps": limit[1],
               "batch_rows_limit_gflops": rows_limit[0], "batch_rows_limit_tps": rows_limit[1],
               "decode_s": timings["generate"], "decode_tokens": counters["generated tokens"], "decode_tps": decode_tps}
    print(f"\n{len(questions)} prompts, batch {args.batch_size} (decoding {rows} rows), up to {args.max_new_tokens} "
          f"new tokens, {precision} on {model.device}, decode {decode}")
    print(f"compute limit: {limit[0]:.1f} GFLOP/s matmul -> {limit[1]:.0f} tokens/s ({load_now()})")
    print(f"  at {rows} rows (the decoding batch): {rows_limit[0]:.1f} GFLOP/s matmul -> "
          f"{rows_limit[1]:.0f} tokens/s, {rows_limit[1] / limit[1]:.0%} of the limit: the most a step of "
          f"{rows} rows reaches if it were all matmul")
    print(f"engine: {engine_tokens} new tokens in {engine_s:.1f} s = {engine_tokens / engine_s:.1f} tokens/s, "
          f"{engine_tokens / engine_s / limit[1]:.0%} of the limit ({engine_load})")
    print(f"  of which decoding steps (the prompts' pass apart, as the suite's generation stage): "
          f"{counters['generated tokens']} tokens in {timings['generate']:.1f} s = {decode_tps:.1f} tokens/s, "
          f"{decode_tps / limit[1]:.0%} of the limit")
    figures["bound"] = print_bound(steps, limit[1], decode_tps, model.device.type)
    if args.texts:  # to compare two decodes' outputs on the same prompts (gpu_figures.sh)
        atomic_write_json(args.texts, texts)
    if model.device.type == "cpu":  # per second of this process's CPU time: less moved by other processes
        print(f"engine per CPU second ({cpu:.1f} s, {torch.get_num_threads()} threads): "
              f"{engine_tokens / cpu * torch.get_num_threads():.1f} tokens/s, "
              f"{engine_tokens / cpu * torch.get_num_threads() / limit[1]:.0%} of the limit")
    if args.hf_prompts:
        hf_s, hf_tokens = hf_generate(model, tokenizer, questions[: args.hf_prompts], args, precision)
        ratio = (engine_tokens / engine_s) / (hf_tokens / hf_s)
        target = 10.0 if model.device.type == "cuda" else None
        verdict = "" if target is None else f" (target >= {target:.0f}x: {'met' if ratio >= target else 'NOT met'})"
        print(f"HF generate: {hf_tokens} new tokens in {hf_s:.1f} s = {hf_tokens / hf_s:.1f} tokens/s "
              f"({load_now()}); engine / HF = {ratio:.2f}x{verdict}")
        figures.update(hf_s=hf_s, hf_new_tokens=hf_tokens, hf_tps=hf_tokens / hf_s, speedup=ratio, target=target)
    return figures


def print_stages(result: dict, args) -> None:
    """The suite's items, precision and per-stage seconds as a Markdown table."""
    import torch

    stages = result["timings_s"]
    width = max(len(k) for k in stages)
    print(f"\nTOFU {args.forget_split} evaluation of {args.model}: items {result['n_samples']}")
    print(f"precision {result['config']['precision_used']}, batch {args.batch_size}, "
          f"torch threads {torch.get_num_threads()}\n")
    print(f"| {'stage':<{width}} | seconds |")
    print(f"|{'-' * (width + 2)}|--------:|")
    for stage, seconds in stages.items():
        print(f"| {stage:<{width}} | {seconds:7.1f} |")


def suite_benchmark(args) -> None:
    """The TOFU suite: per-stage seconds, tokens/s beside the compute limit, summary."""
    import torch

    from obliviate.evaluation import report, tofu
    from obliviate.models import load_model

    load_before = os.getloadavg()
    tick = time.perf_counter()
    model, tokenizer = load_model(args.model)
    model.to(args.device)
    load_s = time.perf_counter() - tick
    rss_after_load = peak_rss_mb()

    cache_dir = args.cache or (tempfile.mkdtemp(prefix="eval_speed_cache_") if args.rerun else False)
    kwargs = dict(data=args.data, forget_split=args.forget_split, retain_logs=args.retain_logs, out_dir=args.out,
                  batch_size=args.batch_size, max_new_tokens=args.max_new_tokens, precision=args.precision,
                  cache=cache_dir, model_name=args.model, ds_size=args.ds_size,
                  decode_batch_size=args.decode_batch_size)
    started = time.perf_counter()
    cpu_started = time.process_time()
    with attended() as steps:
        result = tofu.evaluate_tofu(model, tokenizer, **kwargs)
    wall = time.perf_counter() - started
    cpu = time.process_time() - cpu_started
    load_after = os.getloadavg()

    stages = result["timings_s"]
    print_stages(result, args)
    print(f"\ntokens through the model: {result['model_tokens']}")
    print(f"model load (not counted): {load_s:.1f} s")
    print(f"wall {wall:.1f} s, process CPU {cpu:.1f} s, peak RSS {peak_rss_mb():.0f} MB "
          f"(after load {rss_after_load:.0f} MB)")
    print(f"load average before {load_before[0]:.2f}, after {load_after[0]:.2f} (1-min)")
    used = result["config"]["precision_used"]
    rows = steps["rows"] or args.batch_size  # the most prompts decoded together
    rows_limit = (rows, *matmul_limit(model, used, tokens=rows))
    limits = print_limits(stages, result["model_tokens"], matmul_limit(model, used), used, rows_limit)
    generation = limits["stages"].get("generation", {}).get("tokens_per_s", 0.0)
    figures = {"limits": limits, "bound": print_bound(steps, limits["limit_tokens_per_s"], generation, model.device.type)}
    print()
    print(report.render_table(result["summary"]))
    if args.rerun:
        tick = time.perf_counter()
        again = tofu.evaluate_tofu(model, tokenizer, **kwargs)
        figures["cached_rerun_s"] = time.perf_counter() - tick
        print(f"cached rerun: {figures['cached_rerun_s']:.2f} s ({again['cache_hits']} cache hits, "
              f"same summary: {again['summary'] == result['summary']})")
    if args.plain:
        figures.update(plain_vs_engine(model, tokenizer, args))
    if args.json:
        atomic_write_json(args.json, json.loads(json.dumps({
            "stages_s": stages, "wall_s": wall, "cpu_s": cpu, "peak_rss_mb": peak_rss_mb(),
            "load_before": load_before, "load_after": load_after, "summary": result["summary"],
            "model_tokens": result["model_tokens"], "threads": torch.get_num_threads(),
            "config": result["config"], "versions": result["versions"], **figures}, default=str)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="TOFU directory (default: ../shared/data/tofu)")
    parser.add_argument("--forget-split", default="forget01")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--max-new-tokens", type=int, default=200)
    parser.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"])
    parser.add_argument("--retain-logs", default=None)
    parser.add_argument("--cache", default=None, help="result-cache directory (default: no cache)")
    parser.add_argument("--out", default=None, help="also write tofu_eval.json / summary / report here")
    parser.add_argument("--json", default=None, help="write the timing table as JSON to this file")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--ds-size", type=int, default=None, help="only the first N items of each split")
    parser.add_argument("--rerun", action="store_true", help="time a second run served from the result cache")
    parser.add_argument("--plain", type=int, default=0, metavar="N",
                        help="time engine vs one plain forward per pair on N forget items")
    parser.add_argument("--device", default="cpu", help="where the model runs (cpu, cuda)")
    parser.add_argument("--generation", action="store_true", help="decoding alone: engine vs HF generate")
    parser.add_argument("--decode", default="auto", choices=["auto", "plain", "static"])
    parser.add_argument("--decode-batch-size", type=int, default=None,
                        help="prompts decoded together (default: the engine's, engine.settings.decode_rows)")
    parser.add_argument("--prompts", type=int, default=256, help="--generation: prompts (TOFU questions)")
    parser.add_argument("--hf-prompts", type=int, default=64, help="--generation: prompts for HF generate (0: skip)")
    parser.add_argument("--shape", default=None, help="--generation: random weights of the shape in DIR")
    parser.add_argument("--save-shape", default=None, metavar="DIR", help="write config, tokenizer, questions")
    parser.add_argument("--profile", action="store_true", help="--generation: torch.profiler table of the engine")
    parser.add_argument("--texts", default=None, metavar="FILE", help="--generation: write the engine's outputs")
    args = parser.parse_args(argv)

    import logging

    import torch

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("obliviate.evaluation").setLevel(logging.INFO)

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.save_shape:
        save_shape(args.model, args.save_shape, args.data, args.prompts)
        return 0
    if args.generation:
        figures = generation_benchmark(args)
        if args.json:
            atomic_write_json(args.json, {**figures, "threads": torch.get_num_threads()})
        return 0
    suite_benchmark(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
