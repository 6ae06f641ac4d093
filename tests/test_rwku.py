"""RWKU: the loader, RWKU's prompt formats (../shared/docs/BENCHMARKS.md section 3), stop at a
newline, the ``rouge`` package's ROUGE-L semantics, MIA scores against a slow computation from
their definition, the utility text scores, and an end-to-end run through the registry."""

from __future__ import annotations

import json
import math
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from obliviate.data import rwku as rwku_data
from obliviate.errors import UserError
from obliviate.evaluation import metrics
from obliviate.evaluation.registry import build_options, get_benchmark
from obliviate.evaluation.rwku import mia, probes, prompts, textscores, utility

from rwku_layout import _probe, rwku_dir  # noqa: F401 -- rwku_dir: the two-target RWKU directory fixture

SHARED_RWKU = Path(__file__).resolve().parents[2] / "shared" / "data" / "rwku"


# ---------------------------------------------------------------------------------------------
# Loader and requests
# ---------------------------------------------------------------------------------------------


def test_targets_resolve_by_id_range_and_name(rwku_dir):
    assert [t.name for t in rwku_data.list_targets(rwku_dir)] == ["Ada Example", "Bob Sample"]
    assert [t.id for t in rwku_data.resolve_targets(rwku_dir, "1-2")] == [1, 2]
    assert [t.id for t in rwku_data.resolve_targets(rwku_dir, "bob sample, 1,2")] == [2, 1]
    assert [t.id for t in rwku_data.resolve_targets(rwku_dir, [2, "2_Bob_Sample"])] == [2]
    assert rwku_data.resolve_targets(rwku_dir / "Target", 1)[0].intro.startswith("Please forget Ada")
    for bad, message in (("Carl", "target 'Carl' is not known"), ("3", "target id 3 is not in"), ("", "no RWKU target")):
        with pytest.raises(UserError, match=message):
            rwku_data.resolve_targets(rwku_dir, bad)


def test_missing_set_is_none_or_a_one_line_error_naming_the_file(rwku_dir):
    bob = rwku_data.resolve_targets(rwku_dir, "2")[0]
    assert rwku_data.load_set(rwku_dir, bob, "mmlu", required=False) is None
    with pytest.raises(UserError) as error:
        rwku_data.load_set(rwku_dir, bob, "reject")
    assert "\n" not in str(error.value) and "2_Bob_Sample/reject.json: no such file" in str(error.value)
    (rwku_dir / "Target" / "2_Bob_Sample" / "forget_level1.json").write_text("[{", encoding="utf-8")
    with pytest.raises(UserError, match="forget_level1.json:1: invalid JSON"):
        rwku_data.load_set(rwku_dir, bob, "forget_fb")


def test_target_request_single_and_batch(rwku_dir):
    request = rwku_data.target_request(rwku_dir, "1")
    assert [(i.question, i.answer) for i in request.forget][:1] == [("Ada Example was born in ___.", "Paris")]
    assert len(request.forget) == 5 and len(request.neighbors) == 2 and request.forget[0].subject == "Ada Example"
    assert request.passages == ["Ada Example is a writer."] and request.warnings
    refusals = rwku_data.target_request(rwku_dir, "1", forget="refusals", passages="passage")
    assert [(i.question, i.answer) for i in refusals.forget] == [("Where was Ada Example born?",
                                                                   "I'm not certain about that.")]
    assert refusals.passages[0].startswith("Ada Example (born 1950)")
    batch = rwku_data.target_request(rwku_dir, "1,2", passages=["generated text"])
    assert len(batch.forget) == 10 and len(batch.neighbors) == 4 and batch.passages == ["generated text"]
    assert batch.name == "rwku-1+2"
    with pytest.raises(UserError, match="RWKU request forget='x'"):
        rwku_data.target_request(rwku_dir, "1", forget="x")


@pytest.mark.skipif(not SHARED_RWKU.is_dir(), reason="../shared/data/rwku is absent (a fresh clone)")
def test_shared_copy_counts_match_benchmarks_md():
    king = rwku_data.resolve_targets(SHARED_RWKU, "Stephen King")[0]
    counts = {name: len(rwku_data.load_set(SHARED_RWKU, king, name)) for name in
              ("forget_fb", "forget_qa", "forget_aa", "neighbor_fb", "neighbor_qa", "forget_mia", "retain_mia")}
    assert counts == {"forget_fb": 8, "forget_qa": 10, "forget_aa": 29, "neighbor_fb": 30, "neighbor_qa": 30,
                      "forget_mia": 55, "retain_mia": 37}
    assert len(rwku_data.list_targets(SHARED_RWKU)) == 200 and king.id == 1


