"""The one Trainer: a `transformers.Trainer` whose loss is an unlearning objective.

    from obliviate.training import train
    model = train(model, tokenizer, forget=request.forget, retain=request.retain,
                  config=config, output_dir=Path("runs/npo"))        # objective = config.method

Precision: `train.precision=auto` trains in bf16 autocast over fp32 master weights where the
hardware has bf16 matmul (CUDA with bf16, CPUs with AMX or AVX512-BF16), else fp32; every
update lands either way. LoRA (`train.lora.enabled`) trains adapters only and is merged into the
returned model; its reference model is the same network with the adapter disabled. Checkpoints
go to `output_dir/checkpoints` (resume with `resume=True`); `output_dir/train_log.jsonl` gets one
line per optimiser step: loss, learning rate, the objective's terms, tokens and time.
Several processes (DDP; on a machine without GPUs, CPU processes over gloo):
`accelerate launch --config_file examples/accelerate_multi_gpu.yaml -m obliviate.cli unlearn ...`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import copy
import os
import pickle
import warnings
from pathlib import Path
from typing import Any

import torch
from transformers import Trainer, TrainingArguments

from obliviate.config import RunConfig, TrainConfig
from obliviate.data.collate import LengthWindowSampler, SlotCollator, SlotDataset
from obliviate.data.refusals import load_refusals
from obliviate.data.request import QAItem
from obliviate.errors import UserError
from obliviate import hardware
from obliviate.hardware import bf16_is_fast, process_state, resolve_device
from obliviate.objectives import (LossContext, batch_slots, get_objective, needs_reference, needs_retain,
                                  shared_slots)
from obliviate.objectives.common import PACKING, SHARED, check_packing, shared_answer_logits
from obliviate.rundir import CHECKPOINTS, TRAIN_LOG
from obliviate.training_checkpoints import checkpoint_step, last_good_checkpoint, prepare_checkpoints
from obliviate.training_callbacks import DivergenceGuard, FinishedAtResume, NoStepPastTheEnd, TrainLog
from obliviate.training_compile import compiled_decoder_layers


class NonFiniteLossError(UserError):
    """The loss became NaN or infinite; nothing after the last good checkpoint was saved."""


def resolve_precision(precision: str, device_type: str | None = None) -> str:
    """auto -> bf16 where the device has it, else fp32. bf16 means autocast over fp32 weights."""
    resolved = hardware.resolve_precision(precision, device_type, key="train.precision")
    if precision == "bf16" and not bf16_is_fast(device_type):
        warnings.warn("train.precision=bf16 on hardware without fast bf16 matmul: expect it to be slower than fp32",
                      stacklevel=2)
    return resolved


def _report_to(value: str) -> str | list[str]:
    """`train.report_to` for TrainingArguments; an integration that is not installed is one line."""
    from transformers.integrations import integration_utils

    targets = [t.strip() for t in value.split(",") if t.strip() and t.strip() != "none"]
    available = {"tensorboard": integration_utils.is_tensorboard_available,
                 "wandb": integration_utils.is_wandb_available}
    for target in targets:
        if target in available and not available[target]():
            raise UserError(f"config key 'train.report_to' = '{value}': {target} is not installed; "
                            f"pip install {target}, or set train.report_to=none")
    return targets or "none"


def resolve_optim(optim: str, device_type: str) -> str:
    """`train.optim`: auto -> adamw_torch_fused on CUDA (one kernel per parameter group instead of
    one per tensor), elsewhere TrainingArguments' own default (unchanged from earlier releases:
    fused too with torch >= 2.8, adamw_torch below); any other TrainingArguments optim name is kept."""
    from transformers.training_args import OptimizerNames

    name = str(optim).strip().lower()
    if name == "auto":
        default = next(f.default for f in dataclasses.fields(TrainingArguments) if f.name == "optim")
        return "adamw_torch_fused" if device_type == "cuda" else str(getattr(default, "value", default))
    known = [o.value for o in OptimizerNames]
    if name not in known:
        raise UserError(f"config key 'train.optim' = '{optim}' is not known; use auto or a TrainingArguments "
                        f"optim name ({', '.join(known[:6])}, ...)")
    return name


def build_training_args(train_cfg: TrainConfig, output_dir: str | Path, seed: int,
                        device: str = "auto") -> TrainingArguments:
    """TrainingArguments from our TrainConfig. Reporting: `train.report_to` (none, tensorboard, wandb;
    the environment variable OBLIVIATE_REPORT_TO, if set, still overrides it).
    `device` (RunConfig.device): cpu trains on the CPU even where a GPU is; cuda:N selects GPU N."""
    target = resolve_device(device)
    if target.type == "cuda" and target.index is not None:
        torch.cuda.set_device(target)  # the Trainer places the model on the current CUDA device
    if not 0 <= train_cfg.warmup_ratio < 1:
        raise UserError(f"config key 'train.warmup_ratio' = {train_cfg.warmup_ratio} is invalid; expected [0, 1)")
    return TrainingArguments(
        output_dir=str(output_dir),
        per_device_train_batch_size=train_cfg.batch_size,
        gradient_accumulation_steps=train_cfg.gradient_accumulation_steps,
        learning_rate=train_cfg.learning_rate,
        num_train_epochs=train_cfg.num_epochs,
        max_steps=train_cfg.max_steps,
        weight_decay=train_cfg.weight_decay,
        max_grad_norm=train_cfg.max_grad_norm,  # 0: no clipping (the Trainer clips only above 0)
        warmup_steps=float(train_cfg.warmup_ratio),  # a float below 1 is a ratio of the total steps
        lr_scheduler_type=train_cfg.lr_scheduler,
        bf16=resolve_precision(train_cfg.precision, target.type) == "bf16",  # autocast; the weights stay fp32
        activation_checkpointing=train_cfg.gradient_checkpointing,
        # save_steps > 0: every N steps; 0: each epoch; < 0: no checkpoints (short runs, demos)
        save_strategy="steps" if train_cfg.save_steps > 0 else ("epoch" if train_cfg.save_steps == 0 else "no"),
        save_steps=max(train_cfg.save_steps, 1),
        save_total_limit=train_cfg.save_total_limit,
        logging_steps=train_cfg.logging_steps,
        remove_unused_columns=False,  # the batch is {"forget": ..., "retain": ...}, not model inputs
        report_to=_report_to(os.environ.get("OBLIVIATE_REPORT_TO") or train_cfg.report_to),
        seed=seed,
        data_seed=seed,
        dataloader_num_workers=0,  # everything is tokenised up front; workers only add start-up time
        logging_nan_inf_filter=False,  # its isnan/isinf reads wait on the device twice a batch; DivergenceGuard stops on one
        dataloader_pin_memory=target.type == "cuda",
        use_cpu=target.type == "cpu",
        ddp_find_unused_parameters=False,  # every trainable weight gets a gradient each step
        optim=resolve_optim(train_cfg.optim, target.type),
    )


def _check_packing(model) -> None:
    """train.packing: refused for a model whose packed items would see each other; a warning
    where attention is not a varlen kernel (sdpa / eager attend the packed row as one N x N
    masked matrix: the padding saved in the linear layers can be lost again in attention)."""
    check_packing(model)
    attention = getattr(getattr(model, "config", None), "_attn_implementation", "sdpa")
    if not str(attention).startswith("flash_attention"):
        warnings.warn(f"train.packing with attention '{attention}': a batch's items are attended as one "
                      "masked matrix over all their tokens; it pays with attn_implementation=flash_attention_2 "
                      "(docs/speed-training.md)", stacklevel=2)


class UnlearnTrainer(Trainer):
    """A Trainer whose `compute_loss` calls `objective.loss(model, batch, ctx)`; nothing else changes.

    `reference_model`: a frozen copy of the starting model, or None with LoRA (the adapter is
    disabled instead) or for reference-free objectives.
    """

    def __init__(self, *args, objective: str, objective_config, reference_model=None, options=None,
                 packing: bool = False, shared: tuple[str, ...] = (), **kwargs):
        super().__init__(*args, **kwargs)
        self.options, self.packing, self.shared = options, packing, shared
        self.objective_name = objective
        self.objective = get_objective(objective)
        self.objective_config = objective_config
        self.reference_model = reference_model
        if reference_model is not None:
            reference_model.to(self.args.device)
        self.step_terms: dict[str, list] = {}  # drained once per optimiser step by TrainLog
        self.step_losses: list[tuple[torch.Tensor, LossContext]] = []  # checked by DivergenceGuard

    @contextlib.contextmanager
    def reference(self):
        with torch.no_grad():
            if self.reference_model is not None:
                yield self.reference_model
                return
            model = self.model  # a PeftModel: the base network is the starting model
            if not hasattr(model, "disable_adapter"):  # full fine-tuning keeps a frozen copy only when declared
                raise UserError(f"objective '{self.objective_name}' calls ctx.reference() without declaring it; "
                                "register it as Objective(loss, needs_reference=True)")
            was_training = model.training
            model.eval()
            try:
                with model.disable_adapter():
                    yield model
            finally:
                model.train(was_training)

    def _get_train_sampler(self, train_dataset=None):
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        return LengthWindowSampler(dataset.lengths, self.args.train_batch_size, seed=self.args.seed,
                                   on_epoch=dataset.set_epoch)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        ctx = LossContext(config=self.objective_config, reference=self.reference, options=self.options,
                          step=self.state.global_step, seed=self.args.seed)
        packing, shared = PACKING.set(self.packing), SHARED.set(None)
        try:
            with self.accelerator.autocast():  # also covers the frozen reference copy
                if self.shared and torch.is_grad_enabled():  # train.shared_forward: one forward for these answers
                    SHARED.set((model, shared_answer_logits(model, [inputs[s] for s in self.shared])))
                loss = self.objective.loss(model, inputs, ctx)
            if SHARED.get() and SHARED.get()[1]:
                raise RuntimeError(f"train.shared_forward: the {self.objective_name} loss did not read slots it "
                                   "declares (objectives.shared_slots); this is a bug of its registration")
        finally:
            PACKING.reset(packing)
            SHARED.reset(shared)
        # Kept on the device: reading a value here would make the host wait for the forward pass
        # before it queues the backward (DivergenceGuard checks the losses, TrainLog reads the terms)
        self.step_losses.append((loss.detach(), ctx))
        tokens = sum(enc["attention_mask"].sum() for enc in inputs.values())
        for name, value in {"loss": loss.detach(), **ctx.terms, "tokens": tokens}.items():
            self.step_terms.setdefault(name, []).append(value.detach() if torch.is_tensor(value) else value)
        return (loss, None) if return_outputs else loss

    def _diverged(self, loss, ctx) -> NonFiniteLossError:
        terms = ", ".join(f"{k}={float(v):.4g}" for k, v in ctx.terms.items())
        return self.diverged(f"the {self.objective_name} loss is {float(loss.detach())} ({terms})")

    def diverged(self, what: str, applied: bool = False) -> NonFiniteLossError:
        kept = last_good_checkpoint(Path(self.args.output_dir))
        kept_text = f"the last good checkpoint is {kept}" if kept else "no good checkpoint had been saved yet"
        return NonFiniteLossError(
            f"training stopped at step {self.state.global_step + 1}: {what}; "
            f"{'' if applied else 'the update was not applied, '}nothing after it was saved and {kept_text}; lower train.learning_rate or train.num_epochs, "
            "or add a retain term"
        )


def _wrap_lora(model, lora_cfg):
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=lora_cfg.r, lora_alpha=lora_cfg.alpha, lora_dropout=lora_cfg.dropout,
                        target_modules=list(lora_cfg.target_modules), task_type="CAUSAL_LM")
    try:
        return get_peft_model(model, config)
    except ValueError as error:
        raise UserError(f"train.lora.target_modules {lora_cfg.target_modules}: {str(error).splitlines()[0]}; "
                        "name modules the model has (e.g. q_proj, v_proj)") from None


def _frozen_copy(model):
    reference = copy.deepcopy(model).eval()
    reference.requires_grad_(False)
    return reference


def no_retain_message(name: str) -> str:
    """Why a method cannot run without retain items, and the fix that works for it."""
    if get_objective(name).retain == "always":  # its own retain term: retain_loss does not switch it off
        return (f"method '{name}' needs retain items but the request has none (its loss has a retain term of its "
                "own); add a 'retain' set to the request, or use a method without one (ga, npo, simnpo)")
    return (f"method '{name}' needs retain items but the request has none; add a 'retain' set "
            "or set objective.retain_loss=none")


def train(
    model,
    tokenizer,
    *,
    forget: list[QAItem],
    retain: list[QAItem],
    config: RunConfig,
    output_dir: Path,
    objective: str | None = None,
    resume: bool = False,
):
    """Train `model` with an objective (default: config.method); return it, LoRA merged."""
    from transformers import set_seed

    name = objective or config.method
    spec = get_objective(name)
    callers = _callers_flags(model)  # given back after training (the caller's frozen weights, use_cache)
    objective_cfg = config.objective  # method presets were applied when the config was loaded
    if needs_retain(name, objective_cfg) and not retain:
        raise UserError(no_retain_message(name))
    output_dir = Path(output_dir)
    checkpoint_dir = output_dir / CHECKPOINTS
    checkpoint = prepare_checkpoints(checkpoint_dir, resume, process_state(config.device))

    slots = batch_slots(name, objective_cfg)
    options = config.sections.get(spec.section) if spec.section else None  # e.g. config.sku for SKU's loss
    dataset = SlotDataset(
        tokenizer, slots, forget=forget, retain=retain if "retain" in slots else [],
        max_length=config.train.max_length, seed=config.seed, prompt_format=config.prompt_format,
        refusals=load_refusals(objective_cfg.refusals) if "forget_refusal" in slots and
        objective_cfg.refusal_draw != "own" else None,
        other_answers=getattr(options, "other_answers", 5), refusal_draw=objective_cfg.refusal_draw,
    )
    set_seed(config.seed)  # LoRA's initial adapter weights
    reference = None
    if config.train.lora.enabled:
        model = _wrap_lora(model, config.train.lora)
    elif needs_reference(name, objective_cfg):
        reference = _frozen_copy(model)
    if spec.prepare is not None:
        spec.prepare(model, objective_cfg, options)
    if config.train.packing:
        _check_packing(model)

    trainer = UnlearnTrainer(
        model=model,
        args=build_training_args(config.train, checkpoint_dir, config.seed, config.device),
        train_dataset=dataset,
        data_collator=SlotCollator(tokenizer.pad_token_id),
        processing_class=tokenizer,
        objective=name,
        objective_config=objective_cfg,
        reference_model=reference,
        options=options,
        packing=config.train.packing,
        shared=shared_slots(name, objective_cfg) if config.train.shared_forward else (),
    )
    resume_step = checkpoint_step(checkpoint) if checkpoint else 0
    trainer.add_callback(NoStepPastTheEnd())  # first: a step past the end must not even start
    trainer.add_callback(DivergenceGuard(trainer))  # a broken step must not reach the log either
    trainer.add_callback(TrainLog(trainer, output_dir / TRAIN_LOG, resume_step))
    with compiled_decoder_layers(model, config.train.torch_compile):  # train.torch_compile: training_compile.py
        _train_from(trainer, checkpoint)

    model = trainer.model
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    _restore_flags(model, callers)  # undo RMU's freezing and the Trainer's use_cache=False
    return model.eval()


def _train_from(trainer: UnlearnTrainer, checkpoint: Path | None) -> None:
    """trainer.train, resumed from `checkpoint` if any. Resumed from the run's last step, it trains
    nothing (NoStepPastTheEnd: the weights are that checkpoint's) and still ends the run for the
    callbacks, whose on_train_end closes what on_train_begin opened (tensorboard's writer, wandb's run).
    A state file that is not plain tensors is refused in one line: torch's own message suggests
    weights_only=False, which would run whatever the file holds."""
    try:
        trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    except FinishedAtResume:
        trainer.control = trainer.callback_handler.on_train_end(trainer.args, trainer.state, trainer.control)
    except pickle.UnpicklingError:
        if checkpoint is None:
            raise
        raise UserError(f"--resume: a state file in {checkpoint} holds objects other than tensors, which are not "
                        "loaded (unpickling them could run code); delete that folder to resume from the checkpoint "
                        "before it, or start afresh in another output_dir") from None


def _callers_flags(model) -> tuple[dict[str, bool], Any]:
    return {n: p.requires_grad for n, p in model.named_parameters()}, getattr(model.config, "use_cache", None)


def _restore_flags(model, flags: tuple[dict[str, bool], Any]) -> None:
    """The caller's requires_grad per weight (what it froze stays frozen for its next call; a weight
    the run froze is trainable again) and config.use_cache, which the Trainer turns off and
    model/config.json would keep."""
    trainable, use_cache = flags
    for name, param in model.named_parameters():
        param.requires_grad_(trainable.get(name, True))
    if use_cache is not None:
        model.config.use_cache = use_cache
