"""Extending obliviate from outside: methods, benchmarks and objectives registered by a plugin.

A plugin's mistake is refused when it registers, in one line naming the plugin's name and the
field; a plugin that registers before the built-ins loaded leaves the built-ins intact. Every test
here restores the three registries it touches (`registries`), so the other test files see the
built-ins only.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from obliviate.config import RunConfig
from obliviate.data.request import QAItem
from obliviate.errors import UserError
from obliviate.evaluation import registry as benchmark_registry
from obliviate.methods import registry
from obliviate.objectives import OBJECTIVES, Objective, batch_slots, register_objective
from obliviate.objectives.common import answer_nll

ROOT = Path(__file__).resolve().parents[1]
FORGET = [QAItem(f"Who wrote the novel number {i}?", f"Novel {i} was written by Ana Bell.") for i in range(4)]


@pytest.fixture
def registries():
    """Put the method, benchmark and objective registries back as they were (in place: other
    modules hold OBJECTIVES itself). The built-ins load first: a registry saved before would be
    put back empty, and imported modules do not register again."""
    registry.methods(), benchmark_registry.benchmarks()
    methods, benchmarks, objectives = dict(registry._METHODS), dict(benchmark_registry._REGISTRY), dict(OBJECTIVES)
    flags = registry._BUILTINS.loaded, benchmark_registry._BUILTINS.loaded
    yield
    for live, saved in ((registry._METHODS, methods), (benchmark_registry._REGISTRY, benchmarks),
                        (OBJECTIVES, objectives)):
        live.clear()
        live.update(saved)
    registry._BUILTINS.loaded, benchmark_registry._BUILTINS.loaded = flags


def fresh_process(code: str) -> dict:
    """The JSON that `code` prints, run in a new interpreter: the registries' first use."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


def recipe(run) -> dict:
    return {"model": run.model}


@dataclass
class PlugConfig:
    keep: float = 0.5


# --- 1. a plugin that registers before the built-ins load -----------------------------------------


def test_a_method_under_a_built_in_name_is_refused_before_first_use_and_the_built_ins_stay():
    out = fresh_process("""
        import json
        from obliviate.methods.registry import Method, get_method, methods, register_method
        try:
            register_method(Method("rt", lambda run: {}, "a plugin's rt"))
            refused = None
        except Exception as error:
            refused = [type(error).__name__, str(error), isinstance(error, ValueError)]
        print(json.dumps({"refused": refused, "methods": list(methods()), "again": len(methods()),
                          "ulmr": get_method("ulmr").name, "rt": get_method("rt").summary}))
    """)
    assert out["refused"][0] == "RegistrationError" and out["refused"][2]  # a UserError, still a ValueError
    assert out["refused"][1] == "method 'rt' is registered already; register yours under another name"
    assert len(out["methods"]) == out["again"] == 12 and out["ulmr"] == "ulmr"
    assert out["rt"].startswith("rejection tuning")  # the built-in, not the plugin's


def test_a_benchmark_under_a_built_in_name_is_refused_before_first_use_and_the_built_ins_stay():
    out = fresh_process("""
        import json
        from dataclasses import dataclass
        from obliviate.evaluation.registry import Benchmark, benchmarks, get_benchmark, register_benchmark

        @dataclass
        class Options:
            pass

        try:
            register_benchmark(Benchmark("harmful", "a plugin's harmful", Options, print, str))
            refused = None
        except Exception as error:
            refused = [type(error).__name__, str(error)]
        print(json.dumps({"refused": refused, "benchmarks": sorted(benchmarks()), "tofu": get_benchmark("tofu").name,
                          "harmful": get_benchmark("harmful").summary}))
    """)
    assert out["refused"] == ["RegistrationError", "a benchmark named 'harmful' is registered already; "
                              "register yours under another name"]
    assert out["benchmarks"] == ["harmful", "request", "rwku", "tofu"] and out["tofu"] == "tofu"
    assert out["harmful"] != "a plugin's harmful"


def test_a_failed_load_of_the_built_in_methods_is_not_remembered_as_done(registries, monkeypatch):
    registry._BUILTINS.loaded = False
    monkeypatch.setattr(registry, "BUILTIN", registry.BUILTIN + ("obliviate.methods.not_there",))
    for _ in range(2):  # raised again, not quietly a partial registry
        with pytest.raises(ModuleNotFoundError):
            registry.methods()
    monkeypatch.undo()
    assert set(registry.BUILTIN) and {"ulmr", "sku", "snap", "rmu"} <= set(registry.methods()) and registry._BUILTINS.loaded


def test_a_failed_load_of_the_built_in_benchmarks_is_not_remembered_as_done(registries, monkeypatch):
    benchmark_registry._BUILTINS.loaded = False
    monkeypatch.setitem(sys.modules, "obliviate.evaluation.benchmarks", None)  # the import fails
    for _ in range(2):
        with pytest.raises(ImportError):
            benchmark_registry.benchmarks()
    monkeypatch.undo()
    assert {"harmful", "rwku", "tofu"} <= set(benchmark_registry.benchmarks())  # (other tests add theirs)


# --- 2. a method's fields are checked when it registers ------------------------------------------


@dataclass
class NoDefault:
    keep: float


