"""SimNPO (Fan et al. 2024), reference-free and length-normalised:

    L = gamma * -(2/beta) E_f[log sigma(-(beta/|y_f|) log pi_theta(y_f|x_f) - delta)] + alpha * retain term

Method defaults (open-unlearning's TOFU config, applied under the keys the user's file or overrides set):
beta = 4.5, delta = 0, forget weight gamma = 0.125, retain weight alpha = 1. The SimNPO authors'
final TOFU config: gamma = 0.1375, alpha = 1, beta = 2.5. Note delta sits outside beta here, as in the paper's formula; the
open-unlearning code writes beta (NLL/|y| - delta), i.e. its delta is this delta / beta.
"""

import torch.nn.functional as F

from obliviate.objectives.common import answer_lengths, answer_logprobs, nll, retain_term, sequence_logprob


def loss(model, batch, ctx):
    forget = batch["forget"]
    batch_size = forget["input_ids"].shape[0]
    logp, rows = answer_logprobs(model, forget)
    mean_logp = sequence_logprob(logp, rows, batch_size) / answer_lengths(rows, batch_size)
    beta, delta = ctx.config.beta, ctx.config.delta
    simnpo = -(2.0 / beta) * F.logsigmoid(-beta * mean_logp - delta).mean()
    ctx.log("forget_nll", nll(logp))
    ctx.log("simnpo", simnpo)
    return ctx.config.forget_weight * simnpo + retain_term(model, batch, ctx)
