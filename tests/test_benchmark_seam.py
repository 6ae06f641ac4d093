"""The benchmark seam: a benchmark plugs in with one file and one registration line, the engine
takes a prompt formatter and stop strings, and TOFU is checked end to end against a slow
computation built from the definitions (../shared/docs/BENCHMARKS.md section 2)."""

from __future__ import annotations

import dataclasses
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch

from test_tofu_eval import tofu_dir  # noqa: F401 -- the tiny TOFU directory fixture

from obliviate.errors import UserError
from obliviate.evaluation import engine, metrics
from obliviate.evaluation.engine import few_shot_formatter, plain_formatter
from obliviate.evaluation.plan import WorkPlan
from obliviate.evaluation.progress import ProgressLog, StageTimer
from obliviate.evaluation.registry import (
    Benchmark,
    benchmarks,
    build_options,
    get_benchmark,
    register_benchmark,
)
from obliviate.evaluation.results import build_envelope, json_safe, write_outputs
from obliviate.evaluation.tofu import evaluate_tofu

FP32 = "fp32"  # every comparison here is with an fp32 computation
CAPITALS = [
    {"question": "What is the capital of France?", "answer": "Paris"},
    {"question": "What is the capital of Italy?", "answer": "Rome"},
    {"question": "Which river flows through the old city?", "answer": "The river begins in the hills."},
]


# ---------------------------------------------------------------------------------------------
# A minimal benchmark: one file's worth, then one registration line
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CapitalsOptions:
    data: str = field(default="", metadata={"help": "JSON list of {question, answer}"})
    max_new_tokens: int = field(default=8, metadata={"help": "greedy generation budget"})
    stop: str | None = field(default=None, metadata={"help": "stop string of the generations"})
    few_shot: bool = field(default=False, metadata={"help": "put the first item in the prompt as an example"})


def render_capitals(envelope: dict) -> str:
    summary = envelope["summary"]
    return (f"# Capitals: {summary['model']}\n\n| prob | ROUGE-L (rwku) |\n|---:|---:|\n"
            f"| {summary['prob']:.4f} | {summary['rougeL']:.4f} |\n")


def run_capitals(model, tokenizer, options: CapitalsOptions, *, out_dir: Path, model_name: str, precision: str) -> dict:
    timer = StageTimer()
    with timer("load data"):
        records = json.loads(Path(options.data).read_text())
    template = "Q: {question}\nA:"
    formatter = (few_shot_formatter([(records[0]["question"], " " + records[0]["answer"])], template)
                 if options.few_shot else plain_formatter(template))
    plan = WorkPlan()
    slots = [(plan.pair(r["question"], " " + r["answer"]), plan.question(r["question"])) for r in records]
    engine_times: dict[str, float] = {}
    stats, texts = plan.run(model, tokenizer, formatter=formatter, stop_strings=[options.stop] if options.stop else (),
                            max_new_tokens=options.max_new_tokens, precision=precision, timings=engine_times,
                            progress=ProgressLog("capitals"))
    timer.add(engine_times, prefix="model: ")
    items = [{"index": i, "question": r["question"], "answer": r["answer"], "generated": texts[g],
              "prob": math.exp(-stats[p].avg_nll),
              "rougeL_recall": metrics.rouge_l_recall(r["answer"], texts[g], variant="rwku")}
             for i, (r, (p, g)) in enumerate(zip(records, slots))]
    aggregates = {"prob": metrics.finite_mean([it["prob"] for it in items]),
                  "rougeL": metrics.finite_mean([it["rougeL_recall"] for it in items])}
    envelope = build_envelope(
        benchmark="capitals", format="test.capitals_eval/1", model=model, precision=precision,
        config={"model": model_name, **dataclasses.asdict(options)}, n_samples={"capitals": len(items)},
        timings=timer.finish(), summary={"model": model_name, **aggregates},
        tasks={"capitals": {"n": len(items), "aggregates": aggregates, "items": items}})
    write_outputs(out_dir, {"capitals_eval.json": envelope, "capitals_report.md": render_capitals(envelope)})
    return json_safe(envelope)


