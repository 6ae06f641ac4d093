"""The retain model's side of Forget Quality and PrivLeak.

Forget Quality is the KS-test p-value between this model's and the retain model's per-item
forget truth ratios; PrivLeak compares the two models' min-k MIA AUCs. The retain model's
values come from its eval log (``retain_logs``: TOFU, open-unlearning or obliviate format),
taken for the same items as the evaluated ones (:mod:`.retain_log`: by question, else by
index), or from scoring the retain model itself (``retain_model``) on the evaluated items
with the same engine.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from obliviate.data.request import QAItem
from obliviate.evaluation import metrics, reference_logs
from obliviate.evaluation.engine.result_cache import ResultCache, result_cache_for
from obliviate.evaluation.plan import WorkPlan
from obliviate.evaluation.tofu.extras import forget_extras
from obliviate.evaluation.tofu.items import assemble, engine_settings, plan_items
from obliviate.evaluation.tofu.retain_log import aligned_truth_ratios, log_positions
from obliviate.hardware import model_device


@dataclass
class RetainReference:
    truth_ratios: list[float] | None = None  # per evaluated forget item, R = P̃_perturbed / P̃_correct
    min_k_auc: float | None = None
    source: str | None = None  # "log <path>" or "model <path>"
    notes: list[str] = field(default_factory=list)  # how the log's values were matched to the items
    min_k_note: str | None = None  # why a log's min-k AUC cannot be used for these items


def reference_min_k_auc(path: str | Path, items: Sequence[QAItem], n_holdout: int) -> tuple[float | None, str | None]:
    """``(AUC, note)``: the retain model's min-k MIA AUC on the evaluated items (``items``, the
    first ``n_holdout`` holdout items) from its log, or None and why not. open-unlearning's
    per-item ``mia_min_k.forget`` / ``holdout`` scores give it on exactly those items (the forget
    ones matched as the truth ratios are); our own log keeps the AUC only, usable when it was
    computed on as many items. TOFU legacy logs have none (None, no note)."""
    data = reference_logs.load_json(path)
    data = data if isinstance(data, dict) else {}
    if isinstance(data.get("mia_min_k"), dict):
        return _open_unlearning_auc(data["mia_min_k"], path, items, n_holdout)
    extras = (data.get("summary") or {}).get("extras") or {}
    if extras.get("mia_min_k_auc") is None:
        return None, None
    counts = data.get("n_samples") or {}
    if (counts.get("forget"), counts.get("holdout")) != (len(items), n_holdout):
        return None, (f"PrivLeak not computed: the retain log's min-k AUC is over {counts.get('forget')} forget and "
                      f"{counts.get('holdout')} holdout items, this evaluation's over {len(items)} and {n_holdout}; "
                      "evaluate both on the same items (ds_size), or pass retain_model")
    return float(extras["mia_min_k_auc"]), None


def _open_unlearning_auc(mia: dict, path, items: Sequence[QAItem], n_holdout: int) -> tuple[float | None, str | None]:
    """The AUC over the log's per-item min-k scores of the evaluated forget items and the first
    ``n_holdout`` holdout items (open-unlearning's scores are loss-like, as ours)."""
    try:
        forget = {int(k): float(v["score"]) for k, v in mia["forget"]["value_by_index"].items()}
        holdout = [float(v["score"]) for _, v in sorted(mia["holdout"]["value_by_index"].items(),
                                                         key=lambda kv: int(kv[0]))]
    except (AttributeError, KeyError, TypeError, ValueError):
        return None, f"PrivLeak not computed: {path} has no per-item 'mia_min_k' forget / holdout scores"
    logged = reference_logs.forget_items(path)
    found = [forget.get(logged[k].index) if k is not None else None for k in log_positions(logged, items)[0]]
    if None in found or len(holdout) < n_holdout:
        return None, (f"PrivLeak not computed: {path} lacks the min-k score of an evaluated forget or holdout item")
    return metrics.mia_auc(found, holdout[:n_holdout]), None


def score_retain_model(model, tokenizer, forget_items: Sequence[QAItem], holdout_items: Sequence[QAItem] | None,
                       *, batch_size: int, max_length: int, precision: str, system_prompt: str | None,
                       cache, scoring: str = "answer", prompt_format: str = "auto") -> tuple[list[float], float | None]:
    """The retain model's per-item forget truth ratios and (with holdout items) min-k AUC,
    in one scoring pass (no generation: neither needs it)."""
    if isinstance(cache, ResultCache):  # that file's namespace is the evaluated model's, not this one's
        cache = cache.directory
    plan = WorkPlan()
    slots = plan_items(plan, forget_items, "forget", generate=False, details=bool(holdout_items))
    holdout_slots = [plan.pair(item.question, item.answer, True) for item in holdout_items or []]
    result_cache = result_cache_for(model, tokenizer, cache, engine_settings(model, precision, max_length))
    stats, _ = plan.run(model, tokenizer, batch_size=batch_size, max_length=max_length, precision=precision,
                        system_prompt=system_prompt, scoring=scoring, prompt_format=prompt_format,
                        cache=result_cache)
    assembled = assemble(forget_items, "forget", slots, stats, [])
    ratios = [row["truth_ratio"] for row in assembled["items"] if row.get("truth_ratio") is not None]
    auc = None
    if holdout_items:
        extras, _ = forget_extras(forget_items, stats, [s["answer"] for s in slots],
                                  [stats[i] for i in holdout_slots], holdout_items)
        auc = extras.get("mia_min_k_auc")
    return ratios, auc


def retain_reference(model, forget_items, holdout_items, *, retain_logs, retain_model, forget_split=None,
                     **engine_options) -> RetainReference:
    """The retain model's truth ratios on ``forget_items`` (the evaluated ones, ``ds_size``
    applied): its log's values for the same items (:func:`.retain_log.aligned_truth_ratios`;
    a log that lacks one is refused with a UserError), or the retain model loaded and scored on
    those items (on the evaluated model's device); an empty reference when neither is given.
    Items the reference has no truth ratio for are left out of its sample. ``forget_split``
    names the split in a refusal."""
    if retain_logs is not None:
        values, notes = aligned_truth_ratios(retain_logs, forget_items, forget_split=forget_split)
        auc, note = reference_min_k_auc(retain_logs, forget_items, len(holdout_items or [])) if holdout_items \
            else (None, None)
        return RetainReference([value for value in values if value is not None], auc, f"log {retain_logs}",
                               notes, note)
    if retain_model is None:
        return RetainReference()
    from obliviate.models import load_model

    ref_model, ref_tokenizer = load_model(str(retain_model), device=str(model_device(model)))
    ratios, auc = score_retain_model(ref_model, ref_tokenizer, forget_items, holdout_items, **engine_options)
    del ref_model
    return RetainReference(ratios, auc, f"model {retain_model}")


def compare_with_retain(forget_rows: list[dict], reference: RetainReference, extras: dict | None,
                        holdout_present: bool, notes: list[str]) -> float | None:
    """Forget Quality of the forget task's per-item rows against ``reference`` (None without
    one); adds PrivLeak to ``extras`` when both min-k AUCs are known. Appends a note for every
    figure it cannot compute."""
    forget_ratios = [row["truth_ratio"] for row in forget_rows if row.get("truth_ratio") is not None]
    forget_quality = None
    notes.extend(reference.notes)
    if reference.truth_ratios:
        forget_quality = metrics.forget_quality(forget_ratios, reference.truth_ratios)
        if len(reference.truth_ratios) != len(forget_ratios):
            notes.append(f"Forget Quality compares {len(forget_ratios)} truth ratios with the retain "
                         f"reference's {len(reference.truth_ratios)} (different item counts)")
    else:
        notes.append("no retain reference (retain_logs / retain_model): Forget Quality not computed")
    if extras is not None:
        if reference.min_k_auc is not None and extras.get("mia_min_k_auc") is not None:
            extras["privleak"] = metrics.privleak(extras["mia_min_k_auc"], reference.min_k_auc)
            extras["retain_mia_min_k_auc"] = reference.min_k_auc
        elif holdout_present and extras.get("mia_min_k_auc") is None:
            notes.append("PrivLeak not computed: this model's min-k MIA AUC could not be computed")
        elif holdout_present and reference.min_k_note:
            notes.append(reference.min_k_note)
        elif holdout_present:
            notes.append("PrivLeak not computed: the retain reference has no min-k MIA AUC "
                         "(TOFU legacy logs have none; pass retain_model or an open-unlearning/obliviate log)")
    return forget_quality
