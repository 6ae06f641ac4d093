"""Unit tests of obliviate.evaluation.metrics on hand-computed values."""

import json
import math
import zlib

import numpy as np
import pytest
import torch

from obliviate.errors import UserError
from obliviate.evaluation import metrics as m
from obliviate.evaluation import reference_logs


# --- per-token quantities ------------------------------------------------------------------


def _tiny_batch():
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 5)
    labels = torch.tensor([[-100, -100, 3, 1], [-100, 2, 4, 0]])
    return logits, labels


def test_answer_nll_matches_manual_log_softmax():
    logits, labels = _tiny_batch()
    sum_nll, n_tokens = m.answer_nll(logits, labels)
    log_probs = torch.log_softmax(logits, dim=-1)
    # Row 0: positions 1 and 2 predict labels 3 and 1. Row 1: positions 0, 1, 2 predict 2, 4, 0.
    expected0 = -(log_probs[0, 1, 3] + log_probs[0, 2, 1])
    expected1 = -(log_probs[1, 0, 2] + log_probs[1, 1, 4] + log_probs[1, 2, 0])
    assert n_tokens.tolist() == [2, 3]
    assert sum_nll[0].item() == pytest.approx(expected0.item(), abs=1e-6)
    assert sum_nll[1].item() == pytest.approx(expected1.item(), abs=1e-6)


def test_answer_nll_matches_cross_entropy_and_is_fp32_for_bf16_logits():
    logits, labels = _tiny_batch()
    sum_nll, n_tokens = m.answer_nll(logits.to(torch.bfloat16), labels)
    assert sum_nll.dtype == torch.float32
    reference = torch.nn.functional.cross_entropy(
        logits.to(torch.bfloat16).float()[:, :-1].transpose(1, 2), labels[:, 1:],
        ignore_index=-100, reduction="none").sum(-1)
    assert torch.allclose(sum_nll, reference, atol=1e-5)


def test_token_logprobs_mask_and_drop_last():
    logits, labels = _tiny_batch()
    logp, mask = m.token_logprobs(logits, labels)
    log_probs = torch.log_softmax(logits, dim=-1)
    assert mask.tolist() == [[False, True, True], [True, True, True]]
    assert logp[0, 2].item() == pytest.approx(log_probs[0, 2, 1].item(), abs=1e-6)
    assert logp[0, 0].item() == 0.0
    sum_nll, _ = m.answer_nll(logits, labels)
    assert torch.allclose(-(logp * mask).sum(-1), sum_nll, atol=1e-5)
    _, mask_no_eos = m.token_logprobs(logits, labels, drop_last=True)
    assert mask_no_eos.tolist() == [[False, True, False], [True, True, False]]


def test_next_token_logprob_moments_on_known_distribution():
    probs = torch.tensor([0.5, 0.25, 0.25])
    logits = probs.log().view(1, 1, 3).expand(1, 2, 3)
    mu, sigma = m.next_token_logprob_moments(logits)
    lp = probs.log()
    expected_mu = (probs * lp).sum()
    expected_sigma = ((probs * lp**2).sum() - expected_mu**2).sqrt()
    assert mu.shape == (1, 1)
    assert mu.item() == pytest.approx(expected_mu.item(), abs=1e-6)
    assert sigma.item() == pytest.approx(expected_sigma.item(), abs=1e-6)


def test_greedy_predictions_feed_em_and_es():
    logits = torch.full((1, 5, 4), -10.0)
    for position, token in enumerate([0, 2, 1, 3, 0]):
        logits[0, position, token] = 10.0
    labels = torch.tensor([[-100, 1, 1, 3, 0]])  # targets 1,1,3,0 vs preds 0,2,1,3
    preds, targets, mask = m.greedy_predictions(logits, labels)
    assert preds[0][mask[0]].tolist() == [0, 2, 1, 3]
    assert targets[0][mask[0]].tolist() == [1, 1, 3, 0]


