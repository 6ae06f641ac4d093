"""The evaluated model against the base model (the one before unlearning), on the same items.

The base's per-set values come from scoring the base model now (``base_model``, same engine
settings and items) or from an earlier request evaluation of it (``base_result``, its
``request_eval.json``, refused unless it holds the same questions and answers, set by set).

* ``change[set][m] = m_model − m_base`` for every set aggregate m (rougeL, prob, truth_ratio,
  rougeL_paraphrased_question);
* ``forget_drop = 1 − R_forget / R_forget_base`` (R the set's mean ROUGE-L recall): the share of
  the base's forget-set recall that is gone, as ``make demo`` reports it;
* ``<set>_kept = R_set / R_set_base`` for retain and neighbours: the share of recall kept.

A ratio whose base recall is 0 (nothing to lose) is None.
"""

from __future__ import annotations

import json
from pathlib import Path

from obliviate.errors import UserError
from obliviate.evaluation.request.sets import RequestSets

FORMAT_PREFIX = "obliviate.request_eval/"
METRICS = ("rougeL", "prob", "truth_ratio", "rougeL_paraphrased_question")
ITEM_KEYS = ("generated", "rougeL_recall", "prob", "truth_ratio")
#: config keys whose difference makes the two runs' numbers not comparable one to one
SETTINGS = ("max_new_tokens", "max_length", "scoring", "prompt_format", "system_prompt", "precision_used")


def _refuse(path, what: str) -> UserError:
    return UserError(f"benchmark 'request' option 'base_result': {path}: {what}; evaluate the base model with "
                     "--benchmark request on the same request and ds_size, or pass base_model instead")


def read_base_result(path: str | Path, sets: RequestSets) -> tuple[dict, dict]:
    """``(tasks, config)`` of a base request_eval.json that holds every evaluated set with the same
    items (question and answer, in order); else a one-line UserError naming the option."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise UserError(f"benchmark 'request' option 'base_result': {path}: no such file; check the path")
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise _refuse(path, f"not a readable JSON file ({type(error).__name__})") from None
    found = data.get("format") if isinstance(data, dict) else None
    if not str(found or "").startswith(FORMAT_PREFIX):
        raise _refuse(path, f"not a request_eval.json (format {found!r})")
    tasks = data["tasks"] if isinstance(data.get("tasks"), dict) else {}
    for name, items in sets.sets.items():
        task = tasks.get(name) if isinstance(tasks.get(name), dict) else {}
        if not isinstance(task.get("items"), list) or not isinstance(task.get("aggregates"), dict):
            raise _refuse(path, f"it has no {name} set")
        theirs = [(r.get("question"), r.get("answer")) if isinstance(r, dict) else None for r in task["items"]]
        ours = [(item.question, item.answer) for item in items]
        if theirs != ours:
            differ = next((i for i, pair in enumerate(ours) if i >= len(theirs) or theirs[i] != pair), len(ours))
            raise _refuse(path, f"its {name} set is not the evaluated one ({len(theirs)} items, this evaluation "
                                f"{len(ours)}; first difference at item {differ + 1})")
    return tasks, data.get("config") or {}


def settings_notes(config: dict, base_config: dict, source: str) -> list[str]:
    """A note for every setting the base result was made with that differs from this run's."""
    return [f"the base result ({source}) was made with {key} {base_config.get(key)!r}, this evaluation with "
            f"{config.get(key)!r}: the change mixes the two settings" for key in SETTINGS
            if key in base_config and base_config.get(key) != config.get(key)]


def _ratio(value, base) -> float | None:
    return None if value is None or not base else value / base


def compare(tasks: dict, base_tasks: dict) -> dict:
    """``{"change": {set: {metric: Δ}}, "forget_drop", "<set>_kept"}`` (module docstring); adds
    each row's base values under ``row["base"]``."""
    change = {}
    for name, task in tasks.items():
        ours, theirs = task["aggregates"], base_tasks[name]["aggregates"]
        change[name] = {m: ours[m] - theirs[m] if ours.get(m) is not None and theirs.get(m) is not None else None
                        for m in METRICS if m in ours}
        for row, base_row in zip(task["items"], base_tasks[name]["items"]):
            row["base"] = {key: base_row[key] for key in ITEM_KEYS if key in base_row}
    out: dict = {"change": change}
    for name, task in tasks.items():
        kept = _ratio(task["aggregates"].get("rougeL"), base_tasks[name]["aggregates"].get("rougeL"))
        if name == "forget":
            out["forget_drop"] = None if kept is None else 1 - kept
        else:
            out[f"{name}_kept"] = kept
    return out


def score_base_model(base_model: str, model, sets: RequestSets, *, cache, **score_options) -> dict:
    """The base model loaded (on the evaluated model's device) and scored on the same items with
    the same settings: its tasks."""
    from obliviate.evaluation.engine.result_cache import ResultCache, result_cache_for
    from obliviate.evaluation.request.score import score_sets
    from obliviate.evaluation.tofu.items import engine_settings
    from obliviate.hardware import model_device
    from obliviate.models import load_model

    base, tokenizer = load_model(str(base_model), device=str(model_device(model)))
    if isinstance(cache, ResultCache):  # that file's namespace is the evaluated model's
        cache = cache.directory
    settings = engine_settings(base, score_options["precision"], score_options["max_length"])
    tasks, _ = score_sets(base, tokenizer, sets, cache=result_cache_for(base, tokenizer, cache, settings),
                          **score_options)
    del base
    return tasks
