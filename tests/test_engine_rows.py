"""The row bookkeeping both decoders share (engine/rows.py): admission, capacity, finishing."""

from __future__ import annotations

import pytest
import torch

from obliviate.evaluation.engine.rows import DecodingRows
from obliviate.evaluation.engine.slot_decoder import SlotDecoder
from obliviate.evaluation.engine.static_decoder import StaticSlotDecoder
from obliviate.evaluation.engine.trie import Prompt


class NoStopStrings:
    def __init__(self, stop_at=None):
        self.stop_at = stop_at

    def found_in(self, tokens):
        return self.stop_at is not None and self.stop_at in tokens


def _prompt(cached: int, forced=(7,)) -> Prompt:
    prompt = Prompt("q", [1] * cached)
    prompt.kv = [(torch.zeros(2, cached, 4), torch.zeros(2, cached, 4))]
    prompt.forced = list(forced)
    return prompt


def test_rows_are_taken_and_released():
    rows = DecodingRows(3, capacity=10, max_new_tokens=4)
    assert rows.free_rows() == [0, 1, 2] and not rows.busy()
    prompt = _prompt(5, forced=(7, 8))
    assert rows.take_row(1, prompt) == 5
    assert rows.free_rows() == [0, 2] and rows.busy()
    assert rows.outputs[1] == [7, 8]  # the forced prefix is the output's beginning
    assert rows.append(1, 9, False, NoStopStrings()) is None
    assert rows.append(1, 10, False, NoStopStrings()) == (prompt, [7, 8, 9, 10])  # max_new_tokens reached
    assert rows.free_rows() == [0, 1, 2] and not rows.busy() and rows.outputs[1] == []


@pytest.mark.parametrize("stop, stop_strings", [(True, NoStopStrings()), (False, NoStopStrings(stop_at=9))])
def test_a_stop_token_or_string_finishes_a_row(stop, stop_strings):
    rows = DecodingRows(1, capacity=50, max_new_tokens=20)
    prompt = _prompt(3)
    rows.take_row(0, prompt)
    assert rows.append(0, 9, stop, stop_strings) == (prompt, [7, 9])
    assert not rows.busy()


def test_a_prompt_that_does_not_fit_the_capacity_is_refused():
    rows = DecodingRows(2, capacity=10, max_new_tokens=6)
    rows.take_row(0, _prompt(5))  # 5 cached + 6 new - 1 forced = 10: fits
    with pytest.raises(RuntimeError, match="do not fit the decoding capacity 10"):
        rows.take_row(1, _prompt(6))
    assert rows.free_rows() == [1]


def test_both_decoders_share_the_bookkeeping():
    assert issubclass(SlotDecoder, DecodingRows) and issubclass(StaticSlotDecoder, DecodingRows)
    for decoder in (SlotDecoder, StaticSlotDecoder):
        assert "free_rows" not in vars(decoder) and "busy" not in vars(decoder)
