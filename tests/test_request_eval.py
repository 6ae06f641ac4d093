"""The request benchmark: a model scored on a request's own sets with TOFU's per-item definitions,
and against its base model (evaluation/request/)."""

from __future__ import annotations

import json
import math

import pytest
from conftest import build_tiny_model

import obliviate.api as ob
from obliviate.data.request import DEMO_REQUEST, load_request
from obliviate.errors import UserError
from obliviate.evaluation.engine import answer_losses, greedy_generate
from obliviate.evaluation.metrics import rouge_l_recall

FAST = dict(precision="fp32", progress=False, max_new_tokens=4, batch_size=8, cache=False)


def _evaluate(model, tokenizer, out, **options):
    return ob.evaluate(model, tokenizer, benchmark="request", output_dir=out, **{**FAST, **options})


def test_each_set_is_scored_with_tofu_definitions(tiny_model_and_tokenizer, tmp_path):
    """Every value recomputed by plain scoring and generation of the request's own items: a set
    scored with another set's items, or retain scored as forget, fails here."""
    model, tokenizer = tiny_model_and_tokenizer
    request = load_request(DEMO_REQUEST)
    result = _evaluate(model, tokenizer, tmp_path / "out", request=str(DEMO_REQUEST), ds_size=3)
    env = json.loads((tmp_path / "out" / "request_eval.json").read_text())
    assert env["format"] == "obliviate.request_eval/1" and env["benchmark"] == "request"
    assert env["summary"] == result.summary and env["n_samples"] == {"forget": 3, "retain": 3, "holdout": 0}
    assert (tmp_path / "out" / "request_summary.json").is_file()
    assert "| forget | 3 |" in (tmp_path / "out" / "request_report.md").read_text()
    for name, fold in (("forget", lambda r: min(r, 1 / r)), ("retain", lambda r: max(0.0, 1 - r))):
        items, rows = getattr(request, name)[:3], env["tasks"][name]["items"]
        assert [(r["question"], r["answer"]) for r in rows] == [(i.question, i.answer) for i in items]
        generated = greedy_generate(model, tokenizer, [i.question for i in items], max_new_tokens=4, precision="fp32")
        para = greedy_generate(model, tokenizer, [i.paraphrased_question for i in items], max_new_tokens=4,
                               precision="fp32")
        ratios = []
        for item, row, text, para_text in zip(items, rows, generated, para):
            losses = answer_losses(model, tokenizer, [(item.question, a) for a in
                                                      [item.answer, item.paraphrased_answer, *item.perturbed_answers]],
                                   precision="fp32")
            avg = [s / n for s, n in losses]
            assert row["prob"] == pytest.approx(math.exp(-avg[0]), rel=1e-4)
            assert row["generated"] == text and row["rougeL_recall"] == rouge_l_recall(item.answer, text)
            assert row["rougeL_recall_paraphrased_question"] == rouge_l_recall(item.answer, para_text)
            ratios.append(math.exp(-sum(avg[2:]) / len(avg[2:])) / math.exp(-avg[1]))
            assert row["truth_ratio"] == pytest.approx(ratios[-1], rel=1e-4)
        aggregates = result.summary[name]
        assert aggregates["truth_ratio"] == pytest.approx(sum(map(fold, ratios)) / 3, rel=1e-4)
        assert aggregates["prob"] == pytest.approx(sum(r["prob"] for r in rows) / 3)
    assert result.summary["change"] is None and "no holdout set" in " ".join(result.summary["notes"])


def _own_answers_request(model, tokenizer, tmp_path):
    """A request whose answers are ``model``'s own greedy answers: ROUGE-L recall 1 for it."""
    request = load_request(DEMO_REQUEST)
    sets = {}
    for name in ("forget", "retain"):
        questions = [i.question for i in getattr(request, name)[:3]]
        answers = greedy_generate(model, tokenizer, questions, max_new_tokens=4, precision="fp32")
        assert all(a.strip() for a in answers), "the tiny model answered nothing"
        sets[name] = [{"question": q, "answer": a} for q, a in zip(questions, answers)]
    path = tmp_path / "own.json"
    path.write_text(json.dumps({"name": "own", **sets}))
    return path


