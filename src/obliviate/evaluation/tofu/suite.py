"""``evaluate_tofu``: TOFU's four tasks in one engine pass, Forget Quality, Model Utility, files."""

from __future__ import annotations

from pathlib import Path

from obliviate.errors import UserError
from obliviate.evaluation import metrics
from obliviate.evaluation.engine import model_fingerprint
from obliviate.evaluation.engine.result_cache import result_cache_for
from obliviate.evaluation.plan import WorkPlan
from obliviate.evaluation.progress import ProgressLog, StageTimer
from obliviate.evaluation.report import render_report
from obliviate.evaluation.results import build_envelope, write_outputs
from obliviate.evaluation.tofu.data import TASKS, UTILITY_TASKS, holdout_split, load_task_items, try_items
from obliviate.evaluation.tofu.extras import MIN_K, forget_extras
from obliviate.evaluation.tofu.items import assemble, engine_settings, plan_items
from obliviate.evaluation.tofu.reference import compare_with_retain, retain_reference
from obliviate.prompt_formats import check_system_prompt, resolve_format
from obliviate.prompts import format_prompt

FORMAT = "obliviate.tofu_eval/1"
PACKAGES = ("torch", "transformers", "rouge-score", "scipy", "numpy", "datasets")
GENERATION = "greedy, stop at EOS / end of turn, new tokens decoded without special tokens, stripped"
KIND = {task.name: task.kind for task in TASKS}


def _score_tasks(model, tokenizer, task_items, holdout_items, *, extras: bool, progress, timer: StageTimer,
                 engine_options: dict) -> tuple[dict, dict | None, dict]:
    """All four tasks (and the holdout set) through the engine at once: ``(tasks, forget
    extras or None, tokens run through the model)``."""
    plan = WorkPlan()
    slots = {name: plan_items(plan, items, KIND[name], generate=True, details=extras and name == "forget")
             for name, (_, items) in task_items.items()}
    holdout_slots = [plan.pair(item.question, item.answer, True) for item in holdout_items or []]
    engine_times, counters = {}, {}
    stats, gens = plan.run(model, tokenizer, timings=engine_times, counters=counters, progress=progress,
                           **engine_options)
    timer.add(engine_times, prefix="model: ")
    with timer("metrics"):
        tasks = {name: {"split": split, **assemble(items, KIND[name], slots[name], stats, gens)}
                 for name, (split, items) in task_items.items()}
        extra_values = None
        if extras:
            extra_values, per_item = forget_extras(
                task_items["forget"][1], stats, [s["answer"] for s in slots["forget"]],
                [stats[i] for i in holdout_slots] if holdout_items else None, holdout_items)
            for row in tasks["forget"]["items"]:
                row.update(per_item[row["index"]])
    return tasks, extra_values, counters


def _summary(model, model_name, forget_split, tasks, forget_quality, extras, notes) -> dict:
    nine = [tasks[name]["aggregates"][key] for name in UTILITY_TASKS for key in ("rougeL", "prob", "truth_ratio")]
    return {
        "model": model_name or str(getattr(model.config, "_name_or_path", "") or type(model).__name__),
        "forget_split": forget_split,
        **{name: dict(tasks[name]["aggregates"]) for name in tasks},
        "forget_quality": forget_quality,
        "model_utility": metrics.model_utility(nine) if all(v is not None for v in nine) else None,
        "extras": extras or {},
        "n": {name: tasks[name]["n"] for name in tasks},
        "notes": notes,
    }


def _config(tokenizer, model_label, fingerprint, result_cache, reference_source, **settings) -> dict:
    """The envelope's config, keys in the order of the files written so far; the envelope
    fills in ``precision_used`` and ``device``."""
    return {
        "model": model_label, "model_fingerprint": fingerprint, "data": settings["data"],
        "forget_split": settings["forget_split"], "holdout_split": settings["holdout_split"],
        "ds_size": settings["ds_size"], "retain_reference": reference_source, "batch_size": settings["batch_size"],
        "max_new_tokens": settings["max_new_tokens"], "max_length": settings["max_length"],
        "precision": settings["precision"], "precision_used": None, "system_prompt": settings["system_prompt"],
        "prompt_format": settings["prompt_format"],
        "prompt_example": format_prompt(tokenizer, "<question>", settings["system_prompt"], settings["prompt_format"]),
        "generation": GENERATION, "scoring": settings["scoring"], "device": None, "min_k": MIN_K,
        "cache": str(result_cache.path) if result_cache is not None else None,
    }


