"""Unlearning metrics as pure functions, with the exact TOFU / open-unlearning formulas.

References (read, not copied):

* TOFU legacy code, locuslab/tofu: ``evaluate_util.py`` (per-item statistics) and
  ``aggregate_eval_stat.py`` (aggregates, Forget Quality, Model Utility).
* open-unlearning, locuslab/open-unlearning: ``src/evals/metrics/{memorization,privacy,
  utility,utils}.py`` and ``src/evals/metrics/mia/*.py``.
* ``../docs/BENCHMARKS.md`` section 2 summarises both.

Conventions used throughout:

* ``avg_nll`` of an answer is its summed token negative log-likelihood divided by its number
  of answer tokens (EOS included, as both reference codes do).
* The per-item truth ratio is ``R = P̃_perturbed / P̃_correct`` (see :func:`truth_ratio`).
* MIA scores are oriented like a loss: **higher means "looks less like a training member"**.

The per-token functions take torch tensors but never import torch; everything else works on
numpy arrays or plain sequences, so importing this module needs neither torch nor rouge_score.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    import torch

IGNORE_INDEX = -100


# ---------------------------------------------------------------------------------------------
# Per-token quantities from a causal LM's logits (torch tensors in, torch tensors out)
# ---------------------------------------------------------------------------------------------


def _shifted_targets(labels: torch.Tensor, drop_last: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Targets ``labels[:, 1:]`` and their mask (``!= -100``), optionally without each row's
    last answer token (the EOS), as open-unlearning's ``tokenwise_logprobs`` does."""
    targets = labels[:, 1:]
    mask = targets != IGNORE_INDEX
    if drop_last:
        positions = mask.cumsum(-1)
        mask = mask & (positions < positions[:, -1:])
    return targets.masked_fill(~mask, 0), mask


