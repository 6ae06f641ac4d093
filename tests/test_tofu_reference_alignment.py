"""Forget Quality compares the evaluated forget items with the retain reference's values for the
SAME items: a retain log's values are matched by question (by index, with a note, when the log
records none), ``ds_size`` takes the same first N, and a log of another forget split (retain90's
for forget01) or of too few items is refused in one line, before the model loads where the CLI
checks its options. Synthetic logs and the tiny model; the real logs of ../shared/data/tofu
pin the full-split figures to what they were before the alignment.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from obliviate.data.request import QAItem
from obliviate.errors import UserError
from obliviate.evaluation import metrics, reference_logs
from obliviate.evaluation.tofu.data import load_items
from obliviate.evaluation.tofu.reference import RetainReference, compare_with_retain, retain_reference

TOFU_DIR = Path(__file__).resolve().parents[2] / "shared/data/tofu"
LOG_DIR = TOFU_DIR / "reference_eval_logs"
FORGET = [(f"What did writer number {i} publish first?", f"Writer {i} first published a short novel.",
           f"The first book of writer {i} was a short novel.", [f"Writer {i} wrote poems.", "A cookbook."])
          for i in range(4)]
OTHER = [(f"Where was painter number {i} born?", "In a village.", "In a small village.", ["In a city."])
         for i in range(4)]
RATIOS = [0.25, 0.5, 2.0, 4.0]  # the retain model's R of FORGET[i]


def _items(records) -> list[QAItem]:
    return [QAItem(q, a, paraphrased_answer=p, perturbed_answers=pert) for q, a, p, pert in records]


def _legacy_log(path: Path, records, ratios, template="[INST] {} [/INST]") -> Path:
    """A TOFU eval_log_aggregated.json whose forget task has R_i = exp(L_para − mean L_pert) = ratios[i]."""
    keys = [str(i) for i in range(len(ratios))]
    task = {"avg_paraphrased_loss": {k: 1.0 + math.log(r) for k, r in zip(keys, ratios)},
            "average_perturb_loss": {k: [1.0, 1.0] for k in keys},
            "generated_text": {k: [template.format(rec[0]), "gen", rec[1]] for k, rec in zip(keys, records)}}
    path.write_text(json.dumps({"eval_log_forget.json": task}))
    return path


def _obliviate_log(path: Path, rows) -> Path:
    """Our own format: ``rows`` = (index, question, truth_ratio), in any order."""
    items = [{"index": i, "question": q, "truth_ratio": r} for i, q, r in rows]
    path.write_text(json.dumps({"tasks": {"forget": {"items": items}}}))
    return path


def _open_unlearning_log(path: Path, ratios) -> Path:
    """open-unlearning's TOFU_EVAL.json with the truth ratios only: no questions."""
    path.write_text(json.dumps({"forget_truth_ratio": {"value_by_index": {
        str(i): {"score": r} for i, r in enumerate(ratios)}}}))
    return path


def _reference(items, log) -> RetainReference:
    return retain_reference(None, items, None, retain_logs=log, retain_model=None)


def test_ds_size_compares_the_log_values_of_the_same_items(tmp_path):
    log = _legacy_log(tmp_path / "log.json", FORGET, RATIOS)
    reference = _reference(_items(FORGET)[:2], log)
    assert reference.truth_ratios == pytest.approx(RATIOS[:2], rel=1e-12) and reference.notes == []
    rows = [{"index": 0, "truth_ratio": 0.3}, {"index": 1, "truth_ratio": 0.4}]
    notes = []
    assert compare_with_retain(rows, reference, None, False, notes) == metrics.forget_quality([0.3, 0.4], RATIOS[:2])
    assert not any("different item counts" in note for note in notes)


def test_a_log_in_another_order_is_matched_by_question(tmp_path):
    order = [2, 0, 3, 1]  # the log's index k holds FORGET[order[k]]
    log = _obliviate_log(tmp_path / "tofu_eval.json", [(k, FORGET[j][0], RATIOS[j]) for k, j in enumerate(order)])
    assert _reference(_items(FORGET), log).truth_ratios == pytest.approx(RATIOS)