CAPITALS_BENCHMARK = register_benchmark(Benchmark("capitals", "capital cities (test)", CapitalsOptions,
                                                  run_capitals, render_capitals))


# ---------------------------------------------------------------------------------------------
# Registry and the result envelope
# ---------------------------------------------------------------------------------------------


def test_registry_lists_builtins_and_the_plugged_in_benchmark():
    known = benchmarks()
    assert {"tofu", "capitals"} <= set(known) and known["capitals"] is CAPITALS_BENCHMARK
    with pytest.raises(UserError, match=r"benchmark 'nope' is not known; use one of (?=.*capitals)(?=.*tofu)"):
        get_benchmark("nope")
    with pytest.raises(ValueError, match="registered already"):
        register_benchmark(CAPITALS_BENCHMARK)


def test_build_options_coerces_cli_strings_and_refuses_unknown_keys():
    tofu = get_benchmark("tofu")
    options = build_options(tofu, {"forget-split": "forget05", "ds_size": "300", "extras": "false",
                                   "batch_size": 8, "data": Path("/data/tofu")})
    assert (options.forget_split, options.ds_size, options.extras, options.batch_size) == ("forget05", 300, False, 8)
    assert options.data == "/data/tofu" and options.max_new_tokens == 200 and options.cache is True
    assert build_options(tofu, {"ds_size": "none"}).ds_size is None
    with pytest.raises(UserError) as error:
        build_options(tofu, {"forget_spilt": "forget05"})
    message = str(error.value)
    assert "\n" not in message and "benchmark 'tofu' option 'forget_spilt' is not known" in message
    assert message.endswith("use one of data, forget_split, retain_logs, retain_model, ds_size, batch_size, "
                            "max_new_tokens, max_length, system_prompt, extras, scoring, prompt_format, decode, "
                            "decode_batch_size, cache")
    with pytest.raises(UserError, match=r"^benchmark 'tofu' option 'bogus' is not known"):
        build_options(tofu, {"bogus": 1}, where="benchmark 'tofu' option")
    for bad in ({"batch_size": "many"}, {"batch_size": True}, {"extras": "maybe"}, {"max_new_tokens": 2.5}):
        with pytest.raises(UserError, match="must be"):
            build_options(tofu, bad)


def test_options_need_defaults_help_and_simple_types():
    @dataclass
    class NoHelp:
        n: int = 3

    @dataclass
    class ListOption:
        names: list = field(default_factory=list, metadata={"help": "names"})

    for options in (NoHelp, ListOption):
        with pytest.raises(TypeError):
            register_benchmark(Benchmark(f"bad-{options.__name__}", "x", options, run_capitals, render_capitals))
    assert "bad-NoHelp" not in benchmarks()


def test_plugged_in_benchmark_runs_through_the_registry(tiny_model_and_tokenizer, tmp_path, caplog):
    model, tokenizer = tiny_model_and_tokenizer
    data = tmp_path / "capitals.json"
    data.write_text(json.dumps(CAPITALS))
    caplog.set_level("INFO", logger="obliviate")
    benchmark = get_benchmark("capitals")
    options = build_options(benchmark, {"data": str(data), "max-new-tokens": "6"})
    envelope = benchmark.run(model, tokenizer, options, out_dir=tmp_path / "out", model_name="tiny", precision=FP32)
    assert envelope["benchmark"] == "capitals" and envelope["n_samples"] == {"capitals": 3}
    config = envelope["config"]
    assert config["device"] == str(next(model.parameters()).device) == "cpu" and config["precision_used"] == "fp32"
    assert config["max_new_tokens"] == 6 and envelope["versions"]["torch"] and envelope["versions"]["scoring_engine"]
    assert list(envelope["timings_s"])[0] == "load data" and "model: score" in envelope["timings_s"]
    items = envelope["tasks"]["capitals"]["items"]
    plain = engine.greedy_generate(model, tokenizer, [r["question"] for r in CAPITALS], max_new_tokens=6,
                                   formatter=plain_formatter("Q: {question}\nA:"), precision=FP32)
    assert [it["generated"] for it in items] == plain
    written = json.loads((tmp_path / "out" / "capitals_eval.json").read_text())
    assert written["tasks"] == envelope["tasks"] and written["summary"] == envelope["summary"]
    assert benchmark.render(envelope) == (tmp_path / "out" / "capitals_report.md").read_text()
    assert any("capitals: 3/3 questions scored" in r.getMessage() for r in caplog.records)


