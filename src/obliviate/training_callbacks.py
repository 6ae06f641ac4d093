"""What watches each optimiser step of the Trainer: `DivergenceGuard` stops a run before a
non-finite update lands or is saved, `TrainLog` appends one JSON line per step to
train_log.jsonl, `NoStepPastTheEnd` keeps a resumed run from training past its last step. The
first two read as few values back from the device as they can: on a GPU each read makes the
host wait until the device has run everything queued (docs/speed-training.md)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from transformers import TrainerCallback

from obliviate.io import atomic_write_text

if TYPE_CHECKING:
    from obliviate.training import UnlearnTrainer


class FinishedAtResume(Exception):
    """The checkpoint a run resumed from was its last step: there is nothing left to train."""


class NoStepPastTheEnd(TrainerCallback):
    """transformers resumes a run whose last checkpoint is its final step into one step more when
    max_steps does not end an epoch: at step 20 of 3-step epochs it skips 2 batches of epoch 6
    and trains the third (a kill after the last checkpoint, before the model was saved, then gave
    other weights and a step 21 in the log). Raised before that step's forward pass."""

    def on_step_begin(self, args, state, control, **kwargs):
        if 0 < state.max_steps <= state.global_step:
            raise FinishedAtResume


class DivergenceGuard(TrainerCallback):
    """Stops the run before a non-finite update lands: the step's losses and its gradient norm
    are checked after clipping and before the optimiser step (a finite loss can still give NaN
    gradients), and the weights after the step, before the Trainer may save them in a checkpoint.
    Each check reads one value from the device (per-tensor checks made the host wait once per
    weight, ~270 times a step on the default model); every process takes part in the first, so
    all of them stop together."""

    def __init__(self, trainer: UnlearnTrainer):
        self.trainer = trainer

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        trainer = self.trainer
        losses, trainer.step_losses = trainer.step_losses, []
        grads = [p.grad.detach() for p in trainer.model.parameters() if p.grad is not None]
        norm = torch.nn.utils.get_total_norm(grads) if grads else None
        checks = [loss for loss, _ in losses] + ([norm] if grads else [])
        if not checks:
            return
        device = checks[0].device  # each value checked in its own dtype (a cast could overflow)
        bad = torch.stack([~torch.isfinite(c).all().to(device) for c in checks]).any().float()
        if trainer.accelerator.num_processes > 1:  # every process must stop, or the others hang
            bad = trainer.accelerator.reduce(bad, "sum")
        if not bad.item():
            return
        for loss, ctx in losses:
            if not torch.isfinite(loss):
                raise trainer._diverged(loss, ctx)
        if norm is not None and not torch.isfinite(norm):
            raise trainer.diverged(f"the gradient norm of the {trainer.objective_name} loss is {float(norm)}")
        raise trainer.diverged(f"the {trainer.objective_name} loss or its gradient is non-finite on another process")

    def on_step_end(self, args, state, control, **kwargs):
        trained = [(name, p.detach()) for name, p in self.trainer.model.named_parameters()
                   if p.requires_grad and p.numel()]  # the inf norm refuses an empty tensor
        # the largest |weight| (no squares: a huge finite weight is not taken for an overflow)
        if not trained or torch.isfinite(torch.nn.utils.get_total_norm([p for _, p in trained], float("inf"))):
            return
        name = next(name for name, p in trained if not torch.isfinite(p).all())
        self.trainer.state.global_step -= 1  # report the step whose update broke the weights
        raise self.trainer.diverged(f"weight {name} became non-finite", applied=True)


class TrainLog(TrainerCallback):
    """Appends one JSON line per optimiser step (process 0): means over its micro-batches, and
    the learning rate that step's update was made with."""

    def __init__(self, trainer: UnlearnTrainer, path: Path, resume_step: int = 0):
        self.trainer, self.path, self.start = trainer, path, time.perf_counter()
        self.step_lr: float | None = None  # set by on_optimizer_step, logged by on_step_end
        rows = []
        if resume_step and path.is_file():  # keep the steps up to the checkpoint, drop the rest
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    if json.loads(line)["step"] <= resume_step:
                        rows.append(line)
                except (json.JSONDecodeError, KeyError, TypeError):
                    pass  # a line cut short by the kill
        if trainer.is_world_process_zero():
            atomic_write_text(path, "".join(row + "\n" for row in rows))  # a kill now keeps the steps before

    def on_optimizer_step(self, args, state, control, optimizer=None, **kwargs):
        # the rate this update used: the Trainer steps the scheduler after this event and before
        # on_step_end, where get_last_lr() is already the next step's rate
        self.step_lr = optimizer.param_groups[0]["lr"] if optimizer is not None else None

    def on_step_end(self, args, state, control, **kwargs):
        terms, self.trainer.step_terms = self.trainer.step_terms, {}
        lr, self.step_lr = self.step_lr, None
        if not state.is_world_process_zero:
            return
        row = {"step": state.global_step, "epoch": round(state.epoch, 4), "learning_rate": lr}
        terms = host_values(terms)
        row.update({k: (int(sum(v)) if k == "tokens" else sum(v) / len(v)) for k, v in terms.items()})
        row["time_s"] = round(time.perf_counter() - self.start, 3)
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(row) + "\n")


def host_values(terms: dict[str, list]) -> dict[str, list[float]]:
    """The logged values as floats, the device's tensors read in one copy (not one wait each)."""
    tensors = [v for values in terms.values() for v in values if torch.is_tensor(v)]
    if tensors:
        device = tensors[0].device
        exact = torch.float32 if device.type == "mps" else torch.float64  # MPS has no float64
        host = iter(torch.stack([t.to(device, exact).reshape(()) for t in tensors]).tolist())
    return {k: [next(host) if torch.is_tensor(v) else float(v) for v in values] for k, values in terms.items()}