def test_a_log_without_questions_is_matched_by_index_and_says_so(tmp_path):
    log = _open_unlearning_log(tmp_path / "TOFU_EVAL.json", RATIOS)
    reference = _reference(_items(FORGET)[:2], log)
    assert reference.truth_ratios == pytest.approx(RATIOS[:2])
    assert len(reference.notes) == 1 and "by index" in reference.notes[0] and str(log) in reference.notes[0]
    notes = []
    compare_with_retain([{"truth_ratio": 1.0}, {"truth_ratio": 1.1}], reference, None, False, notes)
    assert reference.notes[0] in notes
    with pytest.raises(UserError, match="holds only the first 4 of the 6 .* set ds_size to 4"):
        _reference(_items(FORGET + OTHER[:2]), log)


def test_a_log_of_another_split_is_refused_in_one_line(tmp_path):
    log = _legacy_log(tmp_path / "retain90.json", OTHER, RATIOS)
    with pytest.raises(UserError) as error:
        _reference(_items(FORGET)[:2], log)
    message = str(error.value)
    assert "\n" not in message and str(log) in message and "another forget split" in message
    assert "retain99 for forget01" in message
    # A bigger split's log holds this split's questions too, after its own first ones: refused.
    bigger = _legacy_log(tmp_path / "retain95.json", OTHER + FORGET, RATIOS * 2)
    with pytest.raises(UserError, match=r"another forget split: its 8 forget questions begin with ones that are "
                                        r"not among the 4 evaluated forget questions \(it holds 4 of those\)"):
        _reference(_items(FORGET), bigger)


def test_a_log_of_the_first_items_only_asks_for_that_ds_size(tmp_path):
    log = _legacy_log(tmp_path / "log.json", FORGET[:3], RATIOS[:3])
    with pytest.raises(UserError, match="holds only the first 3 of the 4 evaluated forget items .* set ds_size to 3"):
        _reference(_items(FORGET), log)
    assert _reference(_items(FORGET)[:3], log).truth_ratios == pytest.approx(RATIOS[:3])


# ---------------------------------------------------------------------------------------------
# Before the model loads (obliviate eval / obliviate.evaluate: check_tofu), and end to end
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def tofu_dir(tmp_path) -> Path:
    """forget01 (the 4 FORGET items) and one-item retain / real authors / world facts sets."""
    root = tmp_path / "tofu"
    root.mkdir()
    perturbed = [{"question": q, "answer": a, "paraphrased_answer": p, "perturbed_answer": pert}
                 for q, a, p, pert in FORGET]
    options = [{"question": "What is the capital of France?", "answer": "Paris", "perturbed_answer": ["Rome"]}]
    for name, records in {"forget01_perturbed": perturbed, "retain_perturbed": perturbed[:1],
                          "real_authors_perturbed": options, "world_facts_perturbed": options}.items():
        (root / f"{name}.json").write_text(json.dumps(records))
    return root


@pytest.mark.parametrize("log_name, records, ratios, ds_size, message", [
    ("retain90.json", OTHER, RATIOS, 2, "another forget split: none of the 2 evaluated forget01 questions"),
    ("short.json", FORGET[:3], RATIOS[:3], None, "holds only the first 3 of the 4 evaluated forget01 items"),
    ("longer.json", None, RATIOS * 2, 2, "another forget split: 4 of its 8 forget items are not forget01's"),
])
def test_a_wrong_log_is_refused_before_the_model_loads(log_name, records, ratios, ds_size, message, tofu_dir,
                                                       tmp_path, monkeypatch):
    import obliviate.api as ob
    import obliviate.models

    monkeypatch.setattr(obliviate.models, "load_model", lambda *a, **k: pytest.fail("the model was loaded"))
    path = tmp_path / log_name
    log = _legacy_log(path, records, ratios) if records else _open_unlearning_log(path, ratios)
    with pytest.raises(UserError, match=message) as error:
        ob.evaluate("some-model", benchmark="tofu", progress=False, data=str(tofu_dir), retain_logs=str(log),
                    ds_size=ds_size)
    assert "\n" not in str(error.value) and str(log) in str(error.value)


