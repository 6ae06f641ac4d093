"""RWKU's processed layout: its targets, their probe / MIA / utility sets, and requests built from them.

RWKU (Jin et al. 2024) keeps one folder per unlearning target, ``Target/<id>_<Name>/``, with
JSON files named as in :data:`FILES` (../shared/docs/BENCHMARKS.md section 3 lists the fields).
``data`` is that processed directory (it holds ``Target/``, optionally ``targets.json`` and
``generation/``) or the hub dataset ``jinzhuoran/RWKU``, whose configs (:data:`HUB_CONFIGS`)
hold every target's records together, each with a ``subject`` field.

Settings: *single-target* = one target id; *batch-target* = several (``"1-10"``), whose sets are
concatenated, as RWKU's ``Batch/<1-N>/`` folders presumably are.

The request of a target (:func:`target_request`) makes every method able to take an RWKU
target: ``passages`` = the forget corpus, ``forget`` = the FB + QA probes, the target
questions with refusals of ``reject.json``, or the forget corpus itself as raw-text items
(``forget: passages``, what RWKU's GA / NPO train on: data/passages.py), ``neighbors`` = the
neighbor FB + QA probes.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from obliviate.data.loaders import load_records
from obliviate.data.passages import passage_items
from obliviate.data.request import QAItem, UnlearningRequest
from obliviate.errors import UserError
from obliviate.io import written_as_path

HUB_NAME = "jinzhuoran/RWKU"

#: set name -> file of a target folder.
FILES = {
    "intro": "intro.json",
    "forget_fb": "forget_level1.json", "forget_qa": "forget_level2.json", "forget_aa": "forget_level3.json",
    "neighbor_fb": "neighbor_level1.json", "neighbor_qa": "neighbor_level2.json",
    "forget_mia": "forget_mia.json", "retain_mia": "retain_mia.json",
    "mmlu": "retain_mmlu.json", "bbh": "retain_bbh.json", "truthfulqa": "truthful.json",
    "triviaqa": "triviaqa.json", "fluency": "fluency.json",
    "passage": "passage.json", "positive": "positive.json", "reject": "reject.json",
}

#: set name -> (hub config, split) of jinzhuoran/RWKU, as process/data_process.py of the RWKU repo
#: loads them (it filters forget_target by `target`, every other config by `subject`). Only the
#: code after the download is tested (tests/test_rwku.py, a local directory in the hub layout).
HUB_CONFIGS = {
    "intro": ("forget_target", "train"),
    "forget_fb": ("forget_level1", "test"), "forget_qa": ("forget_level2", "test"),
    "forget_aa": ("forget_level3", "test"),
    "neighbor_fb": ("neighbor_level1", "test"), "neighbor_qa": ("neighbor_level2", "test"),
    "forget_mia": ("mia_forget", "test"), "retain_mia": ("mia_retain", "test"),
    "mmlu": ("utility_general", "test"), "bbh": ("utility_reason", "test"),
    "truthfulqa": ("utility_truthfulness", "test"), "triviaqa": ("utility_factuality", "test"),
    "fluency": ("utility_fluency", "test"),
    "passage": ("train_original_passage", "train"), "positive": ("train_positive_llama3", "train"),
    "reject": ("train_refusal_llama3", "train"),
}


@dataclass(frozen=True)
class RwkuTarget:
    id: int  # 1-based, RWKU's order (scripts/full/run_*.sh, generation/all_intro.json)
    name: str  # the subject, e.g. "Stephen King"
    folder: str  # "1_Stephen_King"
    intro: str = ""  # "Please forget X. <one-line bio>"


def is_local(data: str | Path) -> bool:
    """Whether ``data`` names a local directory (else a hub dataset)."""
    text = str(data)
    return Path(text).expanduser().is_dir() or written_as_path(text)


def _target_root(data: str | Path) -> Path:
    root = Path(data).expanduser()
    if not root.is_dir():
        raise UserError(f"{root}: no such RWKU directory; give the processed layout (it holds Target/) or {HUB_NAME}")
    return root / "Target" if (root / "Target").is_dir() else root


def _read_json(path: Path) -> list[dict]:
    try:
        records = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise UserError(f"{path}:{error.lineno}: invalid JSON ({error.msg}); fix the file") from None
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        raise UserError(f"{path}: expected a JSON array of objects")
    return records


@functools.lru_cache(maxsize=8)
def _local_targets(root: str) -> tuple[RwkuTarget, ...]:
    base = Path(root)
    listing = base.parent / "targets.json" if base.name == "Target" else base / "targets.json"
    if listing.is_file():
        return tuple(RwkuTarget(int(r["id"]), r["target"], r["folder"], r.get("intro", ""))
                     for r in _read_json(listing))
    targets = []
    for folder in base.iterdir():
        match = re.fullmatch(r"(\d+)_(.+)", folder.name)
        if folder.is_dir() and match:
            intro = _read_json(folder / "intro.json")[0] if (folder / "intro.json").is_file() else {}
            name = intro.get("target", match.group(2).replace("_", " "))
            targets.append(RwkuTarget(int(match.group(1)), name, folder.name, intro.get("intro", "")))
    return tuple(sorted(targets, key=lambda t: t.id))


@functools.lru_cache(maxsize=32)
def _hub_records(config: str, split: str) -> tuple[dict, ...]:
    return tuple(load_records(HUB_NAME, config=config, split=split))


def list_targets(data: str | Path) -> list[RwkuTarget]:
    """Every target of ``data`` in RWKU's order; UserError when there is none."""
    if is_local(data):
        root = _target_root(data)
        targets = list(_local_targets(str(root)))
        where = str(root)
    else:
        records = _hub_records(*HUB_CONFIGS["intro"])
        targets = [RwkuTarget(i + 1, r["target"], f"{i + 1}_{r['target'].replace(' ', '_')}", r.get("intro", ""))
                   for i, r in enumerate(records)]
        where = HUB_NAME
    if not targets:
        raise UserError(f"{where}: no RWKU target folders (<id>_<Name>/) found; check the data directory")
    return targets


