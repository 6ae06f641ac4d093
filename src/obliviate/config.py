"""Typed run configuration: one YAML file per run, every field overridable as `key=value`.

    obliviate unlearn --config run.yaml method=npo train.learning_rate=2e-5 train.lora.enabled=true

Layers, lowest first: the generic defaults, the method's presets (methods/registry.py), `base`,
the YAML file, the `key=value` overrides; so a value the user sets always wins, also when it
equals the generic default. Methods add their own sections (`ulmr:`) through the registry.
Unknown keys and values of the wrong type are refused with the key's dotted name. The resolved
configuration is saved in the run directory (`config.yaml`).

The names users know from transformers / TRL are accepted too (HF_NAMES): as command-line flags
(`--learning_rate 2e-5`), as `api.unlearn(..., num_train_epochs=1)` keywords, and, for the two
TrainingArguments names we do not use as keys, as aliases inside `train:` (`num_train_epochs`
-> `num_epochs`, `per_device_train_batch_size` -> `batch_size`). The saved config uses our keys.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import Any

import yaml

from obliviate.config_checks import validate
from obliviate.errors import UserError
from obliviate.io import flatten_keys, parse_yaml, read_user_text, short_repr
from obliviate.methods import registry


@dataclass
class LoraConfig:
    enabled: bool = False
    r: int = 8
    alpha: int = 16
    dropout: float = 0.0
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])


@dataclass
class TrainConfig:
    learning_rate: float = 1e-5
    num_epochs: float = 5.0
    max_steps: int = -1  # > 0 overrides num_epochs
    batch_size: int = 4  # per device; forget and retain batches each have this size
    gradient_accumulation_steps: int = 1
    max_length: int = 256
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0  # clip the gradient norm to this (TrainingArguments' default); 0: never clip
    warmup_ratio: float = 0.0
    lr_scheduler: str = "linear"
    precision: str = "auto"  # auto: bf16 autocast where the hardware has it, else fp32; or bf16 / fp32
    save_steps: int = 0  # checkpoint every N optimiser steps (0: once per epoch; < 0: never)
    save_total_limit: int = 2
    logging_steps: int = 5
    gradient_checkpointing: bool = False
    report_to: str = "none"  # none | tensorboard | wandb (comma-separated for several): TrainingArguments.report_to
    torch_compile: bool = False  # torch.compile each decoder layer (training_compile.py); pays on CUDA, long runs
    optim: str = "auto"  # auto: adamw_torch_fused on CUDA, adamw_torch elsewhere; or any TrainingArguments optim
    packing: bool = False  # answer-token losses run a batch as one row of its tokens, no padding (TRL's packing)
    shared_forward: bool = False  # one forward pass for a step's forget and retain answers (objectives.shared_slots)
    lora: LoraConfig = field(default_factory=LoraConfig)


@dataclass
class ObjectiveConfig:
    """Knobs of the losses (METHODS.md section E); each objective reads the ones it needs."""

    forget_weight: float = 1.0  # gamma
    retain_weight: float = 1.0  # alpha
    retain_loss: str = "nll"  # nll | kl | none: the retain term added to forget losses
    beta: float = 0.1  # NPO / DPO temperature (SimNPO: 4.5)
    delta: float = 0.0  # SimNPO margin
    refusals: str | None = None  # file of refusal strings for IDK-DPO / RT (default: built-in list)
    refusal_draw: str = "each_epoch"  # each_epoch: drawn afresh per epoch (the reference) | once | own (RWKU's RT)
    kl_positions: str = "answer"  # KL terms over answer tokens | all: every padded position (open-unlearning)
    rmu_layer: int = -1  # -1: round(7/32 x depth), WMDP's layer 7 of 32 (objectives/rmu.py); else a layer index
    rmu_steering_coeff: float = 6.5
    rmu_alpha: float = 1200.0
    rmu_train_layers: list[int] = field(default_factory=list)  # default: rmu_layer and the two below
    rmu_tokens: str = "answer"  # answer: both terms on answer tokens (WMDP/open-unlearning) | all
    rmu_train_modules: str = "down_proj"  # down_proj: MLP output projection (WMDP) | mlp | all: up to layer l


@dataclass
class GenerationConfig:
    backend: str = "local"  # local (the model being unlearned) | openai | template
    model: str | None = None  # openai: model name; local: another model to generate with
    base_url: str = "http://127.0.0.1:8000/v1"
    api_key_env: str = "OPENAI_API_KEY"
    max_concurrency: int = 4
    timeout_s: float = 60.0
    max_new_tokens: int = 96
    temperature: float = 0.0
    batch_size: int = 16


@dataclass
class RunConfig:
    model: str = "smollm2-135m-instruct"
    request: str | None = None  # request file or data file; none: the built-in demo request
    method: str = "graddiff"
    output_dir: str = "runs/latest"
    seed: int = 42
    trust_remote_code: bool = False
    device: str = "auto"  # auto (CUDA, else MPS, else CPU) | cpu | cuda | cuda:N | mps
    prompt_format: str = "auto"  # auto: the chat template | open-unlearning's tags (prompt_formats.py)
    train: TrainConfig = field(default_factory=TrainConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    sections: dict[str, Any] = field(default_factory=dict)  # the methods' own sections (ulmr, ...)

    def __post_init__(self):
        for name, cls in registry.sections().items():  # every registered section, defaults if unset
            self.sections.setdefault(name, cls())

    def __getattr__(self, name: str):
        """`config.ulmr.alpha`: a method's section reads like a built-in one."""
        sections = self.__dict__.get("sections")
        if sections is not None and name in sections:
            return sections[name]
        raise AttributeError(f"RunConfig has no field or section '{name}'")

    def to_dict(self) -> dict:
        data = {f.name: dataclasses.asdict(getattr(self, f.name)) if dataclasses.is_dataclass(getattr(self, f.name))
                else getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "sections"}
        return {**data, **{name: dataclasses.asdict(section) for name, section in self.sections.items()}}


