"""The harmful-prompt evaluation: unwanted-answer rates and normal-prompt utility of one model.

    forget_rate  = mean_i judge(p_i, o_i, y_i)   over the request's forget prompts
    heldout_rate = the same over held-out prompts of the same kind (never trained on)
    normal: perplexity of the reference answers, similarity to the original model's outputs,
            distinct-1 / distinct-2 of the outputs (utility.py has the formulas)
    judge_agreement: the judge against hand labels (judge.py): --labels, else the built-in ones
                     with the built-in request only (none for a request of one's own)

One engine pass scores the normal answers and generates greedily for every prompt.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from obliviate.errors import UserError
from obliviate.evaluation.engine import greedy_generate, model_fingerprint, score_and_generate
from obliviate.evaluation.harmful import utility
from obliviate.evaluation.harmful.data import (
    HARMFUL_FORMAT,
    SKU_HELDOUT,
    SKU_LABELS,
    SKU_REQUEST,
    load_labels,
    load_reference_outputs,
    load_sets,
)
from obliviate.evaluation.harmful.judge import agreement, heuristic_judge, llm_judge
from obliviate.evaluation.harmful.report import render_harmful
from obliviate.evaluation.metrics import finite_mean
from obliviate.evaluation.progress import ProgressLog, StageTimer
from obliviate.evaluation.results import build_envelope, json_safe, write_outputs

FORMAT = HARMFUL_FORMAT


def judge_server(options):
    """The OpenAI-compatible backend of ``--judge_url``; its messages name the judge's options."""
    from obliviate.prepare.openai_compatible import OpenAICompatibleBackend

    return OpenAICompatibleBackend(options.judge_url, options.judge_model or "default", option="--judge_url",
                                   model_option="--judge_model", concurrency_option=None)


def make_judge(options, model, tokenizer):
    """The judge ``options.judge`` names: heuristic, or llm (a local model or a server)."""
    if options.judge == "heuristic":
        return heuristic_judge(options.threshold)
    if options.judge != "llm":
        raise UserError(f"benchmark 'harmful' option 'judge' is {options.judge!r}; use heuristic or llm")
    if options.judge_url:
        return llm_judge(judge_server(options))
    from obliviate.prepare.local import LocalHFBackend

    if options.judge_model:
        from obliviate.models import load_model

        model, tokenizer = load_model(options.judge_model)
    return llm_judge(LocalHFBackend(model, tokenizer, batch_size=options.batch_size))


def _rate_task(items, outputs, judge) -> dict:
    prompts, unwanted = [i.question for i in items], [i.answer for i in items]
    verdicts = judge(prompts, outputs, unwanted) if items else []
    rows = [{"question": p, "unwanted": u, "output": o, "unwanted_answer": v}
            for p, u, o, v in zip(prompts, unwanted, outputs, verdicts)]
    rate = sum(verdicts) / len(verdicts) if verdicts else None
    return {"n": len(rows), "aggregates": {"unwanted_rate": rate}, "items": rows}


def _originals(options, model, tokenizer, questions, precision) -> tuple[list[str] | None, str]:
    """The original model's normal outputs: a file, a model to generate with, or (None, "none"):
    then no similarity is reported (comparing the model with itself would read as 1.0)."""
    if options.reference_outputs:
        return load_reference_outputs(options.reference_outputs, questions), options.reference_outputs
    if options.reference_model:
        from obliviate.models import load_model

        original, original_tok = load_model(options.reference_model)
        original.to(next(model.parameters()).device)
        texts = greedy_generate(original, original_tok, questions, options.max_new_tokens, options.batch_size,
                                precision=precision, system_prompt=options.system_prompt, decode=options.decode,
                                decode_batch_size=options.decode_batch_size)
        return texts, options.reference_model
    return None, "none"


def _normal_task(sets, stats, outputs, originals) -> dict:
    sims = utility.similarity(outputs, originals) if originals is not None else [None] * len(outputs)
    rows = [{"question": i.question, "answer": i.answer, "output": o, "answer_nll": s.sum_nll,
             "answer_tokens": s.n_tokens, "similarity": sim}
            for i, s, o, sim in zip(sets.normal, stats, outputs, sims)]
    aggregates = {"perplexity": utility.perplexity(stats), "similarity": finite_mean(sims),  # None without originals
                  "distinct_1": utility.distinct_n(outputs, 1), "distinct_2": utility.distinct_n(outputs, 2)}
    return {"n": len(rows), "aggregates": aggregates, "items": rows}


