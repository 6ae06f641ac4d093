"""The `obliviate` command line (also `python -m obliviate`).

Examples:
  obliviate demo                                     # the built-in demo, offline, on the default model
  obliviate unlearn --config examples/graddiff.yaml --method npo --learning_rate 2e-5 --output_dir runs/npo
  obliviate unlearn --method ulmr --request src/obliviate/data/demo/demo_request.json --output_dir runs/ulmr ulmr.alpha=0.5
  obliviate unlearn --config examples/graddiff.yaml --resume   # continue a killed run from its last checkpoint
  obliviate finetune --model smollm2-135m-instruct --request src/obliviate/data/demo/demo_request.json --output_dir runs/taught
  obliviate eval --model runs/ulmr/model --data ../shared/data/tofu --forget_split forget01  # -> runs/ulmr/eval-tofu
  obliviate eval --benchmark rwku --help             # that benchmark's own options
  obliviate model info smollm2-135m-instruct
  obliviate <command> --help                         # every option, its default and its choices

Options use the transformers / TRL names with underscores (--learning_rate, --output_dir); the
older --kebab-case spellings still work. Bad input (files, fields, config keys, flags, model
names) gets one line on stderr and exit status 2.
"""

from __future__ import annotations

import sys

from obliviate.cli_args import HelpFormatter, OneLineParser
from obliviate.errors import UserError, os_error_line, write_failure_line


def _commands(benchmark: str) -> dict:
    """name -> (help, add_arguments(parser), run(args)); one entry per subcommand."""
    from obliviate import cli_eval, cli_run, cli_tools
    from obliviate.bench import cli as cli_bench

    return {
        "demo": ("teach, unlearn (ULMR) and score the built-in request on the default model",
                 cli_tools.add_demo, cli_tools.run_demo),
        "data": ("inspect unlearning requests and data files", cli_tools.add_data, cli_tools.run_data),
        "model": ("inspect models", cli_tools.add_model, cli_tools.run_model),
        "unlearn": ("run an unlearning method", lambda p: cli_run.add_arguments(p, "unlearn"),
                    lambda a: cli_run.run(a, "unlearn")),
        "finetune": ("plain fine-tuning (teach facts, retrain)", lambda p: cli_run.add_arguments(p, "finetune"),
                     lambda a: cli_run.run(a, "finetune")),
        "eval": ("evaluate a model on a benchmark", lambda p: cli_eval.add_arguments(p, benchmark), cli_eval.run),
        "probe": ("rank RWKU targets by how much a model knows them (before unlearning)",
                  cli_tools.add_probe, cli_tools.run_probe),
        "bench": ("compare methods on TOFU: target, retraining oracle, every method, one table, plot and report",
                  cli_bench.add_arguments, cli_bench.run),
    }


def _parser(commands: dict) -> OneLineParser:
    from obliviate import __version__

    parser = OneLineParser(prog="obliviate", description=__doc__.split("\n")[0],
                           epilog="\n".join(__doc__.split("\n")[2:]), formatter_class=HelpFormatter)
    parser.add_argument("--version", action="version", version=f"obliviate {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{" + ",".join(commands) + "}")
    for name, (helptext, add_arguments, _) in commands.items():
        command = sub.add_parser(name, help=helptext, description=helptext, formatter_class=HelpFormatter)
        add_arguments(command)
    return parser


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
    from obliviate.cli_eval import benchmark_of
    from obliviate.versions import check_versions

    argv = sys.argv[1:] if argv is None else list(argv)
    if argv == ["--version"]:  # without importing torch and transformers
        from obliviate import __version__

        print(f"obliviate {__version__}")
        return 0
    try:
        check_versions()  # before the parser imports the benchmarks: an old library gets one line, not a traceback
        commands = _commands(benchmark_of(argv))
        args = _parser(commands).parse_args(argv)  # usage errors exit 2 themselves (SystemExit passes below)
        _log_progress()
        return commands[args.command][2](args)
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


if __name__ == "__main__":
    sys.exit(main())
