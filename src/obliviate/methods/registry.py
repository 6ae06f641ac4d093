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

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from obliviate.builtin_modules import BuiltinModules
from obliviate.errors import RegistrationError, UserError
from obliviate.io import short_repr

#: The modules that register the built-in methods (the registration lines).
BUILTIN = ("obliviate.methods.baselines", "obliviate.methods.ulmr", "obliviate.methods.sku", "obliviate.methods.snap")

_METHODS: dict[str, Method] = {}
_BUILTINS = BuiltinModules()


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
    """Register a method by name; a second method under the same name is refused. The built-ins load
    first, so a plugin taking a built-in's name is refused here rather than breaking the first
    listing, and the fields are checked now, naming the method, not at some later run's config load."""
    _BUILTINS.load(BUILTIN)
    if method.name in _METHODS and _METHODS[method.name] is not method:
        raise RegistrationError(f"method '{method.name}' is registered already; register yours under another name")
    where = f"register_method: method '{method.name}'"
    if not callable(method.recipe):
        raise UserError(f"{where}: recipe {short_repr(method.recipe)} is not callable; give a function "
                        "recipe(run) -> {name: model}")
    _check_presets(method, _check_section(method, where), where)
    _METHODS[method.name] = method
    return method


def run_config_keys() -> frozenset[str]:
    """RunConfig's own fields (model, method, train, ...): a method section under one of these names
    would be shadowed by it."""
    from obliviate.config import RunConfig  # here, not at the top: config imports this module

    return frozenset(f.name for f in dataclasses.fields(RunConfig))


def _check_section(method: Method, where: str) -> str | None:
    """The name of `method`'s config section, checked: RunConfig builds every section from defaults
    and reads `config.<name>`, so the name must be free and every field must have a default."""
    if method.section is None:
        return None
    if not (isinstance(method.section, tuple) and len(method.section) == 2 and isinstance(method.section[0], str)):
        raise UserError(f"{where}: section {short_repr(method.section)} is not a (name, dataclass) pair; "
                        f"give section=('{method.name}', MyConfig)")
    name, cls = method.section
    if name in run_config_keys():
        raise UserError(f"{where}: section '{name}' is a RunConfig key ({', '.join(sorted(run_config_keys()))}); "
                        f"name the section after the method, e.g. section=('{method.name}', ...)")
    owner = next((m.name for m in _METHODS.values() if m.name != method.name and m.section and m.section[0] == name),
                 None)
    if owner is not None:
        raise UserError(f"{where}: section '{name}' belongs to method '{owner}' already; "
                        f"name yours after your method, e.g. section=('{method.name}', ...)")
    if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
        raise UserError(f"{where}: section '{name}' class {short_repr(cls)} is not a dataclass; decorate it with "
                        "@dataclass")
    bare = [f.name for f in dataclasses.fields(cls)
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if bare:
        raise UserError(f"{where}: section '{name}' field '{cls.__name__}.{bare[0]}' has no default; give every "
                        "field a default (the section is built even when the config does not set it)")
    return name


def _check_presets(method: Method, section: str | None, where: str) -> None:
    """A preset key must start with a RunConfig field or the method's own section: the config
    loader would otherwise blame the user's config for a key the user never wrote."""
    heads = run_config_keys() - {"sections"} | ({section} if section else set())
    for key in method.presets:
        if str(key).split(".")[0] not in heads:
            raise UserError(f"{where}: preset {short_repr(str(key))} starts with neither a RunConfig field nor the "
                            f"method's own section; use one of {', '.join(sorted(heads))} (e.g. train.learning_rate)")


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
    _BUILTINS.load(BUILTIN)
    return dict(_METHODS)


def get_method(name: str, key: str = "method") -> Method:
    known = methods()
    if name not in known:
        raise UserError(f"config key '{key}' = {name!r} is invalid; expected one of {', '.join(known)}")
    return known[name]


def sections() -> dict[str, type]:
    """Config sections that methods add to RunConfig (section name -> dataclass)."""
    return {m.section[0]: m.section[1] for m in methods().values() if m.section is not None}
