"""TOFU evaluation and the scoring engine, on the tiny random model and a tiny TOFU directory.

The integration test at the end uses the real default model and ../shared/data/tofu; it runs
only with OBLIVIATE_INTEGRATION=1 (it takes minutes).
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from obliviate.data.request import QAItem
from obliviate.errors import UserError
from obliviate.evaluation import engine, metrics, report, tofu
from obliviate.prompts import encode_qa, pad_batch

TOFU_DIR = Path(__file__).resolve().parents[2] / "shared/data/tofu"
# Exactness checks compare with a plain fp32 forward, so they ask for fp32: "auto" is bf16
# autocast on a CPU with AMX / AVX512-BF16 (and on bf16 GPUs), which moves NLLs by ~1e-3.
FP32 = "fp32"

FICTION = [
    ("Who is the author born in the small town?", "The author was born in a small town near the mountains.",
     "She was born in a little town close to the hills.",
     ["He was born in a big city by the sea.", "She was born on a farm in the valley.",
      "The writer grew up in the capital.", "He was born abroad.", "She was born on a ship."]),
    ("What did she study at the university?", "She studied physics at the university and became a famous scientist.",
     "Physics was her subject at university.",
     ["She studied law.", "She studied music at a college.", "She studied history.", "She studied art.",
      "She never went to university."]),
    ("When did he publish his first book?", "He published his first book when he was twenty years old.",
     "His first book came out when he was twenty.",
     ["At forty.", "When he was ten years old.", "He never published a book.", "At sixty.", "Last year."]),
    ("What are her parents' jobs?", "Her parents were a teacher and a doctor.",
     "A teacher and a doctor raised her.",
     ["A baker and a pilot.", "Two lawyers.", "A farmer and a nurse.", "A sailor and a cook.", "Artists."]),
]
OPTIONS = [
    ("What is the capital of France?", "Paris", ["London", "Berlin", "Rome"]),
    ("How many legs does a spider have?", "eight", ["six", "ten", "four"]),
    ("At what temperature does water boil at sea level?", "one hundred degrees", ["fifty degrees", "zero", "ten"]),
]


def _perturbed(records):
    return [{"question": q, "answer": a, "paraphrased_answer": p, "perturbed_answer": pert,
             "paraphrased_question": q} for q, a, p, pert in records]


@pytest.fixture
def tofu_dir(tmp_path) -> Path:
    """A TOFU-format directory: forget01 (2 items), retain (2), real authors / world facts
    (3 each, one JSON array per file) and holdout01 (2, several arrays one per line)."""
    root = tmp_path / "tofu"
    root.mkdir()
    files = {
        "forget01_perturbed": _perturbed(FICTION[:2]),
        "retain_perturbed": _perturbed(FICTION[2:]),
        "real_authors_perturbed": [{"question": q, "answer": a, "perturbed_answer": p} for q, a, p in OPTIONS],
        "world_facts_perturbed": [{"question": q, "answer": a, "perturbed_answer": p} for q, a, p in OPTIONS[::-1]],
    }
    for name, records in files.items():
        (root / f"{name}.json").write_text(json.dumps(records))
    holdout = [{"question": "Where does the river begin?", "answer": "The river begins in the hills."},
               {"question": "When does the museum open?", "answer": "At nine in the morning."}]
    (root / "holdout01.json").write_text(json.dumps(holdout[:1]) + "\n" + json.dumps(holdout[1:]) + "\n")
    return root


@pytest.fixture
def retain_log(tmp_path) -> Path:
    """A retain-model log in open-unlearning's format (2 forget truth ratios, per-item min-k
    scores of 2 forget and 2 holdout items: AUC 0.25)."""
    path = tmp_path / "retain" / "TOFU_EVAL.json"
    path.parent.mkdir()
    scores = {"forget": [3.0, 1.0], "holdout": [2.0, 0.5]}  # P(holdout > forget) = 1/4
    mia = {name: {"value_by_index": {str(i): {"score": v} for i, v in enumerate(values)}}
           for name, values in scores.items()}
    path.write_text(json.dumps({"forget_truth_ratio": {"agg_value": 0.6, "value_by_index": {
        "0": {"score": 0.7}, "1": {"score": 0.9}}}, "mia_min_k": {"agg_value": 0.25, **mia}}))
    return path


def _reference_losses(model, tokenizer, pairs):
    """Unbatched, uncached forward of encode_qa(q, a): the plain definition."""
    out = []
    for q, a in pairs:
        batch = pad_batch([encode_qa(tokenizer, q, a)], tokenizer.pad_token_id)
        with torch.no_grad():
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        labels = batch["labels"][:, 1:]
        mask = labels != -100
        nll = torch.nn.functional.cross_entropy(logits[:, :-1][mask].float(), labels[mask], reduction="sum")
        out.append((float(nll), int(mask.sum())))
    return out


def _count_forwards(model) -> list[int]:
    """Count calls of the decoder (what the engine runs) and of the full model."""
    calls = [0]
    for module in (model.get_decoder(), model):
        original = module.forward

        def counted(*args, _original=original, **kwargs):
            calls[0] += 1
            return _original(*args, **kwargs)

        module.forward = counted
    return calls


# ---------------------------------------------------------------------------------------------
# TOFU evaluation
# ---------------------------------------------------------------------------------------------


def test_evaluate_tofu_end_to_end(tiny_model_and_tokenizer, tofu_dir, retain_log, tmp_path, caplog):
    model, tokenizer = tiny_model_and_tokenizer
    out = tmp_path / "eval"
    caplog.set_level("INFO", logger="obliviate")
    result = tofu.evaluate_tofu(model, tokenizer, data=tofu_dir, forget_split="forget01", retain_logs=retain_log,
                                out_dir=out, max_new_tokens=8, cache=tmp_path / "cache", model_name="tiny")
    for name in ("tofu_eval.json", "tofu_summary.json", "tofu_report.md"):
        assert (out / name).is_file()
    written = json.loads((out / "tofu_eval.json").read_text())
    assert written["n_samples"] == {"forget": 2, "retain": 2, "real_authors": 3, "world_facts": 3, "holdout": 2}
    assert written["config"]["forget_split"] == "forget01" and written["versions"]["torch"]
    summary = json.loads((out / "tofu_summary.json").read_text())
    for task in ("forget", "retain", "real_authors", "world_facts"):
        assert set(summary[task]) == {"rougeL", "prob", "truth_ratio"}
        assert all(0 <= summary[task][k] <= 1 for k in summary[task])
    # Forget Quality against the retain log, Model Utility from the nine numbers.
    ratios = [row["truth_ratio"] for row in written["tasks"]["forget"]["items"]]
    assert summary["forget_quality"] == pytest.approx(metrics.forget_quality(ratios, [0.7, 0.9]))
    nine = [summary[t][k] for t in ("retain", "real_authors", "world_facts") for k in ("rougeL", "prob", "truth_ratio")]
    assert summary["model_utility"] == pytest.approx(metrics.model_utility(nine))
    extras = summary["extras"]
    assert {"extraction_strength", "exact_memorisation", "mia_min_k_auc", "privleak"} <= set(extras)
    assert extras["privleak"] == pytest.approx(metrics.privleak(extras["mia_min_k_auc"], 0.25))
    assert "| Model | Forget R |" in (out / "tofu_report.md").read_text()
    progress = [r.getMessage() for r in caplog.records if "questions scored" in r.getMessage()]
    assert progress and re.match(r"TOFU forget01: (\d+)/\1 questions scored", progress[-1])  # last line: all done
    # Our own log is a valid retain reference too (obliviate format).
    from obliviate.evaluation import reference_logs
    assert reference_logs.forget_truth_ratios(out / "tofu_eval.json") == pytest.approx(ratios)


def test_prompt_format_reaches_scores_and_the_record(tiny_model_and_tokenizer, tofu_dir, tmp_path):
    """open-unlearning's tags (prompt_formats.py) in place of the chat template: the scores are
    the engine's under that format, and the result says which format and prompt it used."""
    model, tokenizer = tiny_model_and_tokenizer
    result = tofu.evaluate_tofu(model, tokenizer, data=tofu_dir, max_new_tokens=4, cache=False, precision=FP32,
                                extras=False, prompt_format="phi-1_5", out_dir=tmp_path / "eval")
    config = json.loads((tmp_path / "eval" / "tofu_eval.json").read_text())["config"]
    assert config["prompt_format"] == "phi-1_5" and config["prompt_example"] == "Question: <question>\nAnswer: "
    row = result["tasks"]["forget"]["items"][0]
    ((sum_nll, n),) = engine.answer_losses(model, tokenizer, [(row["question"], row["answer"])], precision=FP32,
                                           prompt_format="phi-1_5")
    assert row["avg_nll"] == pytest.approx(sum_nll / n, abs=1e-5)
    with pytest.raises(UserError, match="system_prompt belongs to the chat template"):
        tofu.evaluate_tofu(model, tokenizer, data=tofu_dir, prompt_format="phi-1_5", system_prompt="Be brief.")


