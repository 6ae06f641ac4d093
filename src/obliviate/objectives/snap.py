"""SNAP's loss (METHODS.md C.1-C.3; the official code's `idk+rt+ot` path):

    L = NLL(obliterated response | negative instruction)            forget slot
      + NLL(normal answer | hard positive)                          retain slot
      + lambda * sum_t SW(W0_t, W_t)                                 lambda = snap.sw_lambda (0.1)

SW is the sliced Wasserstein distance of objectives/sliced_wasserstein.py (rows as samples,
L = snap.n_projections random unit projections, p = 2, no 1/n: the official scale), summed over
the trainable tensors (all of them, as the official code; `snap.sw_tensors=matrices` keeps only
the 2-D ones). A frozen tensor equals its copy and adds exactly 0, so skipping it changes nothing.

With `snap.alternate=true` the official `--alternate_updates` is approximated with one optimiser
step per batch: even steps descend the forget NLL alone, odd steps the retain NLL + lambda * SW
(the official code takes both steps on every batch).

The initial weights W0 are captured by `prepare` before the optimiser is built: a frozen copy of
each trainable tensor, not a second model: fp32 on the model's device (`snap.initial_weights=fp32`,
the default), bf16 there (`bf16`, as the official code), or fp32 in CPU memory (`cpu`, moved to
the device one tensor at a time). `release(model)` frees them after training.
"""

from __future__ import annotations

import weakref

import torch

from obliviate.errors import UserError
from obliviate.objectives.common import answer_nll, unwrap
from obliviate.objectives.sliced_wasserstein import sw_regulariser

__all__ = ["initial_weights", "loss", "prepare", "regulariser", "release"]

# model -> [(parameter name, frozen initial copy)]; weak, so a dropped model frees its copies
_INITIAL: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _option(options, name: str, default):
    """A snap.* option; the defaults apply where the objective runs without the method's section."""
    return getattr(options, name, default) if options is not None else default


def prepare(model, config=None, options=None) -> None:
    """Capture W0: a frozen copy of every trainable tensor, where and how snap.initial_weights says."""
    where = _option(options, "initial_weights", "fp32")
    if where not in ("fp32", "bf16", "cpu"):
        raise UserError(f"config key 'snap.initial_weights' = {where!r} is invalid; expected fp32, bf16 or cpu")
    only_matrices = _option(options, "sw_tensors", "all") == "matrices"
    dtype = torch.bfloat16 if where == "bf16" else torch.float32
    pin = where == "cpu" and torch.cuda.is_available()  # pinned memory: the per-step copy to the GPU overlaps
    copies = []
    for name, parameter in unwrap(model).named_parameters():
        if not parameter.requires_grad or (only_matrices and parameter.dim() < 2):
            continue
        copy = parameter.detach().to(device="cpu" if where == "cpu" else parameter.device, dtype=dtype, copy=True)
        copies.append((name, copy.pin_memory() if pin else copy))
    _INITIAL[unwrap(model)] = copies


def initial_weights(model) -> list[tuple[str, torch.Tensor]]:
    try:
        return _INITIAL[unwrap(model)]
    except KeyError:
        raise UserError("the snap objective's initial weights were not captured: call "
                        "objectives.snap.prepare(model, ...) before training (training.train does)") from None


def release(model) -> None:
    """Free the initial copies (after training: the trained model outlives them)."""
    _INITIAL.pop(unwrap(model), None)


def regulariser(model, options=None, seed: int = 0) -> torch.Tensor:
    """sum_t SW(W0_t, W_t) over the captured tensors, with projections seeded by `seed`."""
    current = dict(unwrap(model).named_parameters())
    pairs = [(copy, current[name]) for name, copy in initial_weights(model)]
    generator = torch.Generator().manual_seed(seed)
    return sw_regulariser(pairs, _option(options, "n_projections", 100), _option(options, "sw_p", 2.0), generator)


def loss(model, batch, ctx):
    options, cfg = ctx.options, ctx.config
    alternate = _option(options, "alternate", False)
    total = 0.0
    if not alternate or ctx.step % 2 == 0:
        forget_nll = answer_nll(model, batch["forget"])
        ctx.log("forget_nll", forget_nll)
        total = total + cfg.forget_weight * forget_nll
    if not alternate or ctx.step % 2 == 1:
        retain_nll = answer_nll(model, batch["retain"])
        # fresh projections each step, as the official code, but repeatable from the run seed
        sw = regulariser(model, options, seed=ctx.seed * 1_000_003 + ctx.step)
        ctx.log("retain_nll", retain_nll)
        ctx.log("sw", sw)
        total = total + cfg.retain_weight * retain_nll + _option(options, "sw_lambda", 0.1) * sw
    return total
