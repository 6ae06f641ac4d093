"""ULMR's retain mix (beyond the paper, `ulmr.retain_mix=true`): retain QA items in the SFT set.

The paper's ULMR fine-tunes on negative responses only and relies on averaging with the original
weights to keep utility; on TOFU that still turns many retain answers into refusals (the SFT
teaches "refuse" for every question about a fictitious author). Mixing the retain items, each
with its true answer, into the SFT set teaches the model which questions it should still answer.
The rows go into ulmr_dataset.jsonl beside the negative responses, marked ``kind: "retain"``.
"""

from __future__ import annotations

from obliviate.data.request import QAItem
from obliviate.errors import UserError

__all__ = ["retain_rows"]


def retain_rows(retain: list[QAItem], enabled: bool) -> list[dict]:
    """One SFT row (question -> its true answer) per retain item when `enabled`, else none."""
    if not enabled:
        return []
    if not retain:
        raise UserError("ulmr.retain_mix=true needs retain items: add a `retain:` set to the request "
                        "or set ulmr.retain_mix=false")
    return [{"item": index, "kind": "retain", "instruction": item.question, "question": item.question,
             "answer": item.answer, "subject": item.subject, "response": item.answer, "response_source": "retain"}
            for index, item in enumerate(retain)]
