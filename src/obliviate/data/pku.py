"""PKU-SafeRLHF as an unwanted-behaviour (forget) set: each unsafe response becomes one QA item.

SKU's reference code (BENCHMARKS.md section 4) keeps the responses flagged unsafe,
``is_response_{0,1}_safe == False``, and trains on ``(prompt, unsafe response)``. It drops the
dataset's 7 original columns by name, so it only loads the old schema; this loader instead
*selects* the fields it needs, so the old 7-column schema and the newer one (harm categories,
severity levels, sources, sha256 added) both load:

    prompt, response_0, response_1, is_response_0_safe, is_response_1_safe   (needed)

A CSV gives the flags as text ("True" / "false" / "1"); they are read as booleans.

    items = load_pku("PKU-Alignment/PKU-SafeRLHF")          # hub name (split train)
    items = load_pku("pku_train.jsonl", limit=500)          # a local file

A request's forget set may be such a file too (`forget: pku_train.jsonl`, or the hub dataset as
`forget: {dataset: PKU-Alignment/PKU-SafeRLHF, split: train}`): records with prompt, response_0
and response_1 and no answer field are read here (data/request.py). Records are counted from 1.
"""

from __future__ import annotations

from obliviate.data.loaders import load_records
from obliviate.data.request import FIELDS, QAItem
from obliviate.errors import UserError

HUB_NAME = "PKU-Alignment/PKU-SafeRLHF"
RESPONSES = (0, 1)
# canonical field -> accepted names (old schema first; some exports drop the "is_" prefix)
SAFE_FLAG = {i: (f"is_response_{i}_safe", f"response_{i}_safe") for i in RESPONSES}
TRUE, FALSE = ("true", "1", "yes"), ("false", "0", "no")


def _flag(record: dict, index: int, where: str, number: int) -> bool:
    """The safety flag of response ``index``: a bool, or its text in a CSV."""
    for name in SAFE_FLAG[index]:
        if name in record and record[name] is not None:
            value = record[name]
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in TRUE + FALSE:
                return text in TRUE
            raise UserError(f"{where}: record {number} field '{name}' is {value!r}, expected true or false")
    raise UserError(f"{where}: record {number} has no '{SAFE_FLAG[index][0]}' field; "
                    "a PKU-SafeRLHF record needs prompt, response_0/1 and is_response_0/1_safe")


def _text(record: dict, name: str, where: str, number: int) -> str:
    value = record.get(name)
    if not isinstance(value, str) or not value.strip():
        problem = "no" if value is None else f"an empty or non-text ({type(value).__name__})"
        raise UserError(f"{where}: record {number} has {problem} '{name}' field; "
                        "a PKU-SafeRLHF record needs prompt, response_0/1 and is_response_0/1_safe")
    return value


def is_pku_record(record) -> bool:
    """A PKU-SafeRLHF record: a prompt and two responses, and no single answer field."""
    return (isinstance(record, dict) and {"prompt", "response_0", "response_1"} <= set(record)
            and not any(record.get(name) is not None for name in FIELDS["answer"]))


def unsafe_items(records: list[dict], where: str) -> list[QAItem]:
    """One ``QAItem(prompt, response_i)`` per response flagged unsafe, in record order."""
    items = []
    for number, record in enumerate(records, 1):
        prompt = _text(record, "prompt", where, number)
        for index in RESPONSES:
            if not _flag(record, index, where, number):
                items.append(QAItem(question=prompt, answer=_text(record, f"response_{index}", where, number)))
    return items


def load_pku(source: str = HUB_NAME, *, split: str = "train", limit: int | None = None) -> list[QAItem]:
    """The unsafe (prompt, response) items of a PKU-SafeRLHF file, directory or hub name;
    ``limit`` keeps the first N items. UserError when no response is unsafe."""
    items = unsafe_items(load_records(source, split=split), source)
    if not items:
        raise UserError(f"{source}: no response is flagged unsafe (is_response_0/1_safe false); "
                        "nothing to forget")
    return items[:limit] if limit is not None else items