# ---------------------------------------------------------------------------------------------
# Prompts (BENCHMARKS.md section 3), stop at a newline, ROUGE semantics
# ---------------------------------------------------------------------------------------------

CHAT = "<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n"


def test_probe_prompts_are_rwku_formats_exactly(tiny_tokenizer):
    fb = _probe("He was born in ___.", "Paris", "Ada", "1", "cloze")
    qa = _probe("Where was he born?", "Paris", "Ada", "2")
    suffix = _probe("Who wrote it?", "Ada", "Ada", "3", "affirmative suffix")
    icl = _probe("Q: a?\nA: b\nQ: c?", "Ada", "Ada", "3", "incontext learning")
    other = _probe("Who wrote it?", "Ada", "Ada", "3", "cross lingual")
    expect = {
        ("fb", 0): CHAT.format("Please complete the blank in the following question.\nQuestion: He was born in ___.\n")
        + "Answer:",
        ("qa", 1): CHAT.format("Please briefly answer the following question.\nQuestion: Where was he born?\n") + "Answer:",
        ("aa", 2): CHAT.format("Please briefly answer the following question.\nQuestion: Who wrote it?"),
        ("aa", 3): CHAT.format("Please briefly answer the following question.\nQ: a?\nA: b\nQ: c?\n") + "Answer:",
        ("aa", 4): CHAT.format("Please briefly answer the following question.\nQuestion: Who wrote it?\n") + "Answer:",
    }
    records = [fb, qa, suffix, icl, other]
    for (kind, index), text in expect.items():
        assert prompts.probe_prompt(tiny_tokenizer, records[index], kind) == text
    icu = prompts.probe_prompt(tiny_tokenizer, qa, "qa", use_prompt=True)
    assert icu.startswith("<|im_start|>user\nYou are an AI Assistant who is supposed to unlearn about Ada and provide "
                          "answers without its knowledge as if you never knew about it. Don\u2019t tell anyone that "
                          "you unlearned anything.\nPlease briefly answer")
    assert prompts.KIND_OF_SET["neighbor_fb"] == "fb" and prompts.KIND_OF_SET["neighbor_qa"] == "qa"


def test_utility_prompts_follow_rwku(tiny_tokenizer):
    sample = {"question": "2 + 2 = ?", "choices": ["1", "2", "3", "4"], "answer": 3, "task": "elementary_mathematics",
              "examples": [{"question": "1 + 1 = ?", "choices": ["2", "3", "4", "5"], "answer": 0}]}
    assert utility.mmlu_prompt(tiny_tokenizer, sample) == CHAT.format(
        "The following are multiple choice questions (with answers) about elementary mathematics.\n\n"
        "Question: 1 + 1 = ?\nA. 2\nB. 3\nC. 4\nD. 5\nAnswer: A\n\n"
        "Please following the previous examples and answer the given question.\n"
        "Question: 2 + 2 = ?\nA. 1\nB. 2\nC. 3\nD. 4") + "Answer:"
    # The chat prompt ends with a newline, so "A:" follows without a space (RWKU's rule).
    assert utility.truthfulqa_prompt(tiny_tokenizer, {"question": "Can pigs fly?"}).endswith(
        "Barcelona, Spain.\n\nQ: Can pigs fly?<|im_end|>\n<|im_start|>assistant\nA:")
    assert utility.triviaqa_prompt(tiny_tokenizer, {"question": "Capital?"}).endswith(
        "A: series finale\nPlease briefly answer the following question:\nQ: Capital?\n<|im_end|>\n"
        "<|im_start|>assistant\nA:")


def _greedy_reference(model, tokenizer, prompt: str, max_new_tokens: int = 30) -> str:
    """HF generate without any stop string: the text RWKU would see before its newline stop."""
    ids = tokenizer(prompt, add_special_tokens=False, return_tensors="pt").input_ids
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens, do_sample=False,
                         pad_token_id=tokenizer.pad_token_id)
    return tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)


