"""``decode_batch_size``: how many prompts decode together, apart from the scoring groups
(``batch_size``); the outputs and the scores stay those of ``batch_size`` alone."""

from __future__ import annotations

import pytest

from obliviate.errors import UserError
from obliviate.evaluation import engine
from obliviate.evaluation.engine import slot_decoder

QUESTIONS = [f"Question {i}: what happened in the year {1900 + 7 * i}?" for i in range(12)]
PAIRS = [(q, "It was a quiet year.") for q in QUESTIONS[:4]]


def _run(model, tokenizer, monkeypatch, **options):
    """(scores, generations, most rows busy in one decoding step)."""
    rows = []
    original = slot_decoder.SlotDecoder.step

    def step(self):
        rows.append(sum(p is not None for p in self.prompts))
        return original(self)

    monkeypatch.setattr(slot_decoder.SlotDecoder, "step", step)
    stats, texts = engine.score_and_generate(model, tokenizer, PAIRS, QUESTIONS, max_new_tokens=10, batch_size=3,
                                             precision="fp32", decode="plain", **options)
    return [s.sum_nll for s in stats], texts, max(rows)


def test_decode_batch_size_sets_the_rows_and_keeps_the_outputs(tiny_model_and_tokenizer, monkeypatch):
    model, tokenizer = tiny_model_and_tokenizer
    scores, texts, rows = _run(model, tokenizer, monkeypatch)
    assert rows == 3
    wide_scores, wide_texts, wide_rows = _run(model, tokenizer, monkeypatch, decode_batch_size=8)
    assert wide_rows == 8  # groups of 3 are scored until 8 prompts decode together
    assert wide_texts == texts and wide_scores == scores
    assert len(set(texts)) > 2


@pytest.mark.parametrize("bad", [0, -2, 1.5])
def test_decode_batch_size_is_checked(tiny_model_and_tokenizer, bad):
    model, tokenizer = tiny_model_and_tokenizer
    with pytest.raises(UserError, match="decode_batch_size must be a positive integer"):
        engine.greedy_generate(model, tokenizer, ["Hi"], max_new_tokens=2, decode_batch_size=bad)
