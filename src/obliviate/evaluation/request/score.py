"""Scoring a request's sets with TOFU's per-item definitions, all sets in one engine pass.

Per item (:func:`obliviate.evaluation.tofu.items.assemble`, docs/metrics.md):

* ``rougeL_recall``: ROUGE-L recall of the greedy answer against ``answer`` (TOFU's scorer);
* ``prob``: p̄(answer | question) = exp(−avg_nll), avg_nll the mean NLL of answer + EOS;
* ``truth_ratio``: R = P̃_perturbed / P̃_paraphrase, where the item has a paraphrased answer and
  perturbed answers (P̃ = exp(−avg_nll), the perturbed mean taken in log space);
* ``rougeL_recall_paraphrased_question``: ROUGE-L recall of the greedy answer to the
  ``paraphrased_question`` against ``answer``, where the item has one (the same fact asked
  another way).

Set aggregates: the means of those (``rougeL``, ``prob``, ``rougeL_paraphrased_question``) and
TOFU's truth-ratio aggregate of the set's kind (forget: mean min(R, 1/R); retain and neighbours:
mean max(0, 1 − R)). The forget set also gets TOFU's extras (extraction strength, exact
memorisation; MIA AUCs against a holdout set), :func:`obliviate.evaluation.tofu.extras.forget_extras`.
"""

from __future__ import annotations

from obliviate.evaluation import metrics
from obliviate.evaluation.plan import WorkPlan
from obliviate.evaluation.request.sets import KIND, RequestSets
from obliviate.evaluation.tofu.extras import forget_extras
from obliviate.evaluation.tofu.items import assemble, plan_items

PARAPHRASED = "rougeL_recall_paraphrased_question"


def _plan(plan: WorkPlan, sets: RequestSets, *, extras: bool, paraphrased_questions: bool) -> tuple[dict, dict, list]:
    """``(slots per set, paraphrased-question slots per set, holdout pair slots)``."""
    slots, para = {}, {}
    for name, items in sets.sets.items():
        slots[name] = plan_items(plan, items, KIND[name], generate=True, details=extras and name == "forget")
        para[name] = [plan.question(item.paraphrased_question, item.answer)
                      if paraphrased_questions and item.paraphrased_question else None for item in items]
    holdout = [plan.pair(item.question, item.answer, True) for item in sets.holdout or []] if extras else []
    return slots, para, holdout


def _add_paraphrased(task: dict, items, para_slots: list, gens: list[str]) -> None:
    """Per item the greedy answer to the paraphrased question and its ROUGE-L recall; the mean."""
    for row, item, slot in zip(task["items"], items, para_slots):
        if slot is not None:
            row["generated_paraphrased_question"] = gens[slot]
            row[PARAPHRASED] = metrics.rouge_l_recall(item.answer, gens[slot])
    task["aggregates"]["rougeL_paraphrased_question"] = metrics.finite_mean([r.get(PARAPHRASED) for r in task["items"]])


def score_sets(model, tokenizer, sets: RequestSets, *, extras: bool = True, paraphrased_questions: bool = True,
               progress=None, timings: dict | None = None, counters: dict | None = None,
               **engine_options) -> tuple[dict, dict | None]:
    """``(tasks, forget extras or None)``: ``tasks[set] = {"kind", "n", "aggregates", "items"}``
    (module docstring), every set, paraphrased question and holdout item through one
    :meth:`WorkPlan.run` with ``engine_options`` (batch_size, max_new_tokens, max_length,
    precision, system_prompt, scoring, decode, decode_batch_size, cache)."""
    plan = WorkPlan()
    slots, para, holdout_slots = _plan(plan, sets, extras=extras, paraphrased_questions=paraphrased_questions)
    stats, gens = plan.run(model, tokenizer, progress=progress, timings=timings, counters=counters, **engine_options)
    tasks = {}
    for name, items in sets.sets.items():
        tasks[name] = assemble(items, KIND[name], slots[name], stats, gens)
        if paraphrased_questions:
            _add_paraphrased(tasks[name], items, para[name], gens)
    extra_values = None
    if extras:
        holdout = sets.holdout if holdout_slots else None
        extra_values, per_item = forget_extras(sets.sets["forget"], stats, [s["answer"] for s in slots["forget"]],
                                               [stats[i] for i in holdout_slots] if holdout else None, holdout)
        for row in tasks["forget"]["items"]:
            row.update(per_item[row["index"]])
    return tasks, extra_values
