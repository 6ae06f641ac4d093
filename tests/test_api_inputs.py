"""api.unlearn with what a notebook hands it: a request in memory (kept beside the run so its
config reruns), a RunConfig with another method, tokenizers without a pad token, peft models,
bf16 weights, a recipe that returns the wrong thing."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch

import obliviate.api as ob
from obliviate.config import load_config
from obliviate.errors import UserError

FORGET = [{"question": f"Who wrote the novel number {i}?", "answer": f"Novel {i} was written by Ana Bell."}
          for i in range(4)]
RETAIN = [{"question": f"How many legs has animal {i}?", "answer": "Eight legs, like a spider."} for i in range(4)]
QUICK = {"max_steps": 1, "per_device_train_batch_size": 2, "train.save_steps": -1}


def test_a_request_given_in_memory_is_kept_beside_the_run_and_its_config_reruns(tiny_model_and_tokenizer, tmp_path):
    """config.yaml said `request: null`, so rerunning it trained on the demo request (exit 0)."""
    from obliviate.data.request import load_request

    model, tokenizer = tiny_model_and_tokenizer
    result = ob.unlearn(model, tokenizer, {"forget": FORGET, "retain": RETAIN, "name": "mine"}, method="graddiff",
                        output_dir=tmp_path / "run", **QUICK)
    saved = load_config(result / "config.yaml")
    assert saved.request == str(tmp_path / "run" / "request.json")
    again = load_request(saved.request)
    assert again.name == "mine" and [(i.question, i.answer) for i in again.forget] == [
        (r["question"], r["answer"]) for r in FORGET] and len(again.retain) == len(RETAIN)
    from obliviate.methods.pipeline import request_sha256

    assert request_sha256(again) == result.manifest["request"]["sha256"]  # the very items trained on


def test_a_runconfig_with_another_method_takes_that_methods_presets(tmp_path, monkeypatch):
    """unlearn(config=RunConfig(graddiff), method="sku") ran SKU at graddiff's lr 1e-5 without its
    LoRA; the user's own settings carry over."""
    from obliviate.methods import pipeline

    seen = {}
    monkeypatch.setattr(pipeline, "run", lambda config, **kw: seen.setdefault("config", config) and tmp_path)
    base = load_config(None, ["model=/tmp/nowhere", "train.max_length=64"])
    ob.unlearn(config=base, method="sku")
    sku = seen.pop("config")
    assert (sku.method, sku.train.learning_rate, sku.train.lora.enabled, sku.train.lora.r) == ("sku", 2e-4, True, 32)
    assert (sku.model, sku.train.max_length) == ("/tmp/nowhere", 64)
    ob.unlearn(config=load_config(None, ["method=sku"]), method="graddiff")
    back = seen.pop("config")
    assert (back.train.learning_rate, back.train.lora.enabled, back.train.max_steps) == (1e-5, False, -1)


def test_tokenizer_without_pad_token_and_bad_objects(tiny_model_and_tokenizer, tmp_path):
    model, tokenizer = tiny_model_and_tokenizer
    tokenizer = copy.deepcopy(tokenizer)
    tokenizer.pad_token = None  # Llama-3, Mistral: a TypeError at the first batch
    result = ob.unlearn(model, tokenizer, {"forget": FORGET, "retain": RETAIN}, method="graddiff",
                        output_dir=tmp_path / "nopad", **QUICK)
    assert (result.model_dir / "model.safetensors").is_file()
    assert tokenizer.pad_token is None  # the caller's tokenizer given back as it was
    with pytest.raises(UserError, match="'method' = 'nosuch' is invalid"):  # refused: the tokenizer is untouched
        ob.unlearn(model, tokenizer, {"forget": FORGET}, method="nosuch", output_dir=tmp_path / "n")
    assert tokenizer.pad_token is None
    with pytest.raises(UserError, match="unlearn: tokenizer is a str, not a loaded tokenizer"):
        ob.unlearn(model, "/tmp/tinym", {"forget": FORGET}, output_dir=tmp_path / "s")
    peft = pytest.importorskip("peft")
    wrapped = peft.get_peft_model(copy.deepcopy(model), peft.LoraConfig(r=2, target_modules=["q_proj"]))
    with pytest.raises(UserError, match="the model is a peft PeftModel: merge its adapter first"):
        ob.unlearn(wrapped, tokenizer, {"forget": FORGET}, output_dir=tmp_path / "p", use_peft=True)
    assert not any((tmp_path / name).exists() for name in ("s", "p"))


