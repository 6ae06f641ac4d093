"""Unlearning objectives: one small loss function per method, `loss(model, batch, ctx) -> Tensor`.

`OBJECTIVES[name]` is an `Objective(loss, needs_reference, slots, ...)`: `slots` are the batch
parts the loss reads (built by data/collate.py), so a new objective needing new data declares a
slot instead of a special case in the Trainer. A custom one is added with
`register_objective(name, Objective(...))`. Method presets (SimNPO's beta, ...) live with the
method's registration (methods/baselines.py) and are applied when the config is loaded. Forget
objectives add the shared retain term (`common.retain_term`: objective.retain_loss x
objective.retain_weight) themselves: composition, not inheritance. `docs/training.md` lists
every formula.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

from obliviate.config import ObjectiveConfig
from obliviate.errors import UserError
from obliviate.io import short_repr
from obliviate.objectives import finetune, ga, graddiff, idk_dpo, kl, npo, rmu, rt, simnpo
from obliviate.objectives import sku
from obliviate.objectives import snap
from obliviate.objectives.common import LossContext


class Objective(NamedTuple):
    loss: Callable
    needs_reference: bool = False  # uses the frozen starting model
    slots: tuple[str, ...] = ("forget",)  # batch slots it reads (data/collate.py), retain aside
    retain: str = "term"  # "term": objective.retain_loss decides; "always": its own; "none": unused
    prepare: Callable | None = None  # prepare(model, ObjectiveConfig, options) before the optimiser is built
    section: str | None = None  # a method config section the loss reads as ctx.options (e.g. "sku")
    shared: tuple[str, ...] = ()  # slots whose answer logits under the trained model it reads once (see shared_slots)


OBJECTIVES: dict[str, Objective] = {
    "ga": Objective(ga.loss, retain="none"),
    "graddiff": Objective(graddiff.loss, shared=("forget",)),
    "kl": Objective(kl.loss, needs_reference=True, retain="always", shared=("forget", "retain")),
    "npo": Objective(npo.loss, needs_reference=True, shared=("forget",)),
    "simnpo": Objective(simnpo.loss, shared=("forget",)),
    "idk_dpo": Objective(idk_dpo.loss, needs_reference=True, slots=("forget", "forget_refusal"),
                         shared=("forget_refusal", "forget")),
    "rt": Objective(rt.loss, slots=("forget_refusal",), shared=("forget_refusal",)),
    "rmu": Objective(rmu.loss, needs_reference=True, retain="always", prepare=rmu.prepare),
    "finetune": Objective(finetune.loss, retain="none"),
    "sku": Objective(sku.loss, needs_reference=True, slots=("forget", "forget_other_answers"), retain="always", section="sku"),
    "snap": Objective(snap.loss, slots=("forget",), retain="always", prepare=snap.prepare, section="snap"),
}


def register_objective(name: str, objective: Objective) -> Objective:
    """Add a custom objective under `name` (what `run.train(objective=name)` trains with). A bare
    loss function is refused here, where the mistake is made, not as an AttributeError in the
    Trainer; a taken name is refused so that a plugin cannot silently replace a built-in loss."""
    where = f"register_objective: objective '{name}'"
    if not isinstance(objective, Objective):
        raise UserError(f"{where}: {short_repr(objective)} is not an Objective; wrap the loss function: "
                        f"register_objective('{name}', Objective(loss, needs_reference=...))")
    if not callable(objective.loss):
        raise UserError(f"{where}: loss {short_repr(objective.loss)} is not callable; give a function "
                        "loss(model, batch, ctx) -> Tensor")
    if name in OBJECTIVES and OBJECTIVES[name] is not objective:
        raise UserError(f"{where} is registered already; register yours under another name")
    OBJECTIVES[name] = objective
    return objective


def get_objective(name: str) -> Objective:
    if name not in OBJECTIVES:
        raise UserError(f"objective '{name}' is not known; use one of {', '.join(OBJECTIVES)}")
    if not isinstance(OBJECTIVES[name], Objective):  # put into OBJECTIVES by hand, as the old docs said
        raise UserError(f"objective '{name}' in OBJECTIVES is {short_repr(OBJECTIVES[name])}, not an Objective; "
                        f"register it with register_objective('{name}', Objective(loss, ...))")
    return OBJECTIVES[name]


def needs_reference(name: str, config: ObjectiveConfig) -> bool:
    spec = get_objective(name)
    return spec.needs_reference or (spec.retain == "term" and config.retain_loss == "kl")


def needs_retain(name: str, config: ObjectiveConfig) -> bool:
    spec = get_objective(name)
    return spec.retain == "always" or (spec.retain == "term" and config.retain_loss != "none"
                                       and config.retain_weight != 0)


def batch_slots(name: str, config: ObjectiveConfig) -> tuple[str, ...]:
    """The slots the collator must build for this objective under this config."""
    return get_objective(name).slots + (("retain",) if needs_retain(name, config) else ())


def shared_slots(name: str, config: ObjectiveConfig) -> tuple[str, ...]:
    """The slots whose answer logits under the trained model the loss reads exactly once each,
    when there are two or more: train.shared_forward computes them in one forward pass
    (common.SHARED). `Objective.shared` names the loss's own; the retain slot joins when the
    retain term reads the model's answer logits (nll, or kl at the answer positions)."""
    spec = get_objective(name)
    answer_kl = getattr(config, "kl_positions", "answer") == "answer"
    slots = tuple(s for s in spec.shared if s != "retain" or answer_kl)
    if spec.retain == "term" and needs_retain(name, config) and (config.retain_loss == "nll" or answer_kl):
        slots += ("retain",)
    return slots if len(slots) > 1 else ()


__all__ = ["OBJECTIVES", "Objective", "LossContext", "register_objective", "get_objective", "needs_reference",
           "needs_retain", "batch_slots", "shared_slots"]
