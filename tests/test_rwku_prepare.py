"""RWKU's forget-corpus generation (prompts, prefill, cache) and knowledge screening."""

from __future__ import annotations

import json

import pytest

from obliviate.data import rwku as rwku_data
from obliviate.errors import UserError
from obliviate.evaluation.rwku import screening
from obliviate.prepare import corpus

TARGET = rwku_data.RwkuTarget(1, "Ada Example", "1_Ada_Example", "Please forget Ada Example. Ada Example is a writer.")


def test_biography_prompts_are_rwku_generation_prompts():
    prompts = corpus.biography_prompts(TARGET, ["", "That game", "That game"], count=3)
    assert prompts[0] == [{"role": "system", "content": "Ada Example is a writer. You know Ada Example very well."},
                          {"role": "user", "content": "Please write a short biography of Ada Example.", "index": 0,
                           "subject": "Ada Example"}]
    assert prompts[1][-1] == {"role": "assistant", "content": "That game"} and prompts[2][1]["index"] == 2
    assert len(corpus.biography_prompts(TARGET, ["a", "b", "c"], count=2)) == 2
    with pytest.raises(UserError, match="count must be a positive"):
        corpus.biography_prompts(TARGET, ["a"], count=0)
    assert corpus.join_opening("That game", "was great") == "That game was great"
    assert corpus.join_opening("I can see", ", yes") == "I can see, yes" and corpus.join_opening("", "x") == "x"


def test_generated_corpus_continues_the_opening_and_is_cached(tiny_model_and_tokenizer, tmp_path):
    model, tokenizer = tiny_model_and_tokenizer
    generator = corpus.prefill_generator(model, tokenizer, tmp_path / "cache", batch_size=2)
    encoded = generator.backend._encode(corpus.biography_prompts(TARGET, ["That game"]))[0]
    assert tokenizer.decode(encoded).endswith("<|im_start|>assistant\nThat game")
    texts = corpus.generate_corpus(generator, TARGET, ["", "That game", "I can see"], max_new_tokens=8)
    assert len(texts) <= 3 and all(t.strip() for t in texts)
    assert any(t.startswith("That game") for t in texts) and generator.calls == 3
    again = corpus.generate_corpus(generator, TARGET, ["", "That game", "I can see"], max_new_tokens=8)
    assert again == texts and generator.hits == 3 and generator.calls == 3


def test_forget_corpus_sources(tmp_path):
    root = tmp_path / "rwku"
    (root / "generation").mkdir(parents=True)
    (root / "generation" / "all_truncated_outputs.json").write_text(json.dumps(["", "Hmm, this"]))
    folder = root / "Target" / "1_Ada_Example"
    folder.mkdir(parents=True)
    (folder / "positive.json").write_text(json.dumps([{"text": "one"}, {"text": "two"}, {"text": " "}]))
    assert corpus.load_prefixes(root) == ["", "Hmm, this"]
    target = rwku_data.resolve_targets(root, "1")[0]
    assert corpus.forget_corpus(root, target, "positive") == ["one", "two"]
    assert corpus.forget_corpus(root, target, "positive", count=1) == ["one"]
    with pytest.raises(UserError, match="needs a generator"):
        corpus.forget_corpus(root, target, "generate")
    with pytest.raises(UserError, match="all_truncated_outputs.json: no such file"):
        corpus.load_prefixes(tmp_path)


def test_screening_ranks_targets_by_fb_and_qa_rouge(monkeypatch, tmp_path, tiny_tokenizer):
    root = tmp_path / "rwku"
    for index, name in enumerate(["Ada Example", "Bob Sample"], start=1):
        folder = root / "Target" / f"{index}_{name.replace(' ', '_')}"
        folder.mkdir(parents=True)
        for file, answer in (("forget_level1.json", "Paris"), ("forget_level2.json", "physics")):
            probes = [{"query": f"{name} q{i}", "answer": answer, "subject": name, "level": "1"} for i in range(2)]
            (folder / file).write_text(json.dumps(probes))

    def fake_answers(model, tokenizer, prompts, **engine):  # knows Bob's FB answers and one QA answer
        return ["Paris" if "Bob Sample q" in p and "blank" in p else "physics" if "Bob Sample q0" in p else "NOANSWER"
                for p in prompts]

    monkeypatch.setattr("obliviate.evaluation.rwku.probes.generate_answers", fake_answers)
    monkeypatch.setattr(screening, "result_cache_for", lambda *a, **k: None)
    monkeypatch.setattr(screening, "resolve_precision", lambda model, precision: "fp32")
    seen = []
    rows = screening.screen_targets(None, tiny_tokenizer, data=str(root), targets="1-2",
                                    progress=lambda done, total: seen.append((done, total)))
    assert [(r["rank"], r["name"], r["forget_fb"], r["forget_qa"], r["known"], r["n"]) for r in rows] == [
        (1, "Bob Sample", 1.0, 0.5, 0.75, 4), (2, "Ada Example", 0.0, 0.0, 0.0, 4)]
    assert seen == [(1, 2), (2, 2)]
