"""``evaluate_request``: a request's own sets scored like TOFU's tasks, the change from the base
model, and the files (request_eval.json, request_summary.json, request_report.md)."""

from __future__ import annotations

from pathlib import Path

from obliviate.errors import UserError
from obliviate.evaluation.engine import model_fingerprint, resolve_precision
from obliviate.evaluation.engine.result_cache import result_cache_for
from obliviate.evaluation.progress import ProgressLog, StageTimer
from obliviate.evaluation.request.compare import compare, read_base_result, score_base_model, settings_notes
from obliviate.evaluation.request.report import render_request
from obliviate.evaluation.request.score import score_sets
from obliviate.evaluation.request.sets import request_sets
from obliviate.evaluation.results import build_envelope, write_outputs
from obliviate.evaluation.tofu.extras import MIN_K
from obliviate.evaluation.tofu.items import engine_settings
from obliviate.evaluation.tofu.suite import GENERATION, PACKAGES
from obliviate.prompt_formats import check_system_prompt, resolve_format
from obliviate.prompts import format_prompt

FORMAT = "obliviate.request_eval/1"
ENGINE_KEYS = ("batch_size", "max_new_tokens", "max_length", "precision", "system_prompt", "scoring", "prompt_format",
               "decode", "decode_batch_size")


def _config(tokenizer, label, fingerprint, sets, result_cache, options: dict, base_source) -> dict:
    """The envelope's config; the envelope fills in ``precision_used`` and ``device``."""
    return {
        "model": label, "model_fingerprint": fingerprint, "request": options["request"], "request_name": sets.name,
        "items_sha256": sets.sha256, "sets": list(sets.sets), "ds_size": options["ds_size"],
        "holdout": options["holdout"], "base": base_source,
        **{key: options[key] for key in ENGINE_KEYS if key != "prompt_format"},
        "prompt_format": resolve_format(options["prompt_format"]).label, "precision_used": None,
        "prompt_example": format_prompt(tokenizer, "<question>", options["system_prompt"], options["prompt_format"]),
        "generation": GENERATION, "paraphrased_questions": options["paraphrased_questions"],
        "extras": options["extras"], "device": None, "min_k": MIN_K,
        "cache": str(result_cache.path) if result_cache is not None else None,
    }


def _summary(label, sets, tasks, extras, comparison, base_tasks, notes) -> dict:
    return {
        "model": label, "request": sets.name, "sets": list(tasks),
        **{name: dict(task["aggregates"]) for name, task in tasks.items()},
        "base": {name: dict(task["aggregates"]) for name, task in base_tasks.items()} if base_tasks else None,
        **(comparison or {"change": None}),
        "extras": extras or {},
        "n": {name: task["n"] for name, task in tasks.items()},
        "notes": notes,
    }


def _base(model, sets, options: dict, cache, timer: StageTimer) -> tuple[dict | None, str | None, dict]:
    """``(base tasks or None, where they came from, the base result's config)``."""
    if options["base_model"] is not None and options["base_result"] is not None:
        raise UserError("benchmark 'request': give either base_model or base_result, not both")
    if options["base_result"] is not None:
        tasks, config = read_base_result(options["base_result"], sets)
        return tasks, f"result {options['base_result']}", config
    if options["base_model"] is None:
        return None, None, {}
    with timer("base model"):
        engine = {key: options[key] for key in ENGINE_KEYS}
        tasks = score_base_model(options["base_model"], model, sets, cache=cache, extras=False,
                                 paraphrased_questions=options["paraphrased_questions"], **engine)
    return tasks, f"model {options['base_model']}", {}


def evaluate_request(model, tokenizer, *, request: str | None, out_dir: str | Path | None = None,
                     model_name: str | None = None, ds_size: int | None = None, holdout: str | None = None,
                     base_model: str | None = None, base_result: str | None = None, extras: bool = True,
                     paraphrased_questions: bool = True, batch_size: int = 32, max_new_tokens: int = 200,
                     max_length: int = 512, precision: str = "auto", system_prompt: str | None = None,
                     scoring: str = "answer", prompt_format: str = "auto", decode: str = "auto",
                     decode_batch_size: int | None = None,
                     cache: bool | str | Path = True) -> dict:
    """Score ``model`` on every set of ``request`` (a request file, docs/request.md) with TOFU's
    per-item definitions (:mod:`.score`), and against the base model when ``base_model`` (scored
    now) or ``base_result`` (its earlier request_eval.json) is given (:mod:`.compare`).
    ``ds_size``: the first N items of each set; ``holdout``: a data file of QA items the model
    never saw, for the MIA AUCs (``extras``). Returns the envelope and writes it to ``out_dir``."""
    options = dict(locals())  # the settings, by name: the config records them
    check_system_prompt(resolve_format(prompt_format), system_prompt)
    timer = StageTimer()
    with timer("load data"):
        sets = request_sets(request, ds_size=ds_size, holdout=holdout)
    with timer("fingerprint"):
        fingerprint = model_fingerprint(model)
        result_cache = result_cache_for(model, tokenizer, cache, engine_settings(model, precision, max_length),
                                        fingerprint)
    label = model_name or str(getattr(model.config, "_name_or_path", "") or type(model).__name__)
    base_tasks, base_source, base_config = _base(model, sets, options, cache, timer)  # a bad file: before scoring
    engine_times, counters = {}, {}
    tasks, extra_values = score_sets(
        model, tokenizer, sets, extras=extras, paraphrased_questions=paraphrased_questions, timings=engine_times,
        counters=counters, progress=ProgressLog(f"request {sets.name}", started=timer.started), cache=result_cache,
        **{key: options[key] for key in ENGINE_KEYS})
    timer.add(engine_times, prefix="model: ")
    config = _config(tokenizer, label, fingerprint, sets, result_cache, options, base_source)
    config["precision_used"] = resolve_precision(model, precision)  # the base result's is compared below
    notes = list(sets.notes) + settings_notes(config, base_config, base_source or "")
    if extras and sets.holdout is None:
        notes.append("no holdout set: MIA AUCs not computed (pass holdout: QA items the model never saw)")
    comparison = compare(tasks, base_tasks) if base_tasks else None
    summary = _summary(label, sets, tasks, extra_values, comparison, base_tasks, notes)
    result = build_envelope(
        benchmark="request", format=FORMAT, model=model, precision=precision, config=config,
        n_samples={**{name: task["n"] for name, task in tasks.items()}, "holdout": len(sets.holdout or [])},
        timings=timer.finish(), summary=summary, tasks=tasks, packages=PACKAGES,
        extra={"model_tokens": counters, "cache_hits": result_cache.hits if result_cache is not None else 0})
    if out_dir is not None:
        write_outputs(out_dir, {"request_eval.json": result, "request_summary.json": summary,
                                "request_report.md": render_request(result)})
    return result