def evaluate_tofu(
    model,
    tokenizer,
    *,
    data: str | Path = "locuslab/TOFU",
    forget_split: str = "forget01",
    retain_logs: str | Path | None = None,
    retain_model: str | Path | None = None,
    ds_size: int | None = None,
    out_dir: str | Path | None = None,
    batch_size: int = 64,
    max_new_tokens: int = 200,
    max_length: int = 512,
    precision: str = "auto",
    system_prompt: str | None = None,
    cache: bool | str | Path = True,
    model_name: str | None = None,
    extras: bool = True,
    scoring: str = "answer",
    prompt_format: str = "auto",
    decode: str = "auto",
    decode_batch_size: int | None = None,
) -> dict:
    """Evaluate ``model`` on TOFU's four tasks; return (and write to ``out_dir``) the results.

    ``data``: a local directory of TOFU JSON files (``<dir>/<split>.json``) or a hub name.
    ``retain_logs`` / ``retain_model``: the retain model's eval log or the model itself, for
    Forget Quality (and PrivLeak when its min-k AUC is known); without either FQ is None.
    ``ds_size``: evaluate only the first N items of each split (legacy TOFU used 300).
    ``extras``: extraction strength, exact memorisation and MIA AUCs (forget vs
    ``holdoutXX``) on the forget set. ``scoring``: ``"answer"`` (default, TOFU's definition:
    answer + EOS) or ``"chat_turn"`` (open-unlearning's: the assistant turn as the chat
    template renders it, for SmolLM2 answer + ``<|im_end|>`` + newline + EOS), so probabilities,
    truth ratios and MIA scores compare with open-unlearning's logs. ``prompt_format``: ``"auto"``
    (the chat template; TOFU's plain format without one) or open-unlearning's tags for models it
    prompts without the template (``"Llama-2-7b-chat-hf"``, ``"phi-1_5"``, or text around
    ``{question}``; :mod:`obliviate.prompt_formats`), in scoring and generation. ``decode``: the greedy
    decoding path (``auto``: the fixed-shape, CUDA-graph step on CUDA, the plain loop elsewhere);
    ``decode_batch_size``: the prompts decoded together (engine.settings.decode_rows). Writes
    ``tofu_eval.json`` (the result envelope: config, versions, sample counts, timings, per-item
    values, aggregates), ``tofu_summary.json`` and ``tofu_report.md``.
    """
    if retain_logs is not None and retain_model is not None:
        raise UserError("give either retain_logs or retain_model, not both")
    check_system_prompt(resolve_format(prompt_format), system_prompt)
    timer = StageTimer()
    with timer("load data"):
        task_items = load_task_items(data, forget_split, ds_size)
        holdout = holdout_split(forget_split)
        holdout_items = try_items(data, holdout, ds_size) if extras else None
    with timer("fingerprint"):
        fingerprint = model_fingerprint(model)  # recorded in the config, cache or not
        result_cache = result_cache_for(model, tokenizer, cache, engine_settings(model, precision, max_length),
                                        fingerprint)
    engine_options = dict(batch_size=batch_size, max_length=max_length, precision=precision,
                          system_prompt=system_prompt, scoring=scoring, prompt_format=prompt_format)
    with timer("retain reference"):  # first: a log of another split is refused before minutes of scoring
        reference = retain_reference(model, task_items["forget"][1], holdout_items, retain_logs=retain_logs,
                                     retain_model=retain_model, forget_split=forget_split, cache=cache,
                                     **engine_options)
    tasks, extra_values, counters = _score_tasks(
        model, tokenizer, task_items, holdout_items, extras=extras, timer=timer,
        progress=ProgressLog(f"TOFU {forget_split}", started=timer.started),
        engine_options={**engine_options, "max_new_tokens": max_new_tokens, "cache": result_cache, "decode": decode,
                        "decode_batch_size": decode_batch_size})
    notes = [f"no '{holdout}' split: MIA AUCs and PrivLeak not computed"] if extras and not holdout_items else []
    if extra_values and extra_values.get("answers_cut"):
        notes.append(f"max_length {max_length} cut {extra_values['answers_cut']} forget / holdout answers to "
                     "<= 1 token: they have no extraction strength, memorisation or MIA scores (left out); raise "
                     "max_length")
    forget_quality = compare_with_retain(tasks["forget"]["items"], reference, extra_values, bool(holdout_items), notes)
    summary = _summary(model, model_name, forget_split, tasks, forget_quality, extra_values, notes)
    config = _config(tokenizer, summary["model"], fingerprint, result_cache, reference.source,
                     data=str(data), forget_split=forget_split, holdout_split=holdout if holdout_items else None,
                     ds_size=ds_size, batch_size=batch_size, max_new_tokens=max_new_tokens, max_length=max_length,
                     precision=precision, system_prompt=system_prompt, scoring=scoring,
                     prompt_format=resolve_format(prompt_format).label, decode=decode,
                     decode_batch_size=decode_batch_size)
    result = build_envelope(
        benchmark="tofu", format=FORMAT, model=model, precision=precision, config=config,
        n_samples={**{name: tasks[name]["n"] for name in tasks}, "holdout": len(holdout_items or [])},
        timings=timer.finish(), summary=summary, tasks=tasks, packages=PACKAGES,
        extra={"model_tokens": counters, "cache_hits": result_cache.hits if result_cache is not None else 0})
    if out_dir is not None:
        write_outputs(out_dir, {"tofu_eval.json": result, "tofu_summary.json": summary,
                                "tofu_report.md": render_report(result)})
    return result