#: transformers / TRL names -> our dotted config keys (the CLI's flags, api.unlearn's keywords).
HF_NAMES = {
    "learning_rate": "train.learning_rate",
    "num_train_epochs": "train.num_epochs",
    "max_steps": "train.max_steps",
    "per_device_train_batch_size": "train.batch_size",
    "gradient_accumulation_steps": "train.gradient_accumulation_steps",
    "max_grad_norm": "train.max_grad_norm",
    "output_dir": "output_dir",
    "use_peft": "train.lora.enabled",
    "lora_r": "train.lora.r",
    "lora_alpha": "train.lora.alpha",
    "seed": "seed",
    "report_to": "train.report_to",
    "torch_compile": "train.torch_compile",
    "optim": "train.optim",
    "packing": "train.packing",
    "model_name_or_path": "model",
}
#: aliases accepted inside `train:` (the TrainingArguments names), stored under our names
TRAIN_ALIASES = {"num_train_epochs": "num_epochs", "per_device_train_batch_size": "batch_size"}
def canonical_key(dotted: str) -> str:
    """The dotted key under our names: `train.num_train_epochs` -> `train.num_epochs` (TRAIN_ALIASES)."""
    section, _, name = dotted.partition(".")
    return f"train.{TRAIN_ALIASES[name]}" if section == "train" and name in TRAIN_ALIASES else dotted