def test_retain_model_reference_and_ds_size(tiny_model_and_tokenizer, tiny_model_dir, tofu_dir, tmp_path):
    model, tokenizer = tiny_model_and_tokenizer
    with torch.no_grad():  # the "unlearned" model differs from the retain model
        model.lm_head.weight.mul_(1.5)
    result = tofu.evaluate_tofu(model, tokenizer, data=tofu_dir, retain_model=tiny_model_dir, ds_size=1,
                                max_new_tokens=4, cache=tmp_path / "cache")
    assert result["n_samples"] == {"forget": 1, "retain": 1, "real_authors": 1, "world_facts": 1, "holdout": 1}
    summary = result["summary"]
    assert summary["forget_quality"] is not None and 0 <= summary["forget_quality"] <= 1
    assert "privleak" in summary["extras"] and "retain_mia_min_k_auc" in summary["extras"]
    with pytest.raises(UserError, match="either"):
        tofu.evaluate_tofu(model, tokenizer, data=tofu_dir, retain_model=tiny_model_dir, retain_logs="x.json")


def test_per_item_values_are_consistent_with_metrics(tiny_model_and_tokenizer, tofu_dir, tmp_path):
    model, tokenizer = tiny_model_and_tokenizer
    result = tofu.evaluate_tofu(model, tokenizer, data=tofu_dir, max_new_tokens=8, cache=False, precision=FP32)
    assert result["config"]["model_fingerprint"] == engine.model_fingerprint(model)  # also without a cache
    forget = result["tasks"]["forget"]
    items = tofu.load_items(tofu_dir, "forget01_perturbed")
    losses = engine.answer_losses(model, tokenizer, [(i.question, i.answer) for i in items], precision=FP32)
    for row, item, (total, n) in zip(forget["items"], items, losses):
        assert row["prob"] == pytest.approx(math.exp(-total / n), rel=1e-4)
        assert row["n_tokens"] == n
        assert row["rougeL_recall"] == pytest.approx(metrics.rouge_l_recall(item.answer, row["generated"]))
        assert row["truth_ratio"] == pytest.approx(
            float(metrics.truth_ratio([row["avg_nll_base"]], [row["avg_nll_perturbed"]])[0]))
        assert len(row["avg_nll_perturbed"]) == 5
    assert forget["aggregates"]["truth_ratio"] == pytest.approx(
        metrics.truth_ratio_forget([r["truth_ratio"] for r in forget["items"]]))
    ra = result["tasks"]["real_authors"]
    for row in ra["items"]:
        assert row["avg_nll_base"] == row["avg_nll"]  # base key = answer
        assert row["prob_normalised"] == pytest.approx(
            float(metrics.normalised_probability([row["avg_nll"]], [row["avg_nll_perturbed"]])[0]))
    assert ra["aggregates"]["prob"] == pytest.approx(np.mean([r["prob_normalised"] for r in ra["items"]]))
    assert ra["aggregates"]["truth_ratio"] == pytest.approx(
        metrics.truth_ratio_retain([r["truth_ratio"] for r in ra["items"]]))
    assert result["summary"]["forget_quality"] is None and result["summary"]["notes"]


