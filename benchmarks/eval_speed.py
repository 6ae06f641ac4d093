"""Wall time and peak memory of a TOFU forget01 evaluation (forget + retain + real authors +
world facts, with the holdout MIA extras) on the default model.

    PYTHONPATH=src .venv/bin/python benchmarks/eval_speed.py
    PYTHONPATH=src .venv/bin/python benchmarks/eval_speed.py --precision fp32 --batch-size 32
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
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="TOFU directory (default: ../shared/data/tofu)")
    parser.add_argument("--forget-split", default="forget01")
    parser.add_argument("--batch-size", type=int, default=32)
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
    args = parser.parse_args(argv)

    import logging

    import torch

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("obliviate.evaluation").setLevel(logging.INFO)

    from obliviate.evaluation import report, tofu
    from obliviate.models import load_model

    if args.threads:
        torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    tick = time.perf_counter()
    model, tokenizer = load_model(args.model)
    load_s = time.perf_counter() - tick
    rss_after_load = peak_rss_mb()

    cache_dir = args.cache or (tempfile.mkdtemp(prefix="eval_speed_cache_") if args.rerun else False)
    kwargs = dict(data=args.data, forget_split=args.forget_split, retain_logs=args.retain_logs, out_dir=args.out,
                  batch_size=args.batch_size, max_new_tokens=args.max_new_tokens, precision=args.precision,
                  cache=cache_dir, model_name=args.model, ds_size=args.ds_size)
    started = time.perf_counter()
    cpu_started = time.process_time()
    result = tofu.evaluate_tofu(model, tokenizer, **kwargs)
    wall = time.perf_counter() - started
    cpu = time.process_time() - cpu_started
    load_after = os.getloadavg()

    stages = result["timings_s"]
    width = max(len(k) for k in stages)
    print(f"\nTOFU {args.forget_split} evaluation of {args.model}: items {result['n_samples']}")
    print(f"precision {result['config']['precision_used']}, batch {args.batch_size}, "
          f"torch threads {torch.get_num_threads()}\n")
    print(f"| {'stage':<{width}} | seconds |")
    print(f"|{'-' * (width + 2)}|--------:|")
    for stage, seconds in stages.items():
        print(f"| {stage:<{width}} | {seconds:7.1f} |")
    print(f"\ntokens through the model: {result['model_tokens']}")
    print(f"model load (not counted): {load_s:.1f} s")
    print(f"wall {wall:.1f} s, process CPU {cpu:.1f} s, peak RSS {peak_rss_mb():.0f} MB "
          f"(after load {rss_after_load:.0f} MB)")
    print(f"load average before {load_before[0]:.2f}, after {load_after[0]:.2f} (1-min)\n")
    print(report.render_table(result["summary"]))
    figures = {}
    if args.rerun:
        tick = time.perf_counter()
        again = tofu.evaluate_tofu(model, tokenizer, **kwargs)
        figures["cached_rerun_s"] = time.perf_counter() - tick
        print(f"cached rerun: {figures['cached_rerun_s']:.2f} s ({again['cache_hits']} cache hits, "
              f"same summary: {again['summary'] == result['summary']})")
    if args.plain:
        figures.update(plain_vs_engine(model, tokenizer, args))
    if args.json:
        Path(args.json).write_text(json.dumps({
            "stages_s": stages, "wall_s": wall, "cpu_s": cpu, "peak_rss_mb": peak_rss_mb(),
            "load_before": load_before, "load_after": load_after, "summary": result["summary"],
            "model_tokens": result["model_tokens"], "threads": torch.get_num_threads(),
            "config": result["config"], "versions": result["versions"], **figures}, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
