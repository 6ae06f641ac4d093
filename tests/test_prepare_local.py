"""obliviate.prepare.local: batched chat generation with a tiny local transformers model."""

from __future__ import annotations

from obliviate.hardware import autocast_context
from obliviate.prepare.backend import GenerationBackend
from obliviate.prepare.cache import CachedGenerator, GenerationCache
from obliviate.prepare.local import LocalHFBackend


def msgs(text: str, **meta) -> list[dict]:
    return [{"role": "system", "content": "You are helpful."}, {"role": "user", "content": text, **meta}]


LOCAL_PROMPTS = [
    msgs("hi"),
    msgs("What is the capital of France?"),
    msgs("Tell me about the long history of the ancient city and the traders who founded it."),
    msgs("ok", question="metadata is ignored"),
    msgs("Who wrote the novel?"),
]


def test_local_backend_greedy_deterministic_and_batch_invariant(tiny_model_and_tokenizer):
    model, tokenizer = tiny_model_and_tokenizer
    padding_side = tokenizer.padding_side
    backend = LocalHFBackend(model, tokenizer, batch_size=3, model_id="tiny")
    assert isinstance(backend, GenerationBackend)
    out = backend.generate(LOCAL_PROMPTS, max_new_tokens=8)
    assert len(out) == len(LOCAL_PROMPTS) and all(isinstance(o, str) for o in out)
    assert any(o for o in out)
    assert backend.generate(LOCAL_PROMPTS, max_new_tokens=8) == out
    singles = [backend.generate([p], max_new_tokens=8)[0] for p in LOCAL_PROMPTS]
    assert singles == out
    assert tokenizer.padding_side == padding_side
    fields = backend.cache_key_fields()
    assert fields["backend"] == "local-hf" and fields["model_id"] == "tiny" and len(fields["weights"]) == 64


def test_local_backend_sampling_seeded_and_no_pad_token(tiny_model_and_tokenizer):
    import torch

    model, tokenizer = tiny_model_and_tokenizer
    tokenizer.pad_token = None
    model.train()
    backend = LocalHFBackend(model, tokenizer, batch_size=2)
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = backend.generate(LOCAL_PROMPTS, max_new_tokens=8, temperature=1.0, seed=5)
    assert torch.rand(1) == before  # global RNG state untouched
    b = backend.generate(LOCAL_PROMPTS, max_new_tokens=8, temperature=1.0, seed=5)
    c = backend.generate(LOCAL_PROMPTS, max_new_tokens=8, temperature=1.0, seed=6)
    assert a == b and a != c
    assert model.training  # restored
    assert tokenizer.pad_token is None


def test_local_backend_with_cache(tiny_model_and_tokenizer, tmp_path):
    model, tokenizer = tiny_model_and_tokenizer
    gen = CachedGenerator(LocalHFBackend(model, tokenizer, model_id="tiny"), GenerationCache(tmp_path))
    out = gen.generate(LOCAL_PROMPTS, max_new_tokens=6)
    again = CachedGenerator(LocalHFBackend(model, tokenizer, model_id="tiny"), GenerationCache(tmp_path))
    assert again.generate(LOCAL_PROMPTS, max_new_tokens=6) == out and again.calls == 0


def test_local_backend_cache_follows_the_weights_not_the_name(tiny_model_and_tokenizer, tmp_path):
    """A checkpoint retrained under the same path (same model_id) must not be served the old
    outputs: the key holds the weights' and tokenizer's fingerprints."""
    import torch

    model, tokenizer = tiny_model_and_tokenizer
    cache = GenerationCache(tmp_path)
    first = CachedGenerator(LocalHFBackend(model, tokenizer, model_id="same/path"), cache)
    first.generate(LOCAL_PROMPTS, max_new_tokens=6)
    with torch.no_grad():
        next(model.parameters()).add_(0.5)  # "retrained" in place
    again = CachedGenerator(LocalHFBackend(model, tokenizer, model_id="same/path"), cache)
    again.generate(LOCAL_PROMPTS, max_new_tokens=6)
    assert again.hits == 0 and again.calls == len(LOCAL_PROMPTS)
    tokenizer.chat_template = tokenizer.chat_template + " "  # another template renders other prompts
    third = CachedGenerator(LocalHFBackend(model, tokenizer, model_id="same/path"), cache)
    third.generate(LOCAL_PROMPTS, max_new_tokens=6)
    assert third.hits == 0
    fourth = CachedGenerator(LocalHFBackend(model, tokenizer, model_id="same/path"), cache)
    fourth.generate(LOCAL_PROMPTS, max_new_tokens=6)
    assert fourth.calls == 0  # unchanged weights and tokenizer: served


def test_autocast_context_cpu():
    import torch

    with autocast_context("cpu"):
        x = torch.ones(2, 2) @ torch.ones(2, 2)
    assert x.dtype in (torch.float32, torch.bfloat16)