def resolve_targets(data: str | Path, spec: str | int | Sequence[str | int]) -> list[RwkuTarget]:
    """The targets named by ``spec``: ids, id ranges ``"1-10"``, names or folder names, as a
    list or one comma-separated string (``"1,3,Stephen King"``); order kept, repeats dropped."""
    known = list_targets(data)
    by_id = {t.id: t for t in known}
    by_name = {key.lower(): t for t in known for key in (t.name, t.folder)}
    parts = [p.strip() for p in spec.split(",")] if isinstance(spec, str) else [str(p).strip() for p in
                                                                                (spec if isinstance(spec, Sequence) else [spec])]
    chosen: dict[int, RwkuTarget] = {}
    for part in filter(None, parts):
        span = re.fullmatch(r"(\d+)\s*-\s*(\d+)", part)
        if span and int(span.group(1)) > int(span.group(2)):
            raise UserError(f"RWKU target range '{part}' is reversed; write it low-high: "
                            f"{int(span.group(2))}-{int(span.group(1))}")
        ids = range(int(span.group(1)), int(span.group(2)) + 1) if span else [int(part)] if part.isdigit() else None
        if ids is None:
            if part.lower() not in by_name:
                raise UserError(f"RWKU target '{part}' is not known; give an id 1-{len(known)}, a range or a name")
            chosen.setdefault(by_name[part.lower()].id, by_name[part.lower()])
            continue
        for i in ids:
            if i not in by_id:
                raise UserError(f"RWKU target id {i} is not in {data}; ids run 1-{max(by_id)}")
            chosen.setdefault(i, by_id[i])
    if not chosen:
        raise UserError(f"no RWKU target given in {spec!r}; give ids (1,2,3), a range (1-10) or names")
    return list(chosen.values())