def test_bf16_weights_are_warned_about_and_recorded(tiny_model_and_tokenizer, tmp_path, capsys):
    model, tokenizer = tiny_model_and_tokenizer
    low = copy.deepcopy(model).to(torch.bfloat16)
    result = ob.unlearn(low, tokenizer, {"forget": FORGET, "retain": RETAIN}, method="graddiff",
                        output_dir=tmp_path / "bf16", **QUICK)
    assert "the model's weights are bfloat16: updates smaller than their resolution are lost" in capsys.readouterr().out
    assert result.manifest["base_model"]["dtype"] == "bfloat16"
    fine = ob.unlearn(copy.deepcopy(model), tokenizer, {"forget": FORGET, "retain": RETAIN}, method="graddiff",
                      output_dir=tmp_path / "fp32", **QUICK)
    assert "weights are" not in capsys.readouterr().out and fine.manifest["base_model"]["dtype"] == "float32"


def test_a_recipe_that_returns_no_dict_is_a_clear_error(tiny_model_and_tokenizer, tmp_path):
    import dataclasses

    from obliviate.methods import registry

    model, tokenizer = tiny_model_and_tokenizer
    broken = dataclasses.replace(registry.get_method("finetune"), name="returns_model", recipe=lambda run: run.model)
    registry._METHODS[broken.name] = broken  # the registry's own dict, restored below
    try:
        with pytest.raises(UserError, match=r"method 'returns_model': its recipe returned .* must return a dict"):
            ob.unlearn(model, tokenizer, {"forget": FORGET}, method="returns_model", output_dir=tmp_path / "r", **QUICK)
    finally:
        registry._METHODS.pop(broken.name)


def test_the_callers_frozen_weights_and_use_cache_are_given_back(tiny_model_and_tokenizer, tmp_path):
    """Every weight came back trainable (a second call trained what the caller froze) and
    config.use_cache came back False, also in model/config.json (the Trainer turns it off)."""
    model, tokenizer = tiny_model_and_tokenizer
    model = copy.deepcopy(model)
    model.model.embed_tokens.weight.requires_grad_(False)
    model.config.use_cache = True
    for method in ("graddiff", "rmu"):  # RMU freezes all but its layers itself
        result = ob.unlearn(model, tokenizer, {"forget": FORGET, "retain": RETAIN}, method=method,
                            output_dir=tmp_path / method, **QUICK)
        assert not model.model.embed_tokens.weight.requires_grad
        assert all(p.requires_grad for n, p in model.named_parameters() if "embed_tokens" not in n)
        assert model.config.use_cache is True
        assert json.loads((result.model_dir / "config.json").read_text())["use_cache"] is True


def test_a_list_of_items_is_the_forget_set_and_a_benchmark_must_return_a_dict(tiny_model_and_tokenizer, tmp_path,
                                                                              monkeypatch):
    """A list request was "TypeError: expected str, bytes or os.PathLike object, not list"; a
    benchmark whose run returns None was "'NoneType' object has no attribute 'get'"."""
    import dataclasses

    from obliviate.data.request import load_request
    from obliviate.evaluation import registry

    assert [i.question for i in load_request(FORGET).forget] == [r["question"] for r in FORGET]
    model, tokenizer = tiny_model_and_tokenizer
    result = ob.unlearn(copy.deepcopy(model), tokenizer, FORGET, method="ga", output_dir=tmp_path / "list", **QUICK)
    assert result.manifest["request"]["forget"] == len(FORGET)
    real = registry.get_benchmark
    monkeypatch.setattr(registry, "get_benchmark", lambda name: dataclasses.replace(real(name), run=lambda *a, **k: None))
    with pytest.raises(UserError, match="benchmark 'tofu': its run returned NoneType; it must return the result dict"):
        ob.evaluate(model, tokenizer, output_dir=tmp_path / "eval", progress=False, ds_size=1)


