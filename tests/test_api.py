"""The Python API as a notebook uses it: a model already loaded, unlearned and evaluated in place,
typed results, progress bars, results that never overwrite each other."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import obliviate.api as ob
from obliviate.errors import UserError

SHARED_TOFU = Path(__file__).resolve().parents[2] / "shared" / "data" / "tofu"
FORGET = [{"question": f"Who wrote the novel number {i}?", "answer": f"Novel {i} was written by Ana Bell."}
          for i in range(4)]
RETAIN = [{"question": f"How many legs has animal {i}?", "answer": "Eight legs, like a spider."} for i in range(4)]


def test_unlearn_a_loaded_model_with_hf_names(tiny_model_and_tokenizer, tmp_path):
    model, tokenizer = tiny_model_and_tokenizer
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    result = ob.unlearn(model, tokenizer, {"forget": FORGET, "retain": RETAIN}, method="npo",
                        output_dir=tmp_path / "npo", learning_rate=1e-2, max_steps=1, per_device_train_batch_size=2,
                        **{"train.save_steps": -1})
    assert isinstance(result, ob.UnlearnResult) and result.run_dir == tmp_path / "npo"
    assert result.model_dir == result.run_dir / "model" and (result.model_dir / "model.safetensors").is_file()
    assert result.manifest["method"] == "npo" and result.manifest["request"]["forget"] == 4
    saved = ob.load_config(result / "config.yaml")  # `run / "x"` still reads as the run directory
    assert (saved.train.learning_rate, saved.train.batch_size, saved.train.max_steps) == (1e-2, 2, 1)
    assert any(not torch.equal(before[name], p) for name, p in model.named_parameters())  # trained in place
    with pytest.raises(UserError, match="config key 'train.learnin_rate' is not known"):
        ob.unlearn(model, tokenizer, {"forget": FORGET}, output_dir=tmp_path / "x", **{"train.learnin_rate": 1})
    with pytest.raises(UserError, match="a loaded model needs its tokenizer"):
        ob.unlearn(model, None, {"forget": FORGET}, output_dir=tmp_path / "y")
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_unlearn_config_form_still_works(tiny_model_dir, tmp_path):
    request = tmp_path / "request.json"
    request.write_text(json.dumps({"forget": FORGET, "retain": RETAIN}))
    config = ob.load_config(None, [f"model={tiny_model_dir}", f"request={request}", f"output_dir={tmp_path / 'ga'}",
                                   "method=ga", "train.max_steps=1", "train.batch_size=2", "train.save_steps=-1"])
    result = ob.unlearn(config)
    assert result.manifest["method"] == "ga" and json.loads((result / "manifest.json").read_text())["seed"] == 42


def test_a_run_config_beside_a_loaded_model_and_a_request_file_uses_both(tiny_model_and_tokenizer, tmp_path):
    """unlearn(model, tokenizer, request_file, config=RunConfig) took the config alone: it trained
    on the built-in demo request and recorded the config's model name (exit 0)."""
    model, tokenizer = tiny_model_and_tokenizer
    request = tmp_path / "request.json"
    request.write_text(json.dumps({"name": "mine", "forget": FORGET, "retain": RETAIN}))
    config = ob.load_config(None, ["method=ga", f"output_dir={tmp_path / 'run'}", "train.max_steps=1",
                                   "train.save_steps=-1", "device=cpu"])
    result = ob.unlearn(model, tokenizer, request, config=config)
    assert result.manifest["request"]["name"] == "mine" and result.manifest["request"]["forget"] == 4
    assert str(request) in result.manifest["inputs"]
    assert ob.load_config(result / "config.yaml").request == str(request)
    assert result.manifest["base_model"]["name"] != "smollm2-135m-instruct"


