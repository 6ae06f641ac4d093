"""obliviate.prepare.retry: which items are asked again, at which temperature and seed, and the fallback."""

from __future__ import annotations

from obliviate.config import GenerationConfig
from obliviate.prepare.retry import SAMPLING_TEMPERATURE, generate_until_valid


class ScriptedGenerator:
    """Answers from a script {(index, try number): text}; records every call."""

    def __init__(self, script: dict[tuple[int, int], str]):
        self.script = script
        self.calls: list[dict] = []

    def generate(self, prompts, *, max_new_tokens, temperature, top_p, seed):
        self.calls.append({"indices": [p[0]["index"] for p in prompts], "temperature": temperature,
                           "seed": seed, "max_new_tokens": max_new_tokens, "top_p": top_p})
        attempt = len(self.calls) - 1
        return [self.script.get((p[0]["index"], attempt), "bad") for p in prompts]


def prompt(i: int) -> list[dict]:
    return [{"role": "user", "content": f"item {i}", "index": i}]


def accept(i: int, output: str) -> str | None:
    return output.upper() if output.startswith("good") else None


def test_only_pending_items_are_retried_by_sampling_then_fall_back():
    generator = ScriptedGenerator({(0, 0): "good0", (2, 1): "good2"})
    fallbacks: list[int] = []

    def on_fallback(i: int) -> str:
        fallbacks.append(i)
        return f"fallback{i}"

    gen = GenerationConfig(max_new_tokens=12, temperature=0.0)
    out = generate_until_valid(generator, range(4), prompt, accept, gen, attempts=3, seed=7, on_fallback=on_fallback)
    assert out == {0: "GOOD0", 2: "GOOD2", 1: "fallback1", 3: "fallback3"}
    assert [c["indices"] for c in generator.calls] == [[0, 1, 2, 3], [1, 2, 3], [1, 3]]
    assert [c["temperature"] for c in generator.calls] == [0.0, SAMPLING_TEMPERATURE, SAMPLING_TEMPERATURE]
    assert [c["seed"] for c in generator.calls] == [7, 8, 9]
    assert all(c["max_new_tokens"] == 12 and c["top_p"] == 1.0 for c in generator.calls)
    assert fallbacks == [1, 3]


def test_first_attempt_samples_and_a_hot_temperature_is_kept():
    generator = ScriptedGenerator({(0, 0): "good", (1, 0): "good"})
    gen = GenerationConfig(temperature=1.2)
    out = generate_until_valid(generator, [0, 1], prompt, accept, gen, attempts=2, seed=100,
                               on_fallback=lambda i: "unused", first_attempt=1)
    assert out == {0: "GOOD", 1: "GOOD"}
    assert generator.calls == [{"indices": [0, 1], "temperature": 1.2, "seed": 101, "max_new_tokens": 96, "top_p": 1.0}]


def test_nothing_pending_makes_no_call():
    generator = ScriptedGenerator({})
    assert generate_until_valid(generator, [], prompt, accept, GenerationConfig(), attempts=2, seed=0,
                                on_fallback=lambda i: "x") == {}
    assert generator.calls == []
