"""Shared maths of the unlearning losses: answer log-probabilities, NLL, KL to the reference, DPO.

An `enc` is one padded sub-batch from the collator: input_ids, attention_mask, labels [B, T], with
labels -100 outside the answer. Logits are computed only where a label follows (the model's
`logits_to_keep` with a boolean mask), so the vocabulary projection and the log-softmax skip
the prompt and the padding, and only those rows are upcast to fp32.
"""

from __future__ import annotations

import contextlib
import inspect
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.nn.functional as F

from obliviate.config import ObjectiveConfig
from obliviate.errors import UserError


@dataclass
class LossContext:
    """What an objective may use besides the model and the batch.

    `reference()` is a context manager giving the frozen starting model under `torch.no_grad`
    (the LoRA base with the adapter disabled, or a frozen copy). `log(name, value)` records a
    term for train_log.jsonl. `options` is the config section named by `Objective.section`.
    """

    config: ObjectiveConfig
    reference: Callable[[], contextlib.AbstractContextManager] | None = None
    options: Any = None  # the method's own config section, for objectives that declare one (SKU, SNAP)
    step: int = 0
    seed: int = 0
    terms: dict[str, torch.Tensor] = field(default_factory=dict)

    def log(self, name: str, value: torch.Tensor) -> None:
        self.terms[name] = value.detach()


def unwrap(model):
    """The transformers model under DDP and PEFT wrappers."""
    model = getattr(model, "module", model)  # DistributedDataParallel
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def find_decoder_layers(model) -> torch.nn.ModuleList | None:
    """The model's list of decoder layers (the ModuleList as long as the text config's
    num_hidden_layers: a multimodal model's language layers), or None."""
    base = unwrap(model)
    config = base.config.get_text_config() if hasattr(base.config, "get_text_config") else base.config
    count = getattr(config, "num_hidden_layers", None)
    if count is None:
        return None
    return next((m for m in base.modules() if isinstance(m, torch.nn.ModuleList) and len(m) == count), None)


def supports_logits_to_keep(model) -> bool:
    """Whether forward takes `logits_to_keep` (every transformers causal LM of v5 does, masks included)."""
    base = unwrap(model)
    return type(base).__module__.startswith("transformers.") and (
        "logits_to_keep" in inspect.signature(base.forward).parameters
    )


#: train.packing (set by the Trainer around each loss): answer_logits runs the batch as one row.
PACKING: ContextVar[bool] = ContextVar("obliviate_packing", default=False)
#: Model types whose items stay apart in a packed row: transformers builds their attention mask
#: and their position encoding from position_ids (tests/test_packing.py checks each). Others
#: (OPT, BLOOM, MPT: positions or masks from attention_mask; Mamba: state carried over) would let
#: an item see the ones before it.
PACKABLE_MODEL_TYPES = frozenset({"llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", "phi",
                                  "phi3", "gpt2", "gpt_neox", "olmo2", "smollm3"})


def check_packing(model) -> None:
    """UserError unless ``model``'s type is one whose packed items stay apart (PACKABLE_MODEL_TYPES)."""
    kind = getattr(unwrap(model).config, "model_type", None)
    if kind not in PACKABLE_MODEL_TYPES or not supports_logits_to_keep(model):
        raise UserError(f"train.packing: model type '{kind}' is not one whose packed items are kept apart "
                        f"({', '.join(sorted(PACKABLE_MODEL_TYPES))}); set train.packing=false")


#: train.shared_forward (set by the Trainer around each loss): (the trained model, {id(enc) ->
#: answer_logits(model, enc)}), computed for several slots in one forward pass (shared_answer_logits)
#: and taken once each by answer_logits for that model.
SHARED: ContextVar[tuple | None] = ContextVar("obliviate_shared_logits", default=None)