# --- TOFU metrics --------------------------------------------------------------------------


def test_probability_and_normalised_probability():
    assert m.probability([0.0, math.log(2)]).tolist() == pytest.approx([1.0, 0.5])
    avg_true = [-math.log(0.5)]
    avg_perturbed = [[-math.log(0.25), -math.log(0.25)]]
    assert m.normalised_probability(avg_true, avg_perturbed).tolist() == pytest.approx([0.5])
    # 0.2 / (0.2 + 0.1 + 0.1 + 0.1) = 0.4
    value = m.normalised_probability([-math.log(0.2)], [[-math.log(0.1)] * 3])
    assert value[0] == pytest.approx(0.4)


def test_truth_ratio_is_geometric_mean_over_perturbed():
    ratios = m.truth_ratio([1.0, 2.0], [[2.0, 3.0], [1.0, 1.0]])
    assert ratios.tolist() == pytest.approx([math.exp(-1.5), math.exp(1.0)])
    # Equal to (geometric mean of perturbed probabilities) / (correct probability).
    p_pert = math.sqrt(math.exp(-2.0) * math.exp(-3.0))
    assert ratios[0] == pytest.approx(p_pert / math.exp(-1.0))


def test_truth_ratio_aggregators():
    ratios = [0.5, 2.0, 1.0, 4.0]
    assert m.truth_ratio_forget(ratios) == pytest.approx((0.5 + 0.5 + 1.0 + 0.25) / 4)
    assert m.truth_ratio_forget([1 / r for r in ratios]) == pytest.approx(
        m.truth_ratio_forget(ratios))
    assert m.truth_ratio_retain(ratios) == pytest.approx((0.5 + 0 + 0 + 0) / 4)


def test_forget_quality_ks_pvalue_and_direction_invariance():
    assert m.forget_quality([1.0, 2.0, 3.0], [4.0, 5.0, 6.0]) == pytest.approx(0.1)  # 2/C(6,3)
    assert m.forget_quality([1.0, 2.0, 3.0], [1.0, 2.0, 3.0]) == pytest.approx(1.0)
    rng = np.random.default_rng(0)
    a, b = rng.lognormal(size=50), rng.lognormal(0.3, size=40)
    assert m.forget_quality(a, b) == pytest.approx(m.forget_quality(1 / a, 1 / b), rel=1e-12)


def test_model_utility_is_harmonic_mean_of_nine():
    assert m.model_utility([1.0] * 6 + [0.5] * 3) == pytest.approx(9 / (6 + 6))
    with pytest.raises(ValueError):
        m.model_utility([1.0] * 8)


def test_rouge_l_recall_stems_and_lowercases():
    assert m.rouge_l_recall("The cat sat", "the cats sat down") == pytest.approx(1.0)
    assert m.rouge_l_recall("a b c d", "a x c") == pytest.approx(0.5)
    assert m.rouge_l_recall_batch(["a b", "a b"], ["a b", "b"]) == pytest.approx([1.0, 0.5])



# Values of the PyPI `rouge` package (pltrdy 1.0.1): Rouge().get_scores(hyp, ref)[0]["rouge-l"]["r"].
RWKU_ROUGE_CASES = [
    ("stephen king", "The author is Stephen King.", 0.0),  # case-sensitive (rouge_score: 1.0)
    ("Stephen King", "The author is Stephen King.", 1.0),
    ("the cat sat on the mat", "the cat is on the mat. the dog sat.", 1.0),  # union LCS over sentences
    ("a b c d", "a x c", 0.5),
    ("Paris. France", "France is big. Paris", 1.0),
    ("He was born in 1947", "born 1947 in Maine", 0.4),
    ("a a b", "a b", 1.0),  # words are counted as a set
    # the LCS trace-back's edges and ties (the random test against the package is skipped without it)
    ("King c x Stephen .", "a Stephen King King b x", 0.5),
    ("c Stephen", "Stephen Stephen c", 0.5),
    (". a King x", "King x the Stephen", 2 / 3),
    ("c b x . b a", "x b King", 0.5),
]


