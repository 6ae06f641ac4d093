"""Forget-set extras of open-unlearning: extraction strength, exact memorisation, MIA AUCs.

Per-token statistics leave out the final EOS, as open-unlearning's ``tokenwise_logprobs``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from obliviate.data.request import QAItem
from obliviate.evaluation import metrics

#: Min-k% fraction of TOFU's MIA config (open-unlearning configs/eval/tofu_metrics/mia_min_k.yaml).
MIN_K = 0.4
MIA_SCORES = ("min_k", "min_k_plus_plus", "loss", "zlib")


def mia_scores(stats, text: str) -> dict[str, float]:
    """The four loss-like MIA scores of one answer (higher = looks less like a member)."""
    lp, mu, sd = stats.logprobs[:-1], stats.mu[:-1], stats.sigma[:-1]
    return {"min_k": metrics.min_k_score(lp, MIN_K),
            "min_k_plus_plus": metrics.min_k_plus_plus_score(lp, mu, sd, MIN_K),
            "loss": metrics.loss_score(stats.avg_nll), "zlib": metrics.zlib_score(stats.avg_nll, text)}


def forget_extras(items: Sequence[QAItem], stats, answer_slots: list[int], holdout_stats,
                  holdout_items: Sequence[QAItem] | None) -> tuple[dict, dict[int, dict]]:
    """``(aggregates, {item index: per-item values})``; the MIA AUCs (forget as members,
    holdout as non-members) only with ``holdout_items`` and their detail stats. An answer that
    ``max_length`` cut to at most one token (nothing left once the last is dropped, as the EOS is)
    has no values (None) and is left out of the AUCs, and ``answers_cut`` counts such answers
    (every score of an empty answer would be 0, not a value)."""
    per_item: dict[int, dict] = {}
    scores: dict[str, list[float]] = {key: [] for key in MIA_SCORES}
    cut = 0
    for index, (item, slot) in enumerate(zip(items, answer_slots)):
        s = stats[slot]
        if s.n_tokens <= 1:  # nothing left once the (possibly cut) last token is dropped
            per_item[index] = {"extraction_strength": None, "exact_memorisation": None, "mia": None}
            cut += 1
            continue
        preds, targets = s.preds[:-1], s.targets[:-1]
        per_item[index] = {"extraction_strength": metrics.extraction_strength(preds, targets),
                           "exact_memorisation": metrics.exact_memorisation(preds, targets),
                           "mia": mia_scores(s, item.answer)}
        for key, value in per_item[index]["mia"].items():
            scores[key].append(value)
    extras: dict[str, Any] = {
        "extraction_strength": metrics.finite_mean([v["extraction_strength"] for v in per_item.values()]),
        "exact_memorisation": metrics.finite_mean([v["exact_memorisation"] for v in per_item.values()]),
    }
    if holdout_stats is not None and holdout_items:
        hold: dict[str, list[float]] = {key: [] for key in MIA_SCORES}
        for item, s in zip(holdout_items, holdout_stats):
            cut += s.n_tokens <= 1
            for key, value in (mia_scores(s, item.answer) if s.n_tokens > 1 else {}).items():
                hold[key].append(value)
        for key in MIA_SCORES:
            extras[f"mia_{key}_auc"] = metrics.mia_auc(scores[key], hold[key]) if scores[key] and hold[key] else None
        extras["holdout_n"] = len(holdout_items)
    if cut:
        extras["answers_cut"] = cut
    return extras, per_item
