"""Batches for the unlearning Trainer: slots declared by the objective, a collator, a sampler.

Item i of an epoch is forget item i with every slot its objective declares (objectives/__init__.py):

    {"forget": enc, "retain": enc, "forget_refusal": enc, "forget_other_answers": [enc] * K}

enc = prompts.encode_qa(...), or data/passages.encode_passage(...) for a raw passage (a
PassageItem: every token labelled, no template; RWKU's GA / NPO on the forget corpus). "retain" pairs the item with one retain item (a seeded order that
walks the whole retain set over the epochs), "forget_refusal" with the same question answered
by a refusal (IDK-DPO, RT), "forget_other_answers" with K answers to other forget questions
(SKU's random disassociation). A new slot is one `@register_slot` builder. Every draw depends
only on (seed, epoch, i), which keeps resumed runs identical.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

import torch

from obliviate.data.passages import encode_passage, is_passage
from obliviate.data.request import QAItem
from obliviate.errors import UserError
from obliviate.prompts import encode_qa, pad_batch


def encode_item(tokenizer, question: str, answer: str, *, max_length: int,
                prompt_format: str = "auto") -> dict[str, list[int]]:
    """prompts.encode_qa, refusing a pair whose prompt leaves no room for a single answer token."""
    enc = encode_qa(tokenizer, question, answer, max_length=max_length, prompt_format=prompt_format)
    if all(label == -100 for label in enc["labels"][1:]):
        raise UserError(f"the question {question[:60]!r}... fills train.max_length={max_length} tokens "
                        "with no room for its answer; raise train.max_length")
    return enc


def encode_items(tokenizer, items: list[QAItem], *, max_length: int,
                 prompt_format: str = "auto") -> list[dict[str, list[int]]]:
    """QA items through the chat template or the tags of ``prompt_format`` (answer labelled);
    passage items as raw text (all labelled)."""
    return [encode_passage(tokenizer, item.answer, max_length=max_length) if is_passage(item)
            else encode_item(tokenizer, item.question, item.answer, max_length=max_length, prompt_format=prompt_format)
            for item in items]


#: slots that read only a forget item's own encoding, so they take raw passages too
PASSAGE_SLOTS = ("forget", "retain")


SlotBuilder = Callable[["SlotDataset", int], "dict | list[dict]"]
SLOTS: dict[str, SlotBuilder] = {}


def register_slot(name: str):
    """Decorator: `builder(dataset, i)` gives slot `name` of item i (one encoding or a list)."""
    def add(builder: SlotBuilder) -> SlotBuilder:
        SLOTS[name] = builder
        return builder
    return add


class SlotDataset(torch.utils.data.Dataset):
    """One item per forget item; each item holds the batch slots the objective declares.

    `slots` names builders in SLOTS. The draws that a slot makes (which retain item, which
    refusal, which other answers) depend only on (seed, epoch, i), so a resumed run sees the same
    batches as an uninterrupted one.
    """

    def __init__(self, tokenizer, slots: Sequence[str], *, forget: list[QAItem], retain: Sequence[QAItem] = (),
                 refusals: list[str] | None = None, max_length: int, seed: int = 0, other_answers: int = 5,
                 refusal_draw: str = "each_epoch", prompt_format: str = "auto"):
        unknown = [name for name in slots if name not in SLOTS]
        if unknown:
            raise ValueError(f"batch slots {unknown} have no builder; known: {', '.join(SLOTS)}")
        if "retain" in slots and not retain:
            raise UserError("this objective needs retain items but the request has none; add a 'retain' set")
        question_slots = [name for name in slots if name not in PASSAGE_SLOTS]
        if question_slots and any(is_passage(item) for item in forget):
            raise UserError(f"the forget set holds raw passages, but this objective's {question_slots[0]} slot needs "
                            "questions; train passages with ga, npo, graddiff, simnpo or finetune, or use QA items "
                            "(rwku.forget: probes or refusals)")
        if "forget_refusal" in slots and not refusals and refusal_draw != "own":
            raise UserError("this objective trains towards refusals but none were given; check objective.refusals")
        self.tokenizer, self.slots, self.max_length, self.seed = tokenizer, tuple(slots), max_length, seed
        self.prompt_format = prompt_format  # prompts.encode_qa's: the chat template or open-unlearning's tags
        self.forget_items, self.retain_items = list(forget), list(retain)
        self.forget = encode_items(tokenizer, self.forget_items, max_length=max_length, prompt_format=prompt_format)
        self.refusals, self.other_answers, self.refusal_draw = refusals, other_answers, refusal_draw
        self._retain_order = torch.randperm(len(retain), generator=torch.Generator().manual_seed(seed)).tolist()
        self._cache: dict[tuple, dict] = {}  # encoded lazily: a retain set can be large
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.forget)

    @property
    def lengths(self) -> list[int]:
        return [len(enc["input_ids"]) for enc in self.forget]

    def encode(self, question: str, answer: str) -> dict:
        key = (question, answer)
        if key not in self._cache:
            self._cache[key] = encode_item(self.tokenizer, question, answer, max_length=self.max_length,
                                           prompt_format=self.prompt_format)
        return self._cache[key]

    def retain_index(self, i: int) -> int:
        return self._retain_order[(i + self.epoch * len(self.forget)) % len(self._retain_order)]

    def __getitem__(self, i: int) -> dict:
        return {name: SLOTS[name](self, i) for name in self.slots}


@register_slot("forget")
def _forget(ds: SlotDataset, i: int) -> dict:
    return ds.forget[i]


@register_slot("retain")
def _retain(ds: SlotDataset, i: int) -> dict:
    """Retain items in a seeded order that moves on by one epoch's worth each epoch."""
    item = ds.retain_items[ds.retain_index(i)]
    return ds.encode(item.question, item.answer)