def answer_logits(model, enc: dict, *, all_tokens: bool = False):
    """Logits at the positions that predict a label token, flattened over the batch.

    Returns (logits [N, V], targets [N], rows [N]): row b of each of the N predicted tokens.
    `all_tokens=True` predicts every non-pad token after the first instead of only the answer.
    Under PACKING the B padded rows run as one row of their tokens (positions restart at each
    item, so attention stays within it): the same N logits in the same order, no pad computed.
    Under SHARED the trained model's logits with gradients (never the reference's, which runs
    under no_grad, even where it is the same PEFT model) come from the step's shared forward pass.
    """
    shared = SHARED.get()
    if shared and shared[0] is model and not all_tokens and torch.is_grad_enabled() and id(enc) in shared[1]:
        return shared[1].pop(id(enc))
    labels = enc["labels"]
    if all_tokens:
        labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
    keep = torch.zeros_like(labels, dtype=torch.bool)
    keep[:, :-1] = labels[:, 1:] != -100  # logits at t predict token t + 1
    inputs = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"], "use_cache": False}
    if not supports_logits_to_keep(model):
        logits = model(**inputs).logits[keep]
    elif PACKING.get() and _packable(enc, keep):
        logits = model(**_packed(enc), logits_to_keep=keep[enc["attention_mask"].bool()][None]).logits
    else:
        logits = model(**inputs, logits_to_keep=keep).logits
    rows = keep.nonzero()[:, 0]
    return logits, labels[:, 1:][keep[:, :-1]], rows


def shared_answer_logits(model, encs: list[dict]) -> dict[int, tuple]:
    """answer_logits of several sub-batches from one forward pass: each is right-padded to the
    longest and all are stacked into one batch (or, under PACKING, one row), so the host queues
    the model's operators once instead of once per sub-batch. Returns id(enc) -> (logits,
    targets, rows) as answer_logits(model, enc) gives them, to float rounding. The added padding
    is token 0, masked out and never kept, so which token it is changes nothing."""
    width = max(enc["input_ids"].shape[1] for enc in encs)
    pad = lambda t, value: F.pad(t, (0, width - t.shape[1]), value=value)
    joint = {"input_ids": torch.cat([pad(e["input_ids"], 0) for e in encs]),
             "attention_mask": torch.cat([pad(e["attention_mask"], 0) for e in encs]),
             "labels": torch.cat([pad(e["labels"], -100) for e in encs])}
    logits, targets, rows = answer_logits(model, joint)
    counts = torch.stack([(e["labels"][:, 1:] != -100).sum() for e in encs]).tolist()  # one read
    offsets = [sum(e["input_ids"].shape[0] for e in encs[:i]) for i in range(len(encs))]
    parts = zip(logits.split(counts), targets.split(counts), rows.split(counts), offsets)
    return {id(enc): (lg, tg, r - offset) for enc, (lg, tg, r, offset) in zip(encs, parts)}


def _packable(enc: dict, keep: torch.Tensor) -> bool:
    """Every kept position is a real token, and each row's tokens are one right-padded run
    (so their positions in the padded batch are 0, 1, ... as in the packed row)."""
    real = enc["attention_mask"].bool()
    return bool((real[:, :-1] >= real[:, 1:]).all() & ~(keep & ~real).any())  # one read from the device


def _packed(enc: dict) -> dict:
    """The batch's real tokens as one row [1, sum of lengths], each item's positions from 0."""
    real = enc["attention_mask"].bool()
    return {"input_ids": enc["input_ids"][real][None], "position_ids": (real.cumsum(1) - 1)[real][None],
            "use_cache": False}  # no mask and no cache: transformers masks each item from position_ids