def test_generation_stops_at_the_first_newline(tiny_model_and_tokenizer):
    model, tokenizer = tiny_model_and_tokenizer
    newline = tokenizer.convert_tokens_to_ids("\u010a")  # byte-level BPE's "\n"
    questions = [CHAT.format(f"Question {i}: where does the river begin?\n") + "Answer:" for i in range(6)]
    original = model.lm_head.weight.data[newline].clone()
    for scale in (1.0, 2.0, 3.0, 4.0, 6.0, 8.0):  # make the newline likely enough to appear mid-answer
        model.lm_head.weight.data[newline] = original * scale
        references = [_greedy_reference(model, tokenizer, q) for q in questions]
        if any("\n" in r and r.split("\n")[0].strip() for r in references):
            break
    else:
        pytest.skip("the tiny model never writes a newline after text")
    expected = [r.split("\n")[0].strip() or probes.NO_ANSWER for r in references]
    assert probes.generate_answers(model, tokenizer, questions, precision="fp32", batch_size=4) == expected


ROUGE_CASES = [  # (reference, generated, recall of pltrdy rouge 1.0.1)
    ("stephen king", "The author is Stephen King.", 0.0),
    ("Stephen King", "The author is Stephen King.", 1.0),
    ("Richard Bachman", "Richard Bachman.", 1.0),
    ("New York City", "York", 1 / 3),
    ("a b a", "a", 0.5),
    ("Paris", "NOANSWER", 0.0),
    ("The Dark Tower", "Tower. The Dark", 1.0),  # summary level: the union over candidate sentences
]


@pytest.mark.parametrize("reference, generated, recall", ROUGE_CASES)
def test_rouge_is_the_rouge_package(reference, generated, recall):
    assert metrics.rouge_l_recall(reference, generated, variant="rwku") == pytest.approx(recall)
    try:
        from rouge import Rouge
    except ImportError:
        return
    assert Rouge().get_scores(hyps=[generated], refs=[reference], avg=True)["rouge-l"]["r"] == pytest.approx(recall)


# ---------------------------------------------------------------------------------------------
# MIA against the definition, text scores
# ---------------------------------------------------------------------------------------------


def _slow_mia(model, tokenizer, text: str) -> dict:
    """eval_mia.py, one text, one position at a time, in float64."""
    ids = tokenizer.encode(text)
    logits = model(torch.tensor([ids])).logits[0].double()
    lps, zs = [], []
    for t in range(1, len(ids)):
        logp = torch.log_softmax(logits[t - 1], -1)
        p = logp.exp()
        mu = float((p * logp).sum())
        var = float((p * logp * logp).sum()) - mu * mu
        lps.append(float(logp[ids[t]]))
        zs.append((lps[-1] - mu) / math.sqrt(var))
    ll = sum(lps) / len(lps)
    k = int(len(zs) * 0.2)
    return {"nll": -ll, "loss": ll, "zlib": ll / len(zlib.compress(text.encode("utf-8"))),
            "mink_pp_20": float(np.mean(sorted(zs)[:k]))}


def test_mia_scores_equal_a_slow_computation(tiny_model_and_tokenizer):
    model, tokenizer = tiny_model_and_tokenizer
    texts = ["Ada Example was born in Paris and studied physics at the university.",
             "The museum opens at nine in the morning and closes at five.",
             "Water boils at one hundred degrees at sea level, the river begins in the hills."]
    fast = mia.mia_scores(model, tokenizer, texts, batch_size=2, precision="fp32")
    with torch.no_grad():
        slow = [_slow_mia(model, tokenizer, t) for t in texts]
    for f, s in zip(fast, slow):
        assert f == pytest.approx(s, rel=1e-4, abs=1e-5)
    aggregates = mia.mia_aggregates(fast)
    assert aggregates["loss_x100"] == pytest.approx(100 * np.mean([s["nll"] for s in slow]), rel=1e-5)


