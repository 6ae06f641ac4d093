"""The sets a request benchmark scores: the request's forget / retain / neighbours QA items, and
an optional holdout set (QA items the model never saw, the MIA non-members)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from obliviate.data.request import SETS, QAItem, UnlearningRequest, items_from_records, load_request
from obliviate.errors import UserError

#: how each request set is scored: the truth-ratio aggregate of TOFU's Forget for the forget set
#: (mean min(R, 1/R)), of TOFU's Retain for the sets that must stay (mean max(0, 1 − R))
KIND = {"forget": "forget", "retain": "retain", "neighbors": "retain"}


@dataclass
class RequestSets:
    """The evaluated items: ``sets`` maps each non-empty request set (in SETS order) to its QA items
    (first ``ds_size``), ``holdout`` the non-members or None; ``notes`` say what was left out."""

    name: str
    sets: dict[str, list[QAItem]]
    holdout: list[QAItem] | None = None
    sha256: str = ""  # of the scored items, set by set: which items these numbers are about
    answers_are_refusals: bool = False
    notes: list[str] = field(default_factory=list)


def _where(option: str) -> str:
    return f"benchmark 'request' option '{option}'"


def read_request(source: str | None) -> UnlearningRequest:
    """The request named by the ``request`` option; UserError naming the option when none is given
    or it cannot be read."""
    if source is None or not str(source).strip():
        raise UserError(f"{_where('request')}: no request given; pass --request FILE (a request file, "
                        "docs/request.md; e.g. src/obliviate/data/demo/demo_request.json)")
    try:
        return load_request(source)
    except UserError as error:
        raise UserError(f"{_where('request')}: {error}") from None


def qa_only(items: list[QAItem]) -> list[QAItem]:
    """The items that are question/answer pairs (raw passages have no question to ask)."""
    return [item for item in items if item.question]


def read_holdout(source: str, ds_size: int | None) -> list[QAItem]:
    """QA items from a data file (json / jsonl / csv / parquet, question and answer per record)."""
    from obliviate.data.loaders import load_records

    path = Path(source).expanduser()
    if not path.exists():
        raise UserError(f"{_where('holdout')}: {source}: no such file; check the path")
    try:
        items = items_from_records(load_records(str(path)), str(source))
    except UserError as error:
        raise UserError(f"{_where('holdout')}: {error}") from None
    if not items:
        raise UserError(f"{_where('holdout')}: {source} holds no items; give question/answer records the model "
                        "never saw, or leave holdout out")
    return items[:ds_size]


def request_sets(request_source: str | None, *, ds_size: int | None = None,
                 holdout: str | None = None) -> RequestSets:
    """The sets to score: every non-empty set of the request (forget always; its raw passages left
    out, with a note), first ``ds_size`` items each. A forget set of passages only is refused."""
    request = read_request(request_source)
    sets, notes = {}, []
    for name in SETS:
        items = getattr(request, name)
        qa = qa_only(items)
        if len(qa) < len(items):
            notes.append(f"{len(items) - len(qa)} raw passage(s) of the {name} set left out: a passage has no "
                         "question to answer")
        if qa:
            sets[name] = qa[:ds_size]
    if "forget" not in sets:
        raise UserError(f"{_where('request')}: {request_source}: the forget set holds raw passages only; the request "
                        "benchmark scores question/answer items, so give some (docs/request.md)")
    if "retain" not in sets and "neighbors" not in sets:
        notes.append("the request has no retain or neighbours set: nothing here shows what the model kept")
    if request.answers_are_refusals:
        notes.append("the forget answers are refusals (answers_are_refusals): forget ROUGE-L and probability measure "
                     "the refusal, so higher = more refusing, not more remembered")
    scored = {name: [asdict(item) for item in items] for name, items in sets.items()}
    digest = hashlib.sha256(json.dumps(scored, sort_keys=True, ensure_ascii=False).encode()).hexdigest()
    return RequestSets(name=request.name, sets=sets, holdout=read_holdout(holdout, ds_size) if holdout else None,
                       sha256=digest, answers_are_refusals=request.answers_are_refusals, notes=notes)
