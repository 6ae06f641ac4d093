"""Raw-text training items: a passage whose every token is a label, with no chat template.

RWKU's GA and NPO baselines train on the forget corpus as plain text, not as questions and
answers. LLaMA-Factory's ``--stage ga`` / ``--stage npo`` (RWKU's scripts/full/run_ga.sh,
run_npo.sh, run_ga_passage.sh) read it with the pre-training preprocessor
(``src/llmtuner/data/preprocess.py::preprocess_pretrain_dataset``; packing is off because the
stage is not ``pt``): each passage becomes ``text + eos``, tokenised with
``add_special_tokens=False`` (no BOS, no template) and truncated at ``cutoff_len`` = 512 tokens.
``DataCollatorForLanguageModeling(mlm=False)`` then labels every token except the pad token, and
RWKU sets ``pad_token = eos_token``, so the appended EOS carries no loss. Its settings: GA lr 6e-8,
batch 8; NPO lr 2e-6, batch 16, beta 0.2, no retain term; GA on Wikipedia passages lr 1e-6,
batch 4, 4 epochs; cosine schedule, 20 warm-up steps, 3 epochs.

:func:`encode_passage` does the same: the passage's tokens without special tokens, cut at
``max_length``, every one labelled. The EOS is left out: it would be the last input token with no
label, so it changes no logit that is scored. A passage item (:class:`PassageItem`) travels in
the request's forget set like a QA item; the collator (data/collate.py) encodes it with
:func:`encode_passage`, so ``method=ga`` / ``npo`` / ``graddiff`` / ``simnpo`` / ``finetune``
train on the text itself (``rwku: {forget: passages}`` in a request builds such a set).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from obliviate.data.request import QAItem
from obliviate.errors import UserError


@dataclass
class PassageItem(QAItem):
    """A raw passage as a forget item: ``answer`` holds the text, ``question`` stays empty."""

    question: str = ""
    answer: str = ""

    @property
    def text(self) -> str:
        return self.answer


def passage_items(texts: Iterable[str], subject: str | None = None) -> list[PassageItem]:
    """Passage items from texts; blank texts are dropped."""
    return [PassageItem(answer=text, subject=subject) for text in texts if text.strip()]


def is_passage(item) -> bool:
    return isinstance(item, PassageItem)


def encode_passage(tokenizer, text: str, *, max_length: int) -> dict[str, list[int]]:
    """Token ids of ``text`` (no special tokens, no template), cut at ``max_length``, every
    token labelled: the NLL of the whole passage, as RWKU's GA / NPO compute it."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"][:max_length]
    if len(ids) < 2:
        raise UserError(f"the passage {text[:60]!r} has {len(ids)} token(s); a passage needs at least 2 "
                        "(one to predict from, one to predict); drop it from the corpus")
    return {"input_ids": list(ids), "attention_mask": [1] * len(ids), "labels": list(ids)}
