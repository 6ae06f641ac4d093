"""One TOFU task over any QA items: planning its engine work and assembling per-item values.

Per item: the answer's probability (and ROUGE-L recall of a greedy generation), and the
truth ratio of its "correct" answer (the paraphrase, or the answer itself for Real Authors
and World Facts) against its perturbed answers. docs/metrics.md has the formulas.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from obliviate.data.request import QAItem
from obliviate.errors import UserError
from obliviate.evaluation import metrics
from obliviate.evaluation.engine import ResultCache, resolve_precision
from obliviate.evaluation.engine.result_cache import result_cache_for
from obliviate.evaluation.plan import WorkPlan
from obliviate.evaluation.tofu.data import TASK_KINDS
from obliviate.evaluation.tofu.extras import forget_extras


def engine_settings(model, precision: str, max_length: int) -> dict:
    """What a cached result depends on besides model, tokenizer and the item's own key."""
    return {"precision": resolve_precision(model, precision), "max_length": max_length}


def _base_answer(item: QAItem, kind: str) -> str | None:
    return item.answer if kind == "options" else item.paraphrased_answer


def plan_items(plan: WorkPlan, items: Sequence[QAItem], kind: str, *, generate: bool, details: bool) -> list[dict]:
    """Add the items' pairs (answer, correct, perturbed) and questions to ``plan``; returns per
    item where its results will be."""
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


def _item_row(index: int, item: QAItem, kind: str, slot: dict, stats, gens) -> dict:
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
    return row


def assemble(items: Sequence[QAItem], kind: str, slots: list[dict], stats, gens) -> dict:
    """``{"kind", "n", "aggregates": {"rougeL", "prob", "truth_ratio"}, "items": [...]}``."""
    rows = [_item_row(i, item, kind, slot, stats, gens) for i, (item, slot) in enumerate(zip(items, slots))]
    ratios = [r["truth_ratio"] for r in rows if r.get("truth_ratio") is not None and np.isfinite(r["truth_ratio"])]
    aggregate_tr = metrics.truth_ratio_forget if kind == "forget" else metrics.truth_ratio_retain
    prob_key = "prob_normalised" if kind == "options" else "prob"
    aggregates = {
        "rougeL": metrics.finite_mean([r.get("rougeL_recall") for r in rows]),
        "prob": metrics.finite_mean([r.get(prob_key) for r in rows]),
        "truth_ratio": aggregate_tr(ratios) if ratios else None,
    }
    return {"kind": kind, "n": len(rows), "aggregates": aggregates, "items": rows}


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
    scoring: str = "answer",
    prompt_format: str = "auto",
    cache: bool | str | Path | ResultCache | None = None,
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
    (``extras``). ``scoring``: ``"answer"`` (TOFU's answer + EOS) or ``"chat_turn"``
    (open-unlearning's assistant turn as the chat template renders it). ``prompt_format``: ``"auto"``
    (the chat template) or open-unlearning's tags (:mod:`obliviate.prompt_formats`).
    ``cache``: True (``$OBLIVIATE_CACHE/eval``), a directory, or a ResultCache.
    """
    items = list(items)
    plan = WorkPlan()
    slots = plan_items(plan, items, task_kind, generate=generate, details=details)
    result_cache = result_cache_for(model, tokenizer, cache, engine_settings(model, precision, max_length))
    stats, gens = plan.run(model, tokenizer, max_new_tokens=max_new_tokens, batch_size=batch_size,
                           max_length=max_length, precision=precision, system_prompt=system_prompt,
                           scoring=scoring, prompt_format=prompt_format, cache=result_cache)
    result = assemble(items, task_kind, slots, stats, gens)
    if details:
        extras, per_item = forget_extras(items, stats, [s["answer"] for s in slots], None, None)
        result["extras"] = extras
        for row in result["items"]:
            row.update(per_item[row["index"]])
    return result