BAD_METHODS = [
    (dict(recipe="recipe.py"), r"recipe 'recipe.py' is not callable; give a function recipe\(run\)"),
    (dict(section=("train", PlugConfig)), r"section 'train' is a RunConfig key \(.*\); name the section after the "
                                          r"method, e.g. section=\('plug', \.\.\.\)"),
    (dict(section=("ulmr", PlugConfig)), r"section 'ulmr' belongs to method 'ulmr' already"),
    (dict(section=PlugConfig), r"section <class .*PlugConfig'> is not a \(name, dataclass\) pair; "
                               r"give section=\('plug', MyConfig\)"),
    (dict(section=("plug", dict)), r"section 'plug' class <class 'dict'> is not a dataclass"),
    (dict(section=("plug", NoDefault)), r"section 'plug' field 'NoDefault.keep' has no default; give every field"),
    (dict(presets={"trian.max_steps": 2}), r"preset 'trian.max_steps' starts with neither a RunConfig field nor "
                                           r"the method's own section; use one of .*train"),
    (dict(section=("plug", PlugConfig), presets={"ulmr.alpha": 0.5}), r"preset 'ulmr.alpha' starts with neither"),
]


@pytest.mark.parametrize("fields, message", BAD_METHODS, ids=["recipe", "reserved-section", "taken-section",
                                                               "bare-section", "not-a-dataclass", "no-default",
                                                               "preset-typo", "preset-of-another"])
def test_a_method_with_a_wrong_field_is_refused_naming_the_method_and_the_field(registries, fields, message):
    method = registry.Method(**{"name": "plug", "recipe": recipe, "summary": "a plugin", **fields})
    with pytest.raises(UserError, match=r"^register_method: method 'plug': " + message) as error:
        registry.register_method(method)
    assert "\n" not in str(error.value) and "plug" not in registry.methods()


def test_a_method_with_its_own_section_and_presets_registers(registries):
    method = registry.register_method(registry.Method("plug", recipe, "a plugin", section=("plug", PlugConfig),
                                                      presets={"plug.keep": 0.25, "train.max_steps": 2, "seed": 1}))
    assert registry.get_method("plug") is method and registry.sections()["plug"] is PlugConfig


def test_reserved_section_names_are_the_run_config_fields():
    assert registry.run_config_keys() == {f.name for f in dataclasses.fields(RunConfig)}
    assert {"train", "objective", "generation", "method", "model", "request", "output_dir", "seed",
            "device", "sections"} <= registry.run_config_keys()


# --- 3. a custom objective, registered the documented way -----------------------------------------


def own_loss(model, batch, ctx):
    """Pulls the forget answers' NLL towards the frozen starting model's."""
    nll = answer_nll(model, batch["forget"])
    with ctx.reference() as reference:
        start = answer_nll(reference, batch["forget"])
    ctx.log("start_nll", start)
    return (nll - start) ** 2


def one_step(tiny_model_and_tokenizer, tmp_path, objective: str):
    from obliviate.training import train

    model, tokenizer = tiny_model_and_tokenizer
    config = RunConfig(method="graddiff", seed=3, device="cpu")
    config.train.batch_size, config.train.max_steps, config.train.save_steps = 2, 1, -1
    return train(model, tokenizer, forget=FORGET, retain=[], config=config, output_dir=tmp_path, objective=objective)


def test_a_custom_objective_registered_as_the_docs_say_trains(registries, tiny_model_and_tokenizer, tmp_path):
    docs = (ROOT / "docs" / "training.md").read_text()
    assert 'register_objective("mine", Objective(loss, needs_reference=True))' in docs
    objective = register_objective("mine", Objective(own_loss, needs_reference=True, retain="none"))
    assert OBJECTIVES["mine"] is objective and batch_slots("mine", RunConfig().objective) == ("forget",)
    before = {k: v.clone() for k, v in tiny_model_and_tokenizer[0].state_dict().items()}
    trained = one_step(tiny_model_and_tokenizer, tmp_path, "mine")
    assert any(not torch.equal(before[k], v) for k, v in trained.state_dict().items())
    assert "start_nll" in (tmp_path / "train_log.jsonl").read_text()


def test_a_bare_loss_function_is_refused_with_the_fix(registries):
    with pytest.raises(UserError, match=r"^register_objective: objective 'mine': <function own_loss at .*> is not an "
                                        r"Objective; wrap the loss function: register_objective\('mine', Objective\("):
        register_objective("mine", own_loss)
    with pytest.raises(UserError, match=r"^register_objective: objective 'mine': loss 'own_loss' is not callable"):
        register_objective("mine", Objective("own_loss"))
    assert "mine" not in OBJECTIVES


def test_a_taken_objective_name_is_refused(registries):
    npo = OBJECTIVES["npo"]
    with pytest.raises(UserError, match=r"^register_objective: objective 'npo' is registered already; register yours "
                                        r"under another name$"):
        register_objective("npo", Objective(own_loss, needs_reference=True))
    assert OBJECTIVES["npo"] is npo
    assert register_objective("npo", npo) is npo  # the same one again is no conflict


def test_a_loss_put_into_objectives_by_hand_names_the_fix_not_an_attribute_error(registries):
    OBJECTIVES["by_hand"] = own_loss  # what the old docs said to do
    with pytest.raises(UserError, match=r"^objective 'by_hand' in OBJECTIVES is <function own_loss .*>, not an "
                                        r"Objective; register it with register_objective\('by_hand', Objective"):
        batch_slots("by_hand", RunConfig().objective)


def test_an_undeclared_reference_names_the_objective_and_the_fix(registries, tiny_model_and_tokenizer, tmp_path):
    register_objective("mine", Objective(own_loss, retain="none"))  # calls ctx.reference() without declaring it
    with pytest.raises(UserError, match=r"objective 'mine' .*needs_reference=True"):
        one_step(tiny_model_and_tokenizer, tmp_path, "mine")