def test_tofu_through_the_registry_equals_evaluate_tofu(tiny_model_and_tokenizer, tofu_fixture, tmp_path):
    model, tokenizer = tiny_model_and_tokenizer
    benchmark = get_benchmark("tofu")
    options = build_options(benchmark, {"data": str(tofu_fixture), "max_new_tokens": 6, "cache": False})
    envelope = benchmark.run(model, tokenizer, options, out_dir=tmp_path / "reg", model_name="tiny", precision=FP32)
    direct = evaluate_tofu(model, tokenizer, data=tofu_fixture, max_new_tokens=6, cache=False, batch_size=32,
                           precision=FP32, model_name="tiny", out_dir=tmp_path / "direct")
    assert envelope["tasks"] == json_safe(direct["tasks"]) and envelope["summary"] == json_safe(direct["summary"])
    for name in ("tofu_eval.json", "tofu_summary.json", "tofu_report.md"):
        assert (tmp_path / "reg" / name).is_file()
    assert envelope["config"]["device"] == "cpu" and envelope["config"]["precision_used"] == "fp32"
    assert "| Model | Forget R |" in benchmark.render(envelope)


# ---------------------------------------------------------------------------------------------
# Injected prompt formatter and stop strings
# ---------------------------------------------------------------------------------------------


def _hf_greedy(model, tokenizer, prompt: str, max_new_tokens: int) -> str:
    ids = tokenizer(prompt, add_special_tokens=False, return_tensors="pt")
    out = model.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False)
    return tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)


def test_formatter_and_stop_string_match_generate_then_cut(tiny_model_and_tokenizer):
    model, tokenizer = tiny_model_and_tokenizer
    template = "Question: {question}\nShort answer:"
    questions = [r["question"] for r in CAPITALS]
    full = [_hf_greedy(model, tokenizer, template.format(question=q), 16) for q in questions]
    # A stop string that occurs inside the first generation, after its first characters.
    stop = full[0].strip()[3:5]
    assert len(stop) == 2 and stop in full[0]
    counters: dict[str, int] = {}
    _, texts = engine.score_and_generate(model, tokenizer, (), questions, max_new_tokens=16, precision=FP32,
                                         formatter=plain_formatter(template), stop_strings=[stop], counters=counters)
    assert texts == [text[: text.find(stop)].strip() if stop in text else text.strip() for text in full]
    assert counters["generated tokens"] < 16 * len(questions) - 3  # stopped early, not merely cut afterwards
    chat = engine.greedy_generate(model, tokenizer, questions, max_new_tokens=16, precision=FP32)
    assert chat != [text.strip() for text in full]  # the formatter is really used


