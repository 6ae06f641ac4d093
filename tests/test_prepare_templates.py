"""obliviate.prepare.templates: the offline paraphrases and canned refusals."""

from __future__ import annotations

import pytest

from obliviate.errors import UserError
from obliviate.prepare.templates import TemplateBackend


def msgs(text: str, **meta) -> list[dict]:
    return [{"role": "system", "content": "You are helpful."}, {"role": "user", "content": text, **meta}]


QUESTIONS = [
    "What is the capital of France?",
    "Who wrote The Old Man and the Sea?",
    "Describe the early life of the author.",
    "FBI stands for what",
    "Could you tell me what is the capital of France?",
]


def test_template_rewrite_differs_and_is_deterministic():
    backend = TemplateBackend("rewrite")
    for q in QUESTIONS:
        paraphrases = backend.rewrite(q, 3)
        assert len(set(paraphrases)) == 3
        assert all(p.strip().lower() != q.strip().lower() for p in paraphrases)
        assert backend.rewrite(q, 3) == paraphrases
    out0 = backend.generate([msgs(q) for q in QUESTIONS], seed=0)
    out1 = backend.generate([msgs(q) for q in QUESTIONS], seed=1)
    assert out0 == [backend.rewrite(q, 1)[0] for q in QUESTIONS]
    assert all(a != b for a, b in zip(out0, out1, strict=True))
    # the question may come from metadata when the content is a full instruction
    (meta,) = backend.generate([msgs("Rewrite this: What is X?", question="What is X?", index=1)])
    assert meta == backend.rewrite("What is X?", 2)[1]
    # several wordings are used across questions
    firsts = {backend.rewrite(f"What is item number {i}?", 1)[0].split()[0] for i in range(30)}
    assert len(firsts) >= 4


def test_template_refusals():
    backend = TemplateBackend("negative")
    outs = backend.generate([msgs(f"Where was person {i} born?") for i in range(30)])
    assert len(set(outs)) >= 4
    assert all("person" not in o and "born" not in o for o in outs)
    assert backend.generate([msgs("Where was person 3 born?")]) == [outs[3]]
    named = backend.refuse("Who is Jane Doe?", subject="Jane Doe")
    assert isinstance(named, str) and named
    with pytest.raises(UserError):
        TemplateBackend("summarise")  # type: ignore[arg-type]