def load_set(data: str | Path, target: RwkuTarget, name: str, *, required: bool = True) -> list[dict] | None:
    """The records of set ``name`` (a key of :data:`FILES`) for ``target``; ``None`` when the
    set is absent and not ``required`` (the local copy has utility sets for targets 1-10 only)."""
    if name not in FILES:
        raise UserError(f"RWKU set '{name}' is not known; use one of {', '.join(FILES)}")
    if is_local(data):
        path = _target_root(data) / target.folder / FILES[name]
        if not path.is_file():
            if required:
                raise UserError(f"{path}: no such file; RWKU target {target.id} ({target.name}) lacks set '{name}'")
            return None
        return _read_json(path)
    records = [r for r in _hub_records(*HUB_CONFIGS[name]) if r.get("subject", r.get("target")) == target.name]
    if not records and required:
        raise UserError(f"{HUB_NAME} config '{HUB_CONFIGS[name][0]}' has no records for subject '{target.name}'")
    return records or (None if not required else records)


def probe_items(records: Sequence[dict], where: str) -> list[QAItem]:
    """RWKU probes (``query``, ``answer``, ``subject``) as QA items; a probe without a query or
    answer is a UserError naming it."""
    items = []
    for index, record in enumerate(records):
        if not isinstance(record.get("query"), str) or not isinstance(record.get("answer"), str):
            raise UserError(f"{where}: record {index} needs string fields 'query' and 'answer'")
        items.append(QAItem(question=record["query"], answer=record["answer"], subject=record.get("subject")))
    return items


def refusal_items(data: str | Path, target: RwkuTarget) -> list[QAItem]:
    """The target questions of ``reject.json`` with their refusals (``instruction`` ->
    ``output``), for rejection-style methods (RT, IDK-DPO, ULMR, SNAP)."""
    records = load_set(data, target, "reject")
    return [QAItem(question=r["instruction"] + (("\n" + r["input"]) if r.get("input") else ""),
                   answer=r["output"], subject=r.get("subject", target.name)) for r in records]


def corpus_passages(data: str | Path, target: RwkuTarget, corpus: str = "positive") -> list[str]:
    """The shipped forget corpus of ``target``: ``"positive"`` = the synthetic biographies the
    original model wrote (C^s_f, used by RWKU's GA / NPO), ``"passage"`` = Wikipedia passages."""
    if corpus not in ("positive", "passage"):
        raise UserError(f"RWKU corpus '{corpus}' is not shipped; use positive or passage (or generate one)")
    return [r["text"] for r in load_set(data, target, corpus) if str(r.get("text", "")).strip()]


FORGET_KINDS = ("probes", "refusals", "passages")


def _ranges(ids: Sequence[int]) -> str:
    """``[1, 2, 3, 7]`` -> ``"1-3, 7"``."""
    spans: list[list[int]] = []
    for i in sorted(ids):
        if spans and i == spans[-1][1] + 1:
            spans[-1][1] = i
        else:
            spans.append([i, i])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in spans)


def _check_shipped(data: str | Path, chosen: Sequence[RwkuTarget], name: str, where: str, *, forget: str) -> None:
    """A one-line UserError (which targets ship set ``name``, and what to change) when a chosen
    target of a local copy lacks it; RWKU ships positive / passage / reject for targets 1-10 only."""
    if not is_local(data):
        return  # the hub: load_set reports a missing subject
    root = _target_root(data)
    missing = [t for t in chosen if not (root / t.folder / FILES[name]).is_file()]
    if not missing:
        return
    having = [t.id for t in list_targets(data) if (root / t.folder / FILES[name]).is_file()]
    shipped = f"shipped for targets {_ranges(having)}" if having else "shipped for no target here"
    first = missing[0]
    head = (f"{where}: RWKU target {first.id} ({first.name})" +
            (f" and {len(missing) - 1} more lack" if len(missing) > 1 else " lacks") +
            f" {FILES[name]} ({root / first.folder / FILES[name]}: no such file)")
    if name == "reject":
        fix = f"rwku.forget: refusals needs it, {shipped}: choose among those targets, or set rwku.forget: probes"
    elif forget == "passages":
        fix = (f"rwku.forget: passages trains on the corpus rwku.passages: {name}, {shipped}: choose among "
               "those targets, or give rwku.passages a list of texts (a generated corpus)")
    else:
        default = " (the default)" if name == "positive" else ""
        fix = (f"rwku.passages: {name}{default} is the forget corpus, {shipped}: set rwku.passages: none "
               "(or a list of texts), or choose among those targets")
    raise UserError(f"{head}; {fix}")


