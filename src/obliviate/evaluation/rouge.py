"""ROUGE-L recall in the two variants the benchmarks' reference code uses.

* ``"tofu"``: Google's ``rouge_score`` (``RougeScorer(['rouge1', 'rougeL'],
  use_stemmer=True)``), as TOFU and open-unlearning score generations: lower-cased,
  non-alphanumerics dropped, Porter-stemmed, one LCS over the whole texts.
* ``"rwku"``: the PyPI ``rouge`` package (pltrdy, 1.0.1), as RWKU's ``eval_forget.py``
  scores generations (``Rouge().get_scores(hyps, refs)['rouge-l']['r']``): case-sensitive,
  whitespace tokens, no stemming, sentences split on ".", summary-level union LCS over
  sets of words. Re-implemented here from its definition (no dependency); e.g. reference
  "stephen king" vs "The author is Stephen King." scores 0.0 here and 1.0 with ``"tofu"``.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

VARIANTS = ("tofu", "rwku")


@functools.lru_cache(maxsize=1)
def _rouge_scorer() -> Any:
    """The scorer. Its constructor logs through absl, whose first log call runs
    ``logging.basicConfig()`` when the root logger has no handler: a root handler for the whole
    process, which printed every later obliviate progress line twice. A handler that drops
    records stands on the root for that call."""
    from rouge_score import rouge_scorer

    root = logging.getLogger()
    quiet = logging.NullHandler() if not root.handlers else None
    if quiet is not None:
        root.addHandler(quiet)
    try:
        return rouge_scorer.RougeScorer(["rouge1", "rougeL"], use_stemmer=True)
    finally:
        if quiet is not None:
            root.removeHandler(quiet)


def rouge_l_recall_tofu(ground_truth: str, generated: str) -> float:
    """``RougeScorer(['rouge1', 'rougeL'], use_stemmer=True).score(gt, gen)['rougeL'].recall``:
    TOFU ``eval_rouge_recall`` (evaluate_util.py), open-unlearning ``eval_text_similarity``.
    """
    return float(_rouge_scorer().score(ground_truth, generated)["rougeL"].recall)


def _sentences(text: str) -> list[str]:
    """``rouge``'s sentences: split on ".", keep the non-empty pieces, collapse whitespace."""
    return [" ".join(piece.split()) for piece in text.split(".") if len(piece) > 0]


def _lcs_words(x: list[str], y: list[str]) -> set[str]:
    """The words of one longest common subsequence of ``x`` and ``y``, traced back as
    ``rouge``'s ``_recon_lcs`` does (on a tie it moves along ``y`` first), as a set."""
    table = [[0] * (len(y) + 1) for _ in range(len(x) + 1)]
    for i in range(1, len(x) + 1):
        for j in range(1, len(y) + 1):
            table[i][j] = table[i - 1][j - 1] + 1 if x[i - 1] == y[j - 1] else max(table[i - 1][j], table[i][j - 1])
    words, i, j = set(), len(x), len(y)
    while i > 0 and j > 0:
        if x[i - 1] == y[j - 1]:
            words.add(x[i - 1])
            i, j = i - 1, j - 1
        elif table[i - 1][j] > table[i][j - 1]:
            i -= 1
        else:
            j -= 1
    return words


def rouge_l_recall_rwku(ground_truth: str, generated: str) -> float:
    """``R = |∪_{r ∈ S(gt)} ∪_{c ∈ S(gen)} words(LCS(r, c))| / |words(gt)|``.

    ``S(t)`` = the sentences of t (split on ".", empty pieces dropped, whitespace runs
    collapsed), a sentence's words = ``sentence.split(" ")``, ``words(gt)`` = the *set* of all
    words of gt's sentences, LCS on word sequences with ``rouge``'s trace-back. This is
    ``rouge.Rouge().get_scores(gen, gt)[0]['rouge-l']['r']`` (pltrdy rouge 1.0.1,
    ``rouge_l_summary_level`` with ``exclusive=True``). Where ``rouge`` raises on a text with
    no sentence (RWKU first turns an empty generation into "NOANSWER"), this returns 0.0.
    """
    references, candidates = _sentences(ground_truth), _sentences(generated)
    if not references or not candidates:
        return 0.0
    reference_words = {w for sentence in references for w in sentence.split(" ")}
    union: set[str] = set()
    for reference in references:
        for candidate in candidates:
            union |= _lcs_words(reference.split(" "), candidate.split(" "))
    return len(union) / len(reference_words)
