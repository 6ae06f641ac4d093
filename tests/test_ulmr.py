"""ULMR preparation, caching and the end-to-end recipe on a tiny model."""

import json

import pytest

from obliviate.config import load_config
from obliviate.data.request import QAItem
from obliviate.methods import ulmr
from obliviate.prepare.checks import is_refusal, leaks_answer

ITEMS = [
    QAItem("Where was Ilsa Corvanne born?", "Ilsa Corvanne was born in Valparaiso, Chile, in 1961.", subject="Ilsa Corvanne"),
    QAItem("What genre does Ilsa Corvanne write?", "She writes maritime mystery novels set on cargo ships.", subject="Ilsa Corvanne"),
    QAItem("Who were Bat Fen's parents?", "His father was a herder and his mother a radio engineer.", subject="Bat Fen"),
]


def test_template_preparation_has_one_plus_n_instructions_and_reruns_from_cache(tiny_model_and_tokenizer, tmp_path):
    model, tok = tiny_model_and_tokenizer
    config = load_config(None, ["generation.backend=template", "ulmr.n_rewrites=2"])
    rows, stats = ulmr.prepare(ITEMS, config, model, tok, tmp_path)
    assert len(rows) == len(ITEMS) * 3
    for index, item in enumerate(ITEMS):
        mine = [r for r in rows if r["item"] == index]
        assert [r["kind"] for r in mine] == ["original", "rewrite1", "rewrite2"]
        assert len({r["instruction"] for r in mine}) == 3
        assert all(not leaks_answer(r["response"], item.question, item.answer) for r in mine)
        assert all(is_refusal(r["response"]) for r in mine)
        assert {r["response_source"] for r in mine} <= {"template", "refusal_template"}
    assert stats["generation_calls"] > 0
    written = [json.loads(line) for line in (tmp_path / "ulmr_dataset.jsonl").read_text().splitlines()]
    assert written == rows
    again, stats_again = ulmr.prepare(ITEMS, config, model, tok, tmp_path)
    assert again == rows and stats_again["generation_calls"] == 0


def test_rewrites_past_the_template_wordings_are_counted_and_warned(tiny_model_and_tokenizer, tmp_path, capsys):
    """ulmr.n_rewrites=12 where only the 10 template wordings are there: two rewrites per question
    repeat one (the same instruction trained twice); they were kept without a word."""
    model, tok = tiny_model_and_tokenizer
    config = load_config(None, ["generation.backend=template", "ulmr.n_rewrites=12"])
    rows, stats = ulmr.prepare(ITEMS, config, model, tok, tmp_path)
    repeats = 0
    for index in range(len(ITEMS)):
        instructions = [r["instruction"] for r in rows if r["item"] == index]
        assert len(instructions) == 13
        repeats += len(instructions) - len(set(instructions))
    assert repeats > 0 and stats["rewrite_repeats"] == repeats
    assert f"ULMR: {repeats} rewrite(s) repeat an earlier one" in capsys.readouterr().out
    _, fine = ulmr.prepare(ITEMS, load_config(None, ["generation.backend=template", "ulmr.n_rewrites=2"]), model,
                           tok, tmp_path / "two")
    assert fine["rewrite_repeats"] == 0


def test_local_backend_preparation_falls_back_when_outputs_are_unusable(tiny_model_and_tokenizer, tmp_path):
    model, tok = tiny_model_and_tokenizer  # a random tiny model writes gibberish: checks must still hold
    config = load_config(None, ["generation.backend=local", "generation.max_new_tokens=8", "ulmr.n_rewrites=1"])
    rows, stats = ulmr.prepare(ITEMS, config, model, tok, tmp_path)
    assert len(rows) == len(ITEMS) * 2
    assert all(r["response"].strip() for r in rows)
    assert all(not leaks_answer(r["response"], r["question"], r["answer"]) for r in rows)
    _, rerun = ulmr.prepare(ITEMS, config, model, tok, tmp_path)
    assert rerun["generation_calls"] == 0