def builtin_request(request: str | None) -> bool:
    """Whether ``request`` is the built-in sku_request.json (left out or named)."""
    if not request:
        return True
    try:
        return Path(request).expanduser().resolve() == SKU_REQUEST.resolve()
    except (OSError, ValueError):
        return False


def heldout_source(options) -> str | None:
    """The held-out prompts: ``options.heldout``, else the built-in ones when the request is the
    built-in one, left out or named (they are held out from its prompts)."""
    return options.heldout or (str(SKU_HELDOUT) if builtin_request(options.request) else None)


def labels_source(options) -> str | None:
    """The hand labels the judge is measured against: ``options.labels``, else the built-in
    labels when the request is the built-in one (they label outputs to its prompts); None when
    neither, or with judge_agreement off, since an agreement on another request's prompts would
    be read as one on this request's."""
    if not options.judge_agreement:
        return None
    return options.labels or (str(SKU_LABELS) if builtin_request(options.request) else None)


def _label_task(options, judge) -> dict | None:
    """The judge against the hand labels of :func:`labels_source` (None without them)."""
    path = labels_source(options)
    if path is None:
        return None
    labels = load_labels(path)
    verdicts = judge([r["prompt"] for r in labels], [r["output"] for r in labels], [r["unwanted"] for r in labels])
    rows = [{**r, "verdict": v} for r, v in zip(labels, verdicts)]
    return {"n": len(rows), "aggregates": agreement([r["label"] for r in labels], verdicts), "items": rows}


def evaluate_harmful(model, tokenizer, options, *, out_dir: Path, model_name: str, precision: str) -> dict:
    """Run the evaluation (module docstring); writes harmful_eval.json and harmful_report.md."""
    timer = StageTimer()
    heldout = heldout_source(options)
    with timer("load data"):
        sets = load_sets(options.request, heldout, options.normal, options.ds_size)
    questions = [i.question for i in sets.forget + sets.heldout + sets.normal]
    engine_times: dict[str, float] = {}
    stats, texts = score_and_generate(
        model, tokenizer, [(i.question, i.answer) for i in sets.normal], questions,
        max_new_tokens=options.max_new_tokens, batch_size=options.batch_size, precision=precision,
        system_prompt=options.system_prompt, decode=options.decode,
        decode_batch_size=options.decode_batch_size, progress=ProgressLog("harmful", "prompts"),
        timings=engine_times)
    timer.add(engine_times, prefix="model: ")
    cut = [len(sets.forget), len(sets.forget) + len(sets.heldout)]
    forget_out, heldout_out, normal_out = texts[:cut[0]], texts[cut[0]:cut[1]], texts[cut[1]:]
    with timer("judge"):
        judge = make_judge(options, model, tokenizer)
        tasks = {"forget": _rate_task(sets.forget, forget_out, judge),
                 "heldout": _rate_task(sets.heldout, heldout_out, judge)}
        labels = _label_task(options, judge)
    with timer("original outputs"):
        originals, original_source = _originals(options, model, tokenizer, [i.question for i in sets.normal],
                                                precision)
    tasks["normal"] = _normal_task(sets, stats, normal_out, originals)
    if labels is not None:
        tasks["judge_labels"] = labels
    summary = {"model": model_name, "forget_unwanted_rate": tasks["forget"]["aggregates"]["unwanted_rate"],
               "heldout_unwanted_rate": tasks["heldout"]["aggregates"]["unwanted_rate"],
               **tasks["normal"]["aggregates"],
               "judge_agreement": labels["aggregates"]["agreement"] if labels else None}
    config = {"model": model_name, "model_fingerprint": model_fingerprint(model), **dataclasses.asdict(options),
              "request": options.request or str(SKU_REQUEST),
              "labels": labels_source(options),
              "heldout": heldout, "normal": sets.normal_source, "original_outputs": original_source}
    envelope = build_envelope(benchmark="harmful", format=FORMAT, model=model, precision=precision, config=config,
                              n_samples={name: task["n"] for name, task in tasks.items()},
                              timings=timer.finish(), summary=summary, tasks=tasks)
    envelope = json_safe(envelope)
    write_outputs(out_dir, {"harmful_eval.json": envelope, "harmful_report.md": render_harmful(envelope)})
    return envelope
