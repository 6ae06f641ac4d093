"""The scoring engine under the TOFU evaluation, on the tiny random model: answer losses equal a
plain forward (batched or not, cut at max_length), per-token details equal the full logits, greedy
generation equals HF generate (also from a reference's forced prefix), stops, precision, and the
model fingerprint. Split from test_tofu_eval.py, whose items and reference scorer it uses."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from test_tofu_eval import FICTION, FP32, OPTIONS, _reference_losses

from obliviate.errors import UserError
from obliviate.evaluation import engine, metrics
from obliviate.prompts import encode_qa, format_prompt, pad_batch


# ---------------------------------------------------------------------------------------------
# Scoring engine
# ---------------------------------------------------------------------------------------------


def test_answer_losses_match_plain_forward_batched_or_not(tiny_model_and_tokenizer):
    model, tokenizer = tiny_model_and_tokenizer
    pairs = [(q, a) for q, a, p, pert in FICTION for a in (a, p, *pert[:2])] + [(OPTIONS[0][0], "")]
    reference = _reference_losses(model, tokenizer, pairs)
    batched = engine.answer_losses(model, tokenizer, pairs, batch_size=64, precision=FP32)
    single = engine.answer_losses(model, tokenizer, pairs, batch_size=1, precision=FP32)
    assert [n for _, n in batched] == [n for _, n in reference] == [n for _, n in single]
    np.testing.assert_allclose([s for s, _ in batched], [s for s, _ in reference], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose([s for s, _ in single], [s for s, _ in reference], rtol=1e-4, atol=1e-4)
    assert pairs[-1][1] == "" and batched[-1][1] == 1  # an empty answer still scores its EOS


def test_answer_losses_respect_max_length(tiny_model_and_tokenizer):
    model, tokenizer = tiny_model_and_tokenizer
    q, a = FICTION[0][0], FICTION[0][1]
    prompt_len = sum(label == -100 for label in encode_qa(tokenizer, q, a)["labels"])
    cut = engine.answer_losses(model, tokenizer, [(q, a)], max_length=prompt_len + 3)
    assert cut[0][1] == 3
    assert engine.answer_losses(model, tokenizer, [(q, a)], max_length=prompt_len)[0] == (0.0, 0)


def test_details_match_full_logits(tiny_model_and_tokenizer):
    model, tokenizer = tiny_model_and_tokenizer
    q, a = FICTION[1][0], FICTION[1][1]
    stats = engine.score_answers(model, tokenizer, [(q, a)], details=True, precision=FP32)[0]
    batch = pad_batch([encode_qa(tokenizer, q, a)], tokenizer.pad_token_id)
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"]).logits
    logp, mask = metrics.token_logprobs(logits, batch["labels"])
    mu, sigma = metrics.next_token_logprob_moments(logits)
    preds, targets, _ = metrics.greedy_predictions(logits, batch["labels"])
    np.testing.assert_allclose(stats.logprobs, logp[mask].numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(stats.mu, mu[mask].numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(stats.sigma, sigma[mask].numpy(), rtol=1e-4, atol=1e-4)
    assert stats.preds == preds[mask].tolist() and stats.targets == targets[mask].tolist()
    assert math.isclose(stats.sum_nll, -sum(stats.logprobs), rel_tol=1e-5)


def test_greedy_generation_batch_equals_single_and_hf_generate(tiny_model_and_tokenizer):
    model, tokenizer = tiny_model_and_tokenizer
    questions = [q for q, *_ in FICTION] + [q for q, *_ in OPTIONS] + ["Hi"]
    batched = engine.greedy_generate(model, tokenizer, questions, max_new_tokens=12, batch_size=64, precision=FP32)
    single = engine.greedy_generate(model, tokenizer, questions, max_new_tokens=12, batch_size=1, precision=FP32)
    assert batched == single
    for question, text in zip(questions[:3], batched):
        ids = tokenizer(format_prompt(tokenizer, question), add_special_tokens=False, return_tensors="pt")
        out = model.generate(**ids, max_new_tokens=12, do_sample=False)
        assert tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True).strip() == text


def test_forced_prefix_from_reference_gives_same_generation(tiny_model_and_tokenizer):
    model, tokenizer = tiny_model_and_tokenizer
    questions = [q for q, *_ in FICTION]
    plain = engine.greedy_generate(model, tokenizer, questions, max_new_tokens=12, precision=FP32)
    # The model's own outputs as references: the whole output is read off the teacher-forced pass.
    _, same = engine.score_and_generate(model, tokenizer, (), questions, references=plain, max_new_tokens=12,
                                        precision=FP32)
    _, other = engine.score_and_generate(model, tokenizer, (), questions, references=[a for _, a, *_ in FICTION],
                                         max_new_tokens=12, precision=FP32)
    assert same == plain and other == plain


def test_forced_prefix_ends_at_the_first_stop_token(tiny_model_and_tokenizer):
    """A "chat_turn" reference runs on past the end of turn (answer + <|im_end|> + newline + EOS):
    a model that reproduces it up to <|im_end|> and then leaves it has ended its greedy output
    there, as model.generate does, however it would go on."""
    model, tokenizer = tiny_model_and_tokenizer
    question, answer = "Who wrote the novel?", "The author was born in a small town."
    prompt = format_prompt(tokenizer, question)
    text = prompt + answer + "<|im_end|> The river begins"
    ids = torch.tensor([tokenizer(text, add_special_tokens=False)["input_ids"]])
    labels = ids.clone()
    labels[:, :len(tokenizer(prompt, add_special_tokens=False)["input_ids"])] = -100
    model.train()
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(150):  # memorise answer, <|im_end|>, then a continuation other than the newline
        optimiser.zero_grad()
        model(input_ids=ids, labels=labels).loss.backward()
        optimiser.step()
    model.eval()
    prompt_ids = tokenizer(prompt, add_special_tokens=False, return_tensors="pt")
    out = model.generate(**prompt_ids, max_new_tokens=40, do_sample=False)
    expected = tokenizer.decode(out[0, prompt_ids["input_ids"].shape[1]:], skip_special_tokens=True).strip()
    assert expected == answer
    for scoring in ("answer", "chat_turn"):
        _, texts = engine.score_and_generate(model, tokenizer, [(question, answer)], [question], references=[answer],
                                             max_new_tokens=40, precision=FP32, scoring=scoring)
        assert texts == [expected], scoring


def test_stop_tokens_include_end_of_turn(tiny_model_and_tokenizer):
    model, tokenizer = tiny_model_and_tokenizer
    ids = engine.stop_token_ids(model, tokenizer)
    assert tokenizer.convert_tokens_to_ids("<|im_end|>") in ids and tokenizer.eos_token_id in ids


def test_precision_option(tiny_model_and_tokenizer):
    model, tokenizer = tiny_model_and_tokenizer
    assert engine.resolve_precision(model, "fp32") == "fp32"
    assert engine.resolve_precision(model, "bf16") == "bf16"
    with pytest.raises(UserError, match="precision"):
        engine.resolve_precision(model, "fp8")
    pairs = [(FICTION[0][0], FICTION[0][1])]
    fp32 = engine.answer_losses(model, tokenizer, pairs, precision="fp32")[0][0]
    bf16 = engine.answer_losses(model, tokenizer, pairs, precision="bf16")[0][0]
    assert math.isclose(fp32, bf16, rel_tol=0.05)
    texts = engine.greedy_generate(model, tokenizer, [FICTION[0][0], "Hi"], max_new_tokens=5, precision="bf16")
    assert len(texts) == 2 and all(isinstance(t, str) for t in texts)


def test_model_fingerprint_changes_with_any_weight(tiny_model_and_tokenizer):
    model, _ = tiny_model_and_tokenizer
    before = engine.model_fingerprint(model)
    assert engine.model_fingerprint(model) == before
    with torch.no_grad():
        model.model.layers[1].mlp.down_proj.weight[3, 5] += 1e-6
    assert engine.model_fingerprint(model) != before


def test_model_fingerprint_follows_the_config_not_where_it_was_loaded_from(tiny_model_and_tokenizer, tmp_path):
    """The result cache is keyed by the fingerprint: a model whose config changes the forward pass
    (rms_norm_eps, rope) or stopping (generation eos ids) with the same weights must not be served
    the other's results; the same model saved and loaded again keeps its fingerprint."""
    from transformers import AutoModelForCausalLM

    model, _ = tiny_model_and_tokenizer
    before = engine.model_fingerprint(model)
    model.save_pretrained(tmp_path / "m")
    assert engine.model_fingerprint(AutoModelForCausalLM.from_pretrained(tmp_path / "m")) == before
    for config, key, value in [(model.config, "rms_norm_eps", 0.9), (model.generation_config, "eos_token_id", 7)]:
        old = getattr(config, key)
        setattr(config, key, value)
        assert engine.model_fingerprint(model) != before, key
        setattr(config, key, old)
    assert engine.model_fingerprint(model) == before
    model.config.odd = {(1, 2): "tuple key", 3: "int key", "s": {"b", "a"}}  # json.dumps refused these
    odd = engine.model_fingerprint(model)
    model.config.odd = {"s": {"a", "b"}, 3: "int key", (1, 2): "tuple key"}
    assert engine.model_fingerprint(model) == odd != before
