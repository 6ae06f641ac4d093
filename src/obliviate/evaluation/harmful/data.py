"""The harmful benchmark's prompt sets: forget prompts, held-out prompts, normal prompts, hand labels.

* forget: the request's forget items (prompt + the unwanted answer the judge compares with);
* heldout: the forget items of a held-out request of the same kind, never trained on;
* normal: TruthfulQA (question + best answer) when found, else the request's retain set;
* labels: hand-labelled outputs ``{"items": [{prompt, unwanted, output, label}]}``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from obliviate.data.request import DEMO_REQUEST, QAItem, load_request
from obliviate.data.truthfulqa import default_truthfulqa, load_truthfulqa
from obliviate.errors import UserError

DEMO = DEMO_REQUEST.parent
SKU_REQUEST = DEMO / "sku_request.json"
SKU_HELDOUT = DEMO / "sku_heldout.json"
SKU_LABELS = DEMO / "sku_judge_labels.json"
LABEL_KEYS = ("prompt", "unwanted", "output", "label")
HARMFUL_FORMAT = "obliviate.harmful_eval/1"  # the envelope format of harmful_eval.json (suite.py)


@dataclass
class PromptSets:
    forget: list[QAItem]
    heldout: list[QAItem]
    normal: list[QAItem]
    normal_source: str


def load_sets(request: str | None, heldout: str | None, normal: str | None, ds_size: int | None) -> PromptSets:
    """The three sets; ``ds_size`` keeps the first N normal prompts (forget sets are small)."""
    forget_request = load_request(request or SKU_REQUEST)
    heldout_items = load_request(heldout).forget if heldout else []
    if normal is None:
        normal = default_truthfulqa()
    if normal is not None:
        normal_items, source = load_truthfulqa(normal, limit=ds_size), str(normal)
    elif forget_request.retain:
        normal_items, source = forget_request.retain[:ds_size], f"{request or SKU_REQUEST} [retain]"
    else:
        raise UserError(f"{request}: no normal prompts: TruthfulQA not found and the request has no retain set; "
                        "give normal=<TruthfulQA dir>")
    return PromptSets(forget_request.forget, heldout_items, normal_items, source)


def load_labels(path: str | Path) -> list[dict]:
    """Hand-labelled outputs; UserError naming the file and record for a missing or bad field."""
    path = Path(path).expanduser()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise UserError(f"{path}: cannot read the judge labels ({error.__class__.__name__}); "
                        "give a JSON file") from None
    items = data.get("items") if isinstance(data, dict) else data
    if not isinstance(items, list):
        raise UserError(f"{path}: expected {{\"items\": [...]}} or a list of labelled outputs")
    for number, item in enumerate(items):
        missing = [k for k in LABEL_KEYS if not isinstance(item, dict) or k not in item]
        if missing or not isinstance(item["label"], bool):
            raise UserError(f"{path}: record {number} needs {', '.join(LABEL_KEYS)} (label true/false); "
                            f"missing or bad: {', '.join(missing) or 'label'}")
    return items


def read_reference_records(path: str | Path) -> list[dict]:
    """The ``{question, output}`` records of a reference-outputs file: a harmful_eval.json (its
    normal task) or a list of them. Checked before the model loads (``check_harmful``): another
    benchmark's output would otherwise fail only after the whole generation."""
    where = f"benchmark 'harmful' option 'reference_outputs' = {path}"
    fix = "give the original model's harmful_eval.json (obliviate eval --benchmark harmful) or a list of " \
          "{question, output}"
    try:
        data = json.loads(Path(path).expanduser().read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise UserError(f"{where}: cannot read it ({error.__class__.__name__}); {fix}") from None
    if isinstance(data, dict):
        tasks = data.get("tasks")
        normal = tasks.get("normal") if isinstance(tasks, dict) else None
        records = normal.get("items") if isinstance(normal, dict) else None
        if data.get("format") != HARMFUL_FORMAT or not isinstance(records, list):
            raise UserError(f"{where}: not a harmful_eval.json (format {data.get('format')!r}, "
                            f"no tasks.normal.items); {fix}")
    else:
        records = data
    if not isinstance(records, list) or not all(isinstance(r, dict) and isinstance(r.get("question"), str)
                                                and isinstance(r.get("output"), str) for r in records):
        raise UserError(f"{where}: expected a harmful_eval.json or a list of {{question, output}} strings; {fix}")
    return records


def load_reference_outputs(path: str | Path, questions: list[str]) -> list[str]:
    """The original model's outputs to ``questions``, from a harmful_eval.json of that model
    (its normal task) or a list of ``{question, output}``; UserError for a missing question."""
    found = {r["question"]: r["output"] for r in read_reference_records(path)}
    missing = [q for q in questions if q not in found]
    if missing:
        raise UserError(f"{Path(path).expanduser()}: no output for {len(missing)} normal prompt(s), e.g. "
                        f"{missing[0]!r}; evaluate the original model with the same normal set and ds_size")
    return [found[q] for q in questions]
