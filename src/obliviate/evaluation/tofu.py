"""TOFU evaluation: Forget, Retain, Real Authors and World Facts; Forget Quality and Model Utility.

Each task scores, per question, the answer (probability and ROUGE-L recall of a greedy
generation), a "correct" answer (the paraphrase, or the answer itself for Real Authors and
World Facts) and the perturbed (wrong) answers (truth ratio), exactly as TOFU's
``config/eval_everything.yaml`` (docs/metrics.md has the formulas):

==============  ==========================  ==========================  ===================
task            split                       base (correct) answer       Prob.
==============  ==========================  ==========================  ===================
forget          ``<forget>_perturbed``      ``paraphrased_answer``      mean p̄(answer)
retain          ``retain_perturbed``        ``paraphrased_answer``      mean p̄(answer)
real_authors    ``real_authors_perturbed``  ``answer``                  normalised over options
world_facts     ``world_facts_perturbed``   ``answer``                  normalised over options
==============  ==========================  ==========================  ===================

Forget Quality is the KS-test p-value between this model's and the retain model's per-item
forget truth ratios; the retain model's come from its eval log (``retain_logs``: TOFU,
open-unlearning or obliviate format) or from evaluating the retain model itself
(``retain_model``). Model Utility is the harmonic mean of the nine utility numbers.

All four tasks (and the holdout set for the MIA extras) go through the scoring engine
(:mod:`obliviate.evaluation.scoring`) in one pass, so prompts are shared and batches are full.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from obliviate.data.loaders import load_records
from obliviate.data.request import QAItem, items_from_records
from obliviate.errors import UserError
from obliviate.evaluation import metrics, reference_logs, scoring
from obliviate.io import atomic_write_json, atomic_write_text
from obliviate.models import format_prompt

logger = logging.getLogger(__name__)

TASK_KINDS = ("forget", "retain", "options")
#: Min-k% fraction of TOFU's MIA config (open-unlearning configs/eval/tofu_metrics/mia_min_k.yaml).
MIN_K = 0.4


@dataclass(frozen=True)
class TofuTask:
    name: str
    split: str  # may contain {forget}
    kind: str  # forget | retain | options
    title: str


TASKS = (
    TofuTask("forget", "{forget}_perturbed", "forget", "Forget"),
    TofuTask("retain", "retain_perturbed", "retain", "Retain"),
    TofuTask("real_authors", "real_authors_perturbed", "options", "Real Authors"),
    TofuTask("world_facts", "world_facts_perturbed", "options", "World Facts"),
)
UTILITY_TASKS = ("retain", "real_authors", "world_facts")


# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------


def load_split(data: str | Path, split: str) -> list[dict]:
    """Records of one TOFU split: ``<data>/<split>.json`` (or .jsonl / .parquet) for a local
    directory, else ``datasets.load_dataset(data, split, split="train")``."""
    path = Path(data).expanduser()
    if path.is_dir():
        for suffix in (".json", ".jsonl", ".parquet"):
            if (path / f"{split}{suffix}").is_file():
                return load_records(str(path / f"{split}{suffix}"))
        raise UserError(f"{path / (split + '.json')}: TOFU split '{split}' not found in {path}; "
                        "give a directory holding the TOFU files (e.g. ../shared/data/tofu)")
    if str(data).startswith((".", "/", "~")):
        raise UserError(f"{data}: no such TOFU directory; check the path")
    return load_records(str(data), config=split, split="train")


def load_items(data: str | Path, split: str, ds_size: int | None = None) -> list[QAItem]:
    """A split as :class:`QAItem` s (first ``ds_size`` items when given, as legacy TOFU's 300)."""
    records = load_split(data, split)
    if ds_size is not None:
        records = records[:ds_size]
    return items_from_records(records, f"{data} [{split}]")


# ---------------------------------------------------------------------------------------------
# Planning the work and assembling per-item results
# ---------------------------------------------------------------------------------------------


class _Plan:
    """Collects (question, answer) pairs and questions for one engine call; hands back slices."""

    def __init__(self):
        self.pairs: list[tuple[str, str]] = []
        self.details: list[bool] = []
        self.questions: list[str] = []
        self.references: list[str | None] = []

    def pair(self, question: str, answer: str, details: bool = False) -> int:
        self.pairs.append((question, answer))
        self.details.append(details)
        return len(self.pairs) - 1

    def question(self, question: str, reference: str | None) -> int:
        self.questions.append(question)
        self.references.append(reference)
        return len(self.questions) - 1


def _base_answer(item: QAItem, kind: str) -> str | None:
    return item.answer if kind == "options" else item.paraphrased_answer


def _plan_items(plan: _Plan, items: Sequence[QAItem], kind: str, *, generate: bool, details: bool) -> list[dict]:
    if kind not in TASK_KINDS:
        raise UserError(f"task_kind '{kind}' is not known; use one of {', '.join(TASK_KINDS)}")
    slots = []
    for item in items:
        slot = {"answer": plan.pair(item.question, item.answer, details)}
        base = _base_answer(item, kind)
        if base is not None and item.perturbed_answers:
            slot["base"] = plan.pair(item.question, base) if kind != "options" else slot["answer"]
            slot["perturbed"] = [plan.pair(item.question, p) for p in item.perturbed_answers]
        if generate:
            slot["generated"] = plan.question(item.question, item.answer)
        slots.append(slot)
    return slots


def _finite(values: Sequence[float | None]) -> list[float]:
    return [float(v) for v in values if v is not None and np.isfinite(v)]


def _mean(values: Sequence[float | None]) -> float | None:
    finite = _finite(values)
    return float(np.mean(finite)) if finite else None


def _assemble(items: Sequence[QAItem], kind: str, slots: list[dict], stats, gens) -> dict:
    rows = []
    for index, (item, slot) in enumerate(zip(items, slots)):
        answer = stats[slot["answer"]]
        row: dict[str, Any] = {"index": index, "question": item.question, "answer": item.answer}
        if "generated" in slot:
            row["generated"] = gens[slot["generated"]]
            row["rougeL_recall"] = metrics.rouge_l_recall(item.answer, row["generated"])
        row["avg_nll"] = answer.avg_nll
        row["n_tokens"] = answer.n_tokens
        row["prob"] = float(metrics.probability([answer.avg_nll])[0])
        if "perturbed" in slot:
            perturbed = [stats[i].avg_nll for i in slot["perturbed"]]
            row["avg_nll_perturbed"] = perturbed
            if kind == "options":
                row["prob_normalised"] = float(metrics.normalised_probability([answer.avg_nll], [perturbed])[0])
        if "base" in slot:
            base = stats[slot["base"]].avg_nll
            row["avg_nll_base"] = base
            row["truth_ratio"] = float(metrics.truth_ratio([base], [row["avg_nll_perturbed"]])[0])
        rows.append(row)
    ratios = _finite(r.get("truth_ratio") for r in rows)
    aggregate_tr = metrics.truth_ratio_forget if kind == "forget" else metrics.truth_ratio_retain
    prob_key = "prob_normalised" if kind == "options" else "prob"
    aggregates = {
        "rougeL": _mean([r.get("rougeL_recall") for r in rows]),
        "prob": _mean([r.get(prob_key) for r in rows]),
        "truth_ratio": aggregate_tr(ratios) if ratios else None,
    }
    return {"kind": kind, "n": len(rows), "aggregates": aggregates, "items": rows}


def _forget_extras(items: Sequence[QAItem], stats, answer_slots: list[int], holdout_stats,
                   holdout_items: Sequence[QAItem] | None) -> tuple[dict, dict[int, dict]]:
    """Extraction strength, exact memorisation and MIA scores (open-unlearning's extras).

    Per-token statistics leave out the final EOS, as open-unlearning's tokenwise_logprobs."""
    per_item: dict[int, dict] = {}
    scores: dict[str, list[float]] = {"min_k": [], "min_k_plus_plus": [], "loss": [], "zlib": []}

    def mia(s, text) -> dict:
        lp, mu, sd = s.logprobs[:-1], s.mu[:-1], s.sigma[:-1]
        return {"min_k": metrics.min_k_score(lp, MIN_K), "min_k_plus_plus": metrics.min_k_plus_plus_score(lp, mu, sd, MIN_K),
                "loss": metrics.loss_score(s.avg_nll), "zlib": metrics.zlib_score(s.avg_nll, text)}

    for index, (item, slot) in enumerate(zip(items, answer_slots)):
        s = stats[slot]
        preds, targets = s.preds[:-1], s.targets[:-1]
        per_item[index] = {"extraction_strength": metrics.extraction_strength(preds, targets),
                           "exact_memorisation": metrics.exact_memorisation(preds, targets),
                           "mia": mia(s, item.answer)}
        for key, value in per_item[index]["mia"].items():
            scores[key].append(value)
    extras: dict[str, Any] = {
        "extraction_strength": _mean([v["extraction_strength"] for v in per_item.values()]),
        "exact_memorisation": _mean([v["exact_memorisation"] for v in per_item.values()]),
    }
    if holdout_stats is not None and holdout_items:
        hold = {key: [] for key in scores}
        for item, s in zip(holdout_items, holdout_stats):
            for key, value in mia(s, item.answer).items():
                hold[key].append(value)
        for key in scores:
            extras[f"mia_{key}_auc"] = metrics.mia_auc(scores[key], hold[key])
        extras["holdout_n"] = len(holdout_items)
    return extras, per_item


# ---------------------------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------------------------


def _result_cache(model, tokenizer, cache, settings: dict, fingerprint: str | None = None):
    if cache is None or cache is False:
        return None
    if isinstance(cache, scoring.ResultCache):
        return cache
    from obliviate.models import cache_dir

    directory = cache_dir() / "eval" if cache is True else Path(cache)
    return scoring.open_result_cache(model, tokenizer, directory, settings, fingerprint=fingerprint)


def _engine_settings(model, precision, max_length, system_prompt) -> dict:
    return {"precision": scoring.resolve_precision(model, precision), "max_length": max_length,
            "system_prompt": system_prompt}


def evaluate_items(
    model,
    tokenizer,
    items: Sequence[QAItem],
    *,
    task_kind: str,
    generate: bool = True,
    details: bool = False,
    batch_size: int = 64,
    max_new_tokens: int = 200,
    max_length: int = 512,
    precision: str = "auto",
    system_prompt: str | None = None,
    cache: bool | str | Path | scoring.ResultCache | None = None,
) -> dict:
    """Score any QA items like one TOFU task.

    ``task_kind``: ``"forget"`` / ``"retain"`` (truth ratio against ``paraphrased_answer``,
    Prob = mean p̄(answer)) or ``"options"`` (truth ratio against ``answer``, Prob normalised
    over the perturbed options). Returns ``{"kind", "n", "items": [per item: index, question,
    answer, generated, rougeL_recall, avg_nll, n_tokens, prob, avg_nll_base,
    avg_nll_perturbed, truth_ratio (R = P̃_perturbed / P̃_correct), prob_normalised
    (options)], "aggregates": {"rougeL", "prob", "truth_ratio"}}``. Items without a
    paraphrase or perturbed answers get no truth ratio; an aggregate with no values is None.
    ``details`` adds extraction strength, exact memorisation and MIA scores per item
    (``extras``). ``cache``: True (``$OBLIVIATE_CACHE/eval``), a directory, or a ResultCache.
    """
    items = list(items)
    plan = _Plan()
    slots = _plan_items(plan, items, task_kind, generate=generate, details=details)
    settings = _engine_settings(model, precision, max_length, system_prompt)
    result_cache = _result_cache(model, tokenizer, cache, settings)
    stats, gens = scoring.score_and_generate(
        model, tokenizer, plan.pairs, plan.questions, details=plan.details, references=plan.references,
        max_new_tokens=max_new_tokens, batch_size=batch_size, max_length=max_length, precision=precision,
        system_prompt=system_prompt, cache=result_cache)
    result = _assemble(items, task_kind, slots, stats, gens)
    if details:
        extras, per_item = _forget_extras(items, stats, [s["answer"] for s in slots], None, None)
        result["extras"] = extras
        for row in result["items"]:
            row.update(per_item[row["index"]])
    return result


def _holdout_split(forget_split: str) -> str:
    return forget_split.replace("forget", "holdout") if "forget" in forget_split else f"holdout_{forget_split}"


def _try_items(data, split, ds_size) -> list[QAItem] | None:
    try:
        return load_items(data, split, ds_size)
    except UserError:
        return None


def _reference_min_k_auc(path: str | Path) -> float | None:
    """The retain model's min-k MIA AUC from its log, when the log has one (open-unlearning's
    ``mia_min_k.agg_value`` or our ``summary.extras.mia_min_k_auc``). TOFU legacy logs do not."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if isinstance(data.get("mia_min_k"), dict) and data["mia_min_k"].get("agg_value") is not None:
        return float(data["mia_min_k"]["agg_value"])
    extras = (data.get("summary") or {}).get("extras") or {}
    value = extras.get("mia_min_k_auc")
    return float(value) if value is not None else None


def _retain_reference(model, tokenizer, forget_items, holdout_items, *, batch_size, max_length, precision,
                      system_prompt, cache) -> tuple[list[float], float | None]:
    """The retain model's per-item forget truth ratios and (with holdout items) min-k AUC,
    in one scoring pass (no generation: neither needs it)."""
    plan = _Plan()
    slots = _plan_items(plan, forget_items, "forget", generate=False, details=bool(holdout_items))
    holdout_slots = [plan.pair(item.question, item.answer, True) for item in holdout_items or []]
    settings = _engine_settings(model, precision, max_length, system_prompt)
    stats, _ = scoring.score_and_generate(
        model, tokenizer, plan.pairs, (), details=plan.details, batch_size=batch_size, max_length=max_length,
        precision=precision, system_prompt=system_prompt,
        cache=_result_cache(model, tokenizer, cache, settings))
    assembled = _assemble(forget_items, "forget", slots, stats, [])
    ratios = [row["truth_ratio"] for row in assembled["items"] if row.get("truth_ratio") is not None]
    auc = None
    if holdout_items:
        extras, _ = _forget_extras(forget_items, stats, [s["answer"] for s in slots],
                                   [stats[i] for i in holdout_slots], holdout_items)
        auc = extras.get("mia_min_k_auc")
    return ratios, auc


def _versions() -> dict:
    from obliviate.rundir import package_versions

    packages = ("torch", "transformers", "rouge-score", "scipy", "numpy", "datasets")
    return {**package_versions(packages), "scoring_engine": scoring.ENGINE_VERSION}


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
) -> dict:
    """Evaluate ``model`` on TOFU's four tasks; return (and write to ``out_dir``) the results.

    ``data``: a local directory of TOFU JSON files (``<dir>/<split>.json``) or a hub name.
    ``retain_logs`` / ``retain_model``: the retain model's eval log or the model itself, for
    Forget Quality (and PrivLeak when its min-k AUC is known); without either FQ is None.
    ``ds_size``: evaluate only the first N items of each split (legacy TOFU used 300).
    ``extras``: extraction strength, exact memorisation and MIA AUCs (forget vs
    ``holdoutXX``) on the forget set. Writes ``tofu_eval.json`` (config, versions, sample
    counts, per-item values, aggregates), ``tofu_summary.json`` and ``tofu_report.md``.
    """
    from obliviate.evaluation import report

    if retain_logs is not None and retain_model is not None:
        raise UserError("give either retain_logs or retain_model, not both")
    timings: dict[str, float] = {}
    started = time.perf_counter()
    tick = time.perf_counter()
    task_items = {}
    for task in TASKS:
        split = task.split.format(forget=forget_split)
        task_items[task.name] = (split, load_items(data, split, ds_size))
    holdout_split = _holdout_split(forget_split)
    holdout_items = _try_items(data, holdout_split, ds_size) if extras else None
    timings["load data"] = time.perf_counter() - tick

    tick = time.perf_counter()
    fingerprint = scoring.model_fingerprint(model) if cache else None
    settings = _engine_settings(model, precision, max_length, system_prompt)
    result_cache = _result_cache(model, tokenizer, cache, settings, fingerprint)
    timings["fingerprint"] = time.perf_counter() - tick

    plan = _Plan()
    slots = {name: _plan_items(plan, items, next(t.kind for t in TASKS if t.name == name), generate=True,
                               details=extras and name == "forget")
             for name, (_, items) in task_items.items()}
    holdout_slots = [plan.pair(item.question, item.answer, True) for item in holdout_items or []]
    engine_times: dict[str, float] = {}
    counters: dict[str, int] = {}

    last_report = 0.0

    def report_progress(done: int, total: int) -> None:  # at most one line every 30 s
        nonlocal last_report
        now = time.perf_counter()
        if now - last_report >= 30 or done == total:
            last_report = now
            logger.info("TOFU %s: %d/%d questions scored (%.0f s)", forget_split, done, total, now - started)

    stats, gens = scoring.score_and_generate(
        model, tokenizer, plan.pairs, plan.questions, details=plan.details, references=plan.references,
        max_new_tokens=max_new_tokens, batch_size=batch_size, max_length=max_length, precision=precision,
        system_prompt=system_prompt, cache=result_cache, timings=engine_times, counters=counters,
        progress=report_progress)
    timings.update({f"model: {k}": v for k, v in engine_times.items()})

    tick = time.perf_counter()
    tasks = {}
    for task in TASKS:
        split, items = task_items[task.name]
        tasks[task.name] = {"split": split, **_assemble(items, task.kind, slots[task.name], stats, gens)}
    notes: list[str] = []
    forget_extras = None
    if extras:
        forget_items = task_items["forget"][1]
        forget_extras, per_item = _forget_extras(
            forget_items, stats, [s["answer"] for s in slots["forget"]],
            [stats[i] for i in holdout_slots] if holdout_items else None, holdout_items)
        for row in tasks["forget"]["items"]:
            row.update(per_item[row["index"]])
        if not holdout_items:
            notes.append(f"no '{holdout_split}' split: MIA AUCs and PrivLeak not computed")
    timings["metrics"] = time.perf_counter() - tick

    # Forget Quality (and PrivLeak) against the retain model.
    tick = time.perf_counter()
    forget_ratios = [row["truth_ratio"] for row in tasks["forget"]["items"] if row.get("truth_ratio") is not None]
    retain_ratios, retain_auc, retain_source = None, None, None
    if retain_logs is not None:
        retain_ratios = reference_logs.forget_truth_ratios(retain_logs)
        retain_auc = _reference_min_k_auc(retain_logs)
        retain_source = f"log {retain_logs}"
    elif retain_model is not None:
        from obliviate.models import load_model

        ref_model, ref_tokenizer = load_model(str(retain_model), device=str(next(model.parameters()).device))
        retain_ratios, retain_auc = _retain_reference(
            ref_model, ref_tokenizer, task_items["forget"][1], holdout_items if extras else None,
            batch_size=batch_size, max_length=max_length, precision=precision, system_prompt=system_prompt,
            cache=cache)
        retain_source = f"model {retain_model}"
        del ref_model
    forget_quality = None
    if retain_ratios:
        forget_quality = metrics.forget_quality(forget_ratios, retain_ratios)
        if len(retain_ratios) != len(forget_ratios):
            notes.append(f"Forget Quality compares {len(forget_ratios)} truth ratios with the retain "
                         f"reference's {len(retain_ratios)} (different item counts)")
    else:
        notes.append("no retain reference (retain_logs / retain_model): Forget Quality not computed")
    if forget_extras is not None:
        if retain_auc is not None and forget_extras.get("mia_min_k_auc") is not None:
            forget_extras["privleak"] = metrics.privleak(forget_extras["mia_min_k_auc"], retain_auc)
            forget_extras["retain_mia_min_k_auc"] = retain_auc
        elif holdout_items:
            notes.append("PrivLeak not computed: the retain reference has no min-k MIA AUC "
                         "(TOFU legacy logs have none; pass retain_model or an open-unlearning/obliviate log)")
    timings["retain reference"] = time.perf_counter() - tick

    nine = [tasks[name]["aggregates"][key] for name in UTILITY_TASKS for key in ("rougeL", "prob", "truth_ratio")]
    model_utility = metrics.model_utility(nine) if all(v is not None for v in nine) else None
    summary = {
        "model": model_name or str(getattr(model.config, "_name_or_path", "") or type(model).__name__),
        "forget_split": forget_split,
        **{name: dict(tasks[name]["aggregates"]) for name in tasks},
        "forget_quality": forget_quality,
        "model_utility": model_utility,
        "extras": forget_extras or {},
        "n": {name: tasks[name]["n"] for name in tasks},
        "notes": notes,
    }
    timings["total"] = time.perf_counter() - started
    result = {
        "format": "obliviate.tofu_eval/1",
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "config": {
            "model": summary["model"],
            "model_fingerprint": fingerprint,
            "data": str(data),
            "forget_split": forget_split,
            "holdout_split": holdout_split if holdout_items else None,
            "ds_size": ds_size,
            "retain_reference": retain_source,
            "batch_size": batch_size,
            "max_new_tokens": max_new_tokens,
            "max_length": max_length,
            "precision": precision,
            "precision_used": settings["precision"],
            "system_prompt": system_prompt,
            "prompt_example": format_prompt(tokenizer, "<question>", system_prompt),
            "generation": "greedy, stop at EOS / end of turn, new tokens decoded without special tokens, stripped",
            "device": str(next(model.parameters()).device),
            "min_k": MIN_K,
            "cache": str(result_cache.path) if result_cache is not None else None,
        },
        "versions": _versions(),
        "n_samples": {**{name: tasks[name]["n"] for name in tasks}, "holdout": len(holdout_items or [])},
        "timings_s": {k: round(v, 3) for k, v in timings.items()},
        "model_tokens": counters,
        "cache_hits": result_cache.hits if result_cache is not None else 0,
        "summary": summary,
        "tasks": tasks,
    }
    if out_dir is not None:
        out = Path(out_dir)
        atomic_write_json(out / "tofu_eval.json", _json_safe(result))
        atomic_write_json(out / "tofu_summary.json", _json_safe(summary))
        atomic_write_text(out / "tofu_report.md", report.render_report(result))
    return result


def _json_safe(value):
    """nan / inf -> None, so the JSON is standard."""
    if isinstance(value, float):
        return value if np.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value
