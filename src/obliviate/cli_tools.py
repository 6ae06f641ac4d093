"""The small commands: `demo`, `data validate`, `model info`, `probe` (their options and runs)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from obliviate.cli_args import HelpFormatter, add_flag
from obliviate.errors import UserError


def add_demo(parser) -> None:
    parser.add_argument("--model", default=None, help="model (default: smollm2-135m-instruct)")
    add_flag(parser, "--output_dir", default="runs/demo", metavar="DIR")
    parser.add_argument("--alphas", default="", help="also score ULMR at these averaging weights, e.g. 0.3,0.5,0.6")
    parser.epilog = ("examples:\n  obliviate demo\n"
                     "  obliviate demo --model smollm2-135m-instruct --output_dir runs/demo2 --alphas 0.3,0.6")


def run_demo(args) -> int:
    from obliviate.demo import run_demo as demo

    try:
        alphas = tuple(float(a) for a in args.alphas.split(",") if a.strip())
    except ValueError:
        alphas = (-1.0,)
    if not all(0.0 <= a <= 1.0 for a in alphas):  # checked before the demo spends minutes teaching
        raise UserError(f"--alphas '{args.alphas}': expected numbers in [0, 1] separated by commas")
    demo(model=args.model, output_dir=args.output_dir, alphas=alphas)
    return 0


def add_data(parser) -> None:
    data_sub = parser.add_subparsers(dest="data_command", required=True)
    validate = data_sub.add_parser("validate", help="load files, report counts and problems",
                                   formatter_class=HelpFormatter)
    validate.add_argument("files", nargs="+", help="request files (YAML/JSON with 'forget:') or data files")
    parser.epilog = validate.epilog = (
        "examples:\n  obliviate data validate examples/tofu_forget01.yaml\n"
        "  obliviate data validate examples/rwku/stephen_king.yaml ../shared/data/tofu/full.json")


def run_data(args) -> int:
    from obliviate.data.request import describe, load_request

    failed = False
    for path in args.files:
        try:
            summary = describe(load_request(path))
        except UserError as error:
            print(f"error: {error}", file=sys.stderr)
            failed = True
            continue
        counts = ", ".join(f"{s} {summary[s]['items']}" for s in ("forget", "retain", "neighbors") if summary[s]["items"])
        print(f"{path}: ok: {counts}" + (f", passages {summary['passages']}" if summary["passages"] else ""))
        for set_name in ("forget", "retain", "neighbors"):
            entry = summary[set_name]
            if entry["items"]:
                extras = {k: v for k, v in entry.items() if k != "items" and v}
                if extras:
                    print(f"  {set_name}: " + ", ".join(f"{k} {v}" for k, v in extras.items()))
        for warning in summary["warnings"]:
            print(f"  warning: {warning}")
    return 2 if failed else 0


def add_model(parser) -> None:
    model_sub = parser.add_subparsers(dest="model_command", required=True)
    info = model_sub.add_parser("info", help="architecture, parameter count, dtype, chat template",
                                formatter_class=HelpFormatter)
    info.add_argument("name", nargs="?", metavar="MODEL", help="hub id, local directory or .gguf file")
    info.add_argument("--model", default=None, help="the same, as an option")
    parser.epilog = info.epilog = ("examples:\n  obliviate model info smollm2-135m-instruct\n"
                                   "  obliviate model info --model runs/npo/model")


def run_model(args) -> int:
    from obliviate.models import model_info

    name = args.model or args.name
    if not name:
        raise UserError("model info: which model? pass it: obliviate model info smollm2-135m-instruct")
    print(json.dumps(model_info(name), indent=2))
    return 0


def add_probe(parser) -> None:
    parser.add_argument("--model", required=True, help="hub id, local directory or .gguf file")
    parser.add_argument("--data", default="jinzhuoran/RWKU", help="RWKU: hub name or local directory")
    parser.add_argument("--targets", default="1-200", help="ids, ranges or names, e.g. 1-10 or 'Stephen King'")
    add_flag(parser, "--ds_size", type=int, default=None, help="first N probes of each set per target (default: all)")
    parser.add_argument("--top", type=int, default=20, help="rows to print")
    parser.add_argument("--output", default=None, help="also write the ranking as JSON to this file (default: none)")
    parser.add_argument("--device", default="auto", help="auto (CUDA, else MPS, else CPU), cpu, cuda, cuda:N, mps")
    parser.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"],
                        help="auto: bf16 autocast where fast, else fp32")
    parser.epilog = ("examples:\n"
                     "  obliviate probe --model smollm2-135m-instruct --data ../shared/data/rwku --targets 1-10\n"
                     "  obliviate probe --model runs/npo/model --data ../shared/data/rwku --targets 'Stephen King'")


def run_probe(args) -> int:
    from obliviate.evaluation.rwku.screening import screen_targets
    from obliviate.hardware import resolve_device
    from obliviate.io import atomic_write_json
    from obliviate.models import load_model

    for flag, value, least in (("--ds_size", args.ds_size, 1), ("--top", args.top, 1)):
        if value is not None and value < least:
            raise UserError(f"{flag} {value}: expected an integer >= {least}")
    if args.output and Path(args.output).is_dir():
        raise UserError(f"--output {args.output}: is a folder; give the JSON file to write, e.g. "
                        f"{Path(args.output) / 'ranking.json'}")
    from obliviate.data.rwku import is_local, resolve_targets

    if is_local(args.data):  # a wrong --targets is told before the model loads
        try:
            resolve_targets(args.data, args.targets)
        except UserError as error:
            raise UserError(f"--targets {args.targets}: {error}") from None
    model, tokenizer = load_model(args.model, device=resolve_device(args.device, key="--device"))
    rows = screen_targets(model, tokenizer, data=args.data, targets=args.targets, ds_size=args.ds_size,
                          precision=args.precision)
    print("| rank | id | target | FB | QA | known |\n|---|---|---|---|---|---|")
    for row in rows[:args.top]:
        print(f"| {row['rank']} | {row['id']} | {row['name']} | {row['forget_fb']:.3f} | {row['forget_qa']:.3f} "
              f"| {row['known']:.3f} |")
    if args.output:
        atomic_write_json(args.output, rows)
    return 0
