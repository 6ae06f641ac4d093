"""obliviate.prepare.cache: keys, reruns without calls, resuming after an interruption."""

from __future__ import annotations

import json

import pytest

from obliviate.prepare.cache import CachedGenerator, GenerationCache, cache_key


def msgs(text: str, **meta) -> list[dict]:
    return [{"role": "system", "content": "You are helpful."}, {"role": "user", "content": text, **meta}]


class CountingBackend:
    """Deterministic fake backend that can fail after a number of generated items."""

    name = "counting"
    model_id = "fake-1"

    def __init__(self, batch_size: int = 2, fail_after: int | None = None):
        self.batch_size = batch_size
        self.fail_after = fail_after
        self.generated: list[str] = []

    def cache_key_fields(self):
        return {"backend": self.name, "model_id": self.model_id}

    def generate(self, prompts, *, max_new_tokens=256, temperature=0.0, top_p=1.0, seed=0):
        out = []
        for messages in prompts:
            if self.fail_after is not None and len(self.generated) >= self.fail_after:
                raise RuntimeError("interrupted")
            text = messages[-1]["content"]
            self.generated.append(text)
            out.append(f"out({text},{seed},{temperature})")
        return out


def test_cache_rerun_makes_no_calls(tmp_path):
    prompts = [msgs(f"q{i}") for i in range(5)] + [msgs("q0")]  # one duplicate
    first = CachedGenerator(CountingBackend(), GenerationCache(tmp_path))
    out1 = first.generate(prompts, seed=1)
    assert first.calls == 5 and first.hits == 0
    assert out1[0] == out1[5] == "out(q0,1,0.0)"

    backend = CountingBackend()
    second = CachedGenerator(backend, GenerationCache(tmp_path))
    assert second.generate(prompts, seed=1) == out1
    assert second.calls == 0 and second.batches == 0 and second.hits == 6
    assert backend.generated == []
    assert len(GenerationCache(tmp_path)) == 5


def test_cache_resumes_after_interruption(tmp_path):
    prompts = [msgs(f"q{i}") for i in range(7)]
    broken = CountingBackend(batch_size=2, fail_after=4)
    with pytest.raises(RuntimeError, match="interrupted"):
        CachedGenerator(broken, GenerationCache(tmp_path)).generate(prompts)
    assert len(GenerationCache(tmp_path)) == 4  # two full chunks were saved

    backend = CountingBackend(batch_size=2)
    gen = CachedGenerator(backend, GenerationCache(tmp_path))
    out = gen.generate(prompts)
    assert backend.generated == ["q4", "q5", "q6"]
    assert gen.hits == 4 and gen.calls == 3
    assert out == [f"out(q{i},0,0.0)" for i in range(7)]


def test_cache_keys_depend_on_params_and_backend():
    fields = {"backend": "b", "model_id": "m"}
    base = dict(max_new_tokens=10, temperature=0.0, top_p=1.0, seed=0)
    key = cache_key(fields, msgs("q"), **base)
    assert key == cache_key(fields, msgs("q"), **base)
    variants = [
        cache_key(fields, msgs("q"), **{**base, "seed": 1}),
        cache_key(fields, msgs("q"), **{**base, "temperature": 0.7}),
        cache_key(fields, msgs("q"), **{**base, "top_p": 0.9}),
        cache_key(fields, msgs("q"), **{**base, "max_new_tokens": 11}),
        cache_key({**fields, "model_id": "other"}, msgs("q"), **base),
        cache_key(fields, msgs("q2"), **base),
    ]
    assert len(set(variants)) == len(variants) and key not in variants


def test_cache_different_params_regenerate(tmp_path):
    backend = CountingBackend()
    gen = CachedGenerator(backend, GenerationCache(tmp_path))
    gen.generate([msgs("q")], seed=0)
    gen.generate([msgs("q")], seed=1)
    gen.generate([msgs("q")], seed=0, temperature=0.5)
    gen.generate([msgs("q")], seed=0)
    assert gen.calls == 3 and gen.hits == 1


def test_cache_ignores_corrupt_entry(tmp_path):
    cache = GenerationCache(tmp_path)
    gen = CachedGenerator(CountingBackend(), cache)
    gen.generate([msgs("q")])
    (path,) = [p for p in tmp_path.rglob("*.json")]
    path.write_text("{not json")
    gen.generate([msgs("q")])
    assert gen.calls == 2
    assert json.loads(path.read_text())["output"] == "out(q,0,0.0)"