def answer_logprobs(model, enc: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(log p of each answer token [N], its batch row [N]), in fp32."""
    logits, targets, rows = answer_logits(model, enc)
    return -F.cross_entropy(logits.float(), targets, reduction="none"), rows


def nll(logp: torch.Tensor) -> torch.Tensor:
    """Mean NLL per answer token over the whole batch (what HF's causal-LM loss computes)."""
    return -logp.mean()


def sequence_logprob(logp: torch.Tensor, rows: torch.Tensor, batch_size: int) -> torch.Tensor:
    """log pi(y | x) per sequence [B]: the sum over its answer tokens."""
    return torch.zeros(batch_size, dtype=logp.dtype, device=logp.device).index_add(0, rows, logp)


def answer_lengths(rows: torch.Tensor, batch_size: int) -> torch.Tensor:
    """|y| per sequence [B]: its number of answer tokens (at least 1)."""
    return torch.bincount(rows, minlength=batch_size).clamp(min=1)


def answer_nll(model, enc: dict) -> torch.Tensor:
    return nll(answer_logprobs(model, enc)[0])


def reference_sequence_logprob(ctx: LossContext, enc: dict) -> torch.Tensor:
    """log pi_ref(y | x) per sequence, computed without gradients."""
    with ctx.reference() as ref:
        logp, rows = answer_logprobs(ref, enc)
    return sequence_logprob(logp, rows, enc["input_ids"].shape[0])


def kl_to_reference(model, enc: dict, ctx: LossContext, *, all_tokens: bool = False) -> torch.Tensor:
    """KL(pi_ref || pi_theta) per predicted token, averaged over the answer tokens (or all tokens).

    sum_v p_ref(v) (log p_ref(v) - log p_theta(v)); 0 when the model equals the reference.
    """
    logits, _, _ = answer_logits(model, enc, all_tokens=all_tokens)
    with ctx.reference() as ref:
        ref_logits, _, _ = answer_logits(ref, enc, all_tokens=all_tokens)
    log_q = F.log_softmax(logits.float(), dim=-1)
    log_p = F.log_softmax(ref_logits.float(), dim=-1)
    return F.kl_div(log_q, log_p, log_target=True, reduction="none").sum(-1).mean()


def kl_all_positions(model, enc: dict, ctx: LossContext) -> torch.Tensor:
    """open-unlearning's KL (trainer/utils.py::compute_kl_divergence): over every position of the
    padded batch, prompt and padding included, divided by the number of positions (batchmean
    over the flattened [B * T, V] rows):

        (1 / (B T)) sum_{b,t} sum_v p_ref(v) (log p_ref(v) - log p_theta(v))
    """
    inputs = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"], "use_cache": False}
    log_q = F.log_softmax(model(**inputs).logits.float(), dim=-1).flatten(0, 1)
    with ctx.reference() as ref:
        log_p = F.log_softmax(ref(**inputs).logits.float(), dim=-1).flatten(0, 1)
    return F.kl_div(log_q, log_p, log_target=True, reduction="batchmean")


#: objective.kl_positions (proposed knob): "answer" (ours: the mean over answer tokens) or "all"
#: (open-unlearning's reduction over every position of the padded batch).
KL_POSITIONS = ("answer", "all")


def retain_kl(model, enc: dict, ctx: LossContext) -> torch.Tensor:
    """KL(pi_ref || pi_theta) on a retain batch, reduced as objective.kl_positions says."""
    positions = getattr(ctx.config, "kl_positions", "answer")
    if positions not in KL_POSITIONS:
        raise ValueError(f"objective.kl_positions must be one of {KL_POSITIONS}, got {positions!r}")
    return kl_all_positions(model, enc, ctx) if positions == "all" else kl_to_reference(model, enc, ctx)


def dpo_loss(chosen_log_ratio: torch.Tensor, rejected_log_ratio: torch.Tensor, beta: float) -> torch.Tensor:
    """-(2/beta) E[log sigma(beta (chosen_log_ratio - rejected_log_ratio))], log_ratio = log pi - log pi_ref.

    Scaled by 2/beta as in TOFU's and open-unlearning's DPO (and NPO), so at the start
    (pi = pi_ref) the loss is (2/beta) log 2.
    """
    return -(2.0 / beta) * F.logsigmoid(beta * (chosen_log_ratio - rejected_log_ratio)).mean()


def retain_term(model, batch: dict, ctx: LossContext) -> torch.Tensor | float:
    """The retain regulariser added by forget objectives: retain_weight x (NLL_r | KL_r | nothing)."""
    kind, weight = ctx.config.retain_loss, ctx.config.retain_weight
    if kind == "none" or weight == 0:
        return 0.0
    if kind == "nll":
        value = answer_nll(model, batch["retain"])
    else:
        value = retain_kl(model, batch["retain"], ctx)
    ctx.log(f"retain_{kind}", value)
    return weight * value
