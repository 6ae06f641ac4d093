"""The `obliviate` command line.

Examples:
  obliviate demo                                     # the built-in demo, offline, on the default model
  obliviate data validate ../shared/data/tofu/full.json my_request.yaml
  obliviate model info smollm2-135m-instruct
  obliviate unlearn --config examples/graddiff.yaml method=npo train.learning_rate=2e-5
  obliviate unlearn --method ulmr request=my_request.yaml output_dir=runs/ulmr
  obliviate unlearn --config run.yaml --resume      # continue a killed run from its last checkpoint
  obliviate finetune model=smollm2-135m-instruct request=facts.json output_dir=runs/taught
  obliviate eval --benchmark tofu --model runs/ulmr/model --data ../shared/data/tofu --forget-split forget01
  obliviate eval --benchmark tofu --help            # that benchmark's own options
  obliviate probe --model smollm2-135m-instruct --data ../shared/data/rwku --targets 1-10   # who does it know?

Bad input (files, fields, config keys, model names) gets one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from obliviate.errors import UserError, os_error_line, write_failure_line


def _parser(benchmark: str = "tofu") -> argparse.ArgumentParser:
    """The parser; `eval` carries the options of `benchmark` (each benchmark declares its own)."""
    from obliviate.methods.registry import methods

    parser = argparse.ArgumentParser(
        prog="obliviate", description=__doc__.split("\n")[0],
        epilog="\n".join(__doc__.split("\n")[2:]), formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="teach, unlearn (ULMR) and score the built-in request on the default model")
    demo.add_argument("--model", default=None, help="model (default: smollm2-135m-instruct)")
    demo.add_argument("--output-dir", default="runs/demo")
    demo.add_argument("--alphas", default="", help="also score ULMR at these averaging weights, e.g. 0.3,0.5,0.6")

    data = sub.add_parser("data", help="inspect unlearning requests and data files")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    validate = data_sub.add_parser("validate", help="load files, report counts and problems")
    validate.add_argument("files", nargs="+", help="request files (YAML/JSON with 'forget:') or data files")

    model = sub.add_parser("model", help="inspect models")
    model_sub = model.add_subparsers(dest="model_command", required=True)
    info = model_sub.add_parser("info", help="architecture, parameter count, dtype, chat template")
    info.add_argument("model")

    listing = "methods:\n" + "\n".join(f"  {name:<10} {m.summary}" for name, m in methods().items())
    for name, helptext in (("unlearn", "run an unlearning method"), ("finetune", "plain fine-tuning (teach facts, retrain)")):
        run = sub.add_parser(name, help=helptext, epilog=listing if name == "unlearn" else None,
                             formatter_class=argparse.RawDescriptionHelpFormatter)
        run.add_argument("--config", help="run config YAML (every field overridable as key=value)")
        if name == "unlearn":
            run.add_argument("--method", choices=list(methods()), metavar="METHOD", help="shorthand for method=...")
        run.add_argument("--resume", action="store_true", help="continue from the last checkpoint in output_dir")
        run.add_argument("overrides", nargs="*", help="key=value, e.g. train.learning_rate=2e-5 device=cpu")
    _eval_parser(sub, benchmark)
    probe = sub.add_parser("probe", help="rank RWKU targets by how much a model knows them (before unlearning)")
    probe.add_argument("--model", required=True)
    probe.add_argument("--data", default="jinzhuoran/RWKU", help="RWKU: hub name or local directory")
    probe.add_argument("--targets", default="1-200", help="ids, ranges or names, e.g. 1-10 or 'Stephen King'")
    probe.add_argument("--ds-size", type=int, default=None, help="first N probes of each set per target")
    probe.add_argument("--top", type=int, default=20, help="rows to print")
    probe.add_argument("--output", default=None, help="also write the ranking as JSON here")
    probe.add_argument("--device", default="auto")
    probe.add_argument("--precision", default="auto")
    return parser


def _probe(args) -> int:
    from obliviate.evaluation.rwku.screening import screen_targets
    from obliviate.hardware import resolve_device
    from obliviate.io import atomic_write_json
    from obliviate.models import load_model

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


def _eval_parser(sub, benchmark: str) -> None:
    import dataclasses

    from obliviate.evaluation.registry import benchmarks

    known = benchmarks()
    listing = "benchmarks:\n" + "\n".join(f"  {name:<10} {b.summary}" for name, b in known.items())
    evaluate = sub.add_parser("eval", help="evaluate a model on a benchmark", epilog=listing,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    evaluate.add_argument("--benchmark", default="tofu", choices=list(known))
    evaluate.add_argument("--model", required=True)
    evaluate.add_argument("--output-dir", default=None, help="default: runs/eval-<model name>")
    evaluate.add_argument("--device", default="auto", help="auto (CUDA, else MPS, else CPU), cpu, cuda, cuda:N, mps")
    evaluate.add_argument("--precision", default="auto", help="auto (bf16 autocast where fast), bf16 or fp32")
    evaluate.add_argument("--trust-remote-code", action="store_true")
    if benchmark not in known:
        return  # argparse refuses the name with the list of choices
    group = evaluate.add_argument_group(f"{benchmark} options")
    for option in dataclasses.fields(known[benchmark].options):
        flag = "--" + option.name.replace("_", "-")
        helptext = option.metadata.get("help", "")
        if "default" not in helptext:
            helptext += f" (default: {option.default})"
        if option.type in (bool, "bool"):
            group.add_argument(flag, dest=f"option.{option.name}", action=argparse.BooleanOptionalAction,
                               default=argparse.SUPPRESS, help=helptext)
        else:
            group.add_argument(flag, dest=f"option.{option.name}", default=argparse.SUPPRESS, help=helptext)


def _benchmark_of(argv: list[str]) -> str:
    """The --benchmark named on the command line (it decides which options `eval` takes)."""
    for i, arg in enumerate(argv):
        if arg == "--benchmark" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--benchmark="):
            return arg.split("=", 1)[1]
    return "tofu"


def _data_validate(files: list[str]) -> int:
    from obliviate.data.request import describe, load_request

    failed = False
    for path in files:
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


def _run(args, method: str | None) -> int:
    from obliviate.api import unlearn
    from obliviate.config import load_config

    overrides = list(args.overrides)
    if method:
        overrides.insert(0, f"method={method}")
    config = load_config(args.config, overrides)
    run_dir = unlearn(config, resume=args.resume)
    print(f"[obliviate] done: {run_dir}")
    return 0


def _eval(args) -> int:
    from obliviate.api import evaluate
    from obliviate.evaluation.registry import get_benchmark

    output_dir = args.output_dir or os.path.join("runs", "eval-" + os.path.basename(os.path.normpath(args.model)))
    options = {key.split(".", 1)[1]: value for key, value in vars(args).items() if key.startswith("option.")}
    result = evaluate(args.model, benchmark=args.benchmark, output_dir=output_dir, device=args.device,
                      precision=args.precision, trust_remote_code=args.trust_remote_code, **options)
    print(get_benchmark(args.benchmark).render(result))
    print(f"[obliviate] results: {output_dir}")
    return 0


def _log_progress() -> None:
    """obliviate's own progress lines (evaluation, generation) on stderr; libraries stay quiet."""
    import logging

    logger = logging.getLogger("obliviate")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("[obliviate] %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = _parser(_benchmark_of(argv)).parse_args(argv)
    _log_progress()
    try:
        if args.command == "data":
            return _data_validate(args.files)
        if args.command == "model":
            from obliviate.models import model_info

            print(json.dumps(model_info(args.model), indent=2))
            return 0
        if args.command == "unlearn":
            return _run(args, args.method)
        if args.command == "finetune":
            return _run(args, "finetune")
        if args.command == "eval":
            return _eval(args)
        if args.command == "probe":
            return _probe(args)
        if args.command == "demo":
            from obliviate.demo import run_demo

            try:
                alphas = tuple(float(a) for a in args.alphas.split(",") if a.strip())
            except ValueError:
                alphas = (-1.0,)
            if not all(0.0 <= a <= 1.0 for a in alphas):  # checked before the demo spends minutes teaching
                raise UserError(f"--alphas '{args.alphas}': expected numbers in [0, 1] separated by commas")
            run_demo(model=args.model, output_dir=args.output_dir, alphas=alphas)
            return 0
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except OSError as error:  # cannot create, cannot write, disk full, read-only: the user's to fix
        print(f"error: {os_error_line(error)}", file=sys.stderr)
        return 2
    except Exception as error:  # noqa: BLE001 - only a library's failed write becomes one line
        line = write_failure_line(error)
        if line is None:
            raise
        print(f"error: {line}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 1


if __name__ == "__main__":
    sys.exit(main())