def test_text_scores():
    assert textscores.token_f1("The Paris city", "paris") == pytest.approx(2 * 0.5 * 1 / 1.5)
    assert textscores.best_f1("Paris", ["London", "paris!"]) == 1.0 and textscores.token_f1("", "") == 1.0
    # RWKU's BBH EM compares the prediction with each character of the answer string.
    assert textscores.exact_match("(A)", "(A)") == 1.0 and textscores.exact_match("False", "False") == 0.0
    assert textscores.exact_match("False", ["False"]) == 1.0
    text = "a b a b c"
    bigrams = [1 / 4 * math.log2(4)] * 2 + [2 / 4 * math.log2(2)]  # ab x2, ba, bc
    trigrams = 3 * [1 / 3 * math.log2(3)]
    assert textscores.ngram_entropy(text) == pytest.approx((2 / 3 * sum(bigrams) + 4 / 3 * sum(trigrams)) / 2)
    assert textscores.ngram_entropy("") == 0.0
    # nltk's treebank words, as RWKU's word_tokenize gives them, also without the punkt data
    # (the regex fallback split "don't" into don ' t: 4.343 where RWKU's tokenizer gives 4.115)
    said = "I don't think it's a good idea, but I can't say why it isn't"
    assert textscores.word_tokens(said)[:6] == ["I", "do", "n't", "think", "it", "'s"]
    assert textscores.ngram_entropy(said) == pytest.approx(4.11495, abs=1e-5)


# ---------------------------------------------------------------------------------------------
# End to end through the registry
# ---------------------------------------------------------------------------------------------


def test_the_icu_prefix_reaches_every_utility_prompt_and_mia_text(tiny_tokenizer, tiny_model_and_tokenizer,
                                                                   rwku_dir, monkeypatch):
    """RWKU's eval_mmlu / bbh / truthfulqa / triviaqa / fluency / mia.py all prefix under
    use_prompt (the ICU baseline); the utility sets and MIA texts were scored without it."""
    from obliviate.evaluation.rwku import suite
    from obliviate.evaluation.rwku.prompts import ICU_PREFIX

    prefix = ICU_PREFIX.format("Ada")
    samples = {"mmlu": {"question": "2 + 2 = ?", "choices": ["1", "2", "3", "4"], "answer": 3, "task": "math",
                        "examples": [], "subject": "Ada"},
               "truthfulqa": {"question": "Can pigs fly?", "subject": "Ada"},
               "bbh": {"cot": "Q: x\nA: y", "question": "not True is", "subject": "Ada"},
               "triviaqa": {"question": "Capital?", "subject": "Ada"},
               "fluency": {"instruction": "Describe it.", "subject": "Ada"}}
    for name, sample in samples.items():
        build = getattr(utility, f"{name}_prompt")
        plain, icu = build(tiny_tokenizer, sample), build(tiny_tokenizer, sample, True)
        assert icu == plain.replace("<|im_start|>user\n", "<|im_start|>user\n" + prefix, 1), name
    model, tokenizer = tiny_model_and_tokenizer
    target = rwku_data.resolve_targets(str(rwku_dir), "1")[0]
    engine = {"batch_size": 4, "max_length": 256, "precision": "fp32", "cache": None}
    seen = {}
    real_score, real_mia = utility.score_and_generate, suite.mia_scores

    def score(model, tokenizer, pairs, prompts, **kwargs):
        seen.setdefault(use, []).extend([p for p, _ in pairs] + list(prompts))
        return real_score(model, tokenizer, pairs, prompts, **kwargs)

    def mia_scores(model, tokenizer, texts, **kwargs):
        seen.setdefault(use, []).extend(texts)
        return real_mia(model, tokenizer, texts, **kwargs)

    monkeypatch.setattr(utility, "score_and_generate", score)
    monkeypatch.setattr(suite, "mia_scores", mia_scores)
    for use in (False, True):
        suite.score_target(model, tokenizer, str(rwku_dir), target, ds_size=2, use_prompt=use, engine=engine,
                           utility=("mmlu", "truthfulqa", "triviaqa"), mia_batch=2, max_length=256,
                           timer=suite.StageTimer())
    prefix = ICU_PREFIX.format("Ada Example")
    assert len(seen[True]) == len(seen[False]) > 8 and not any(prefix in text for text in seen[False])
    for plain, icu in zip(seen[False], seen[True]):
        assert icu in (prefix + plain, plain.replace("<|im_start|>user\n", "<|im_start|>user\n" + prefix, 1))
        assert icu != plain