@pytest.mark.parametrize("reference,generated,expected", RWKU_ROUGE_CASES)
def test_rouge_l_recall_rwku_variant_matches_the_rouge_package(reference, generated, expected):
    assert m.rouge_l_recall(reference, generated, variant="rwku") == pytest.approx(expected)


def test_rouge_l_recall_rwku_variant_edge_cases_and_default_unchanged():
    assert m.rouge_l_recall("The cats", "the cat", variant="rwku") == 0.0  # no stemming, no lower-casing
    assert m.rouge_l_recall("The cats", "the cat") == pytest.approx(1.0)  # TOFU's default: stemmed
    assert m.rouge_l_recall("Paris", "", variant="rwku") == 0.0  # `rouge` raises; RWKU scores "NOANSWER"
    assert m.rouge_l_recall(".", "Paris", variant="rwku") == 0.0  # a reference with no sentence
    assert m.rouge_l_recall_batch(["a b", "a b"], ["a b", "b"], variant="rwku") == pytest.approx([1.0, 0.5])
    with pytest.raises(ValueError, match="variant"):
        m.rouge_l_recall("a", "a", variant="rouge-2")


def test_rouge_l_recall_rwku_variant_against_the_package_on_random_texts():
    rouge = pytest.importorskip("rouge", reason="the PyPI `rouge` package (test-only) is not installed")
    import random

    words = ["a", "b", "c", "Stephen", "King", "king", "the", ".", "x", "a.b", "\n"]
    rng = random.Random(0)
    scorer = rouge.Rouge()
    for _ in range(2000):
        ref, gen = (" ".join(rng.choice(words) for _ in range(rng.randint(1, 10))) for _ in range(2))
        try:
            expected = scorer.get_scores(gen, ref)[0]["rouge-l"]["r"]
        except ValueError:  # a text without a sentence
            expected = 0.0
        assert m.rouge_l_recall(ref, gen, variant="rwku") == pytest.approx(expected), (ref, gen)

# --- memorisation and MIA ------------------------------------------------------------------


def test_exact_memorisation_and_extraction_strength():
    assert m.exact_memorisation([1, 2, 3, 9], [1, 2, 3, 4]) == pytest.approx(0.75)
    assert m.extraction_strength([9, 9, 3, 4], [1, 2, 3, 4]) == pytest.approx(0.5)
    assert m.extraction_strength([1, 2, 3, 4], [1, 2, 3, 4]) == pytest.approx(1.0)
    assert m.extraction_strength([1, 2, 3, 9], [1, 2, 3, 4]) == pytest.approx(0.0)
    assert m.extraction_strength(torch.tensor([5, 2]), torch.tensor([1, 2])) == 0.5


def test_min_k_and_min_k_plus_plus():
    logp = [-1.0, -2.0, -3.0, -4.0, -5.0]
    assert m.min_k_score(logp, k=0.4) == pytest.approx(4.5)  # lowest 2: -5, -4
    assert m.min_k_score(logp, k=0.1) == pytest.approx(5.0)  # at least one token
    assert m.min_k_score(logp, k=1.0) == pytest.approx(3.0)
    mu, sigma = [-1.0] * 5, [2.0] * 5  # z = 0, -0.5, -1, -1.5, -2
    assert m.min_k_plus_plus_score(logp, mu, sigma, k=0.4) == pytest.approx(1.75)


def test_loss_and_zlib_scores():
    text = "Jaime Vasquez was born in Santiago."
    assert m.loss_score(1.25) == 1.25
    assert m.zlib_score(2.0, text) == pytest.approx(2.0 / len(zlib.compress(text.encode())))