def target_request(data: str | Path, targets: str | int | Sequence[str | int], *, forget: str = "probes",
                   passages: str | Sequence[str] | None = "positive", where: str | None = None) -> UnlearningRequest:
    """An :class:`UnlearningRequest` for one target (single-target) or several (batch-target).

    ``forget="probes"``: the FB + QA probes as items (what RWKU evaluates; training on them is
    not RWKU's protocol, so the request warns); ``"refusals"``: the target questions with
    refusals of ``reject.json`` (RWKU's RT data); ``"passages"``: the forget corpus as raw-text
    items, every token a label and no chat template (RWKU's GA / NPO; data/passages.py).
    ``neighbors`` = neighbor FB + QA probes. ``passages`` = the shipped corpus by name
    (``"positive"``, ``"passage"``), a list of texts (e.g. a generated corpus,
    :mod:`obliviate.prepare.corpus`) or None. ``where``: the request file, for error messages.
    """
    if forget not in FORGET_KINDS:
        raise UserError(f"RWKU request forget='{forget}' is not known; use {', '.join(FORGET_KINDS)}")
    if forget == "passages" and passages is None:
        raise UserError("RWKU request forget='passages' needs a corpus; set passages to positive or passage")
    try:
        chosen = resolve_targets(data, targets)
    except UserError as error:
        raise UserError(f"{where}: {error}" if where else str(error)) from None  # the request file and key
    if forget == "refusals":
        _check_shipped(data, chosen, "reject", where or str(data), forget=forget)
    if isinstance(passages, str) and passages in ("positive", "passage"):
        _check_shipped(data, chosen, passages, where or str(data), forget=forget)
    request = UnlearningRequest(forget=[], name="rwku-" + "+".join(str(t.id) for t in chosen),
                                answers_are_refusals=forget == "refusals")
    for target in chosen:
        where = f"{data} [{target.folder}]"
        if forget == "probes":
            for name in ("forget_fb", "forget_qa"):
                request.forget += probe_items(load_set(data, target, name), f"{where} {FILES[name]}")
        elif forget == "refusals":
            request.forget += refusal_items(data, target)
        for name in ("neighbor_fb", "neighbor_qa"):
            request.neighbors += probe_items(load_set(data, target, name), f"{where} {FILES[name]}")
        if isinstance(passages, str):
            texts = corpus_passages(data, target, passages)
            request.passages += texts
            if forget == "passages":
                request.forget += passage_items(texts, subject=target.name)
    if passages is not None and not isinstance(passages, str):
        request.passages = [str(p) for p in passages]
        if forget == "passages":
            request.forget = passage_items(request.passages, subject=chosen[0].name if len(chosen) == 1 else None)
    if forget == "passages" and not request.forget:
        raise UserError(f"RWKU request forget='passages': the corpus of {request.name} holds no text")
    if forget == "probes":
        request.warnings.append("forget items are RWKU's evaluation probes: RWKU's protocol trains on the "
                                "passages (forget corpus) only")
    request.sources += _files_read(data, chosen, forget, passages) or [str(data)]
    return request


def _files_read(data: str | Path, chosen: Sequence[RwkuTarget], forget: str, passages) -> list[str]:
    """The files of a local copy that the request was built from (for the manifest's input hashes
    and --resume's check); none for the hub."""
    if not is_local(data):
        return []
    names = {"probes": ["forget_fb", "forget_qa"], "refusals": ["reject"], "passages": []}[forget]
    names += ["neighbor_fb", "neighbor_qa"] + ([passages] if isinstance(passages, str) else [])
    root = _target_root(data)
    return [str(root / t.folder / FILES[name]) for t in chosen for name in names
            if (root / t.folder / FILES[name]).is_file()]
