"""SKU: Selective Knowledge negation Unlearning (METHODS.md section B).

The algorithm, as this file runs it:

    0. theta_0 <- the starting model (a frozen copy, same device)
    1. harmful knowledge acquisition: from theta_0, on a LoRA (r 32, alpha 16, q_proj/v_proj),
       minimise  L = e1 * L_GD + e2 * L_RD + e3 * L_PD   (objectives/sku.py)   ->  theta_h (merged)
    2. knowledge negation: tau = theta_h - theta_0,  theta = theta_0 - lambda * tau
       (lambda = 1: theta = 2 theta_0 - theta_h), one tensor at a time, integer buffers skipped

The request's forget set is the unwanted behaviour (prompts with unwanted answers), its retain set
the normal data that L_PD pushes theta_h away from. The presets are the reference code's README
configuration (e 2.5 / 2.5 / 1, lr 2e-4, 1000 steps, batch size 2, linear schedule, no warmup),
and, as its training loop, no gradient clipping (train.max_grad_norm 0).

    obliviate unlearn --method sku request=my_request.json
    obliviate unlearn --method sku request=my_request.json sku.lam=1.5 sku.lambda_sweep=[0.5,1.0]
    obliviate unlearn --method sku request=... sku.full_finetune=true train.learning_rate=2e-5

The run directory (methods/pipeline.py) gets model/ (lambda = sku.lam) and model_lambda<l>/ for
each other lambda of sku.lambda_sweep; manifest.json's method_stats holds lambda and |tau|.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field

import torch

from obliviate.methods.registry import Method, register_method
from obliviate.weights import apply_task_vector_, task_vector


@dataclass
class SkuConfig:
    e1: float = 2.5  # guided distortion weight (the code's bad_weight; argparse default 0.5)
    e2: float = 2.5  # random disassociation weight (random_weight; argparse default 1)
    e3: float = 1.0  # preservation divergence weight (normal_weight)
    other_answers: int = 5  # K: unwanted answers of other forget items paired with each prompt
    lam: float = 1.0  # negation strength: theta = theta_0 - lam * tau
    lambda_sweep: list[float] = field(default_factory=list)  # also save these lambdas
    full_finetune: bool = False  # train every weight instead of the LoRA (the code's OPT setting)
    legacy_quirks: bool = False  # reproduce the reference code's three loss quirks (objectives/sku.py)

    def checks(self) -> list[tuple[bool, str, str]]:
        return [(self.other_answers >= 1, "other_answers", "an integer >= 1"),
                *[(getattr(self, e) >= 0, e, "a number >= 0") for e in ("e1", "e2", "e3")],
                (self.lam > 0, "lam", "a number > 0"),
                (all(value > 0 for value in self.lambda_sweep), "lambda_sweep", "numbers > 0")]


PRESETS = {
    "train.lora.enabled": True, "train.lora.r": 32, "train.lora.alpha": 16,
    "train.lora.target_modules": ["q_proj", "v_proj"],
    "train.learning_rate": 2e-4, "train.max_steps": 1000, "train.batch_size": 2,
    "train.max_grad_norm": 0.0,  # unlearn_harm_new.py: backward, then optimizer.step(), no clipping
}


def acquisition_run(run):
    """The run that trains theta_h: the same, with the LoRA switched off under full_finetune."""
    if not run.config.sku.full_finetune:
        return run
    train = dataclasses.replace(run.config.train, lora=dataclasses.replace(run.config.train.lora, enabled=False))
    return dataclasses.replace(run, config=dataclasses.replace(run.config, train=train))


def negate(base, vector: dict[str, torch.Tensor], lam: float):
    """theta = theta_0 - lam * tau, in place on `base`."""
    return apply_task_vector_(base, vector, -lam)


def recipe(run) -> dict:
    """The algorithm box: theta_0 -> acquire theta_h -> tau = theta_h - theta_0 -> theta_0 - lambda * tau."""
    cfg = run.config.sku
    base = copy.deepcopy(run.model).eval()  # theta_0, on the same device as the model
    base.requires_grad_(False)
    harmful = acquisition_run(run).train(forget=run.request.forget, retain=run.request.retain, objective="sku")
    vector = task_vector(harmful, base)
    sweep = sorted({lam for lam in cfg.lambda_sweep if lam != cfg.lam})
    models = {f"model_lambda{lam:g}": negate(copy.deepcopy(base), vector, lam) for lam in sweep}
    # the caller's model object (trained in place into theta_h) ends holding theta, as every method's does
    run.model.load_state_dict(negate(base, vector, cfg.lam).state_dict())
    models["model"] = run.model
    run.stats.update(lam=cfg.lam, lambda_sweep=sweep, full_finetune=cfg.full_finetune,
                     legacy_quirks=cfg.legacy_quirks, weights=[cfg.e1, cfg.e2, cfg.e3],
                     task_vector_norm=float(torch.sqrt(sum(t.pow(2).sum() for t in vector.values()))),
                     task_vector_tensors=sum(bool(t.any()) for t in vector.values()))
    return models


register_method(Method("sku", recipe, "learn the unwanted behaviour in a LoRA (guided distortion, random "
                       "disassociation, preservation divergence), then negate that task vector (SKU)",
                       section=("sku", SkuConfig), presets=PRESETS))
