"""`obliviate unlearn` and `obliviate finetune`: a run config YAML, the transformers / TRL flags
(config.HF_NAMES: `--learning_rate` sets `train.learning_rate`) and dotted `key=value` overrides.

Precedence, lowest first: defaults, the method's presets, `--config`, the flags, `key=value`.
A flag and an override of the same key at once is refused (one line naming both)."""

from __future__ import annotations

import argparse

from obliviate.cli_args import add_bool_flag, add_flag, shown
from obliviate.config import RunConfig
from obliviate.config_checks import REPORT_TO
from obliviate.errors import UserError

EXAMPLES = {
    "unlearn": ("  obliviate unlearn --config examples/graddiff.yaml --method npo --learning_rate 2e-5 "
                "--output_dir runs/npo\n"
                "  obliviate unlearn --method graddiff --max_steps 2 --per_device_train_batch_size 2 "
                "--output_dir runs/try train.save_steps=-1\n"
                "  obliviate unlearn --config examples/graddiff.yaml --resume   # continue a killed run"),
    "finetune": ("  obliviate finetune --model smollm2-135m-instruct --num_train_epochs 1 --output_dir runs/taught\n"
                 "  obliviate finetune --max_steps 2 --use_peft --lora_r 4 --output_dir runs/lora train.save_steps=-1"),
}


def _default(key: str):
    node = RunConfig()
    for part in key.split("."):
        node = getattr(node, part)
    return node


def _flags(parser) -> None:
    """The transformers / TRL names; each sets the config key named in its help."""

    def flag(name, key, kind, helptext, **kwargs):
        add_flag(parser, f"--{name}", dest=f"flag.{key}", type=kind, default=argparse.SUPPRESS,
                 help=f"{helptext} [{key}] (config default: {shown(_default(key))})", **kwargs)

    flag("model", "model", str, "hub id, local directory or .gguf file (also --model_name_or_path)", metavar="MODEL")
    add_flag(parser, "--model_name_or_path", dest="flag.model", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    flag("request", "request", str, "request file or data file; unset: the built-in demo request", metavar="FILE")
    flag("output_dir", "output_dir", str, "the run directory", metavar="DIR")
    flag("learning_rate", "train.learning_rate", float, "peak learning rate", metavar="LR")
    flag("num_train_epochs", "train.num_epochs", float, "epochs over the forget set", metavar="N")
    flag("max_steps", "train.max_steps", int, "optimiser steps; > 0 overrides num_train_epochs", metavar="N")
    flag("per_device_train_batch_size", "train.batch_size", int, "forget (and retain) examples per batch",
         metavar="N")
    flag("gradient_accumulation_steps", "train.gradient_accumulation_steps", int, "batches per optimiser step",
         metavar="N")
    flag("max_grad_norm", "train.max_grad_norm", float, "clip the gradient norm to this; 0: never clip",
         metavar="NORM")
    add_bool_flag(parser, "use_peft", dest="flag.train.lora.enabled", default=argparse.SUPPRESS,
                  help="train LoRA adapters (merged into the saved model) [train.lora.enabled] (config default: "
                       "false); --no_use_peft turns it off")
    flag("lora_r", "train.lora.r", int, "LoRA rank", metavar="R")
    flag("lora_alpha", "train.lora.alpha", int, "LoRA scaling alpha", metavar="A")
    flag("seed", "seed", int, "random seed", metavar="N")
    # no argparse choices: a comma list (tensorboard,wandb) is valid, as for the dotted key; the
    # config's check tells a bad name
    flag("report_to", "train.report_to", str, f"training logs to: {' | '.join(REPORT_TO)}, or a comma list "
         "of them", metavar="NAME[,NAME]")
    add_bool_flag(parser, "torch_compile", dest="flag.train.torch_compile", default=argparse.SUPPRESS,
                  help="torch.compile each decoder layer [train.torch_compile] (config default: false)")
    add_bool_flag(parser, "packing", dest="flag.train.packing", default=argparse.SUPPRESS,
                  help="answer-token losses run each batch as one row of its tokens, no padding; pays "
                       "with flash_attention_2 [train.packing] (config default: false)")
    add_bool_flag(parser, "shared_forward", dest="flag.train.shared_forward", default=argparse.SUPPRESS,
                  help="the forget and retain answers a loss reads come from one forward pass; for GPUs where "
                       "the host bounds a step [train.shared_forward] (config default: false)")
    flag("optim", "train.optim", str, "optimizer: auto (fused AdamW on CUDA) or a TrainingArguments optim name",
         metavar="NAME")
    flag("device", "device", str, "auto (CUDA, else MPS, else CPU), cpu, cuda, cuda:N or mps", metavar="DEVICE")


def add_arguments(parser, command: str) -> None:
    from obliviate.methods.registry import methods

    parser.add_argument("--config", metavar="YAML", help="run config YAML (docs/configuration.md)")
    if command == "unlearn":
        parser.add_argument("--method", choices=list(methods()), default=argparse.SUPPRESS,
                            help="the unlearning method [method] (config default: graddiff)")
    _flags(parser)
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in output_dir from its last checkpoint (the config must match "
                             "the saved config.yaml but for save/log/device settings)")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="any config key, dotted: train.learning_rate=2e-5 train.lora.enabled=true ulmr.alpha=0.5")
    listing = ""
    if command == "unlearn":
        listing = "methods:\n" + "\n".join(f"  {name:<10} {m.summary}" for name, m in methods().items()) + "\n\n"
        listing += _presets_listing(methods())
    parser.epilog = f"{listing}examples:\n{EXAMPLES[command]}"


def _presets_listing(registered: dict) -> str:
    """What each method changes from the defaults shown above (a value you set wins)."""
    lines = [f"  {name:<10} " + ", ".join(f"{key}={shown(value)}" for key, value in m.presets.items())
             for name, m in registered.items() if m.presets]
    return ("presets (a method's own defaults, under your values; the defaults above are the generic ones):\n"
            + "\n".join(lines) + "\n\n") if lines else ""


def run(args, command: str) -> int:
    from obliviate.api import unlearn
    from obliviate.config import _parse_override, canonical_key, load_config

    flags = [(key.split(".", 1)[1], value) for key, value in vars(args).items() if key.startswith("flag.")]
    if command == "finetune":
        flags.insert(0, ("method", "finetune"))
    elif getattr(args, "method", None):
        flags.insert(0, ("method", args.method))
    given = {key: value for key, value in flags}
    for override in args.overrides:
        key = canonical_key(_parse_override(override)[0])
        if command == "finetune" and key == "method":
            raise UserError(f"'{override}': finetune always trains plain fine-tuning; drop it, or run "
                            "`obliviate unlearn` for another method")
        if key in given:
            raise UserError(f"'{override}' and the flag for '{key}' (= {given[key]!r}) set the same config key; "
                            "keep one")
    config = load_config(args.config, [*flags, *args.overrides])
    result = unlearn(config, resume=args.resume)
    print(f"[obliviate] done: {result.run_dir}")
    return 0