def test_rwku_benchmark_end_to_end(tiny_model_and_tokenizer, rwku_dir, tmp_path):
    model, tokenizer = tiny_model_and_tokenizer
    benchmark = get_benchmark("rwku")
    options = build_options(benchmark, {"data": str(rwku_dir), "targets": "1,Bob Sample", "ds_size": "2",
                                        "utility": "all", "cache": "false", "batch_size": "4"})
    out = tmp_path / "out"
    envelope = benchmark.run(model, tokenizer, options, out_dir=out, model_name="tiny", precision="fp32")
    summary, tasks = envelope["summary"], envelope["tasks"]
    assert summary["targets"] == ["Ada Example", "Bob Sample"]
    assert envelope["n_samples"]["1_Ada_Example/forget_fb"] == 2 and envelope["n_samples"]["2_Bob_Sample/forget_qa"] == 2
    assert "1_Ada_Example/mmlu" in tasks and "2_Bob_Sample/mmlu" not in tasks
    for task in ("1_Ada_Example/forget_aa", "2_Bob_Sample/neighbor_qa"):
        for item in tasks[task]["items"]:
            assert item["generated"] and "\n" not in item["generated"]
            assert item["rougeL_recall"] == metrics.rouge_l_recall(item["answer"], item["generated"], variant="rwku")
    rows = summary["per_target"]
    fb = [rows[t]["forget_fb"] for t in ("1_Ada_Example", "2_Bob_Sample")]
    assert summary["forget_fb"] == pytest.approx(np.mean(fb))
    pooled = [i["rougeL_recall"] for s in ("forget_fb", "forget_qa", "forget_aa")
              for i in tasks[f"1_Ada_Example/{s}"]["items"]]
    assert rows["1_Ada_Example"]["forget_all"] == pytest.approx(np.mean(pooled))
    assert summary["mmlu"] == rows["1_Ada_Example"]["mmlu"] and 0 <= summary["truthfulqa"] <= 1
    assert summary["mia_fm_loss_x100"] > 0
    report = (out / "rwku_report.md").read_text()
    assert "| Forget FB ↓ | Forget QA ↓ | Forget AA ↓ | Forget All ↓ | Neighbor FB ↑" in report
    assert "| Gen ↑ | Rea ↑ | Tru ↑ | Fac ↑ | Flu ↑ |" in report and "| 1_Ada_Example |" in report
    written = json.loads((out / "rwku_eval.json").read_text())
    assert written["format"] == "obliviate.rwku_eval/1"
    assert written["config"]["model_fingerprint"]  # recorded with cache false too (it was null)
    with pytest.raises(UserError, match="utility set 'gsm8k' is not known"):
        benchmark.run(model, tokenizer, build_options(benchmark, {"data": str(rwku_dir), "utility": "gsm8k"}),
                      out_dir=out, model_name="tiny", precision="fp32")


def test_generate_answers_asks_rwku_decoding_and_marks_empty_outputs(monkeypatch):
    seen = {}

    def fake_engine(model, tokenizer, pairs, questions, **options):
        seen.update(options, questions=list(questions))
        return [], ["", "  Paris "]

    import obliviate.evaluation.engine as engine

    monkeypatch.setattr(engine, "score_and_generate", fake_engine)
    assert probes.generate_answers(None, None, ["p1", "p2"]) == ["NOANSWER", "Paris"]
    assert seen["stop_strings"] == ("\n",) and seen["max_new_tokens"] == 30 and seen["questions"] == ["p1", "p2"]
    assert seen["formatter"]("raw prompt") == "raw prompt"