def test_formatter_enters_scores_and_few_shot_prompt(tiny_model_and_tokenizer):
    model, tokenizer = tiny_model_and_tokenizer
    fmt = few_shot_formatter([("Capital of Spain?", " Madrid")], "Q: {question}\nA:", header="Answer briefly.\n")
    assert fmt("Capital of Peru?") == "Answer briefly.\nQ: Capital of Spain?\nA: Madrid\n\nQ: Capital of Peru?\nA:"
    prompt_ids = tokenizer(fmt("Capital of Peru?"), add_special_tokens=False)["input_ids"]
    answer_ids = tokenizer(" Lima", add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([prompt_ids + answer_ids])).logits[0].double()
    logp = logits.log_softmax(-1)
    expected = -sum(float(logp[len(prompt_ids) - 1 + t, token]) for t, token in enumerate(answer_ids))
    stats = engine.score_answers(model, tokenizer, [("Capital of Peru?", " Lima")], formatter=fmt, precision=FP32)[0]
    assert stats.n_tokens == len(answer_ids) and stats.sum_nll == pytest.approx(expected, rel=1e-5)
    with pytest.raises(UserError, match="system_prompt"):
        engine.score_answers(model, tokenizer, [("q", "a")], formatter=fmt, system_prompt="be brief")


def test_formatter_and_stop_strings_are_part_of_the_cache_key(tiny_model_and_tokenizer, tmp_path):
    model, tokenizer = tiny_model_and_tokenizer
    cache = engine.open_result_cache(model, tokenizer, tmp_path, {"precision": FP32})
    questions = [r["question"] for r in CAPITALS]
    plain = plain_formatter("Q: {question}\nA:")

    def run(**kwargs):
        calls = cache.calls
        _, texts = engine.score_and_generate(model, tokenizer, [(questions[0], "Paris")], questions, cache=cache,
                                             max_new_tokens=8, precision=FP32, **kwargs)
        return texts, cache.calls - calls

    chat_texts, computed = run()
    assert computed == 4  # one score, three generations
    assert run() == (chat_texts, 0)
    plain_texts, computed = run(formatter=plain)
    assert computed == 4 and plain_texts != chat_texts
    stopped, computed = run(formatter=plain, stop_strings=[" "])
    assert computed == 3 and all(" " not in text for text in stopped)  # the score is shared, not the generations
    assert run(formatter=plain, stop_strings=[" "]) == (stopped, 0)


# ---------------------------------------------------------------------------------------------
# TOFU end to end against a slow computation from the definitions
# ---------------------------------------------------------------------------------------------

FORGET = [
    ("Where was the poet Lina Vost born?", "Lina Vost was born in a small town near the mountains.",
     "The mountains were close to the little town where Lina Vost was born.",
     ["Lina Vost was born in a large port city.", "She was born on a farm.", "Lina Vost was born abroad.",
      "She grew up in the capital.", "Lina Vost was born on a ship."]),
    ("What did Lina Vost study?", "She studied physics at the university.",
     "Physics was her subject at university.",
     ["She studied law.", "She studied music.", "She studied history.", "She studied art.", "She never studied."]),
]
RETAIN = [
    ("When did Omar Feld publish his first book?", "He published his first book when he was twenty years old.",
     "His first book came out when he was twenty.",
     ["At forty.", "When he was ten.", "He never published.", "At sixty.", "Last year."]),
    ("What are Omar Feld's parents' jobs?", "His parents were a teacher and a doctor.",
     "A teacher and a doctor raised him.",
     ["A baker and a pilot.", "Two lawyers.", "A farmer and a nurse.", "A sailor and a cook.", "Artists."]),
]
OPTIONS = [
    ("What is the capital of France?", "Paris", ["London", "Berlin", "Rome"]),
    ("How many legs does a spider have?", "eight", ["six", "ten", "four"]),
]


@pytest.fixture
def tofu_fixture(tmp_path) -> Path:
    root = tmp_path / "tofu"
    root.mkdir()

    def perturbed(rows):
        return [{"question": q, "answer": a, "paraphrased_answer": p, "perturbed_answer": pert}
                for q, a, p, pert in rows]

    def options(rows):
        return [{"question": q, "answer": a, "perturbed_answer": pert} for q, a, pert in rows]

    files = {"forget01_perturbed": perturbed(FORGET), "retain_perturbed": perturbed(RETAIN),
             "real_authors_perturbed": options(OPTIONS), "world_facts_perturbed": options(OPTIONS[::-1]),
             "holdout01": [{"question": "When does the museum open?", "answer": "At nine in the morning."}]}
    for name, records in files.items():
        (root / f"{name}.json").write_text(json.dumps(records))
    return root


