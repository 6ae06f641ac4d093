"""The engine calls the model the way transformers 5.24+ wants: the decoder's cache goes in as
``cache=`` (``past_key_values`` warns that it goes away in 5.40) and cache objects are built
through the ``Cache`` / ``DynamicCache`` API, with no deprecation warning on any path."""

from __future__ import annotations

import warnings

import pytest
import transformers
from packaging.version import Version

from obliviate.evaluation import engine
from obliviate.evaluation.engine.runner import ModelRunner


@pytest.mark.parametrize("decode", ["plain", "static"])
def test_engine_calls_raise_no_deprecation_warning(tiny_model_and_tokenizer, decode):
    model, tokenizer = tiny_model_and_tokenizer
    pairs = [("What is the capital of France?", "Paris"), ("What is the capital of France?", "Lyon")]
    questions = ["What is the capital of France?", "Hi"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        stats, texts = engine.score_and_generate(model, tokenizer, pairs, questions, references=["Paris", None],
                                                 max_new_tokens=6, precision="fp32", decode=decode)
    assert len(stats) == 2 and len(texts) == 2
    deprecations = [str(w.message) for w in caught if issubclass(w.category, (FutureWarning, DeprecationWarning))
                    and ("transformers" in w.filename or "past_key_values" in str(w.message))]
    assert not deprecations, deprecations


def test_runner_uses_the_current_cache_keyword(tiny_model_and_tokenizer):
    model, tokenizer = tiny_model_and_tokenizer
    runner = ModelRunner(model, tokenizer, precision="fp32", formatter=engine.plain_formatter(), max_length=64,
                         batch_size=2, max_tokens=64)
    # transformers >= 5.24: the decoder's forward takes cache=; 5.23 (the floor) still past_key_values=
    expected = "cache" if Version(transformers.__version__) >= Version("5.24") else "past_key_values"
    assert runner.cache_kwarg == expected