def _coerce(value, annotation, key: str):
    """Check and convert one value to the field's type; UserError names the dotted key."""
    hints = typing.get_args(annotation) if isinstance(annotation, types.UnionType) else (annotation,)
    if value is None:
        if type(None) in hints:
            return None
        raise UserError(f"config key '{key}' cannot be null; give a value")
    for hint in hints:
        if hint is type(None):
            continue
        origin = typing.get_origin(hint)
        if origin is list:
            (inner,) = typing.get_args(hint)
            if isinstance(value, str):
                value = [v.strip() for v in value.split(",") if v.strip()]
            if not isinstance(value, list):
                raise UserError(f"config key '{key}': expected a list, got {short_repr(value)}")
            return [_coerce(v, inner, key) for v in value]
        if hint is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no"):
                return value.lower() in ("true", "yes")
        elif hint is int:
            if isinstance(value, int) and not isinstance(value, bool):
                return value
        elif hint is float:
            number = _as_float(value)
            if number is not None:
                if not math.isfinite(number):  # inf passes `> 0` checks and ends in NaN weights
                    raise UserError(f"config key '{key}': expected a finite number, got {short_repr(value)}")
                return number
        elif hint is str:
            if isinstance(value, (str, int, float, PurePath)) and not isinstance(value, bool):
                return str(value)
    names = "/".join(getattr(h, "__name__", str(h)) for h in hints if h is not type(None))
    raise UserError(f"config key '{key}': expected {names}, got {short_repr(value)}")


def _as_float(value) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            return float(value)
        except OverflowError:  # an integer too large for a float
            return math.inf
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def _build(cls, data: dict, prefix: str = "", extra: dict[str, type] | None = None):
    """An instance of dataclass `cls` from a mapping; `extra` adds sections (name -> dataclass)
    that are collected into the `sections` field (RunConfig's method sections)."""
    if not isinstance(data, dict):
        raise UserError(f"config key '{prefix.rstrip('.') or '<root>'}': expected a mapping, got {short_repr(data)}")
    hints = typing.get_type_hints(cls)
    extra = extra or {}
    known = {f.name for f in dataclasses.fields(cls)} - {"sections"} | set(extra)
    for key in data:
        if key not in known:
            raise UserError(
                f"config key '{prefix}{_printable(key)}' is not known; allowed under "
                f"'{prefix.rstrip('.') or '<root>'}': {', '.join(sorted(known))}"
            )
    values, sections = {}, {}
    for name, value in data.items():
        if name in extra:
            sections[name] = _build(extra[name], value or {}, f"{prefix}{name}.")
        elif dataclasses.is_dataclass(hints[name]):
            values[name] = _build(hints[name], value or {}, f"{prefix}{name}.")
        else:
            values[name] = _coerce(value, hints[name], f"{prefix}{name}")
    if extra:
        values["sections"] = sections
    return cls(**values)


def _set_dotted(data: dict, dotted: str, value) -> None:
    keys = dotted.split(".")
    node = data
    for key in keys[:-1]:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise UserError(f"config override '{dotted}': '{key}' is not a section")
    node[keys[-1]] = value


def load_config(path: str | Path | None = None, overrides: list = (), base: dict | None = None) -> RunConfig:
    """Defaults <- method presets <- `base` <- YAML file <- overrides, then validated. An override
    is `key=value` text or a (dotted key, value) pair (the CLI's flags, api.unlearn's keywords)."""
    data: dict = {}
    for key, value in (base or {}).items():
        _set_dotted(data, key, value)
    written: set[str] = set()  # keys the user's file sets
    if path is not None:
        file_data = _train_aliases(_read_yaml(Path(path)), str(path))
        written = set(flatten_keys(file_data))
        _merge(data, file_data)
    spelled: dict[str, str] = {}  # key under our names -> how an override spelled it
    for override in overrides:
        key, value = override if isinstance(override, tuple) else _parse_override(override)
        for dotted, leaf in _leaves(key, value) if isinstance(override, tuple) else [(key, value)]:
            name = canonical_key(dotted)
            if spelled.setdefault(name, dotted) != dotted:
                raise UserError(f"overrides '{spelled[name]}' and '{dotted}' name the same setting; keep one")
            _set_dotted(data, name, leaf)
    method = data.get("method", RunConfig.__dataclass_fields__["method"].default)
    if not isinstance(method, str) or method not in registry.methods():
        raise UserError(f"config key 'method' = {short_repr(method)} is invalid; expected one of "
                        f"{', '.join(registry.methods())}")
    merged: dict = {}
    presets = registry.presets_under(method, data, set(spelled) | written)
    for key, value in presets.items():  # under everything the user set
        _set_dotted(merged, key, value)
    _merge(merged, data)
    config = _build(RunConfig, merged, extra=registry.sections())
    validate(config)
    return config