def test_an_unwritable_eval_output_dir_is_refused_before_the_model_loads(tiny_model_dir, tmp_path, monkeypatch):
    """An existing file, or a path under one, as output_dir was found only when the results were
    written, after the whole evaluation."""
    def no_load(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(ob, "_place", no_load)
    afile = tmp_path / "afile"
    afile.write_text("x")
    with pytest.raises(UserError, match="output_dir '.*afile' is a file, not a folder"):
        ob.evaluate(str(tiny_model_dir), output_dir=afile, progress=False)
    with pytest.raises(UserError, match=r"afile is a file, so no folder can be made under it"):
        ob.evaluate(str(tiny_model_dir), output_dir=afile / "sub" / "dir", progress=False)
    monkeypatch.setattr("os.access", lambda path, mode: False)  # a read-only file system (root passes chmod)
    with pytest.raises(UserError, match="cannot write in .* read-only file system"):
        ob.evaluate(str(tiny_model_dir), output_dir=tmp_path / "new", progress=False)
    assert not (tmp_path / "new").exists()


def test_the_request_copy_reads_back_as_the_same_request(tmp_path):
    """request.json must load to the very request: raw passages were written as a list of strings
    (read back as file names), and an RWKU refusals request's flag and a TOFU request's
    idontknow.jsonl were lost."""
    from obliviate.data.request import load_request, request_records
    from obliviate.methods.pipeline import request_sha256
    from rwku_layout import _write_target

    rwku = tmp_path / "rwku"
    _write_target(rwku, "1_Ada_Example", "Ada Example", utility_sets=True)
    (tmp_path / "tofu").mkdir()
    (tmp_path / "tofu" / "forget01.json").write_text(json.dumps(FORGET))
    (tmp_path / "tofu" / "idontknow.jsonl").write_text("I don't know.\n")
    for given in (None, {"forget": str(tmp_path / "tofu" / "forget01.json")},
                  {"rwku": {"data": str(rwku), "targets": 1, "forget": "refusals"}},
                  {"rwku": {"data": str(rwku), "targets": 1, "forget": "passages"}}):
        request = load_request(given)
        copy_path = tmp_path / "request.json"
        copy_path.write_text(json.dumps(request_records(request)))
        again = load_request(copy_path)
        assert request_sha256(again) == request_sha256(request)
        assert (again.answers_are_refusals, again.passages) == (request.answers_are_refusals, request.passages)
        assert (again.refusals and str(again.refusals)) == (request.refusals and str(Path(request.refusals).absolute()))


def test_resume_compares_a_request_copy_and_keys_added_since(tmp_path):
    """An api.unlearn run saved by the previous version has `request: null` (now the copy's path),
    and a saved SKU config without train.max_grad_norm clipped at 1.0 (now 0): the first resumes,
    the second is refused instead of changing its training mid-run."""
    import yaml

    from obliviate.rundir import check_resume_config

    run = tmp_path / "run"
    run.mkdir()
    old = load_config(None, ["method=sku"]).to_dict()
    old["train"].pop("max_grad_norm")
    (run / "config.yaml").write_text(yaml.safe_dump(old))
    new = load_config(None, ["method=sku", f"request={run / 'request.json'}"]).to_dict()
    with pytest.raises(UserError, match=r"config key 'train.max_grad_norm' = 0.0 differs from the run's 1.0"):
        check_resume_config(run, new)
    new["train"]["max_grad_norm"] = 1.0
    check_resume_config(run, new)  # request: null beside the copy's path is not a difference