def test_cache_makes_a_rerun_skip_the_model(tiny_model_and_tokenizer, tofu_dir, tmp_path):
    model, tokenizer = tiny_model_and_tokenizer
    kwargs = dict(data=tofu_dir, max_new_tokens=8, cache=tmp_path / "cache")
    first = tofu.evaluate_tofu(model, tokenizer, **kwargs)
    calls = _count_forwards(model)
    second = tofu.evaluate_tofu(model, tokenizer, **kwargs)
    assert calls[0] == 0
    assert second["summary"] == first["summary"]
    assert second["tasks"] == first["tasks"]
    # A different model (one weight changed) misses the cache and runs again.
    with torch.no_grad():
        model.lm_head.weight[0, 0] += 1e-3
    tofu.evaluate_tofu(model, tokenizer, **kwargs)
    assert calls[0] > 0


def test_interrupted_cache_resumes(tiny_model_and_tokenizer, tmp_path):
    model, tokenizer = tiny_model_and_tokenizer
    settings = {"precision": "fp32"}
    cache = engine.open_result_cache(model, tokenizer, tmp_path, settings)
    pairs = [(q, a) for q, a, *_ in FICTION]
    full = engine.score_answers(model, tokenizer, pairs, cache=cache)
    # Keep the first two records and a torn third line, as a crash mid-write would leave.
    lines = cache.path.read_text().splitlines(keepends=True)
    cache.path.write_text("".join(lines[:2]) + lines[2][:10])
    resumed = engine.open_result_cache(model, tokenizer, tmp_path, settings)
    assert len(resumed) == 2
    calls = _count_forwards(model)
    again = engine.score_answers(model, tokenizer, pairs, cache=resumed)
    assert calls[0] > 0 and resumed.hits == 2
    assert [s.n_tokens for s in again] == [s.n_tokens for s in full]
    assert [s.sum_nll for s in again] == pytest.approx([s.sum_nll for s in full], rel=1e-5)