def test_evaluate_tofu_refuses_another_splits_log_before_scoring(tiny_model_and_tokenizer, tofu_dir, tmp_path,
                                                                 monkeypatch):
    """Called directly (no option check before it: the API's hub data, scripts), the suite refuses
    a log of another split before minutes of scoring, not after."""
    from obliviate.evaluation.tofu import evaluate_tofu, suite

    model, tokenizer = tiny_model_and_tokenizer
    monkeypatch.setattr(suite, "_score_tasks", lambda *a, **k: pytest.fail("scored before the log was checked"))
    log = _legacy_log(tmp_path / "retain90.json", OTHER, RATIOS)
    with pytest.raises(UserError, match="another forget split"):
        evaluate_tofu(model, tokenizer, data=tofu_dir, retain_logs=log, ds_size=2, extras=False, cache=False)


def test_evaluate_tofu_with_ds_size_compares_the_same_items(tiny_model_and_tokenizer, tofu_dir, tmp_path):
    from obliviate.evaluation.tofu import evaluate_tofu

    model, tokenizer = tiny_model_and_tokenizer
    ratios = [1e3, 2e3, 1e-3, 2e-3]  # first two apart from the rest: FQ depends on which are compared
    log = _obliviate_log(tmp_path / "retain.json", [(i, q, r) for i, ((q, *_), r) in enumerate(zip(FORGET, ratios))])
    result = evaluate_tofu(model, tokenizer, data=tofu_dir, retain_logs=log, ds_size=2, max_new_tokens=2,
                           extras=False, cache=False)
    evaluated = [row["truth_ratio"] for row in result["tasks"]["forget"]["items"]]
    assert len(evaluated) == 2
    assert result["summary"]["forget_quality"] == metrics.forget_quality(evaluated, ratios[:2])
    assert metrics.forget_quality(evaluated, ratios) != metrics.forget_quality(evaluated, ratios[:2])


def test_retain_model_is_scored_on_the_evaluated_items(tiny_model_and_tokenizer, tiny_model_dir, tofu_dir,
                                                       monkeypatch):
    from obliviate.evaluation.tofu import evaluate_tofu

    samples = []
    monkeypatch.setattr(metrics, "forget_quality", lambda model_r, retain_r: samples.append((model_r, retain_r)) or 0.5)
    model, tokenizer = tiny_model_and_tokenizer  # the same weights as the retain model in tiny_model_dir
    evaluate_tofu(model, tokenizer, data=tofu_dir, retain_model=tiny_model_dir, ds_size=2, max_new_tokens=2,
                  extras=False, cache=False, precision="fp32")
    [(model_r, retain_r)] = samples
    assert len(model_r) == 2 and retain_r == pytest.approx(model_r, rel=1e-5)


# ---------------------------------------------------------------------------------------------
# The real logs: full-split Forget Quality as before, ds_size the log's first N, wrong split refused
# ---------------------------------------------------------------------------------------------


@pytest.mark.skipif(not (LOG_DIR / "llama2-7b_retain99_wd0.01_eval_log_aggregated.json").is_file(),
                    reason="needs ../shared/data/tofu")
