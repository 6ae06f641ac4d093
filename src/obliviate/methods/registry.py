"""The method registry: every `obliviate unlearn --method X` is one `Method` registered here.

A method is a recipe (a function of the run: prepare -> train -> weight operation, returning the
models to save) plus what the configuration needs to know about it: a one-line summary for
`--help`, an optional config section of its own (`ulmr:`), and presets (dotted config keys that
the method changes from the generic defaults, applied under the user's own values). Adding a method
is one file that calls `register_method(...)` plus its module's name in `BUILTIN` below; a
method written elsewhere (a plugin, a test) calls `register_method` itself.

This module imports nothing from the pipeline, so the config loader can read it.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from obliviate.errors import UserError

#: The modules that register the built-in methods (the registration lines).
BUILTIN = ("obliviate.methods.baselines", "obliviate.methods.ulmr", "obliviate.methods.sku", "obliviate.methods.snap")

_METHODS: dict[str, Method] = {}
_loaded = False


@dataclass(frozen=True)
class Method:
    """`recipe(run) -> {name: model}` (see methods.pipeline.Run); "model" is the main result."""

    name: str
    recipe: Callable[..., dict]
    summary: str
    section: tuple[str, type] | None = None  # (config section name, its dataclass)
    presets: Mapping[str, Any] = field(default_factory=dict)  # dotted key -> value, under the user's values
    # the request's items its retain term trains on (default: request.retain); SNAP adds the neighbours
    retain_items: Callable[..., list] | None = None
    # it may run on a request whose answers are refusals (rwku forget: refusals): it trains towards
    # them (rt, finetune) or uses only the questions (ulmr, snap); the others would unlearn them
    refusal_answers: bool = False


def register_method(method: Method) -> Method:
    """Register a method by name; a second method under the same name is refused."""
    if method.name in _METHODS and _METHODS[method.name] is not method:
        raise ValueError(f"method '{method.name}' is already registered")
    _METHODS[method.name] = method
    return method


def presets_under(name: str, data: dict, user_set: set[str]) -> dict[str, Any]:
    """Method `name`'s presets that apply under the user's `data` (nested config values; `user_set`:
    the dotted keys the user's file and overrides set, not a base): a step budget (SKU's
    train.max_steps=1000) yields to the user's train.num_epochs, which it would override
    (max_steps > 0 wins), also when a resolved config given as the base holds the preset's value
    (it is dropped from `data`)."""
    presets = dict(get_method(name).presets)
    train = data.get("train") if isinstance(data.get("train"), dict) else {}
    if "num_epochs" in train and "max_steps" not in train:
        presets.pop("train.max_steps", None)
    elif "train.num_epochs" in user_set and "train.max_steps" not in user_set and \
            train.get("max_steps") == presets.get("train.max_steps"):
        del train["max_steps"]
        presets.pop("train.max_steps", None)
    return presets


def methods() -> dict[str, Method]:
    """Name -> Method, the built-ins loaded on first use."""
    global _loaded
    if not _loaded:
        _loaded = True
        for module in BUILTIN:
            importlib.import_module(module)
    return dict(_METHODS)


def get_method(name: str, key: str = "method") -> Method:
    known = methods()
    if name not in known:
        raise UserError(f"config key '{key}' = {name!r} is invalid; expected one of {', '.join(known)}")
    return known[name]


def sections() -> dict[str, type]:
    """Config sections that methods add to RunConfig (section name -> dataclass)."""
    return {m.section[0]: m.section[1] for m in methods().values() if m.section is not None}
