"""train.shared_forward: the slots whose answer logits a loss reads under the trained model
(forget and retain for GradDiff, ...) come from one forward pass instead of one each, so the host
queues the model's operators once a step (on a GPU a small model's step is bound by the host:
docs/speed-training.md). The same logits to float rounding; the reference's passes are not
served from it; training follows the separate-forward run."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from test_training import FORGET, RETAIN, config, state

from obliviate.config import ObjectiveConfig
from obliviate.objectives import OBJECTIVES, shared_slots
from obliviate.objectives.common import PACKING, SHARED, answer_logits, shared_answer_logits
from obliviate.prompts import encode_qa, pad_batch

SHORT = [("Who?", "Me."), ("Where did it happen?", "In the old town by the sea.")]
LONG = [("When was the bridge over the wide river finished, and by whom?", "In spring, by the builders of the "
         "northern guild, after nine years."), ("Why?", "Because.")]


def _enc(tokenizer, pairs):
    return pad_batch([encode_qa(tokenizer, q, a) for q, a in pairs], tokenizer.pad_token_id)


@pytest.mark.parametrize("packing", [False, True])
def test_one_forward_gives_each_slots_logits(tiny_model_and_tokenizer, packing):
    model, tokenizer = tiny_model_and_tokenizer
    model.eval()
    short, long = _enc(tokenizer, SHORT), _enc(tokenizer, LONG)
    assert short["input_ids"].shape[1] < long["input_ids"].shape[1]  # the short one is padded further
    calls = []
    hook = model.register_forward_pre_hook(lambda m, a, kw: calls.append(kw["input_ids"].shape), with_kwargs=True)
    token = PACKING.set(packing)
    try:
        with torch.no_grad():
            separate = [answer_logits(model, enc) for enc in (short, long)]
            calls.clear()
            shared = shared_answer_logits(model, [short, long])
    finally:
        PACKING.reset(token)
        hook.remove()
    assert len(calls) == 1
    for enc, (logits, targets, rows) in zip((short, long), separate):
        got = shared[id(enc)]
        torch.testing.assert_close(got[0], logits, rtol=1e-5, atol=1e-5)
        assert torch.equal(got[1], targets) and torch.equal(got[2], rows)


def test_answer_logits_takes_each_shared_result_once_and_never_without_gradients(tiny_model_and_tokenizer):
    model, tokenizer = tiny_model_and_tokenizer
    enc = _enc(tokenizer, SHORT)
    planted = (torch.zeros(1), torch.zeros(1, dtype=torch.long), torch.zeros(1, dtype=torch.long))
    other = copy.deepcopy(model)
    token = SHARED.set((model, {id(enc): planted}))
    try:
        with torch.no_grad():  # the reference's pass: computed, not served
            assert answer_logits(model, enc)[0].shape[0] > 1
        assert answer_logits(other, enc)[0].shape[0] > 1  # another model: computed
        assert answer_logits(model, enc) is planted
        assert answer_logits(model, enc)[0].shape[0] > 1  # taken once: the next call computes
    finally:
        SHARED.reset(token)


def test_which_slots_are_shared():
    cfg = ObjectiveConfig()
    assert shared_slots("graddiff", cfg) == ("forget", "retain")
    assert shared_slots("npo", cfg) == ("forget", "retain")
    assert shared_slots("idk_dpo", cfg) == ("forget_refusal", "forget", "retain")
    assert shared_slots("kl", cfg) == ("forget", "retain")
    assert shared_slots("ga", cfg) == ()  # one slot: nothing to share
    assert shared_slots("rmu", cfg) == () and shared_slots("sku", cfg) == ()
    assert shared_slots("graddiff", ObjectiveConfig(retain_loss="none")) == ()
    assert shared_slots("kl", ObjectiveConfig(kl_positions="all")) == ()  # every position: not answer logits
    for name, spec in OBJECTIVES.items():  # a declared slot is one the collator builds
        assert set(spec.shared) <= set(spec.slots) | {"retain"}, name


@pytest.mark.parametrize("method", ["graddiff", "npo", "idk_dpo", "kl"])
def test_training_with_a_shared_forward_follows_the_separate_run(tmp_path, tiny_model_and_tokenizer, method):
    """Two steps: one forward of the trained model a step instead of one per slot (the
    reference's passes apart), the same losses and weights to float rounding."""
    model, tokenizer = tiny_model_and_tokenizer
    before = state(model)
    runs = {}
    for shared in (False, True):
        cfg = config(max_steps=2, learning_rate=1e-2, batch_size=3, shared_forward=shared, precision="fp32",
                     optim="sgd")  # Adam turns rounding noise in near-zero gradients into +-lr steps
        cfg.method = method
        start, calls = copy.deepcopy(model), []
        start.register_forward_pre_hook(lambda m, a, kw: calls.append(torch.is_grad_enabled()), with_kwargs=True)
        trained = train_run(start, tokenizer, cfg, tmp_path / str(shared))
        log = [json.loads(line) for line in (tmp_path / str(shared) / "train_log.jsonl").read_text().splitlines()]
        runs[shared] = (state(trained), [row["loss"] for row in log], sum(calls))
    (alone, alone_loss, alone_calls), (joint, joint_loss, joint_calls) = runs[False], runs[True]
    slots = len(shared_slots(method, ObjectiveConfig()))
    assert alone_calls == 2 * slots and joint_calls == 2  # forwards with gradients, 2 steps
    assert joint_loss == pytest.approx(alone_loss, rel=1e-4, abs=1e-5)
    for key in before:
        torch.testing.assert_close(joint[key], alone[key], rtol=1e-4, atol=1e-5)
    assert any(not torch.equal(joint[key], before[key]) for key in before)


def train_run(model, tokenizer, cfg, out):
    from obliviate.training import train

    return train(model, tokenizer, forget=FORGET, retain=RETAIN, config=cfg, output_dir=out)


@pytest.mark.parametrize("method, overrides", [
    ("simnpo", {}), ("rt", {}), ("graddiff", {"retain_weight": 0.0}), ("graddiff", {"retain_loss": "kl"}),
    ("npo", {"retain_loss": "kl", "kl_positions": "all"}), ("kl", {"kl_positions": "all"}), ("ga", {}),
    ("idk_dpo", {"lora": True}), ("sku", {}),
])
def test_every_method_reads_what_it_declares(tmp_path, tiny_model_and_tokenizer, method, overrides):
    """One step with train.shared_forward under configs that change which slots a loss reads
    (the Trainer raises on a declared slot left unread): one forward with gradients a step
    where two or more slots are shared."""
    model, tokenizer = tiny_model_and_tokenizer
    cfg = config(max_steps=1, batch_size=2, shared_forward=True, precision="fp32")
    cfg.method = method
    cfg.train.lora.enabled = overrides.pop("lora", False)
    for key, value in overrides.items():
        setattr(cfg.objective, key, value)
    calls = []  # on the decoder: some PEFT versions call the top model's forward() directly, past its hooks
    model.model.register_forward_pre_hook(lambda m, a, kw: calls.append(torch.is_grad_enabled()), with_kwargs=True)
    train_run(model, tokenizer, cfg, tmp_path / "run")
    if len(shared_slots(method, cfg.objective)) > 1:
        assert sum(calls) == 1