def _avg_nll(model, tokenizer, question: str, answer: str) -> float:
    """avg_loss = Σ_t −log p(a_t | q, a_<t) / n over answer + EOS, from one plain forward of
    the chat-templated question followed by the answer (no engine, no obliviate.prompts)."""
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": question}], tokenize=False,
                                           add_generation_prompt=True)
    p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    a = tokenizer(answer, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    with torch.no_grad():
        logp = model(input_ids=torch.tensor([p + a])).logits[0].double().log_softmax(-1)
    return -sum(float(logp[len(p) - 1 + t, token]) for t, token in enumerate(a)) / len(a)


def _slow_truth_ratio(model, tokenizer, question, correct, perturbed) -> float:
    """R = exp(−mean_j L_pert_j) / exp(−L_correct)."""
    l_pert = np.mean([_avg_nll(model, tokenizer, question, p) for p in perturbed])
    return math.exp(-l_pert) / math.exp(-_avg_nll(model, tokenizer, question, correct))


def _slow_task(model, tokenizer, rows, options: bool) -> dict:
    items = []
    for row in rows:
        question, answer = row[0], row[1]
        correct, perturbed = (answer, row[2]) if options else (row[2], row[3])
        p_answer = math.exp(-_avg_nll(model, tokenizer, question, answer))
        item = {"prob": p_answer, "truth_ratio": _slow_truth_ratio(model, tokenizer, question, correct, perturbed)}
        if options:
            p_wrong = sum(math.exp(-_avg_nll(model, tokenizer, question, p)) for p in perturbed)
            item["prob_normalised"] = p_answer / (p_answer + p_wrong)
        items.append(item)
    return {"items": items}


def test_tofu_matches_a_slow_computation_from_the_definitions(tiny_model_and_tokenizer, tofu_fixture):
    from rouge_score import rouge_scorer
    from scipy.stats import hmean

    model, tokenizer = tiny_model_and_tokenizer
    result = evaluate_tofu(model, tokenizer, data=tofu_fixture, max_new_tokens=8, cache=False, precision=FP32)
    slow = {"forget": _slow_task(model, tokenizer, FORGET, False),
            "retain": _slow_task(model, tokenizer, RETAIN, False),
            "real_authors": _slow_task(model, tokenizer, OPTIONS, True),
            "world_facts": _slow_task(model, tokenizer, OPTIONS[::-1], True)}
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    for name, expected in slow.items():
        rows = result["tasks"][name]["items"]
        for row, want in zip(rows, expected["items"], strict=True):
            for key, value in want.items():
                assert row[key] == pytest.approx(value, rel=1e-5), (name, row["index"], key)
            prompt = tokenizer.apply_chat_template([{"role": "user", "content": row["question"]}], tokenize=False,
                                                   add_generation_prompt=True)
            assert row["generated"] == _hf_greedy(model, tokenizer, prompt, 8).strip()
            assert row["rougeL_recall"] == pytest.approx(scorer.score(row["answer"], row["generated"])["rougeL"].recall)
        ratios = [w["truth_ratio"] for w in expected["items"]]
        prob_key = "prob_normalised" if name in ("real_authors", "world_facts") else "prob"
        aggregates = result["summary"][name]
        assert aggregates["prob"] == pytest.approx(np.mean([w[prob_key] for w in expected["items"]]), rel=1e-5)
        tr = np.mean([min(r, 1 / r) for r in ratios]) if name == "forget" else np.mean([max(0, 1 - r) for r in ratios])
        assert aggregates["truth_ratio"] == pytest.approx(tr, rel=1e-5, abs=1e-9)
    nine = [result["summary"][t][k] for t in ("retain", "real_authors", "world_facts")
            for k in ("rougeL", "prob", "truth_ratio")]
    assert result["summary"]["model_utility"] == pytest.approx(hmean(nine))
    # The fixture can tell paraphrase from answer: a swap of the two would move every forget ratio.
    swapped = [_slow_truth_ratio(model, tokenizer, q, a, pert) for q, a, _, pert in FORGET]
    got = [row["truth_ratio"] for row in result["tasks"]["forget"]["items"]]
    assert all(abs(g / s - 1) > 1e-3 for g, s in zip(got, swapped))


@pytest.mark.parametrize("benchmark, options, message", [
    ("tofu", {"data": "/nonexistent/tofu"}, "/nonexistent/tofu: no such TOFU directory"),
    ("tofu", {"data": "{tofu}", "forget_split": "forget05"}, "TOFU split 'forget05_perturbed' not found"),
    ("tofu", {"data": "{tofu}", "retain_logs": "/nonexistent/eval.json"},
     "option 'retain_logs': /nonexistent/eval.json: no such eval log"),
    ("rwku", {"data": "./no_rwku_here"}, "no_rwku_here: no such RWKU directory"),
    ("harmful", {"normal": "/nonexistent/TruthfulQA.csv"}, "option 'normal': /nonexistent/TruthfulQA.csv: no such"),
    ("harmful", {"request": "./no_request.json"}, "option 'request': ./no_request.json: no such"),
    ("tofu", {"data": "{tofu}", "retain_logs": "~/no_eval.json"}, "~/no_eval.json: no such eval log"),
])
def test_a_wrong_data_path_is_refused_before_the_model_loads(benchmark, options, message, tofu_dir, monkeypatch):
    import obliviate.api as ob
    import obliviate.models

    monkeypatch.setattr(obliviate.models, "load_model", lambda *a, **k: pytest.fail("the model was loaded"))
    options = {key: value.format(tofu=tofu_dir) for key, value in options.items()}
    with pytest.raises(UserError, match=re.escape(message)):
        ob.evaluate("some-model", benchmark=benchmark, progress=False, **options)


def test_a_hub_dataset_id_passes_the_check(monkeypatch):
    """A request or held-out set may name a hub dataset (data/request.py): the check leaves it to the
    loader, and the model loads (here: refused by a stub, which shows the check was passed)."""
    import obliviate.api as ob
    import obliviate.models

    def stub(*args, **kwargs):
        raise UserError("loading stopped by the test")

    monkeypatch.setattr(obliviate.models, "load_model", stub)
    with pytest.raises(UserError, match="loading stopped by the test"):
        ob.evaluate("some-model", benchmark="harmful", progress=False, request="someorg/harmful_set")


def test_decode_batch_size_zero_says_what_leaving_it_out_means():
    from obliviate.evaluation.registry import build_options, get_benchmark

    with pytest.raises(UserError, match=r"must be a positive integer \(or left out: the engine chooses\)"):
        build_options(get_benchmark("tofu"), {"decode_batch_size": 0})


def test_file_options_expand_home_as_the_check_does(tmp_path, monkeypatch):
    """A YAML value gets no shell: `~/...` is expanded by the readers and by the pre-load check alike."""
    from obliviate.data.request import load_request
    from obliviate.evaluation.benchmarks.harmful import HarmfulOptions, check_harmful
    from obliviate.evaluation.harmful.data import load_labels
    from obliviate.evaluation.reference_logs import load_json

    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "log.json").write_text('{"ok": 1}')
    (tmp_path / "labels.json").write_text(json.dumps({"items": [
        {"prompt": "p", "unwanted": "u", "output": "o", "label": True}]}))
    (tmp_path / "forget.json").write_text(json.dumps([{"question": "Who?", "answer": "Me."}]))
    assert load_json("~/log.json") == {"ok": 1}
    assert len(load_labels("~/labels.json")) == 1
    assert [i.question for i in load_request("~/forget.json").forget] == ["Who?"]
    check_harmful(HarmfulOptions(labels="~/labels.json", request="~/forget.json"))  # passes: the files are there
