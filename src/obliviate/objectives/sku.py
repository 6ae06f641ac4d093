"""SKU stage 1, harmful knowledge acquisition (METHODS.md B.2): learn the unwanted behaviour on purpose.

    L = e1 * L_GD + e2 * L_RD + e3 * L_PD

    L_GD = mean_b l_ans(x_b, y_b)                         guided distortion: learn the unwanted answers
    L_RD = mean over the B*K pairs of l_ans(x_b, y_rand)  random disassociation: each prompt with K
                                                          unwanted answers of other forget items
    L_PD = -KL(P_theta0 || Q_theta) = -mean_t sum_v P_v (log P_v - log Q_v) on normal ("retain") data

    l_ans(x, y) = (1/|y|) sum_{t in answer} -log p_theta(y_t | x, y_<t)   (per sample, then batch mean)

Minimising L_PD *maximises* the divergence from theta_0 on normal prompts, so the task vector
theta_h - theta_0 carries as little normal behaviour as possible and negating it (methods/sku.py)
leaves normal prompts alone. L_PD <= 0, and 0 at theta = theta_0.

Intended behaviour (default): RD on the answer tokens only; PD over the real (non-pad) tokens,
with log_softmax. `legacy_quirks=True` reproduces the reference code (franciscoliu/SKU@a17663f):
RD also over the question tokens (its start index is the BatchEncoding's number of keys, 2),
GD and RD normalised by |y| + 1 (get_answer_loss weights from the position before the first
scored token to the last real one, which predicts padding: one weight more than it scores),
PD averaged over all B x T positions padding included, and PD as sum P log((P + eps) / Q) on
probabilities, eps = 1e-12 inside the log only (utils.py line 212).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from obliviate.objectives.common import answer_lengths, answer_logprobs, kl_to_reference, sequence_logprob

LEGACY_RD_START = 2  # len(BatchEncoding) = its keys (input_ids, attention_mask), used as a token index
LEGACY_EPS = 1e-12


def per_sample_nll(model, enc: dict, *, legacy: bool = False) -> torch.Tensor:
    """mean_b (1/|y_b|) sum_t -log p(y_t | ...): each sample normalised by its own answer length;
    `legacy`: by |y_b| + 1, as the reference's get_answer_loss weights one more position (its
    last, which predicts padding) than it scores."""
    logp, rows = answer_logprobs(model, enc)
    size = enc["input_ids"].shape[0]
    return -(sequence_logprob(logp, rows, size) / (answer_lengths(rows, size) + int(legacy))).mean()


def with_question_labels(enc: dict, start: int = LEGACY_RD_START) -> dict:
    """Labels on every real token whose logit position is >= start: the reference code's RD mask,
    which covers the question as well as the answer."""
    labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
    labels[:, :start + 1] = -100  # the logit at t predicts token t + 1
    return {**enc, "labels": labels}


def legacy_kl(model, enc: dict, ctx) -> torch.Tensor:
    """The reference code's KL: sum_v P log((P + eps) / Q), P = softmax(theta_0), Q = softmax(theta),
    averaged over all B x T positions (prompt and padding included)."""
    inputs = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"], "use_cache": False}
    logits = model(**inputs).logits.float()
    with ctx.reference() as ref:
        ref_logits = ref(**inputs).logits.float()
    p = F.softmax(ref_logits, dim=-1)
    q = F.softmax(logits, dim=-1)
    return (p * ((p + LEGACY_EPS) / q).log()).sum(-1).mean()


def preservation_divergence(model, enc: dict, ctx, *, legacy: bool = False) -> torch.Tensor:
    """L_PD = -KL(P_theta0 || Q_theta) on normal data; the reference is ctx.reference()."""
    if legacy:
        return -legacy_kl(model, enc, ctx)
    return -kl_to_reference(model, enc, ctx, all_tokens=True)  # every real token after the first


def loss(model, batch, ctx):
    opts = ctx.options  # the method's `sku:` section (methods/sku.py: SkuConfig)
    legacy = opts.legacy_quirks
    others = batch["forget_other_answers"]
    gd = per_sample_nll(model, batch["forget"], legacy=legacy)
    rd = per_sample_nll(model, with_question_labels(others) if legacy else others, legacy=legacy)
    pd = preservation_divergence(model, batch["retain"], ctx, legacy=legacy)
    ctx.log("sku_gd", gd)
    ctx.log("sku_rd", rd)
    ctx.log("sku_pd", pd)
    return opts.e1 * gd + opts.e2 * rd + opts.e3 * pd