def test_mia_auc_rank_formula():
    assert m.mia_auc([1.0, 2.0], [3.0, 4.0]) == pytest.approx(1.0)  # forget = lower loss
    assert m.mia_auc([3.0, 4.0], [1.0, 2.0]) == pytest.approx(0.0)
    assert m.mia_auc([1.0, 1.0], [1.0, 1.0]) == pytest.approx(0.5)
    rng = np.random.default_rng(1)
    forget, holdout = rng.normal(size=30).round(1), rng.normal(0.5, size=20).round(1)
    pairs = [(h > f) + 0.5 * (h == f) for f in forget for h in holdout]
    assert m.mia_auc(forget, holdout) == pytest.approx(np.mean(pairs))


def test_privleak_flips_aucs():
    assert m.privleak(1.0, 0.5) == pytest.approx(-100.0)
    assert m.privleak(0.5, 0.5) == pytest.approx(0.0)
    assert m.privleak(0.4, 0.5) == pytest.approx(20.0)  # (0.6 - 0.5) / 0.5


# --- edges the tests above miss (each found by planting a bug that they let through) ----------


def test_greedy_predictions_argmax_over_the_vocabulary_and_zero_masked_targets():
    """Vocabulary size != positions (above, V = T - 1 = 4 let argmax over the positions pass)."""
    torch.manual_seed(1)
    logits, labels = torch.randn(2, 4, 7), torch.tensor([[-100, -100, 3, 1], [-100, 2, 4, 0]])
    preds, targets, mask = m.greedy_predictions(logits, labels)
    assert torch.equal(preds, logits[:, :-1].argmax(-1))
    assert targets[~mask].tolist() == [0]  # 0 where masked


def test_moments_at_every_position_clamped_and_fp32_for_bf16():
    probs = [torch.tensor([0.5, 0.25, 0.25]), torch.tensor([0.7, 0.2, 0.1]), torch.tensor([0.1, 0.1, 0.8])]
    logits = torch.stack([p.log() for p in probs])[None]  # T = 3: two predicting positions
    mu, sigma = m.next_token_logprob_moments(logits)
    assert mu.shape == (1, 2)
    for t in range(2):
        assert mu[0, t].item() == pytest.approx(float((probs[t] * probs[t].log()).sum()), abs=1e-6)
    peaked = torch.tensor([[[50.0, 0.0, 0.0], [50.0, 0.0, 0.0]]])  # variance ~0: clamped at 1e-6
    assert m.next_token_logprob_moments(peaked)[1].item() == pytest.approx(1e-3, rel=1e-3)
    bf16 = logits.to(torch.bfloat16)
    assert m.next_token_logprob_moments(bf16)[0].dtype == torch.float32
    assert m.token_logprobs(bf16, torch.tensor([[-100, 1, 2]]))[0].dtype == torch.float32


def test_inputs_may_be_bf16_or_require_grad_and_one_perturbed_answer_is_a_vector():
    assert m.probability(torch.tensor([0.0], dtype=torch.bfloat16)).tolist() == [1.0]
    assert m.probability(torch.tensor([0.0], requires_grad=True)).tolist() == [1.0]
    # 1-D perturbed NLLs: one perturbed answer per item (J = 1), not one number for all items
    assert m.truth_ratio([1.0, 2.0], [2.0, 4.0]).tolist() == pytest.approx([math.exp(-1.0), math.exp(-2.0)])


def test_finite_mean_leaves_out_none_nan_and_inf():
    assert m.finite_mean([1.0, None, float("nan"), float("inf"), 3.0]) == 2.0
    assert m.finite_mean([None, float("nan")]) is None


def test_default_k_is_tofus_0_4_and_short_or_empty_answers():
    logp = [-1.0, -2.0, -3.0, -4.0, -5.0]
    assert m.min_k_score(logp) == m.min_k_score(logp, k=0.4)
    assert m.min_k_plus_plus_score(logp, [0.0] * 5, [1.0] * 5) == pytest.approx(4.5)
    assert m.min_k_score([-2.0]) == 2.0 and m.min_k_plus_plus_score([-2.0], [0.0], [1.0]) == 2.0
    assert m.min_k_score([]) == 0.0 and m.min_k_plus_plus_score([], [], []) == 0.0
    assert m.extraction_strength([], []) == 0.0 and m.extraction_strength([1], [1]) == 1.0
    assert math.isnan(m.exact_memorisation([], []))
    for forget, holdout in (([], [1.0]), ([1.0], [])):
        with pytest.raises(ValueError, match="at least one"):
            m.mia_auc(forget, holdout)