@register_slot("forget_refusal")
def _forget_refusal(ds: SlotDataset, i: int) -> dict:
    """The forget question answered with a refusal from the list.

    Default ("each_epoch"): drawn afresh each time the item is used, as open-unlearning's
    dataset draws one per __getitem__, seeded by (seed, epoch, i) so a resumed run is identical.
    `refusal_draw="own"`: the item's own answer, which is its refusal in an rwku forget: refusals
    request (reject.json's, as RWKU's RT trains). `refusal_draw="once"` keeps the old behaviour:
    one refusal per question, drawn once, the same target every epoch.
    """
    if ds.refusal_draw == "own":  # the item's answer is its refusal (rwku forget: refusals, RWKU's RT)
        return ds.encode(ds.forget_items[i].question, ds.forget_items[i].answer)
    if ds.refusal_draw == "once":
        if not hasattr(ds, "_refusal_of"):
            rng = random.Random(ds.seed)
            ds._refusal_of = [rng.choice(ds.refusals) for _ in ds.forget_items]
        return ds.encode(ds.forget_items[i].question, ds._refusal_of[i])
    refusal = random.Random(f"refusal:{ds.seed}:{ds.epoch}:{i}").choice(ds.refusals)
    return ds.encode(ds.forget_items[i].question, refusal)


@register_slot("forget_other_answers")
def _forget_other_answers(ds: SlotDataset, i: int) -> list[dict]:
    """K answers of other forget items to forget question i (SKU's random disassociation),
    drawn afresh each epoch without replacement, as the reference's random.sample, from the items
    that answer another question (PKU-SafeRLHF gives a prompt up to two unsafe answers: its
    sibling is no random answer); the collator stacks them into [B * K] rows, item-major."""
    items, k = ds.forget_items, ds.other_answers
    rng = random.Random(f"{ds.seed}:{ds.epoch}:{i}")
    pool = ([j for j in range(len(items)) if items[j].question != items[i].question]
            or [j for j in range(len(items)) if j != i] or [i])
    picks = rng.sample(pool, k) if len(pool) >= k else pool + [rng.choice(pool) for _ in range(k - len(pool))]
    return [ds.encode(ds.forget_items[i].question, ds.forget_items[j].answer) for j in picks]


class SlotCollator:
    """Pads each slot on its own (a short forget batch is not padded to the retain width);
    a slot whose items are lists is flattened first (K rows per item)."""

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, examples: list[dict]) -> dict[str, dict[str, torch.Tensor]]:
        batch = {}
        for key, first in examples[0].items():
            rows = [row for e in examples for row in e[key]] if isinstance(first, list) else [e[key] for e in examples]
            batch[key] = pad_batch(rows, self.pad_token_id)
        return batch


class LengthWindowSampler(torch.utils.data.Sampler):
    """Random order, with each window of `window` batches sorted by length before it is cut.

    Batches stay nearly random (drawn from a window of window * batch_size random items) but hold
    similar lengths, so padding falls from ~21% to ~9% of the tokens on TOFU (batch 8, window 4).
    The order depends only on (seed, epoch). The Trainer calls `set_epoch` at each epoch's start,
    also when it resumes, and `on_epoch` passes the epoch on (to `SlotDataset.set_epoch`).
    """

    def __init__(self, lengths: list[int], batch_size: int, *, seed: int, window: int = 4, on_epoch=None):
        self.lengths, self.batch_size, self.seed, self.window = lengths, batch_size, seed, window
        self.on_epoch = on_epoch
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if self.on_epoch is not None:
            self.on_epoch(epoch)

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(len(self.lengths), generator=generator).tolist()
        span = self.batch_size * self.window
        batches = []
        for start in range(0, len(order), span):
            chunk = sorted(order[start:start + span], key=self.lengths.__getitem__)
            batches += [chunk[k:k + self.batch_size] for k in range(0, len(chunk), self.batch_size)]
        # only the very last batch can be short: keep it last so the DataLoader's cuts line up
        tail = [batches.pop()] if batches and len(batches[-1]) < self.batch_size else []
        shuffled = [batches[k] for k in torch.randperm(len(batches), generator=generator).tolist()]
        return iter([i for batch in shuffled + tail for i in batch])
