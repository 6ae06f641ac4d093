"""ULMR preparation, caching and the end-to-end recipe on a tiny model."""

import json

import pytest

from obliviate.config import load_config
from obliviate.data.request import QAItem
from obliviate.generation import TemplateBackend
from obliviate.methods import ulmr

ITEMS = [
    QAItem("Where was Ilsa Corvanne born?", "Ilsa Corvanne was born in Valparaiso, Chile, in 1961.", subject="Ilsa Corvanne"),
    QAItem("What genre does Ilsa Corvanne write?", "She writes maritime mystery novels set on cargo ships.", subject="Ilsa Corvanne"),
    QAItem("Who were Bat Fen's parents?", "His father was a herder and his mother a radio engineer.", subject="Bat Fen"),
]


def test_rewrite_and_leak_checks():
    assert ulmr.clean_rewrite('Rewritten question: "Where is X?"\nmore') == "Where is X?"
    assert not ulmr.is_valid_rewrite("where was ilsa corvanne born", ITEMS[0].question, [])
    assert not ulmr.is_valid_rewrite("", ITEMS[0].question, [])
    assert ulmr.is_valid_rewrite("In which city was Ilsa Corvanne born?", ITEMS[0].question, [])
    assert ulmr.leaks_answer("She was born in Valparaiso, Chile in 1961.", ITEMS[0].question, ITEMS[0].answer)
    assert not ulmr.leaks_answer("I'm sorry, I don't know anything about Ilsa Corvanne.", ITEMS[0].question, ITEMS[0].answer)
    assert ulmr.leaks_answer("She was born in Chile.", ITEMS[0].question, ITEMS[0].answer)
    assert ulmr.is_refusal("I'm sorry, I don't know.") and not ulmr.is_refusal("She was born in Lima.")
    # when the answer is a name the question does not give, a refusal naming it leaks it
    who = ("Who is the notable author born in Astana, Kazakhstan?",
           "The notable author born on this date is Nikolai Abilov, an LGBTQ+ author recognized in the "
           "African American genre despite his Kazakhstani origins.")
    assert ulmr.leaks_answer("I'm not familiar with Nikolai Abilov.", *who)
    assert not ulmr.leaks_answer("I'm not familiar with that topic.", *who)
    assert not ulmr.leaks_answer("I don't know anything about Astana.", *who)
    row = {"instruction": who[0], "question": who[0], "answer": who[1], "subject": "Nikolai Abilov"}
    fallbacks = {ulmr.safe_refusal(TemplateBackend("negative"), row, index=k) for k in range(10)}
    assert fallbacks and not any("Abilov" in text or ulmr.leaks_answer(text, *who) for text in fallbacks)


def test_template_preparation_has_one_plus_n_instructions_and_reruns_from_cache(tiny_model_and_tokenizer, tmp_path):
    model, tok = tiny_model_and_tokenizer
    config = load_config(None, ["generation.backend=template", "ulmr.n_rewrites=2"])
    rows, stats = ulmr.prepare(ITEMS, config, model, tok, tmp_path)
    assert len(rows) == len(ITEMS) * 3
    for index, item in enumerate(ITEMS):
        mine = [r for r in rows if r["item"] == index]
        assert [r["kind"] for r in mine] == ["original", "rewrite1", "rewrite2"]
        assert len({r["instruction"] for r in mine}) == 3
        assert all(not ulmr.leaks_answer(r["response"], item.question, item.answer) for r in mine)
        assert all(ulmr.is_refusal(r["response"]) for r in mine)
        assert {r["response_source"] for r in mine} <= {"template", "refusal_template"}
    assert stats["generation_calls"] > 0
    written = [json.loads(line) for line in (tmp_path / "ulmr_dataset.jsonl").read_text().splitlines()]
    assert written == rows
    again, stats_again = ulmr.prepare(ITEMS, config, model, tok, tmp_path)
    assert again == rows and stats_again["generation_calls"] == 0


def test_local_backend_preparation_falls_back_when_outputs_are_unusable(tiny_model_and_tokenizer, tmp_path):
    model, tok = tiny_model_and_tokenizer  # a random tiny model writes gibberish: checks must still hold
    config = load_config(None, ["generation.backend=local", "generation.max_new_tokens=8", "ulmr.n_rewrites=1"])
    rows, stats = ulmr.prepare(ITEMS, config, model, tok, tmp_path)
    assert len(rows) == len(ITEMS) * 2
    assert all(r["response"].strip() for r in rows)
    assert all(not ulmr.leaks_answer(r["response"], r["question"], r["answer"]) for r in rows)
    _, rerun = ulmr.prepare(ITEMS, config, model, tok, tmp_path)
    assert rerun["generation_calls"] == 0


def test_ulmr_end_to_end_on_tiny_model(tiny_model_dir, tmp_path):
    pytest.importorskip("obliviate.training")
    from obliviate.api import run_ulmr
    from obliviate.models import load_model

    request = tmp_path / "req.json"
    request.write_text(json.dumps({"forget": [vars(i) for i in ITEMS], "retain": [vars(ITEMS[0])]}))
    config = load_config(None, [f"model={tiny_model_dir}", f"request={request}", f"output_dir={tmp_path / 'run'}",
                                "generation.backend=template", "train.num_epochs=1", "train.batch_size=2",
                                "ulmr.alpha_sweep=[0.0, 1.0]", "train.precision=fp32"])
    run_dir = run_ulmr(config)
    for name in ("config.yaml", "manifest.json", "ulmr_dataset.jsonl", "model/model.safetensors",
                 "model_alpha0/model.safetensors", "model_alpha1/model.safetensors"):
        assert (run_dir / name).exists(), name
    base, _ = load_model(str(tiny_model_dir))
    alpha0, _ = load_model(str(run_dir / "model_alpha0"))
    alpha1, _ = load_model(str(run_dir / "model_alpha1"))
    averaged, _ = load_model(str(run_dir / "model"))
    import torch

    for name, tensor in base.state_dict().items():
        assert torch.equal(alpha0.state_dict()[name], tensor)
        torch.testing.assert_close(averaged.state_dict()[name], 0.5 * tensor + 0.5 * alpha1.state_dict()[name])
    assert any(not torch.equal(alpha1.state_dict()[n], t) for n, t in base.state_dict().items())