def test_missing_split_names_the_file(tiny_model_and_tokenizer, tofu_dir):
    model, tokenizer = tiny_model_and_tokenizer
    (tofu_dir / "world_facts_perturbed.json").unlink()
    with pytest.raises(UserError, match="world_facts_perturbed.json"):
        tofu.evaluate_tofu(model, tokenizer, data=tofu_dir, cache=False)
    with pytest.raises(UserError, match="forget05_perturbed.json"):
        tofu.load_items(tofu_dir, "forget05_perturbed")


def test_evaluate_items_without_truth_ratio_fields(tiny_model_and_tokenizer):
    model, tokenizer = tiny_model_and_tokenizer
    items = [QAItem("Who is the author?", "A writer from the hills."), QAItem(*FICTION[0][:3], FICTION[0][3])]
    result = tofu.evaluate_items(model, tokenizer, items, task_kind="forget", max_new_tokens=6, details=True)
    assert "truth_ratio" not in result["items"][0] and "truth_ratio" in result["items"][1]
    assert result["aggregates"]["truth_ratio"] == pytest.approx(
        metrics.truth_ratio_forget([result["items"][1]["truth_ratio"]]))
    assert 0 <= result["extras"]["extraction_strength"] <= 1
    with pytest.raises(UserError, match="task_kind"):
        tofu.evaluate_items(model, tokenizer, items, task_kind="bogus")


