"""The run config's value checks: `validate(config)` refuses values no run can use, naming the
dotted key and what is expected (a registered section adds its own through `checks()`)."""

from __future__ import annotations

import math
import re

from obliviate.credentials import check_key_settings
from obliviate.errors import UserError
from obliviate.io import short_repr
from obliviate.methods import registry
from obliviate.prompt_formats import format_check

REPORT_TO = ("none", "tensorboard", "wandb")
#: transformers schedulers that run without lr_scheduler_kwargs or an eval loop (cosine_with_min_lr,
#: warmup_stable_decay and reduce_lr_on_plateau need them, which a run config does not pass)
SCHEDULERS = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup",
              "inverse_sqrt")


def validate(config) -> None:
    """Refuse values no run can use, naming the dotted key and what is expected."""
    checks = [
        (config.method in registry.methods(), "method", f"one of {', '.join(registry.methods())}"),
        (bool(str(config.output_dir).strip()), "output_dir", "a directory path (empty would write into the current "
                                                               "directory)"),
        (re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", config.device) is not None, "device",
         "auto, cpu, cuda, cuda:N or mps"),
        format_check(config.prompt_format, "prompt_format"),
        (config.train.learning_rate > 0, "train.learning_rate", "a positive number"),
        (config.train.batch_size >= 1, "train.batch_size", "an integer >= 1"),
        (config.train.gradient_accumulation_steps >= 1, "train.gradient_accumulation_steps", "an integer >= 1"),
        (config.train.num_epochs > 0 or config.train.max_steps > 0, "train.num_epochs", "a positive number"),
        (math.isfinite(config.train.max_grad_norm) and config.train.max_grad_norm >= 0, "train.max_grad_norm",
         "a number >= 0 (0: no clipping)"),
        (config.train.max_length >= 16, "train.max_length", "an integer >= 16"),
        (config.train.precision in ("auto", "bf16", "fp32"), "train.precision", "auto, bf16 or fp32"),
        (config.train.lr_scheduler in SCHEDULERS, "train.lr_scheduler", f"one of {', '.join(SCHEDULERS)}"),
        (config.train.logging_steps >= 1, "train.logging_steps", "an integer >= 1"),
        (config.objective.beta > 0, "objective.beta", "a positive number (NPO / SimNPO / IDK-DPO divide by it)"),
        (config.objective.rmu_layer >= -1, "objective.rmu_layer", "-1 (WMDP's relative depth) or a layer index >= 0"),
        (config.objective.retain_loss in ("nll", "kl", "none"), "objective.retain_loss", "nll, kl or none"),
        (config.objective.refusal_draw in ("each_epoch", "once", "own"), "objective.refusal_draw",
         "each_epoch, once or own"),
        (config.objective.kl_positions in ("answer", "all"), "objective.kl_positions", "answer or all"),
        (config.objective.rmu_tokens in ("answer", "all"), "objective.rmu_tokens", "answer or all"),
        (config.objective.rmu_train_modules in ("down_proj", "mlp", "all"), "objective.rmu_train_modules",
         "down_proj, mlp or all"),
        (config.generation.backend in ("local", "openai", "template"), "generation.backend",
         "local, openai or template"),
        (config.train.lora.r >= 1, "train.lora.r", "an integer >= 1"),
        (0 <= config.train.lora.dropout < 1, "train.lora.dropout", "a number in [0, 1)"),
        (bool(config.train.report_to) and set(config.train.report_to.split(",")) <= set(REPORT_TO),
         "train.report_to", f"{', '.join(REPORT_TO)} (or a comma list of them)"),
    ]
    for name, section in config.sections.items():  # a section may declare checks() -> [(ok, field, expected)]
        checks += [(ok, f"{name}.{key}", expected) for ok, key, expected in getattr(section, "checks", list)()]
    check_key_settings(config.generation.base_url, config.generation.api_key_env, "generation.base_url",
                       "generation.api_key_env")  # no key in config.yaml; the message never shows one
    for ok, key, expected in checks:
        if not ok:
            value = config.to_dict()
            for part in key.split("."):
                value = value[part]
            raise UserError(f"config key '{key}' = {short_repr(value)} is invalid; expected {expected}")
