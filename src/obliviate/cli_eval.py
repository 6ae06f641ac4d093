"""`obliviate eval`: the common options, `--config eval.yaml`, and the chosen benchmark's own
options (each benchmark declares them; `--benchmark X --help` lists them).

Precedence, lowest first: defaults, the `--config` file (an `eval:` section or a flat mapping),
the command line. Without `--output_dir` the results go inside the run for a run's model
(`runs/x/model` -> `runs/x/eval-tofu`), else to `runs/eval-<model>-<benchmark>`; a folder that
already holds results is never reused: the next evaluation gets `-2`, `-3`, ... (api.evaluate).
Under `accelerate launch --num_processes N -m obliviate eval ...` the processes share the work
(evaluation.distributed) and process 0 writes and prints the results."""

from __future__ import annotations

import argparse
import dataclasses

from obliviate.cli_args import add_bool_flag, add_flag, shown
from obliviate.errors import UserError

EXAMPLES = """examples:
  obliviate eval --benchmark tofu --model runs/npo/model --data ../shared/data/tofu --forget_split forget01
  obliviate eval --config examples/eval_tofu.yaml --model smollm2-135m-instruct --ds_size 20
  obliviate eval --benchmark request --request my_request.yaml --model runs/npo/model --base_model smollm2-135m-instruct
  obliviate eval --benchmark rwku --help     # that benchmark's own options"""


def add_arguments(parser, benchmark: str) -> None:
    from obliviate.evaluation.registry import benchmarks

    known = benchmarks()
    listing = "benchmarks:\n" + "\n".join(f"  {name:<10} {b.summary}" for name, b in known.items())
    parser.epilog = f"{listing}\n\n{EXAMPLES}"
    parser.add_argument("--benchmark", choices=list(known), default=None, help="the benchmark (default: tofu)")
    parser.add_argument("--model", default=None, help="hub id, local directory or .gguf file (required here "
                        "or as model: in --config)")
    parser.add_argument("--config", metavar="YAML", default=None,
                        help="eval config: an 'eval:' section or a flat mapping of these options")
    add_flag(parser, "--output_dir", default=None, metavar="DIR",
             help="default: runs/x/eval-<benchmark> for runs/x/model, else runs/eval-<model>-<benchmark>; "
                  "numbered -2, -3, ... when it already holds results")
    parser.add_argument("--device", default=None, help="auto (CUDA, else MPS, else CPU), cpu, cuda, cuda:N, mps "
                        "(default: auto)")
    parser.add_argument("--precision", default=None, metavar="{auto,bf16,fp32}",
                        help="auto: bf16 autocast where fast, else fp32 (default: auto)")
    add_bool_flag(parser, "trust_remote_code", dest="trust_remote_code", default=None,
                  help="run the model repository's own code (default: false)")
    if benchmark not in known:
        return  # argparse refuses the name with the list of choices
    group = parser.add_argument_group(f"{benchmark} options (from --benchmark {benchmark})")
    for option in dataclasses.fields(known[benchmark].options):
        helptext = option.metadata.get("help", "")
        if "default" not in helptext:
            helptext += f" (default: {shown(option.default)})"
        if option.type in (bool, "bool"):
            add_bool_flag(group, option.name, dest=f"option.{option.name}", default=argparse.SUPPRESS, help=helptext)
        else:
            choices = option.metadata.get("choices")
            add_flag(group, f"--{option.name}", dest=f"option.{option.name}", default=argparse.SUPPRESS,
                     metavar="{" + ",".join(choices) + "}" if choices else option.name.upper(), help=helptext)


def benchmark_of(argv: list[str]) -> str:
    """The --benchmark named on the command line, else in the --config file, else tofu (it decides
    which options `eval` takes). A bad config file is reported later, by the evaluation."""
    from obliviate.config import load_eval_config

    named = _option_value(argv, "--benchmark")
    if named is not None:
        return named
    config = _option_value(argv, "--config")
    if config is not None:
        try:
            return str(load_eval_config(config).get("benchmark", "tofu"))
        except (UserError, OSError):
            pass
    return "tofu"


def _option_value(argv: list[str], flag: str) -> str | None:
    for i, arg in enumerate(argv):
        if arg == flag and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
    return None


def run(args) -> int:
    from obliviate.api import evaluate
    from obliviate.config import load_eval_config
    from obliviate.evaluation.distributed import launched
    from obliviate.evaluation.registry import get_benchmark

    model = args.model or (load_eval_config(args.config).get("model") if args.config else None)
    if not model:
        raise UserError("eval: no model to evaluate; pass --model NAME_OR_DIR or set 'model:' in the --config file")
    options = {key.split(".", 1)[1]: value for key, value in vars(args).items() if key.startswith("option.")}
    result = evaluate(str(model), benchmark=args.benchmark, output_dir=args.output_dir, device=args.device,
                      precision=args.precision, trust_remote_code=args.trust_remote_code, config=args.config,
                      progress=False, **options)
    if not result.paths and launched():
        return 0  # under `accelerate launch`, process 0 writes and reports
    print(get_benchmark(result.benchmark).render(result.envelope))
    print(f"[obliviate] results: {result.output_dir}")
    return 0