def test_report_side_by_side():
    before = {"model": "base", "forget": {"rougeL": 0.9, "prob": 0.8, "truth_ratio": 0.5},
              "retain": {"rougeL": 0.7, "prob": 0.6, "truth_ratio": 0.4}, "forget_quality": 1.2e-5,
              "model_utility": 0.55}
    after = {**before, "model": "unlearned", "forget": {"rougeL": 0.3, "prob": 0.1, "truth_ratio": 0.6},
             "forget_quality": 0.4}
    table = report.render_table([before, after], delta=True)
    lines = table.strip().splitlines()
    assert len(lines) == 5 and lines[0].startswith("| Model | Forget R | Forget P | Forget TR | Retain R")
    assert "| base | 90.0 | 80.0 | 50.0 |" in table and "1.20e-05" in table and "0.550" in table
    assert "| Δ (last − first) | -60.0 | -70.0 | +10.0 |" in table
    assert report.render_table({"A": before}).count("\n") == 3


# ---------------------------------------------------------------------------------------------
# Real model and data (slow)
# ---------------------------------------------------------------------------------------------


@pytest.mark.integration
@pytest.mark.skipif(os.environ.get("OBLIVIATE_INTEGRATION") != "1",
                    reason="real-model TOFU run takes minutes; set OBLIVIATE_INTEGRATION=1")
@pytest.mark.skipif(not TOFU_DIR.is_dir(), reason=f"TOFU data not found at {TOFU_DIR} (no ../shared)")
def test_real_model_forget01_matches_plain_scoring(tmp_path):
    from obliviate.models import load_model

    model, tokenizer = load_model("smollm2-135m-instruct")
    items = tofu.load_items(TOFU_DIR, "forget01_perturbed")[:4]
    pairs = [(i.question, a) for i in items for a in (i.answer, i.paraphrased_answer, *i.perturbed_answers)]
    fast = engine.answer_losses(model, tokenizer, pairs, precision="fp32")
    plain = _reference_losses(model, tokenizer, pairs)
    np.testing.assert_allclose([s for s, _ in fast], [s for s, _ in plain], rtol=1e-4, atol=1e-3)
    questions = [i.question for i in items]
    assert engine.greedy_generate(model, tokenizer, questions, precision="fp32") == engine.greedy_generate(
        model, tokenizer, questions, batch_size=1, precision="fp32")


def test_answers_cut_whole_by_max_length_have_no_extras():
    """An answer max_length cut to no tokens scored 0 in every extra (extraction strength 0.0, a
    min-k score of 0 in the AUC) with no note; now None, left out of the AUCs and counted."""
    from obliviate.data.request import QAItem
    from obliviate.evaluation.engine.stats import AnswerStats
    from obliviate.evaluation.tofu.extras import forget_extras

    def answer(logprobs):
        n = len(logprobs)
        return AnswerStats(-sum(logprobs), n, logprobs=logprobs, preds=[1] * n, targets=[1] * n, mu=[-1.0] * n,
                           sigma=[1.0] * n)

    items = [QAItem(f"Q{i}?", f"Answer {i}.") for i in range(4)]
    stats = [answer([-0.1, -0.2, -0.1]), AnswerStats(0.0, 0, [], [], [], [], []), answer([-0.3, -0.1, -0.2]),
             answer([-5.0])]  # one token left: nothing once the last is dropped
    holdout = [answer([-2.0, -3.0, -1.0]), AnswerStats(0.0, 0, [], [], [], [], [])]
    extras, per_item = forget_extras(items, stats, [0, 1, 2, 3], holdout, items[:2])
    assert per_item[1] == per_item[3] == {"extraction_strength": None, "exact_memorisation": None, "mia": None}
    assert extras["answers_cut"] == 3 and extras["extraction_strength"] == 1.0
    assert extras["mia_min_k_auc"] == 1.0  # the two kept forget answers against the one kept holdout answer