def test_change_from_the_base_model_or_its_result_file(tiny_model_and_tokenizer, tmp_path):
    base, tokenizer = tiny_model_and_tokenizer
    base.save_pretrained(tmp_path / "base")
    tokenizer.save_pretrained(tmp_path / "base")
    request = _own_answers_request(base, tokenizer, tmp_path)
    other = build_tiny_model(tokenizer, seed=1)  # "the unlearned model": it never gives the base's answers
    alone = _evaluate(base, tokenizer, tmp_path / "base-eval", request=str(request))
    assert alone.summary["forget"]["rougeL"] == 1.0 and alone.summary["retain"]["rougeL"] == 1.0
    by_model = _evaluate(other, tokenizer, tmp_path / "m", request=str(request), base_model=str(tmp_path / "base"))
    by_file = _evaluate(other, tokenizer, tmp_path / "f", request=str(request),
                        base_result=str(tmp_path / "base-eval" / "request_eval.json"))
    summary = by_model.summary
    for name in ("forget", "retain"):
        assert summary["base"][name] == pytest.approx(alone.summary[name])
        assert summary["change"][name]["rougeL"] == pytest.approx(summary[name]["rougeL"] - 1.0)
        assert summary["change"][name]["prob"] == pytest.approx(summary[name]["prob"] - alone.summary[name]["prob"])
    assert summary["forget_drop"] == pytest.approx(1 - summary["forget"]["rougeL"]) and summary["forget_drop"] > 0.5
    assert summary["retain_kept"] == pytest.approx(summary["retain"]["rougeL"]) and "neighbors_kept" not in summary
    for key in ("base", "change", "forget_drop", "retain_kept"):
        assert by_file.summary[key] == summary[key]  # the same numbers, read from the file
    row = by_model.envelope["tasks"]["forget"]["items"][0]
    assert row["base"]["rougeL_recall"] == 1.0 and row["base"]["generated"] == row["answer"]
    assert "forget drop" in (tmp_path / "m" / "request_report.md").read_text()
    assert by_file.envelope["config"]["base"].startswith("result ")


def test_holdout_gives_the_mia_aucs_and_a_config_file_may_name_the_request(tiny_model_and_tokenizer, tmp_path):
    model, tokenizer = tiny_model_and_tokenizer
    holdout = tmp_path / "holdout.jsonl"
    holdout.write_text("\n".join(json.dumps({"question": f"Who wrote book {k}?", "answer": f"Author {k} did."})
                                 for k in range(3)))
    config = tmp_path / "eval.yaml"
    config.write_text(f"eval:\n  benchmark: request\n  request: {DEMO_REQUEST}\n  ds_size: 2\n")
    result = ob.evaluate(model, tokenizer, config=config, output_dir=tmp_path / "out", holdout=str(holdout),
                         paraphrased_questions=False, prompt_format="phi-1_5", **FAST)
    config_used = result.envelope["config"]
    assert config_used["prompt_format"] == "phi-1_5" and config_used["prompt_example"].startswith("Question: ")
    question = result.envelope["tasks"]["forget"]["items"][0]["question"]
    assert result.envelope["tasks"]["forget"]["items"][0]["generated"] == greedy_generate(
        model, tokenizer, [question], max_new_tokens=4, precision="fp32", prompt_format="phi-1_5")[0]
    assert result.envelope["n_samples"] == {"forget": 2, "retain": 2, "holdout": 2}
    assert 0.0 <= result.summary["extras"]["mia_min_k_auc"] <= 1.0 and result.summary["extras"]["holdout_n"] == 2
    assert "rougeL_recall_paraphrased_question" not in result.envelope["tasks"]["forget"]["items"][0]


def _write(path, data) -> str:
    path.write_text(json.dumps(data))
    return str(path)


def test_bad_input_is_one_line_naming_the_option_before_the_model_loads(tmp_path, monkeypatch):
    import obliviate.models

    monkeypatch.setattr(obliviate.models, "load_model", lambda *a, **k: pytest.fail("the model was loaded"))
    passages = _write(tmp_path / "p.json", {"forget": [{"text": "A leaked document."}]})
    empty = _write(tmp_path / "empty.json", [])
    other = _write(tmp_path / "other.json", {"format": "obliviate.request_eval/1", "tasks": {
        "forget": {"items": [{"question": "q", "answer": "a"}], "aggregates": {}}, "retain": {"items": []}}})
    cases = [({}, "option 'request': no request given; pass --request FILE"),
             ({"request": str(tmp_path / "nope.json")}, "option 'request': .*nope.json: no such request file"),
             ({"request": passages}, "option 'request': .*the forget set holds raw passages only"),
             ({"request": str(DEMO_REQUEST), "holdout": empty}, "option 'holdout': .*empty.json holds no items"),
             ({"request": str(DEMO_REQUEST), "holdout": str(tmp_path / "no.json")}, "option 'holdout': .*no such file"),
             ({"request": str(DEMO_REQUEST), "base_result": other},
              "option 'base_result': .*its forget set is not the evaluated one"),
             ({"request": str(DEMO_REQUEST), "base_result": str(tmp_path / "x.json")}, "'base_result': .*no such file"),
             ({"request": str(DEMO_REQUEST), "base_model": "./missing"}, "option 'base_model': ./missing: no such"),
             ({"request": str(DEMO_REQUEST), "base_model": "m", "base_result": other}, "either base_model or"),
             ({"request": str(DEMO_REQUEST), "prompt_format": "phi-1_5", "system_prompt": "Be brief."},
              "option 'system_prompt' belongs to the chat template")]
    for options, message in cases:
        with pytest.raises(UserError, match=message) as caught:
            ob.evaluate("some-model", benchmark="request", progress=False, **options)
        assert "\n" not in str(caught.value)


def test_the_command_line_names_the_missing_request(capsys):
    from obliviate.cli import main

    assert main(["eval", "--benchmark", "request", "--model", "some-model"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "option 'request': no request given" in err
