"""KL minimisation: L = -gamma * NLL_f + alpha * KL(pi_ref || pi_theta) on the retain answers.

The KL term is this method's definition, so objective.retain_loss does not change it. Its
reduction: the mean over the retain answer tokens (default), or with objective.kl_positions = "all"
open-unlearning's mean over every position of the padded batch (common.kl_all_positions).
"""

from obliviate.objectives.common import answer_nll, retain_kl


def loss(model, batch, ctx):
    forget_nll = answer_nll(model, batch["forget"])
    kl = retain_kl(model, batch["retain"], ctx)
    ctx.log("forget_nll", forget_nll)
    ctx.log("retain_kl", kl)
    return -ctx.config.forget_weight * forget_nll + ctx.config.retain_weight * kl
