"""Every generating benchmark takes `decode` and hands it to the engine: an unknown path is
refused by the engine (so the option reached it), and `static` answers exactly as `plain`."""

from __future__ import annotations

import pytest
from rwku_layout import rwku_dir  # noqa: F401 -- the tiny RWKU directory fixture
from test_tofu_eval import tofu_dir  # noqa: F401 -- the tiny TOFU directory fixture

import obliviate.api as ob
from obliviate.data.request import DEMO_REQUEST
from obliviate.errors import UserError


def _options(benchmark: str, rwku_root) -> dict:
    if benchmark == "rwku":
        return dict(data=str(rwku_root), targets="1", ds_size=1, utility="none", cache=False)
    if benchmark == "request":  # the built-in demo request
        return dict(request=str(DEMO_REQUEST), ds_size=2, max_new_tokens=6, batch_size=4, cache=False)
    return dict(ds_size=2, max_new_tokens=6, judge_agreement=False, batch_size=4)


def _outputs(envelope: dict) -> list[str]:
    """Every generated text of an envelope, in order."""
    texts = []
    for task in envelope["tasks"].values():
        for item in task.get("items", []):
            texts += [value for key, value in item.items() if key in ("output", "generated")]
    return texts


@pytest.mark.parametrize("benchmark", ["rwku", "harmful", "request"])
def test_decode_reaches_the_engine(tmp_path, tiny_model_and_tokenizer, rwku_dir, benchmark):  # noqa: F811
    from obliviate.evaluation.registry import get_benchmark

    model, tokenizer = tiny_model_and_tokenizer
    options = _options(benchmark, rwku_dir)
    spec = get_benchmark(benchmark)  # past the options check: the engine itself must see the value
    with pytest.raises(UserError, match="decode must be one of auto, plain, static, got 'warp'"):
        spec.run(model, tokenizer, spec.options(**options, decode="warp"), out_dir=tmp_path / "bad",
                 model_name="tiny", precision="fp32")
    runs = {decode: ob.evaluate(model, tokenizer, benchmark=benchmark, output_dir=tmp_path / decode, precision="fp32",
                                progress=False, decode=decode, **options).envelope for decode in ("plain", "static")}
    assert _outputs(runs["plain"]), "the benchmark generated nothing to compare"
    assert _outputs(runs["static"]) == _outputs(runs["plain"])
    assert runs["static"]["summary"] == runs["plain"]["summary"] | {"model": runs["static"]["summary"]["model"]}


@pytest.mark.parametrize("benchmark, option, value", [("tofu", "decode", "warp"), ("tofu", "scoring", "chat"),
                                                      ("rwku", "decode", "warp"), ("harmful", "judge", "gpt")])
def test_a_value_outside_the_choices_is_refused_before_the_model_loads(benchmark, option, value, monkeypatch):
    import obliviate.models

    def no_loading(*args, **kwargs):
        raise AssertionError("the model was loaded before the options were checked")

    monkeypatch.setattr(obliviate.models, "load_model", no_loading)
    with pytest.raises(UserError, match=rf"benchmark '{benchmark}' option '{option}' = '{value}' is not known; use one of"):
        ob.evaluate("some-model", benchmark=benchmark, progress=False, **{option: value})


def test_help_lists_the_choices(capsys):
    from obliviate.cli import main

    with pytest.raises(SystemExit):
        main(["eval", "--benchmark", "tofu", "--help"])
    out = capsys.readouterr().out
    assert "--decode {auto,plain,static}" in out and "--scoring {answer,chat_turn}" in out
    assert "(default: true)" in out and "True" not in out and "None" not in out  # as one types them


@pytest.mark.parametrize("benchmark, option, value", [("tofu", "ds_size", -3), ("tofu", "ds_size", 0),
                                                      ("harmful", "ds_size", 0), ("rwku", "utility_size", 0),
                                                      ("tofu", "batch_size", 0), ("tofu", "max_new_tokens", -1),
                                                      ("rwku", "decode_batch_size", 0)])
def test_sizes_below_one_are_refused_before_the_model_loads(benchmark, option, value, monkeypatch):
    import obliviate.models

    monkeypatch.setattr(obliviate.models, "load_model", lambda *a, **k: pytest.fail("the model was loaded"))
    with pytest.raises(UserError, match=rf"option '{option}' = {value} must be a positive integer"):
        ob.evaluate("some-model", benchmark=benchmark, progress=False, **{option: value})


def test_an_unknown_tofu_split_is_refused_before_the_model_loads(monkeypatch):
    import obliviate.models

    monkeypatch.setattr(obliviate.models, "load_model", lambda *a, **k: pytest.fail("the model was loaded"))
    with pytest.raises(UserError, match="'forget_split' = 'forget02' is not known; use one of forget01, forget05"):
        ob.evaluate("some-model", progress=False, forget_split="forget02")


def test_the_shipped_eval_config_loads_and_a_run_config_is_pointed_to_eval(tmp_path, monkeypatch):
    from pathlib import Path

    import obliviate.models
    from obliviate.evaluation.registry import build_options, get_benchmark
    from obliviate.config import load_eval_config

    root = Path(__file__).resolve().parents[1]
    settings = load_eval_config(root / "examples" / "eval_tofu.yaml")
    spec = get_benchmark(settings.pop("benchmark"))
    assert build_options(spec, settings).forget_split == "forget01"
    monkeypatch.setattr(obliviate.models, "load_model", lambda *a, **k: pytest.fail("the model was loaded"))
    with pytest.raises(UserError, match="graddiff.yaml: a run config without an 'eval:' section"):
        ob.evaluate("m", config=root / "examples" / "graddiff.yaml", progress=False)


@pytest.mark.parametrize("benchmark", ["tofu", "rwku", "harmful", "request"])
def test_decode_batch_size_reaches_the_engine(tmp_path, tiny_model_and_tokenizer, rwku_dir, tofu_dir,  # noqa: F811
                                              benchmark, monkeypatch):
    from obliviate.evaluation.engine import scheduler

    asked = []
    original = scheduler.decode_rows
    monkeypatch.setattr(scheduler, "decode_rows", lambda device, batch, requested, *rest, **keywords: (
        asked.append(requested) or original(device, batch, requested, *rest, **keywords)))
    options = _options(benchmark, rwku_dir)
    if benchmark == "tofu":
        options = dict(data=str(tofu_dir), ds_size=2, max_new_tokens=4, extras=False, cache=False)
    model, tokenizer = tiny_model_and_tokenizer
    ob.evaluate(model, tokenizer, benchmark=benchmark, output_dir=tmp_path / "out", precision="fp32",
                progress=False, decode_batch_size=3, **options)
    assert asked and set(asked) == {3}
