"""The engine's decoding paths: ``decode="static"`` (fixed shapes; one CUDA graph on CUDA)
gives the same greedy outputs as ``decode="plain"`` on the same device and dtype.

On CPU the static path runs its fixed-shape step uncaptured; the CUDA test (skipped without
a GPU) runs the captured step: ``.venv/bin/python -m pytest -q tests/test_engine_decode.py``.
"""

from __future__ import annotations

import pytest
import torch

from obliviate.errors import UserError
from obliviate.evaluation import engine
from obliviate.evaluation.engine.result_cache import ResultCache

QUESTIONS = [
    "Hi",
    "Who wrote the novel about the old man and the sea?",
    "What is the capital of France?",
    "Tell me about the history of the ancient city, the river that begins in the hills and the museum.",
    "How many legs does a spider have?",
    "Could you tell me where the river begins?",
    "Which year did the war end?",
    "Numbers like 1, 2, 3?",
]
REFERENCES = [None, "The author was born in a small town.", "Paris", None, "eight", None, None, "1, 2"]


def _generate(model, tokenizer, decode, **options):
    return engine.score_and_generate(model, tokenizer, (), QUESTIONS, decode=decode, precision="fp32", **options)[1]


@pytest.mark.parametrize("options", [
    dict(max_new_tokens=24, batch_size=3),  # rows refilled as prompts finish
    dict(max_new_tokens=17, batch_size=64, stop_strings=["e", "\n"]),  # stop strings end rows early
    dict(max_new_tokens=9, batch_size=2, references=REFERENCES),  # decoding starts after a forced prefix
])
def test_static_decode_equals_plain(tiny_model_and_tokenizer, options):
    model, tokenizer = tiny_model_and_tokenizer
    plain = _generate(model, tokenizer, "plain", **options)
    static = _generate(model, tokenizer, "static", **options)
    assert static == plain
    assert len(set(plain)) > 2 and any(plain)  # the outputs differ from prompt to prompt


def test_static_decode_runs_fixed_shapes(tiny_model_and_tokenizer):
    """Every static step has the same input shapes (what a CUDA graph needs); plain steps shrink."""
    model, tokenizer = tiny_model_and_tokenizer
    decoder = model.get_decoder()
    shapes = {"plain": [], "static": []}
    for decode in shapes:
        original = decoder.forward

        def record(*args, _original=original, _into=shapes[decode], **kwargs):
            if kwargs["input_ids"].shape[1] == 1:  # a decoding step
                _into.append((tuple(kwargs["input_ids"].shape), tuple(kwargs["attention_mask"].shape)))
            return _original(*args, **kwargs)

        decoder.forward = record
        try:
            _generate(model, tokenizer, decode, max_new_tokens=12, batch_size=4)
        finally:
            decoder.forward = original
    assert len(shapes["static"]) > 5 and len(set(shapes["static"])) == 1
    assert len(set(shapes["plain"])) > 1


def test_decode_option_is_checked_and_resolved(tiny_model_and_tokenizer):
    model, tokenizer = tiny_model_and_tokenizer
    assert engine.resolve_decode(model, "auto") == ("static" if model.device.type == "cuda" else "plain")
    assert engine.resolve_decode(model, "static") == "static"
    with pytest.raises(UserError, match="decode must be one of"):
        engine.greedy_generate(model, tokenizer, ["Hi"], max_new_tokens=2, decode="graph")


def test_static_generations_have_their_own_cache_key(tiny_model_and_tokenizer, tmp_path):
    """The static path rounds differently, so its generations are cached apart from plain's."""
    model, tokenizer = tiny_model_and_tokenizer
    cache = ResultCache(tmp_path, "ns")
    assert cache.generation_key("p", 8, ()) == cache.generation_key("p", 8, (), "plain")
    assert cache.generation_key("p", 8, (), "static") != cache.generation_key("p", 8, ())
    options = dict(max_new_tokens=6, precision="fp32", cache=cache)
    engine.score_and_generate(model, tokenizer, (), QUESTIONS[:2], decode="plain", **options)
    computed = cache.calls
    engine.score_and_generate(model, tokenizer, (), QUESTIONS[:2], decode="static", **options)
    assert cache.calls == computed + 2  # not served from plain's entries
    engine.score_and_generate(model, tokenizer, (), QUESTIONS[:2], decode="static", **options)
    assert cache.calls == computed + 2


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (the captured decoding step)")
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_captured_static_decode_equals_plain_on_cuda(tiny_model_and_tokenizer, precision):
    model, tokenizer = tiny_model_and_tokenizer
    model.to("cuda")
    options = dict(max_new_tokens=24, batch_size=3, precision=precision, references=REFERENCES)
    plain = engine.score_and_generate(model, tokenizer, (), QUESTIONS, decode="plain", **options)[1]
    static = engine.score_and_generate(model, tokenizer, (), QUESTIONS, decode="auto", **options)[1]
    assert static == plain