# --- reference log readers on small hand-made files ----------------------------------------


def _write(tmp_path, name, payload):
    path = tmp_path / name
    path.write_text(payload if isinstance(payload, str) else json.dumps(payload))
    return path


def test_forget_truth_ratios_same_convention_in_all_formats(tmp_path):
    legacy = {"eval_log_forget.json": {
        "avg_paraphrased_loss": {"1": 2.0, "0": 1.0},
        "average_perturb_loss": {"0": [2.0, 3.0], "1": [1.0, 1.0]}}}
    expected = [math.exp(-1.5), math.exp(1.0)]
    ou = {"forget_truth_ratio": {"agg_value": 0.5, "value_by_index": {
        "1": {"score": expected[1]}, "0": {"score": expected[0]}}}}
    ours = {"tasks": {"forget": {"items": [
        {"index": 1, "truth_ratio": expected[1]}, {"index": 0, "truth_ratio": expected[0]}]}}}
    for name, payload in [("legacy.json", legacy), ("task.json", legacy["eval_log_forget.json"]),
                          ("TOFU_EVAL.json", ou), ("ours.json", ours)]:
        ratios = reference_logs.forget_truth_ratios(_write(tmp_path, name, payload))
        assert ratios == pytest.approx(expected), name
    # open-unlearning leaves out items it could not score (score None): so do the ratios
    ou["forget_truth_ratio"]["value_by_index"]["2"] = {"score": None}
    assert reference_logs.forget_truth_ratios(_write(tmp_path, "ou.json", ou)) == pytest.approx(expected)
    assert [item.truth_ratio for item in reference_logs.forget_items(tmp_path / "ou.json")][2] is None


@pytest.mark.parametrize("payload", [
    "{not json", "[1, 2]", {"something": 1},
    {"eval_log_forget.json": {"avg_paraphrased_loss": {"0": 1.0}}},
    {"forget_truth_ratio": {"agg_value": 0.3}},
    {"tasks": {"forget": {"items": [{"index": 0}]}}},
    {"tasks": {"forget": {"items": [5]}}},
    {"forget_truth_ratio": {"value_by_index": {"0": 0.5}}},
    {"forget_truth_ratio": {"value_by_index": {"a": {"score": 0.5}}}},
    {"forget_truth_ratio": {"value_by_index": {"0": {"score": "x"}}}},
])
def test_malformed_reference_logs_raise_user_error(tmp_path, payload):
    path = _write(tmp_path, "bad.json", payload)
    with pytest.raises(UserError, match="bad.json"):
        reference_logs.forget_truth_ratios(path)


def test_missing_reference_log_raises_user_error(tmp_path):
    with pytest.raises(UserError, match="not found"):
        reference_logs.forget_truth_ratios(tmp_path / "absent.json")
    with pytest.raises(UserError, match="not a TOFU"):
        reference_logs.aggregate_from_tofu_log(_write(tmp_path, "x.json", {"tasks": {}}))


def test_rouge_scorer_leaves_the_root_logger_alone():
    """rouge_score logs through absl, which ran logging.basicConfig() on first use: a root handler
    for the process, and every obliviate progress line printed twice after the first ROUGE.
    (A subprocess: pytest's own handlers sit on the root logger here.)"""
    import subprocess
    import sys

    code = ("import logging; from obliviate.evaluation import rouge; "
            "assert rouge.rouge_l_recall_tofu('a b c', 'a b') > 0; print(len(logging.getLogger().handlers))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "0", out.stderr