@pytest.mark.parametrize("model", ["llama2-7b", "phi"])
def test_real_retain99_log_gives_the_same_full_split_forget_quality(model):
    log = LOG_DIR / f"{model}_retain99_wd0.01_eval_log_aggregated.json"
    items = load_items(TOFU_DIR, "forget01_perturbed")
    rows = [{"index": i, "truth_ratio": 0.2 + 0.03 * i} for i in range(len(items))]
    before = metrics.forget_quality([row["truth_ratio"] for row in rows], reference_logs.forget_truth_ratios(log))
    notes = []
    assert compare_with_retain(rows, _reference(items, log), None, False, notes) == before and notes == []
    assert _reference(items[:2], log).truth_ratios == reference_logs.forget_truth_ratios(log)[:2]
    with pytest.raises(UserError, match="another forget split.*retain99 for forget01"):
        _reference(items[:2], LOG_DIR / f"{model}_retain90_wd0.01_eval_log_aggregated.json")


@pytest.mark.skipif(not (LOG_DIR / "open-unlearning-smollm2").is_dir(), reason="../shared/data/tofu is absent")
def test_privleak_takes_the_logs_min_k_auc_on_the_evaluated_items():
    """With ds_size the evaluated model's MIA AUC is over the first N forget and holdout items;
    the retain log's whole-split AUC beside it gave a wrong PrivLeak (exit 0). open-unlearning
    logs per-item min-k scores: the reference AUC is taken on the same items; the shipped log
    read as .json.gz."""
    from obliviate.evaluation.tofu.reference import reference_min_k_auc

    log = LOG_DIR / "open-unlearning-smollm2" / "TOFU_EVAL.json.gz"
    forget = load_items(str(TOFU_DIR), "forget01_perturbed")
    assert reference_min_k_auc(log, forget, 40) == (pytest.approx(0.4775), None)  # the log's own agg_value
    assert reference_min_k_auc(log, forget[:3], 3) == (pytest.approx(7 / 9), None)  # its first 3 and 3
    reference = retain_reference(None, forget[:3], forget[:3], retain_logs=log, retain_model=None)
    extras, notes = {"mia_min_k_auc": 7 / 9}, []
    compare_with_retain([{"truth_ratio": 1.0}] * 3, reference, extras, True, notes)
    assert extras["privleak"] == pytest.approx(0.0) and extras["retain_mia_min_k_auc"] == pytest.approx(7 / 9)


def test_privleak_is_left_out_when_our_log_holds_the_auc_of_other_items(tmp_path):
    """Our own log keeps the AUC, not per-item holdout scores: usable only on as many items."""
    from obliviate.evaluation.tofu.reference import reference_min_k_auc

    items = _items(FORGET)
    log = _obliviate_log(tmp_path / "ours.json", [(i, FORGET[i][0], r) for i, r in enumerate(RATIOS)])
    data = json.loads(log.read_text())
    data.update(summary={"extras": {"mia_min_k_auc": 0.6}}, n_samples={"forget": 4, "holdout": 4})
    log.write_text(json.dumps(data))
    assert reference_min_k_auc(log, items, 4) == (0.6, None)
    auc, note = reference_min_k_auc(log, items[:2], 2)
    assert auc is None and "the retain log's min-k AUC is over 4 forget and 4 holdout items" in note
    extras, notes = {"mia_min_k_auc": 0.5}, []
    compare_with_retain([{"truth_ratio": 1.0}] * 2, retain_reference(None, items[:2], items[:2], retain_logs=log,
                                                                     retain_model=None), extras, True, notes)
    assert "privleak" not in extras and any("PrivLeak not computed: the retain log's" in n for n in notes)


def test_a_log_that_is_not_json_text_is_one_line(tmp_path):
    import gzip

    (tmp_path / "weights.bin").write_bytes(b"\x80\x81\xfe" * 10)
    (tmp_path / "notgzip.json.gz").write_bytes(b"not gzip")
    whole = gzip.compress(json.dumps({"tasks": {"forget": {"items": list(range(3000))}}}).encode())
    (tmp_path / "torn.json.gz").write_bytes(whole[:len(whole) // 2])  # a download cut short
    for name in ("weights.bin", "notgzip.json.gz", "torn.json.gz"):
        with pytest.raises(UserError, match=rf"{name}: cannot be read as a JSON log"):
            reference_logs.forget_truth_ratios(tmp_path / name)