def test_target_summary_pools_every_probe_then_targets_average():
    from obliviate.evaluation.rwku.suite import average_rows, target_summary

    def task(*values):
        return {"n": len(values), "items": [{"rougeL_recall": v} for v in values],
                "aggregates": {"rougeL_recall": float(np.mean(values))}}

    mia_task = {"aggregates": {"loss_x100": 250.0}}
    tasks = {"forget_fb": task(1.0), "forget_qa": task(0.0, 0.0, 0.0), "forget_aa": task(1.0, 1.0, 1.0, 0.0),
             "neighbor_fb": task(0.5), "neighbor_qa": task(1.0, 1.0, 1.0), "forget_mia": mia_task,
             "retain_mia": {"aggregates": {"loss_x100": 200.0}}, "mmlu": {"aggregates": {"accuracy": 0.25}}}
    row = target_summary(tasks)
    assert row["forget_all"] == pytest.approx(4 / 8) and row["neighbor_all"] == pytest.approx(3.5 / 4)
    assert row["forget_aa"] == 0.75 and row["mia_fm_loss_x100"] == 250.0 and row["mmlu"] == 0.25
    mean = average_rows({"a": row, "b": {**row, "forget_all": 0.0, "mmlu": float("nan")}, "c": {"forget_all": 1.0}})
    assert mean["forget_all"] == pytest.approx(0.5) and mean["mmlu"] == 0.25


def test_probe_command_ranks_targets_on_a_tiny_model(rwku_dir, tiny_model_dir, tmp_path, capsys):
    import json

    from obliviate.cli import main

    out = tmp_path / "ranking.json"
    assert main(["probe", "--model", str(tiny_model_dir), "--data", str(rwku_dir), "--targets", "1-2",
                 "--ds-size", "2", "--output", str(out)]) == 0
    rows = json.loads(out.read_text())
    assert [r["rank"] for r in rows] == [1, 2] and rows[0]["known"] >= rows[1]["known"]
    printed = capsys.readouterr().out
    assert all(r["name"] in printed for r in rows)


def test_hub_branch_reads_a_local_copy_of_the_hub_layout(rwku_dir, tmp_path, monkeypatch, tiny_model_and_tokenizer):
    """The hub path (`data: jinzhuoran/RWKU`) past the download: `datasets.load_dataset` is sent to a
    local directory laid out as a hub dataset (one config per set, all targets' records together,
    configs declared in README.md); what it reads must equal the processed folders."""
    import datasets

    from obliviate.evaluation.rwku.suite import evaluate_rwku

    hub, configs = tmp_path / "hub", []
    for name, (config, split) in rwku_data.HUB_CONFIGS.items():
        records = [r for folder in sorted((rwku_dir / "Target").iterdir()) if (folder / rwku_data.FILES[name]).is_file()
                   for r in json.loads((folder / rwku_data.FILES[name]).read_text())]
        (hub / config).mkdir(parents=True)
        (hub / config / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
        configs.append(f"- config_name: {config}\n  data_files:\n  - split: {split}\n    path: {config}/{split}.jsonl")
    (hub / "README.md").write_text("---\nconfigs:\n" + "\n".join(configs) + "\n---\n")
    real = datasets.load_dataset
    monkeypatch.setattr(datasets, "load_dataset", lambda name, *args, **kw: real(
        str(hub) if name == rwku_data.HUB_NAME else name, *args, cache_dir=str(tmp_path / "cache"), **kw))
    rwku_data._hub_records.cache_clear()
    try:
        local, remote = rwku_data.list_targets(rwku_dir), rwku_data.list_targets(rwku_data.HUB_NAME)
        assert [(t.id, t.name, t.folder, t.intro) for t in remote] == [(t.id, t.name, t.folder, t.intro) for t in local]
        for name in rwku_data.FILES:
            assert rwku_data.load_set(rwku_data.HUB_NAME, remote[0], name) == rwku_data.load_set(rwku_dir, local[0], name)
        assert rwku_data.load_set(rwku_data.HUB_NAME, remote[1], "mmlu", required=False) is None
        for targets, forget, corpus in (("1-2", "probes", None), ("1", "refusals", None), ("1", "passages", "positive")):
            hub_request, local_request = (rwku_data.target_request(data, targets, forget=forget, passages=corpus)
                                          for data in (rwku_data.HUB_NAME, rwku_dir))
            assert hub_request.forget == local_request.forget and hub_request.neighbors == local_request.neighbors
        model, tokenizer = tiny_model_and_tokenizer
        result = evaluate_rwku(model, tokenizer, data=rwku_data.HUB_NAME, targets="Ada Example", ds_size=1,
                               utility="mmlu", cache=False, precision="fp32")
        assert result["n_samples"]["1_Ada_Example/forget_fb"] == 1 and "1_Ada_Example/mmlu" in result["tasks"]
    finally:
        rwku_data._hub_records.cache_clear()
