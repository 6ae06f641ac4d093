"""`obliviate bench`: the method comparison table on TOFU (bench/plan.py runs it).

    obliviate bench --config examples/bench/tofu_small.yaml --target runs/tofu_small/target/model \\
        --oracle runs/tofu_small/retain/model --output_dir runs/bench-tofu
    python -m obliviate.bench.cli --methods ga,ulmr --output_dir runs/bench-two

Command-line values override the row YAML's `protocol:` section.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from obliviate.cli_args import HelpFormatter, OneLineParser, add_flag
from obliviate.errors import UserError, os_error_line

EXAMPLES = """examples:
  obliviate bench --config examples/bench/tofu_small.yaml --target runs/tofu_small/target/model \\
      --oracle runs/tofu_small/retain/model
  obliviate bench --methods ga,npo,ulmr --ds_size 20 --output_dir runs/bench-three
  obliviate bench --model meta-llama/Llama-3.2-1B-Instruct --forget_split forget10 --retain_split retain90 \\
      --ds_size 0 --max_new_tokens 200 --output_dir runs/bench-full      # full scale, on a GPU"""

PROTOCOL_FLAGS = ("model", "data", "forget_split", "retain_split", "ds_size", "max_new_tokens", "target", "oracle")


def add_arguments(parser) -> None:
    parser.epilog = EXAMPLES
    parser.add_argument("--benchmark", choices=["tofu"], default="tofu", help="the benchmark (TOFU only for now)")
    parser.add_argument("--config", metavar="YAML", default=None,
                        help="the row YAML (protocol, teach, common, rows); default: the packaged rows")
    add_flag(parser, "--output_dir", default="runs/bench-tofu", metavar="DIR",
             help="the bench directory: every stage, the table, the plot and the report")
    add_flag(parser, "--methods", default=None, metavar="A,B",
             help="only these rows (row names or method names, comma-separated)")
    add_flag(parser, "--model", default=None, help="base model of the target and the oracle")
    add_flag(parser, "--data", default=None, metavar="DIR", help="TOFU data folder (<split>.json files)")
    add_flag(parser, "--forget_split", default=None, help="forget split: forget01, forget05 or forget10 "
             "(default: the config's protocol, forget01 in the packaged rows)")
    add_flag(parser, "--retain_split", default=None,
             help="retain facts the target learns and the methods keep (retain_perturbed at CPU scale; "
                  "retain99/95/90 at full scale)")
    add_flag(parser, "--target", default=None, metavar="MODEL",
             help="an already trained target model (skips training it; recorded in the manifest)")
    add_flag(parser, "--oracle", default=None, metavar="MODEL",
             help="an already trained retain-only model (skips training it)")
    add_flag(parser, "--ds_size", type=int, default=None,
             help="evaluate the first N items of retain, real authors and world facts (0: all); "
                  "the forget split and its holdout are always evaluated whole (default: the config's "
                  "protocol, 20 in the packaged rows)")
    add_flag(parser, "--max_new_tokens", type=int, default=None,
             help="greedy generation budget per question (default: the config's protocol, 64 in the packaged rows)")
    add_flag(parser, "--report_only", action="store_true",
             help="rewrite the table, plot and report from the stages already done; run nothing")


def run(args) -> int:
    from obliviate.bench.plan import run_bench
    from obliviate.bench.rows import load_spec, select_rows

    spec = load_spec(args.config)
    for name in PROTOCOL_FLAGS:
        value = getattr(args, name, None)
        if value is not None:
            if name in ("ds_size", "max_new_tokens") and value < (0 if name == "ds_size" else 1):
                raise UserError(f"--{name} {value}: expected a positive integer")
            spec.given[name] = (f"--{name}", value, "")  # errors name the flag, not the file's key
            if name in ("data", "target", "oracle"):
                value = str(Path(value))
            setattr(spec.protocol, name, None if (name == "ds_size" and value == 0) else value)
    rows = select_rows(spec, args.methods)
    started = time.perf_counter()

    def echo(line: str) -> None:
        print(f"{time.strftime('%H:%M:%S')} {line}", flush=True)

    echo(f"[bench] {len(rows)} row(s) from {spec.source} into {args.output_dir}")
    results = run_bench(spec, rows, args.output_dir, echo=echo, report_only=getattr(args, "report_only", False))
    echo(f"[bench] finished in {(time.perf_counter() - started) / 60:.1f} min: {results['root']}/bench_table.md")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(prog="obliviate bench", description=__doc__.split("\n")[0], formatter_class=HelpFormatter)
    add_arguments(parser)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    try:
        return run(args)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except OSError as error:
        print(f"error: {os_error_line(error)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
