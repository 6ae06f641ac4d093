"""The benchmark registry: ``obliviate eval --benchmark X`` and ``api.evaluate`` dispatch here.

A benchmark is one module that loads its data, plans its prompts, scores them with the
shared engine (:mod:`obliviate.evaluation.engine`), aggregates, writes its files and returns
a result envelope (:mod:`obliviate.evaluation.results`). It plugs in with one line,
``register_benchmark(Benchmark(...))``, at import; the built-in ones are imported by
:mod:`obliviate.evaluation.benchmarks` on first use of the registry.

A benchmark's options are a dataclass: each field has a default and ``metadata={"help":
...}``; field names are the API keyword arguments and the CLI flags (``forget_split`` ->
``--forget-split``); types are ``str``, ``int``, ``float``, ``bool`` or ``X | None`` of those.
Two more metadata keys: ``"min"``, the smallest value of an int option (default 1: sizes and
counts), and ``"comma_list": True``, a str option that is a comma-separated list, given also as
an int or a list of str / int (API, YAML), kept a list (RWKU's ``targets: [1, 2]``).
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from obliviate.builtin_modules import BuiltinModules
from obliviate.errors import RegistrationError, UserError
from obliviate.io import short_repr

SCALARS = (str, int, float, bool)
TRUE, FALSE, NONE = ("true", "1", "yes", "on"), ("false", "0", "no", "off"), ("none", "null", "")


@dataclass(frozen=True)
class Benchmark:
    name: str
    summary: str  # one line for `obliviate eval --help`
    options: type  # a dataclass of the benchmark's options (module docstring)
    run: Callable[..., dict]  # run(model, tokenizer, options, *, out_dir, model_name, precision) -> envelope
    render: Callable[[dict], str]  # the Markdown report of an envelope
    #: check(options): UserError for what the options alone show is wrong (a local data path that
    #: is not there), called before the model loads; None: nothing to check
    check: Callable[[Any], None] | None = None


def missing_path(value: str | None, where: str, what: str) -> None:
    """UserError when ``value`` (an option naming a local file or folder) does not exist."""
    if value is not None and not Path(value).expanduser().exists():  # the readers expand ~ too
        raise UserError(f"{where}: {value}: no such {what}; check the path")


def decode_option():
    """The `decode` option every generating benchmark declares (engine.settings.DECODES)."""
    from obliviate.evaluation.engine.settings import DECODES

    return dataclasses.field(default="auto", metadata={
        "choices": DECODES,
        "help": "greedy decoding path: auto (static on CUDA, plain elsewhere) | plain | static (fixed shapes, "
                "a CUDA graph on CUDA; same outputs)"})


def decode_rows_option():
    """The `decode_batch_size` option every generating benchmark declares (engine.settings.decode_rows)."""
    return dataclasses.field(default=None, metadata={
        "unset": "the engine chooses",
        "help": "prompts decoded together (default: on a CPU at fp32 as many as fit 4 GiB of key/value cache "
                "and a quarter of the RAM, up to 256, never fewer than batch_size, which leaves fp32 outputs "
                "as they are; elsewhere and under bf16 batch_size, as bf16 rounding depends on the rows)"})


#: the least max_length a benchmark scores with: a shorter cut leaves MIA texts and answers nothing
#: to score (RWKU's max_length 1 wrote null MIA values); the floor of train.max_length too
MIN_LENGTH = 16


def max_length_option():
    """The `max_length` option of the QA benchmarks (TOFU, request): prompt + answer tokens scored."""
    return dataclasses.field(default=512, metadata={
        "min": MIN_LENGTH, "min_reason": "fewer tokens leave little or nothing to score; as train.max_length",
        "help": f"prompt + answer tokens kept per scored pair (at least {MIN_LENGTH})"})


def system_prompt_option():
    """The `system_prompt` option of the QA benchmarks."""
    return dataclasses.field(default=None, metadata={
        "help": "system prompt of the chat template (default: the template's own)"})


def scoring_option():
    """The `scoring` option of the QA benchmarks (prompts.SCORINGS)."""
    from obliviate.prompts import SCORINGS

    return dataclasses.field(default="answer", metadata={"choices": SCORINGS, "help": (
        "answer: answer + EOS (TOFU's definition) | chat_turn: the assistant turn as the chat template renders "
        "it (open-unlearning's)")})


def prompt_format_option():
    """The `prompt_format` option of the QA benchmarks (prompt_formats.py)."""
    from obliviate.prompt_formats import PRESETS

    return dataclasses.field(default="auto", metadata={"help": (
        "auto: the chat template (TOFU's 'Question: ...' without one) | open-unlearning's tags for the models it "
        f"prompts without the template, a preset ({', '.join(PRESETS)}) or text around {{question}}, e.g. "
        "'[INST] {question} [/INST]'")})


def cache_option():
    """The `cache` option of every benchmark that keeps per-item results (engine.result_cache)."""
    return dataclasses.field(default=True, metadata={
        "help": "keep per-item results in $OBLIVIATE_CACHE/eval so a rerun or resume skips finished work"})


_REGISTRY: dict[str, Benchmark] = {}
#: The module that registers the built-in benchmarks (evaluation/benchmarks.py).
BUILTIN = ("obliviate.evaluation.benchmarks",)
_BUILTINS = BuiltinModules()


def option_types(options: type) -> dict[str, tuple[type, bool]]:
    """``{field: (scalar type, accepts None)}`` of an options dataclass; TypeError for a field
    without a default or help text, or of a type the CLI cannot express."""
    if not dataclasses.is_dataclass(options):
        raise TypeError(f"benchmark options must be a dataclass, got {options!r}")
    hints = typing.get_type_hints(options)
    out = {}
    for field in dataclasses.fields(options):
        if field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            raise TypeError(f"{options.__name__}.{field.name} needs a default")
        if not field.metadata.get("help"):
            raise TypeError(f"{options.__name__}.{field.name} needs metadata={{'help': ...}}")
        kind = hints[field.name]
        args = typing.get_args(kind) if typing.get_origin(kind) in (typing.Union, types.UnionType) else (kind,)
        scalars = [a for a in args if a is not type(None)]
        if len(scalars) != 1 or scalars[0] not in SCALARS:
            raise TypeError(f"{options.__name__}.{field.name}: type {kind} is not str, int, float, bool or X | None")
        out[field.name] = (scalars[0], len(args) > len(scalars))
    return out


def register_benchmark(benchmark: Benchmark) -> Benchmark:
    """Add ``benchmark`` to the registry (its options are checked now); a second benchmark of
    the same name is refused. The built-ins load first, so a plugin taking a built-in's name is
    refused here rather than leaving the registry without the built-ins."""
    _BUILTINS.load(BUILTIN)
    if benchmark.name in _REGISTRY:
        raise RegistrationError(f"a benchmark named '{benchmark.name}' is registered already; "
                                "register yours under another name")
    option_types(benchmark.options)
    _REGISTRY[benchmark.name] = benchmark
    return benchmark


def benchmarks() -> dict[str, Benchmark]:
    """``{name: Benchmark}``, the built-in benchmarks loaded on first use."""
    _BUILTINS.load(BUILTIN)
    return dict(_REGISTRY)


def get_benchmark(name: str) -> Benchmark:
    """The benchmark called ``name``; UserError naming the known ones otherwise."""
    known = benchmarks()
    if name not in known:
        raise UserError(f"benchmark '{name}' is not known; use one of {', '.join(sorted(known))}")
    return known[name]


def _coerce(value: Any, kind: type, nullable: bool, label: str) -> Any:
    if value is None or (nullable and kind is not str and isinstance(value, str) and value.strip().lower() in NONE):
        if nullable:
            return None
        raise UserError(f"{label} must be {kind.__name__}, got None")
    if kind is str:
        if isinstance(value, (str, os.PathLike)):
            return os.fspath(value)
    elif kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in TRUE + FALSE:
            return value.strip().lower() in TRUE
    elif isinstance(value, bool):
        pass  # True is an int to Python, never a count or a rate here
    elif kind is int and (isinstance(value, int) or (isinstance(value, float) and value.is_integer())):
        return int(value)
    elif kind is float and isinstance(value, (int, float)):
        return float(value)
    elif isinstance(value, str):
        try:
            return kind(value.strip())
        except ValueError:
            pass
    expected = f"{kind.__name__} or None" if nullable else kind.__name__
    raise UserError(f"{label} must be {expected}, got {value!r}")


def _comma_list(value: Any, label: str) -> Any:
    """An int as its text; a list / tuple of str and int as a list (kept apart, not joined: a
    name may hold a comma, e.g. RWKU's 'Prince Harry, Duke of Sussex'); other values as they are
    (``_coerce`` judges them)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, (list, tuple)):
        bad = [v for v in value if isinstance(v, bool) or not isinstance(v, (str, int))]
        if bad or not value:
            raise UserError(f"{label} must be a str, an int or a non-empty list of them, got "
                            f"{short_repr(bad[0] if bad else value)}")
        return [v.strip() if isinstance(v, str) else v for v in value]
    return value


