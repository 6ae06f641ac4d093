"""A retain log's per-item forget truth ratios, aligned to the evaluated forget items.

Forget Quality is ``ks_2samp(R_model, R_retain).pvalue`` over the per-question forget truth
ratios of the evaluated model and of the retain model **on the same questions** (TOFU's
``get_forget_quality``; open-unlearning's ``ks_test``). A retain log holds the retain model's
values per index for the forget split it was run on: TOFU's retain99 / retain95 / retain90
logs are forget01's / forget05's / forget10's (the last only its first 300 items, legacy
``ds_size: 300``). So the log's values are taken item by item for the evaluated items:

* by question where the log records it (TOFU legacy ``generated_text[i][0]``, the prompt that
  holds the question; open-unlearning ``forget_Q_A_ROUGE.value_by_index[i].input``; obliviate
  ``tasks.forget.items[i].question``): the logged text equal to the question (whitespace
  collapsed), else the shortest one containing it; each logged item serves one question;
* by index where it does not (open-unlearning logs without ROUGE, bare TOFU task logs without
  ``generated_text``): evaluated item i (the split's i-th, ``ds_size`` keeps a prefix) takes
  the log's index i, and a note says so.

A log that does not hold every evaluated item, or holds another split's (it begins outside
the evaluated items), is refused (:class:`UserError`): Forget Quality against another split's
or a subset's values is not TOFU's Forget Quality.
"""

from __future__ import annotations

from collections.abc import Sequence

from obliviate.data.request import QAItem
from obliviate.errors import UserError
from obliviate.evaluation.reference_logs import LoggedItem, forget_items

# The retain model of each forget split (trained on the complementary retain split).
RETAIN_SPLIT = {"forget01": "retain99", "forget05": "retain95", "forget10": "retain90"}
MATCHING = ("use the retain log of the matching split (retain99 for forget01, retain95 for forget05, "
            "retain90 for forget10)")


def _collapse(text: str) -> str:
    return " ".join(text.split())


def match_questions(questions: Sequence[str], logged: Sequence[LoggedItem]) -> list[int | None]:
    """For each question, the position in ``logged`` of its item: the text equal to it
    (whitespace collapsed), else the shortest text containing it (a prompt template around
    it), first index on ties; each logged item serves one question; None when none holds it."""
    texts = [_collapse(item.text or "") for item in logged]
    used: set[int] = set()
    found: list[int | None] = []
    for question in map(_collapse, questions):
        candidates = [k for k, text in enumerate(texts) if k not in used and question and question in text]
        exact = [k for k in candidates if texts[k] == question]
        best = (exact or sorted(candidates, key=lambda k: len(texts[k])))[:1]
        used.update(best)
        found.append(best[0] if best else None)
    return found


def log_positions(logged: Sequence[LoggedItem], items: Sequence[QAItem]) -> tuple[list[int | None], str]:
    """Where each evaluated item's value lies in ``logged``, and how it was found."""
    if logged and all(item.text for item in logged):
        return match_questions([item.question for item in items], logged), "question"
    by_index = {item.index: k for k, item in enumerate(logged)}
    return [by_index.get(i) for i in range(len(items))], "index"


def _matching(split: str) -> str:
    if split in RETAIN_SPLIT:
        return f"use the retain log of the matching split: {RETAIN_SPLIT[split]} for {split}"
    return MATCHING


def _uncovered(path, logged, items, positions: list[int | None], how: str, split: str) -> str | None:
    """The one line refusing a log that lacks an evaluated item or (matched by question) whose
    first item is not an evaluated one: a split's log starts with the split's first item, which
    ``ds_size`` always keeps. None when the log covers the items."""
    missing = [i for i, k in enumerate(positions) if k is None]
    n, covered = len(items), len(items) - len(missing)
    if how == "question" and items and 0 not in positions:
        what = (f"none of the {n} evaluated {split} questions is among its {len(logged)} forget questions"
                if not covered else f"its {len(logged)} forget questions begin with ones that are not among the "
                f"{n} evaluated {split} questions (it holds {covered} of those)")
        return f"{path}: retain log for another forget split: {what}; {_matching(split)}"
    if not missing:
        return None
    if missing == list(range(covered, n)) and sorted(positions[:covered]) == list(range(covered)):
        return (f"{path}: the retain log holds only the first {covered} of the {n} evaluated {split} items "
                f"(matched by {how}{'; legacy TOFU logged 300' if covered == 300 else ''}); set ds_size to "
                f"{covered}, or give a retain log of the whole split")
    first = items[missing[0]].question
    return (f"{path}: the retain log has no value for {len(missing)} of the {n} evaluated {split} items "
            f"(matched by {how}; first: item {missing[0]}, {first[:60]!r}); {_matching(split)}")


def _foreign(path, logged, split_items: Sequence[QAItem], how: str, split: str) -> str | None:
    """A line refusing a log that holds items outside the evaluated split (a bigger split's
    retain log holds the smaller split's questions too), else None."""
    if how == "question":
        hit = {k for k in match_questions([item.question for item in split_items], logged) if k is not None}
        extra = len(logged) - len(hit)
    else:
        extra = len(logged) - len(split_items)
    if extra <= 0:
        return None
    return (f"{path}: retain log for another forget split: {extra} of its {len(logged)} forget items are not "
            f"{split}'s ({len(split_items)} items, compared by {how}); {_matching(split)}")


def aligned_truth_ratios(path, items: Sequence[QAItem], *, forget_split: str | None = None,
                         split_items: Sequence[QAItem] | None = None) -> tuple[list[float | None], list[str]]:
    """``(values, notes)``: ``values[i]`` is the retain log's forget truth ratio of ``items[i]``
    (None where the log holds the item without a value), found by question where the log
    records the questions, else by index (and a note says so).

    Raises :class:`UserError` (one line: the file, what is wrong, the fix) when the log lacks
    an evaluated item; matched by question, when its first item is not an evaluated one (a
    split's log starts with the split's first item, which ``ds_size`` keeps: a bigger split's
    log holds a smaller split's questions after its own); given ``split_items`` (the whole
    evaluated forget split), when it holds items that are not the split's."""
    split = forget_split or "forget"
    logged = forget_items(path)
    positions, how = log_positions(logged, items)
    line = _uncovered(path, logged, items, positions, how, split)
    if line is None and split_items is not None:
        line = _foreign(path, logged, split_items, how, split)
    if line is not None:
        raise UserError(line)
    notes = []
    if how == "index":
        notes.append(f"the retain log {path} records no questions: its forget truth ratios are matched to the "
                     f"evaluated items by index (check it is the retain model of {split})")
    values = [logged[k].truth_ratio for k in positions]
    if any(value is None for value in values):
        notes.append(f"the retain log has no truth ratio for {sum(v is None for v in values)} of the evaluated "
                     "items: Forget Quality leaves them out of the retain model's sample")
    return values, notes
