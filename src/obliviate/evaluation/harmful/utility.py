"""Utility on normal prompts: does the model still answer ordinary questions as before?

* **Perplexity** of the reference (TruthfulQA best) answers, pooled over tokens:
  ``PPL = exp(sum_i NLL_i / sum_i T_i)``, NLL_i the summed answer NLL of item i given its
  question (engine scores, EOS included) and T_i its number of answer tokens.
* **Similarity to the original model**: ``mean_i ROUGE-L recall(o_i^orig, o_i)`` of each
  greedy output o_i against the original model's greedy output to the same prompt (TOFU's
  stemmed ROUGE-L recall, :func:`obliviate.evaluation.metrics.rouge_l_recall`). 1 for the
  original model itself.
* **distinct-n** (n = 1, 2) over all outputs together: ``|unique n-grams| / |n-grams|`` of
  the lower-cased whitespace tokens; low values mean repetitive, degenerate text.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from obliviate.evaluation.engine import AnswerStats
from obliviate.evaluation.metrics import rouge_l_recall


def perplexity(stats: Sequence[AnswerStats]) -> float | None:
    """Token-pooled PPL (module docstring); None without answer tokens."""
    tokens = sum(s.n_tokens for s in stats)
    return math.exp(sum(s.sum_nll for s in stats) / tokens) if tokens else None


def similarity(outputs: Sequence[str], originals: Sequence[str]) -> list[float]:
    """ROUGE-L recall of each original output by the new one."""
    return [rouge_l_recall(orig, out) if orig.strip() else float(not out.strip())
            for out, orig in zip(outputs, originals, strict=True)]


def distinct_n(outputs: Sequence[str], n: int) -> float | None:
    """|unique n-grams| / |n-grams| over all outputs; None when no output has n tokens."""
    grams = [tuple(words[i:i + n]) for words in (o.lower().split() for o in outputs)
             for i in range(len(words) - n + 1)]
    return len(set(grams)) / len(grams) if grams else None