def build_options(benchmark: Benchmark, values: Mapping[str, Any], where: str = "option"):
    """An instance of ``benchmark.options`` from ``values`` (API keyword arguments or CLI
    strings; ``-`` in a key reads as ``_``): each value is type-checked and coerced (an int option
    is a size or count: below its ``metadata["min"]``, default 1, is refused; a field's
    ``metadata["choices"]`` lists its values; a ``metadata["comma_list"]`` option takes an int or a
    list too, kept a list), an
    unknown key is a one-line UserError naming it and the allowed keys. ``where`` names the keys in
    messages ("benchmark 'tofu' option 'x' ..."; the benchmark's name is added unless given)."""
    types_of = option_types(benchmark.options)
    metadata = {f.name: f.metadata for f in dataclasses.fields(benchmark.options)}
    where = where if f"'{benchmark.name}'" in where else f"benchmark '{benchmark.name}' {where}"
    kwargs = {}
    for key, value in values.items():
        name = str(key).replace("-", "_")
        if name not in types_of:
            raise UserError(f"{where} {short_repr(str(key))} is not known; use one of {', '.join(types_of)}")
        kind, nullable = types_of[name]
        if kind is str and metadata[name].get("comma_list"):
            value = _comma_list(value, f"{where} '{key}'")
            if isinstance(value, list):
                kwargs[name] = value
                continue
        kwargs[name] = _coerce(value, kind, nullable, f"{where} '{key}'")
        least = metadata[name].get("min", 1)  # sizes and counts; 0 would mean nothing
        if kind is int and kwargs[name] is not None and kwargs[name] < least:
            bound = "a positive integer" if least == 1 else f"an integer >= {least}"
            reason = f" ({metadata[name]['min_reason']})" if metadata[name].get("min_reason") else ""
            raise UserError(f"{where} '{key}' = {kwargs[name]} must be {bound}{reason}"
                            + (f" (or left out: {unset_text(benchmark.options, name)})" if nullable else ""))
        choices = option_choices(benchmark.options).get(name)
        if choices and kwargs[name] not in choices and kwargs[name] is not None:
            raise UserError(f"{where} '{key}' = {kwargs[name]!r} is not known; use one of {', '.join(choices)}")
    return benchmark.options(**kwargs)


def unset_text(options: type, name: str) -> str:
    """What leaving option ``name`` out means: its ``metadata["unset"]``, else "all" (a size)."""
    return next(f.metadata.get("unset", "all") for f in dataclasses.fields(options) if f.name == name)


def option_choices(options: type) -> dict[str, tuple]:
    """``{field: allowed values}`` for the options that declare ``metadata["choices"]``: checked
    by :func:`build_options` before any model is loaded, and listed by ``--help``."""
    return {f.name: tuple(f.metadata["choices"]) for f in dataclasses.fields(options) if "choices" in f.metadata}
