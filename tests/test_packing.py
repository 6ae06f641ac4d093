"""train.packing: answer-token losses run a padded batch as one row of its real tokens
(positions restart per item). The same logits, targets and rows as the padded forward, no
padding computed; batches it cannot pack exactly run padded; training follows the same path."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from test_training import FORGET, RETAIN, config, state

from obliviate.objectives.common import PACKING, answer_logits
from obliviate.prompts import encode_qa, pad_batch
from obliviate.training import train

PAIRS = [("Who wrote it?", "A quiet author from the north wrote it in one winter."), ("Where?", "Here."),
         ("When was the bridge over the wide river finished?", "In spring.")]


def _batch(tokenizer, side: str = "right") -> dict:
    return pad_batch([encode_qa(tokenizer, q, a) for q, a in PAIRS], tokenizer.pad_token_id, side=side)


def _run(model, enc, packing: bool, all_tokens: bool = False):
    """answer_logits with PACKING on or off, and the token counts of every forward's input."""
    widths = []
    hook = model.register_forward_pre_hook(lambda m, a, kw: widths.append(kw["input_ids"].shape), with_kwargs=True)
    token = PACKING.set(packing)
    try:
        with torch.no_grad():
            return answer_logits(model, enc, all_tokens=all_tokens), widths
    finally:
        PACKING.reset(token)
        hook.remove()


@pytest.mark.parametrize("all_tokens", [False, True])
def test_packed_logits_equal_the_padded_ones(tiny_model_and_tokenizer, all_tokens):
    model, tokenizer = tiny_model_and_tokenizer
    model.eval()
    enc = _batch(tokenizer)
    assert (enc["attention_mask"] == 0).any(), "the batch must hold padding to mean anything"
    (padded, target, rows), padded_shapes = _run(model, enc, packing=False, all_tokens=all_tokens)
    (packed, packed_target, packed_rows), packed_shapes = _run(model, enc, packing=True, all_tokens=all_tokens)
    torch.testing.assert_close(packed, padded, rtol=1e-5, atol=1e-5)
    assert torch.equal(packed_target, target) and torch.equal(packed_rows, rows)
    assert padded_shapes == [enc["input_ids"].shape]
    assert packed_shapes == [torch.Size([1, int(enc["attention_mask"].sum())])]  # no pad token computed


def test_a_left_padded_batch_runs_padded(tiny_model_and_tokenizer):
    """Left padding puts the padded batch's positions after the pads: packing (positions from 0)
    would compute other logits, so such a batch is not packed."""
    model, tokenizer = tiny_model_and_tokenizer
    model.eval()
    enc = _batch(tokenizer, side="left")
    (padded, *_), _ = _run(model, enc, packing=False)
    (packed, *_), shapes = _run(model, enc, packing=True)
    assert shapes == [enc["input_ids"].shape] and torch.equal(packed, padded)


@pytest.mark.parametrize("method", ["npo", "graddiff"])
def test_training_with_packing_follows_the_padded_run(tmp_path, tiny_model_and_tokenizer, method):
    """Two steps of NPO (its reference pass packs too) and GradDiff (forget and retain): the
    losses and the weights agree with the padded run to float rounding, and differ from the start."""
    model, tokenizer = tiny_model_and_tokenizer
    before = state(model)
    runs = {}
    for packing in (False, True):
        cfg = config(max_steps=2, learning_rate=1e-3, batch_size=3, packing=packing, precision="fp32")
        cfg.method = method
        start, rows = copy.deepcopy(model), []  # rows of every forward's input (the reference's too)
        start.register_forward_pre_hook(lambda m, a, kw: rows.append(kw["input_ids"].shape[0]), with_kwargs=True)
        trained = train(start, tokenizer, forget=FORGET, retain=RETAIN, config=cfg, output_dir=tmp_path / str(packing))
        log = [json.loads(line) for line in (tmp_path / str(packing) / "train_log.jsonl").read_text().splitlines()]
        runs[packing] = (state(trained), [row["loss"] for row in log])
        assert rows and set(rows) == ({1} if packing else {3})  # packed: one row per forward
    (padded, padded_loss), (packed, packed_loss) = runs[False], runs[True]
    assert packed_loss == pytest.approx(padded_loss, rel=1e-4, abs=1e-5)
    for key in before:
        torch.testing.assert_close(packed[key], padded[key], rtol=1e-4, atol=1e-5)
    assert any(not torch.equal(packed[key], before[key]) for key in before)