@pytest.mark.skipif(not SHARED_TOFU.is_dir(), reason="../shared/data/tofu is absent")
def test_evaluate_a_loaded_model_reads_the_summary(tiny_model_and_tokenizer, tmp_path, monkeypatch, capsys):
    model, tokenizer = tiny_model_and_tokenizer
    model.name_or_path = "tiny"
    monkeypatch.chdir(tmp_path)
    options = dict(benchmark="tofu", data=str(SHARED_TOFU), ds_size=2, max_new_tokens=2, extras=False,
                   device="cpu", precision="fp32", cache=False)
    result = ob.evaluate(model, tokenizer, **options)
    assert isinstance(result, ob.EvalResult) and result.benchmark == "tofu"
    assert result.output_dir == Path("runs/eval-tiny-tofu")
    saved = json.loads((result.output_dir / "tofu_summary.json").read_text())
    assert "model_utility" in result.summary and result.summary == result["summary"]
    assert result.summary["model_utility"] == pytest.approx(saved["model_utility"], nan_ok=True)
    assert result.output_dir / "tofu_eval.json" in result.paths and result["n_samples"]["forget"] == 2
    assert "TOFU forget01: 100%" in capsys.readouterr().err  # the progress bar (tqdm.auto: a widget in a notebook)
    again = ob.evaluate(model, tokenizer, **options, progress=False)
    assert again.output_dir == Path("runs/eval-tiny-tofu-2") and (result.output_dir / "tofu_eval.json").is_file()
    assert "TOFU forget01: 100%" not in capsys.readouterr().err


def test_evaluate_refuses_a_bad_option_before_loading(tmp_path):
    with pytest.raises(UserError, match="benchmark 'tofu' option 'forget_splitt' is not known"):
        ob.evaluate(str(tmp_path / "no-model"), forget_splitt="forget05")
    with pytest.raises(UserError, match="benchmark 'rwku' option 'ds_size'"):
        ob.evaluate(str(tmp_path / "no-model"), benchmark="rwku", ds_size="many")


def test_a_model_without_weights_is_refused_in_one_line(tiny_model_dir, tmp_path):
    """A model built on the meta device holds no values: a torch traceback mid-run before; now one
    line, nothing written. So is an object that is not a model."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(tiny_model_dir))
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    with pytest.raises(UserError, match="unlearn: the model's weights are on the meta device"):
        ob.unlearn(model, tokenizer, {"forget": FORGET}, method="ga", output_dir=tmp_path / "run", max_steps=1)
    with pytest.raises(UserError, match="evaluate: the model's weights are on the meta device"):
        ob.evaluate(model, tokenizer, data=str(SHARED_TOFU), output_dir=tmp_path / "eval")
    model.hf_device_map = {"model.embed_tokens": "cpu", "model.layers.1": "disk"}  # accelerate's offload
    with pytest.raises(UserError, match="evaluate: the model is offloaded .* on cpu, disk\\): not supported"):
        ob.evaluate(model, tokenizer, data=str(SHARED_TOFU), output_dir=tmp_path / "eval")
    with pytest.raises(UserError, match=r"evaluate: model is a \w+, not a loaded model"):
        ob.evaluate(tokenizer, tokenizer, data=str(SHARED_TOFU), output_dir=tmp_path / "eval")
    assert not (tmp_path / "run").exists() and not (tmp_path / "eval").exists()


def test_a_fresh_eval_folder_is_claimed_for_the_evaluations_time(tmp_path):
    """Two evaluations started together both took an empty default folder (results overwrote
    each other); a folder an evaluation killed before writing was skipped for the next number."""
    from obliviate.evaluation.results import CLAIM, claim_fresh_dir

    base = tmp_path / "runs" / "eval-m-tofu"
    with claim_fresh_dir(base) as first, claim_fresh_dir(base) as second:
        assert (first, second) == (base, base.with_name("eval-m-tofu-2"))  # the first is still running
        (first / "tofu_eval.json").write_text("{}")
    assert (base / "tofu_eval.json").is_file() and not (base / CLAIM).exists()  # results kept, claim removed
    assert not second.exists()  # nothing written: no empty folder left behind
    killed = base.with_name("eval-m-tofu-2")
    killed.mkdir()
    (killed / CLAIM).write_text('{"pid": 1}')  # what a kill -9 leaves: a claim nobody holds
    with claim_fresh_dir(base) as third:
        assert third == killed