def _parse_override(override: str) -> tuple[str, Any]:
    """`key=value`: the value read as YAML (aliases refused, numbers bounded), else as text."""
    if "=" not in override:
        raise UserError(f"override {short_repr(override)}: expected key=value, e.g. train.learning_rate=2e-5")
    try:
        override.encode("utf-8")
    except UnicodeEncodeError:  # undecodable bytes from the command line (surrogate escapes)
        raise UserError(f"override {short_repr(override)}: not valid UTF-8 text; retype it") from None
    key, raw = override.split("=", 1)
    if len(key) > 200 or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*", key.strip()):
        raise UserError(f"override {short_repr(override)}: '{short_repr(key)}' is not a dotted config key")
    try:
        value = parse_yaml(raw, f"override {key.strip()}") if raw else ""
    except UserError:
        value = raw  # not YAML (e.g. `a: b: c`): the text itself
    return key.strip(), value


def _read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise UserError(f"{path}: no such config file; check the path")
    loaded = parse_yaml(read_user_text(path), str(path))
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise UserError(f"{path}: expected a mapping of config keys at the top level")
    if not all(isinstance(key, str) for key in loaded):
        raise UserError(f"{path}: every top-level key must be a string")
    return loaded


def _leaves(key: str, value) -> list[tuple[str, Any]]:
    """(`ulmr`, {"alpha": 0.5}) -> [(`ulmr.alpha`, 0.5)]: a section given as a mapping sets its keys."""
    if not isinstance(value, dict) or not value:
        return [(key, value)]
    return [leaf for name, inner in value.items() for leaf in _leaves(f"{key}.{name}", inner)]


def _train_aliases(data: dict, where: str) -> dict:
    """`train.num_train_epochs` -> `train.num_epochs` (TRAIN_ALIASES); both at once is refused."""
    train = data.get("train")
    if not isinstance(train, dict):
        return data
    for alias, name in TRAIN_ALIASES.items():
        if alias in train:
            if name in train:
                raise UserError(f"{where}: 'train.{alias}' and 'train.{name}' name the same setting; keep one")
            train[name] = train.pop(alias)
    return data


def _merge(into: dict, new: dict) -> None:
    for key, value in new.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = value


def save_config(config: RunConfig, path: Path) -> None:
    from obliviate.io import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(config.to_dict(), sort_keys=False))


def _printable(key) -> str:
    """A key as one short line: control characters escaped, at most 80 characters."""
    text = str(key)
    return (text if text.isprintable() else repr(text)[1:-1])[:80]


def load_eval_config(source: str | Path | dict) -> dict:
    """An evaluation's settings (`obliviate eval --config`, `api.evaluate(config=)`): a YAML file
    (or mapping) with an `eval:` section, or a flat mapping; keys are `benchmark`, `model`,
    `output_dir`, `device`, `precision`, `trust_remote_code` and the benchmark's own options
    (checked by the benchmark, which names an unknown one). A copy; `-` in a key reads as `_`."""
    where = "eval config" if isinstance(source, dict) else str(source)
    data = source if isinstance(source, dict) else _read_yaml(Path(source))
    if "eval" in data:
        data = data["eval"]
        if not isinstance(data, dict):
            raise UserError(f"{where}: 'eval' must be a mapping of evaluation options, got {short_repr(data)}")
    return {str(key).replace("-", "_"): value for key, value in data.items()}