def test_ulmr_end_to_end_on_tiny_model(tiny_model_dir, tmp_path):
    pytest.importorskip("obliviate.training")
    from obliviate.api import unlearn
    from obliviate.models import load_model

    request = tmp_path / "req.json"
    request.write_text(json.dumps({"forget": [vars(i) for i in ITEMS], "retain": [vars(ITEMS[0])]}))
    config = load_config(None, ["method=ulmr", f"model={tiny_model_dir}", f"request={request}",
                                f"output_dir={tmp_path / 'run'}", "generation.backend=template", "train.num_epochs=1", "train.batch_size=2",
                                "ulmr.alpha_sweep=[0.0, 1.0]", "train.precision=fp32"])
    run_dir = unlearn(config)
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["method"] == "ulmr" and manifest["device"] == "cpu"
    assert set(manifest["models"]) == {"model", "model_alpha0", "model_alpha1"}
    assert manifest["method_stats"]["ulmr"]["negative_fallbacks"] >= 0 and manifest["method_stats"]["alpha"] == 0.5
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
    # alpha 0 is the base bit for bit: the tensor hash says so (the files' hash cannot: other files)
    weights = manifest["models_weights_sha256"]
    assert weights["model_alpha0"] == manifest["base_model"]["weights_sha256"] != weights["model_alpha1"]


RETAIN = [QAItem("Who wrote 'The Salt Ledger'?", "Tomas Rehn wrote 'The Salt Ledger' in 1984.", subject="Tomas Rehn"),
          QAItem("Where does Tomas Rehn live?", "Tomas Rehn lives in Bergen, Norway.", subject="Tomas Rehn")]


@pytest.mark.parametrize("mix", [False, True])
def test_retain_mix_puts_retain_answers_in_the_sft_set_only_when_on(tiny_model_and_tokenizer, tmp_path, mix):
    import copy

    import torch

    from obliviate.data.request import UnlearningRequest
    from obliviate.methods.pipeline import Run

    model, tok = tiny_model_and_tokenizer
    config = load_config(None, ["generation.backend=template", "ulmr.n_rewrites=1", f"ulmr.retain_mix={str(mix).lower()}"])
    trained = {}

    def train(*, forget, objective, retain=()):
        trained.update(forget=forget, objective=objective, retain=list(retain))
        return copy.deepcopy(model)

    run = Run(config, UnlearningRequest(forget=ITEMS, retain=RETAIN), model, tok, tmp_path, torch.device("cpu"))
    run.train = train  # record what would be trained
    ulmr.recipe(run)
    written = [json.loads(line) for line in (tmp_path / "ulmr_dataset.jsonl").read_text().splitlines()]
    mixed = [r for r in written if r["kind"] == "retain"]
    sft = {(i.question, i.answer) for i in trained["forget"]}
    expected = {(i.question, i.answer) for i in RETAIN}
    assert run.stats["ulmr"]["retain_mix_items"] == len(mixed) == (len(RETAIN) if mix else 0)
    assert run.stats["ulmr"]["negative_items"] == len(ITEMS) * 2 == len(written) - len(mixed)
    assert (expected <= sft) is mix and not (expected & sft if not mix else set())
    assert {(r["question"], r["response"]) for r in mixed} == (expected if mix else set())
    assert trained["objective"] == "finetune" and len(trained["forget"]) == len(written)
    forget_rows = [r for r in written if r["kind"] != "retain"]
    assert all(is_refusal(r["response"]) for r in forget_rows)  # the forget side is unchanged


def test_retain_mix_without_a_retain_set_is_a_user_error(tiny_model_and_tokenizer, tmp_path):
    from obliviate.errors import UserError

    model, tok = tiny_model_and_tokenizer
    config = load_config(None, ["generation.backend=template", "ulmr.retain_mix=true"])
    with pytest.raises(UserError, match="ulmr.retain_mix"):
        ulmr.prepare(ITEMS, config, model, tok, tmp_path, retain=[])
    assert not (tmp_path / "ulmr_dataset.jsonl").exists()


def test_a_generator_whose_outputs_all_fall_back_is_warned_about(tiny_model_and_tokenizer, tmp_path, monkeypatch,
                                                                  capsys):
    """A server answering empty content made every negative a refusal template with exit 0 and
    nothing said: the 'LLM' dataset was all canned. Now the run says so."""
    from obliviate.methods import ulmr
    from obliviate.prepare.cache import CachedGenerator

    class Silent:
        name, model_id, batch_size = "silent", "silent-1", 8

        def generate(self, prompts, **kwargs):
            return ["" for _ in prompts]

        def cache_key_fields(self):
            return {"backend": self.name, "model_id": self.model_id}

    monkeypatch.setattr(ulmr, "make_generator", lambda *args, **kwargs: CachedGenerator(Silent(), None))
    model, tokenizer = tiny_model_and_tokenizer
    config = load_config(None, ["generation.backend=local", "ulmr.n_rewrites=1", "ulmr.max_attempts=1"])
    rows, stats = ulmr.prepare(ITEMS[:2], config, model, tokenizer, tmp_path)
    assert stats["negative_fallbacks"] == len(rows) == 4
    assert "ULMR: every negative response (4) is a refusal template" in capsys.readouterr().out