def answer_nll(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed answer NLL and answer-token count per item.

    ``sum_nll[b] = Σ_t −log softmax(logits[b, t])[labels[b, t+1]]`` over the positions t where
    ``labels[b, t+1] != -100`` (causal shift: logits[:, :-1] predict labels[:, 1:]);
    ``n_tokens[b]`` is the number of such positions. Computed in fp32. This is TOFU's
    ``get_batch_loss`` (data_module.py) and open-unlearning's ``evaluate_probability``
    numerator; ``avg_nll = sum_nll / n_tokens``.

    Shapes: logits (B, T, V), labels (B, T) -> two tensors of shape (B,).
    """
    targets, mask = _shifted_targets(labels, drop_last=False)
    shifted = logits[:, :-1].float()
    target_logits = shifted.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    token_nll = (shifted.logsumexp(-1) - target_logits).masked_fill(~mask, 0.0)
    return token_nll.sum(-1), mask.sum(-1)


def token_logprobs(
    logits: torch.Tensor, labels: torch.Tensor, drop_last: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token log-probabilities of the answer tokens, and their mask.

    ``logp[b, t] = log softmax(logits[b, t])[labels[b, t+1]]`` (fp32), 0 where masked;
    ``mask[b, t] = labels[b, t+1] != -100``. With ``drop_last=True`` each row's last answer
    token (the EOS) is left out, as open-unlearning's ``tokenwise_logprobs`` does for min-k,
    min-k++, exact memorisation and extraction strength.

    Shapes: logits (B, T, V), labels (B, T) -> two tensors of shape (B, T-1).
    """
    targets, mask = _shifted_targets(labels, drop_last)
    log_probs = logits[:, :-1].float().log_softmax(-1)
    logp = log_probs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return logp.masked_fill(~mask, 0.0), mask


def next_token_logprob_moments(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and standard deviation of log p under the model's own next-token distribution.

    ``mu = Σ_v p_v log p_v`` and ``sigma = sqrt(max(Σ_v p_v (log p_v)² − mu², 1e-6))`` at
    every position of ``logits[:, :-1]`` (fp32), as in open-unlearning's
    ``mia/min_k_plus_plus.py`` (which clamps the variance at 1e-6). Shapes: (B, T, V) -> two
    tensors of shape (B, T-1), aligned with :func:`token_logprobs`.
    """
    log_probs = logits[:, :-1].float().log_softmax(-1)
    probs = log_probs.exp()
    mu = (probs * log_probs).sum(-1)
    variance = (probs * log_probs.square()).sum(-1) - mu.square()
    return mu, variance.clamp(min=1e-6).sqrt()


def greedy_predictions(
    logits: torch.Tensor, labels: torch.Tensor, drop_last: bool = False
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Teacher-forced argmax predictions, aligned targets and mask.

    ``preds[b, t] = argmax logits[b, t]``, ``targets[b, t] = labels[b, t+1]`` (0 where masked),
    ``mask`` as in :func:`token_logprobs`. Feed ``preds[b][mask[b]]`` and
    ``targets[b][mask[b]]`` to :func:`exact_memorisation` and :func:`extraction_strength`.
    """
    targets, mask = _shifted_targets(labels, drop_last)
    return logits[:, :-1].argmax(-1), targets, mask


# ---------------------------------------------------------------------------------------------
# Per-item and aggregate TOFU metrics (numpy)
# ---------------------------------------------------------------------------------------------


def _as_numpy(values: Any) -> np.ndarray:
    """A numpy array from a list, numpy array or torch tensor (bf16 is upcast to fp32)."""
    if hasattr(values, "detach"):
        values = values.detach().cpu()
        values = values.float() if values.is_floating_point() else values
        return values.numpy()
    return np.asarray(values)


def _perturbed_matrix(avg_nll_perturbed: Any) -> np.ndarray:
    """avg NLLs of the perturbed answers as an (N, J) float array (1-D input means J = 1)."""
    matrix = np.asarray(_as_numpy(avg_nll_perturbed), dtype=np.float64)
    return matrix[:, None] if matrix.ndim == 1 else matrix


def finite_mean(values: Sequence[float | None]) -> float | None:
    """``mean_i v_i`` over the values that are finite numbers (None, nan and inf left out);
    None when no value is left. How every TOFU per-item value is aggregated."""
    finite = [float(v) for v in values if v is not None and np.isfinite(v)]
    return float(np.mean(finite)) if finite else None


def probability(avg_nll: Any) -> np.ndarray:
    """Per-token geometric-mean probability ``p̄(a|q) = exp(−avg_nll)``, elementwise.

    TOFU ``aggregate_eval_stat.py::get_model_utility`` (Retain/Forget "Prob."),
    open-unlearning ``evaluate_probability`` ("prob"). The reported Prob is its mean.
    """
    return np.exp(-np.asarray(_as_numpy(avg_nll), dtype=np.float64))


def normalised_probability(avg_nll_true: Any, avg_nll_perturbed: Any) -> np.ndarray:
    """Probability of the true answer normalised against the perturbed options, per item.

    ``p̄(a) / (p̄(a) + Σ_j p̄(pert_j))`` with ``p̄ = exp(−avg_nll)``: TOFU's Prob. for Real
    Authors and World Facts (aggregate_eval_stat.py, no epsilon). open-unlearning's
    ``probability_w_options`` adds 1e-10 to the denominator; we follow TOFU and add nothing
    (a change of ~1e-10 relative to the denominator: negligible unless every option's p̄ is
    below ~1e-9, as on a collapsed model).
    ``avg_nll_true``: shape (N,); ``avg_nll_perturbed``: shape (N, J).
    """
    p_true = probability(avg_nll_true)
    p_perturbed = np.exp(-_perturbed_matrix(avg_nll_perturbed)).sum(-1)
    return p_true / (p_true + p_perturbed)


def truth_ratio(avg_nll_correct: Any, avg_nll_perturbed: Any) -> np.ndarray:
    """Per-item truth ratio ``R = exp(−mean_j L_pert_j) / exp(−L_correct)``.

    ``L_correct`` is the avg NLL of the paraphrased answer (Retain, Forget) or of the answer
    itself (Real Authors, World Facts); ``mean_j`` averages the perturbed answers' avg NLLs,
    i.e. a geometric mean over options. ``R = P̃_perturbed / P̃_correct``: lower means the model
    prefers the correct answer. This equals TOFU's per-item logged ``truth_ratio``
    (evaluate_util.py ``exp(gt_loss_per_token − perturb_loss_per_token.mean(-1))``); TOFU's
    aggregate code works with ``curr_stat = 1/R``. open-unlearning's ``truth_ratio`` score is
    ``wrong / (correct + 1e-10)``: the same while ``P̃_correct`` is well above 1e-10, far lower
    once ``L_correct`` exceeds ~20 nats (a collapsed model); we follow TOFU.
    Shapes: (N,) and (N, J) -> (N,).
    """
    correct = np.asarray(_as_numpy(avg_nll_correct), dtype=np.float64)
    return np.exp(correct - _perturbed_matrix(avg_nll_perturbed).mean(-1))


def truth_ratio_forget(ratios: Any) -> float:
    """Forget-set Truth Ratio ``mean_i min(R_i, 1/R_i)`` (closer to 1 is better).

    TOFU aggregate_eval_stat.py ``np.minimum(curr_stat, 1/curr_stat)``; open-unlearning
    ``closer_to_1_better`` (which adds 1e-10 inside 1/R; we do not). Symmetric in R <-> 1/R.
    """
    r = np.asarray(_as_numpy(ratios), dtype=np.float64)
    with np.errstate(divide="ignore"):
        return float(np.mean(np.minimum(r, 1.0 / r)))


def truth_ratio_retain(ratios: Any) -> float:
    """Retain / Real Authors / World Facts Truth Ratio ``mean_i max(0, 1 − R_i)``.

    TOFU ``np.maximum(0, 1 − 1/curr_stat)`` with ``curr_stat = 1/R``; open-unlearning
    ``true_better``. Higher is better.
    """
    r = np.asarray(_as_numpy(ratios), dtype=np.float64)
    return float(np.mean(np.maximum(0.0, 1.0 - r)))


def rouge_l_recall(ground_truth: str, generated: str, variant: str = "tofu") -> float:
    """ROUGE-L recall of ``generated`` against ``ground_truth``.

    ``variant="tofu"`` (default): ``RougeScorer(['rouge1', 'rougeL'],
    use_stemmer=True).score(gt, gen)['rougeL'].recall``: TOFU ``eval_rouge_recall``
    (evaluate_util.py), open-unlearning ``eval_text_similarity``. The scorer lowercases, keeps
    alphanumeric tokens and Porter-stems. ``variant="rwku"``: the PyPI ``rouge`` package's
    summary-level ROUGE-L recall, as RWKU scores (case-sensitive, whitespace tokens, no
    stemming); :func:`obliviate.evaluation.rouge.rouge_l_recall_rwku` has its formula.
    """
    from obliviate.evaluation import rouge

    if variant == "tofu":
        return rouge.rouge_l_recall_tofu(ground_truth, generated)
    if variant == "rwku":
        return rouge.rouge_l_recall_rwku(ground_truth, generated)
    raise ValueError(f"ROUGE variant '{variant}' is not known; use one of {', '.join(rouge.VARIANTS)}")


def rouge_l_recall_batch(ground_truths: Sequence[str], generated: Sequence[str], variant: str = "tofu") -> list[float]:
    """:func:`rouge_l_recall` for each (ground truth, generation) pair."""
    if len(ground_truths) != len(generated):
        raise ValueError(f"{len(ground_truths)} ground truths but {len(generated)} generations")
    return [rouge_l_recall(gt, gen, variant) for gt, gen in zip(ground_truths, generated)]


def forget_quality(tr_unlearned: Any, tr_retain_model: Any) -> float:
    """Forget Quality: ``scipy.stats.ks_2samp(tr_unlearned, tr_retain_model).pvalue``.

    Both samples are per-item truth ratios on the **forget** set, of the evaluated model and
    of the retain model (never trained on the forget set), in the same direction. TOFU's
    ``get_forget_quality`` feeds ``exp(L̄_pert − L_para) = 1/R``; open-unlearning's
    ``ks_test`` feeds its ``score`` = R. The KS statistic is invariant under a strictly
    monotone map applied to both samples, so 1/R and R give the same p-value; we pass R.
    """
    from scipy.stats import ks_2samp

    unlearned = np.asarray(_as_numpy(tr_unlearned), dtype=np.float64)
    retain = np.asarray(_as_numpy(tr_retain_model), dtype=np.float64)
    return float(ks_2samp(unlearned, retain).pvalue)


def model_utility(nine_numbers: Sequence[float]) -> float:
    """Model Utility: ``scipy.stats.hmean`` of the 9 numbers {ROUGE, Prob, Truth Ratio} x
    {Retain, Real Authors, World Facts} (Forget excluded).

    TOFU ``get_model_utility``; open-unlearning ``hm_aggregate`` over model_utility.yaml.
    """
    values = np.asarray(nine_numbers, dtype=np.float64)
    if values.shape != (9,):
        raise ValueError(f"model utility needs exactly 9 numbers, got shape {values.shape}")
    from scipy.stats import hmean

    return float(hmean(values))


# ---------------------------------------------------------------------------------------------
# Memorisation and membership-inference scores (open-unlearning extras)
# ---------------------------------------------------------------------------------------------


def exact_memorisation(preds: Any, targets: Any) -> float:
    """Fraction of answer tokens whose teacher-forced argmax equals the label.

    ``EM = (1/n) Σ_t [argmax p(·|x, y_<t) = y_t]``: open-unlearning ``exact_memorization``
    (memorization.py), which leaves out the EOS token (use ``drop_last=True``).
    Inputs: the 1-D answer-token predictions and labels of one item. Empty -> nan.
    """
    preds, targets = _as_numpy(preds), _as_numpy(targets)
    return float(np.mean(preds == targets)) if len(targets) else float("nan")


def extraction_strength(preds: Any, targets: Any) -> float:
    """Extraction strength ``ES = 1 − k*/n``, k* the shortest answer prefix after which the
    model's greedy continuation reproduces the rest of the answer.

    With teacher forcing, ``k* = min{k ∈ 0..n : preds[k:] == targets[k:]}`` (k = n, the empty
    suffix, always qualifies, so ES = 0 when even the last token is wrong). open-unlearning's
    ``extraction_strength`` (memorization.py) loops k over 0..n−1 only, so it gives 1/n
    instead of 0 in that case; otherwise the two agree. Empty answer -> 0 (as there).
    """
    preds, targets = _as_numpy(preds), _as_numpy(targets)
    n = len(targets)
    if n == 0:
        return 0.0
    mismatches = np.flatnonzero(preds != targets)
    k_star = 0 if len(mismatches) == 0 else int(mismatches[-1]) + 1
    return 1.0 - k_star / n


def loss_score(avg_nll: float) -> float:
    """LOSS attack score: the answer's avg NLL (open-unlearning ``mia/loss.py``).
    Higher = looks less like a member."""
    return float(avg_nll)


def zlib_score(avg_nll: float, text: str) -> float:
    """zlib attack score ``avg_nll / len(zlib.compress(text.encode('utf-8')))``.

    open-unlearning ``mia/zlib.py`` (text = the decoded answer tokens). Higher = less member.
    """
    return float(avg_nll) / len(zlib.compress(text.encode("utf-8")))


def _mean_of_lowest(values: np.ndarray, k: float) -> float:
    count = max(1, int(len(values) * k))
    return float(np.mean(np.sort(values)[:count]))


def min_k_score(token_logprobs_1d: Any, k: float = 0.4) -> float:
    """Min-k% attack score ``−mean(lowest max(1, ⌊k·n⌋) token log-probs)``.

    open-unlearning ``mia/min_k.py`` with TOFU's default ``k: 0.4`` (mia_min_k.yaml); the sign
    makes it loss-like: higher = less member. Input: one item's answer-token log-probs
    (EOS left out in open-unlearning, i.e. ``drop_last=True``). Empty -> 0 (as there).
    """
    logp = np.asarray(_as_numpy(token_logprobs_1d), dtype=np.float64)
    return 0.0 if logp.size == 0 else -_mean_of_lowest(logp, k)


def min_k_plus_plus_score(token_logprobs_1d: Any, mu: Any, sigma: Any, k: float = 0.4) -> float:
    """Min-k%++ attack score ``−mean(lowest max(1, ⌊k·n⌋) of (log p_t − mu_t) / sigma_t)``.

    ``mu_t, sigma_t`` are the mean and std of log p under the model's next-token distribution
    at position t (:func:`next_token_logprob_moments`). open-unlearning
    ``mia/min_k_plus_plus.py``, k = 0.4 for TOFU. Higher = less member. Empty -> 0.
    """
    logp = np.asarray(_as_numpy(token_logprobs_1d), dtype=np.float64)
    if logp.size == 0:
        return 0.0
    z = (logp - _as_numpy(mu).astype(np.float64)) / _as_numpy(sigma).astype(np.float64)
    return -_mean_of_lowest(z, k)


def mia_auc(scores_forget: Any, scores_holdout: Any) -> float:
    """ROC AUC of telling forget (member) from holdout (non-member) items by a loss-like score.

    ``AUC = P(s_holdout > s_forget) + ½ P(s_holdout = s_forget)``, computed with the
    Mann-Whitney rank formula ``(Σ ranks of holdout − m(m+1)/2) / (n·m)`` (average ranks for
    ties). This is open-unlearning's ``roc_auc_score`` with label 0 = forget, 1 = holdout:
    AUC → 1 when the forget items look much more likely (remembered) than the holdout items,
    0.5 when indistinguishable.
    """
    from scipy.stats import rankdata

    forget = np.asarray(_as_numpy(scores_forget), dtype=np.float64)
    holdout = np.asarray(_as_numpy(scores_holdout), dtype=np.float64)
    n, m = len(forget), len(holdout)
    if n == 0 or m == 0:
        raise ValueError("mia_auc needs at least one forget and one holdout score")
    ranks = rankdata(np.concatenate([forget, holdout]))
    return float((ranks[n:].sum() - m * (m + 1) / 2) / (n * m))


def privleak(auc_model: float, auc_retain: float) -> float:
    """PrivLeak ``(AUC'_model − AUC'_retain) / AUC'_retain × 100`` with ``AUC' = 1 − AUC``.

    open-unlearning ``privleak`` (privacy.py; MUSE convention, min-k AUC on forget vs
    holdout), including its ``+1e-10`` in the denominator. 0 = like the retain model;
    strongly negative = the forget set is still detectable as members.
    """
    score, reference = 1.0 - float(auc_model), 1.0 - float(auc_retain)
    return (score - reference) / (reference + 1e-10) * 100.0
