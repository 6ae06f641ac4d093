"""The unlearning request: what to forget, what to keep, and optional extras.

Schema (docs/request.md has the full description):

    name: my-request                  # optional
    forget: <source or inline list>   # required, non-empty: QA items to forget
    retain: <source or inline list>   # optional: QA items to keep
    neighbors: <source or list>       # optional: related items that must stay (RWKU, SNAP)
    passages: <source or list>        # optional: raw text about the forget target
    subject: "Name"                   # optional default subject for items without one

A source is a path (json / jsonl / csv / parquet), a `datasets` directory, or
`{dataset: hub-name, config: ..., split: ...}`. Relative paths are relative to the request file.
An item is a record with a question and an answer; field aliases are accepted (see FIELDS).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from obliviate.data.loaders import load_records
from obliviate.data.refusals import tofu_refusals_file
from obliviate.errors import UserError
from obliviate.io import key_text, parse_json, parse_yaml, read_user_text, short_repr, written_as_path

DEMO_REQUEST = Path(__file__).parent / "demo" / "demo_request.json"

# canonical field -> accepted names in input records (first match wins)
FIELDS = {
    "question": ("question", "prompt", "instruction", "query"),
    "answer": ("answer", "response", "output", "completion"),
    "paraphrased_answer": ("paraphrased_answer",),
    "perturbed_answers": ("perturbed_answer", "perturbed_answers"),
    "paraphrased_question": ("paraphrased_question",),
    "subject": ("subject", "target", "author"),
}
SETS = ("forget", "retain", "neighbors")


@dataclass
class QAItem:
    question: str
    answer: str
    paraphrased_answer: str | None = None
    perturbed_answers: list[str] = field(default_factory=list)
    paraphrased_question: str | None = None
    subject: str | None = None


@dataclass
class UnlearningRequest:
    forget: list[QAItem]
    retain: list[QAItem] = field(default_factory=list)
    neighbors: list[QAItem] = field(default_factory=list)
    passages: list[str] = field(default_factory=list)
    name: str = "request"
    warnings: list[str] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)  # files read, for the run manifest
    refusals: str | None = None  # TOFU's idontknow.jsonl beside the data files (data/refusals.py)
    answers_are_refusals: bool = False  # the forget answers are refusals, not facts (rwku forget: refusals)

    def to_dict(self) -> dict:
        return {"name": self.name, **{s: [asdict(i) for i in getattr(self, s)] for s in SETS},
                "passages": self.passages}


def items_from_records(records: list[dict], where: str, *, passages: bool = False) -> list[QAItem]:
    """Map records to QAItems; a missing or mistyped field raises UserError naming the record
    (counted from 1, as a user counts them). `passages` (the forget set): a record with a 'text'
    and neither a question nor an answer is a raw passage (data/passages.PassageItem: trained as
    plain text), and PKU-SafeRLHF records (prompt, response_0/1, their safety flags) give one
    item per unsafe response (data/pku.py, SKU's harmful data)."""
    from obliviate.data import pku  # pku.py builds on this module

    if records and pku.is_pku_record(records[0]):
        if not passages:
            raise UserError(f"{where}: PKU-SafeRLHF records give (prompt, unsafe response) items to forget; "
                            "give them as the forget set, and question/answer records here")
        items = pku.unsafe_items(records, where)
        if not items:
            raise UserError(f"{where}: no PKU-SafeRLHF response is flagged unsafe (is_response_0/1_safe "
                            "false); nothing to forget")
        return items
    items = []
    for index, record in enumerate(records, 1):
        if not isinstance(record, dict):
            raise UserError(f"{where}: record {index} is a {type(record).__name__}, expected an object "
                            "with a question and an answer")
        if passages and _is_passage_record(record):
            items.append(_passage_item(record, f"{where}: record {index}"))
            continue
        values = {}
        for canonical, names in FIELDS.items():
            for name in names:
                if record.get(name) is not None:
                    values[canonical] = record[name]
                    break
        for required in ("question", "answer"):
            if required not in values:
                hint = ", or only a 'text' for a raw passage" if passages else ""
                raise UserError(
                    f"{where}: record {index} has no '{required}' field (accepted names: "
                    f"{', '.join(FIELDS[required])}{hint}); add it"
                )
        for key, value in values.items():
            if key == "perturbed_answers":
                if isinstance(value, str):
                    value = [value]
                if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                    raise UserError(f"{where}: record {index} field 'perturbed_answer' must be a list of strings")
                values[key] = value
            elif not isinstance(value, str):
                raise UserError(
                    f"{where}: record {index} field '{key}' is a {type(value).__name__}, expected a string"
                )
            elif key in ("question", "answer") and not value.strip():
                raise UserError(f"{where}: record {index} field '{key}' is empty; give text")
        items.append(QAItem(**values))
    return items


def request_records(request: UnlearningRequest) -> dict:
    """The request as a request file that load_request reads back to the same items: every set,
    raw passages as {"text": ...}, unset fields left out (a run given a request in memory keeps
    it beside its config.yaml, so that config reruns)."""
    from obliviate.data.passages import PassageItem  # passages.py builds on this module

    def record(item: QAItem) -> dict:
        if isinstance(item, PassageItem):
            return {"text": item.answer, **({"subject": item.subject} if item.subject else {})}
        return {key: value for key, value in asdict(item).items() if value not in (None, [])}

    records = {"name": request.name, **{name: [record(i) for i in getattr(request, name)] for name in SETS}}
    if request.passages:  # records: a list of strings would read as several file names
        records["passages"] = [{"text": text} for text in request.passages]
    if request.answers_are_refusals:
        records["answers_are_refusals"] = True
    if request.refusals:  # TOFU's idontknow.jsonl found beside the data files: the copy names it
        records["refusals"] = str(Path(request.refusals).absolute())
    return records


def _is_passage_record(record: dict) -> bool:
    names = FIELDS["question"] + FIELDS["answer"]
    return "text" in record and not any(record.get(name) is not None for name in names)


def _passage_item(record: dict, where: str) -> QAItem:
    from obliviate.data.passages import PassageItem  # passages.py builds on this module

    text, subject = record["text"], next((record[n] for n in FIELDS["subject"] if record.get(n) is not None), None)
    if not isinstance(text, str) or not text.strip():
        raise UserError(f"{where} field 'text' is {short_repr(text)}; a raw passage needs non-empty text")
    if subject is not None and not isinstance(subject, str):
        raise UserError(f"{where} field 'subject' is a {type(subject).__name__}, expected a string")
    return PassageItem(answer=text, subject=subject)


def _load_set(spec, base: Path | None, where: str, sources: list[str]) -> list[dict]:
    if spec is None:
        return []
    if isinstance(spec, list) and spec and all(isinstance(s, str) or (isinstance(s, dict) and "dataset" in s)
                                             for s in spec):  # several sources, concatenated
        return [record for index, part in enumerate(spec)
                for record in _load_set(part, base, f"{where} source {index}", sources)]
    if isinstance(spec, list):
        return spec
    if isinstance(spec, str):
        if "\x00" in spec or not spec.strip() or len(spec) > 4096:
            raise UserError(f"{where}: {short_repr(spec)} is not a usable path; give a file name")
        resolved = resolve_source(spec, base, where)
        if Path(resolved).exists():  # a file or folder read (not a hub dataset)
            sources.append(resolved)
        return load_records(resolved)
    if isinstance(spec, dict) and "dataset" in spec:
        for key in ("dataset", "config", "split"):
            if not isinstance(spec.get(key), str) and (key == "dataset" or spec.get(key) is not None):
                raise UserError(f"{where}: '{key}' must be a string, got {short_repr(spec.get(key))}")
        return load_records(spec["dataset"], config=spec.get("config"), split=spec.get("split"))
    raise UserError(f"{where}: expected a path, a list of items or {{dataset: ...}}, got {type(spec).__name__}")


def _passages(records: list, where: str) -> list[str]:
    """Passages are strings, or records whose 'text' is a non-empty string."""
    passages = []
    for index, record in enumerate(records, 1):
        text = record.get("text") if isinstance(record, dict) else record
        if not isinstance(text, str) or not text.strip():
            raise UserError(f"{where}: passage {index} has no text (got {short_repr(text)}); give a string, "
                            "or an object with a non-empty 'text'")
        passages.append(text)
    return passages


def looks_like_hub_id(source: str | Path) -> bool:
    """Whether a request source names a hub dataset: no file suffix, not a ./ / or ~ path."""
    return not Path(source).suffix and not written_as_path(source)


def resolve_source(spec: str, base: Path | None, where: str, *, what: str = "file") -> str:
    """The path a request names, or `spec` itself for a hub dataset id. An absolute (or ~) path as
    it is; a relative one under `base`, the request file's folder, and never in the working
    directory instead (None: no request file, the name is relative to the working directory). A
    name written like a hub id (no file suffix, not ./ / ~) that is not under `base` is a hub id,
    unless its first folder is there ("data/forget" beside a data/ folder is a missing path).
    A missing file or folder raises UserError naming `where` (the request file and key)."""
    try:
        path = Path(spec).expanduser()  # a YAML value gets no shell to expand ~
        if path.is_absolute() or base is None:
            if path.exists():
                return str(path)
            if looks_like_hub_id(spec):
                return spec  # a hub dataset
            raise UserError(f"{where}: {spec}: no such {what}; check the path")
        candidate = base / path
        if candidate.exists():
            return str(candidate)
        in_cwd = path.exists()
        local_folder = (base / path.parts[0]).is_dir()  # "data/forget" beside a data/ folder: a path
    except (OSError, RuntimeError, ValueError) as error:  # a name too long, an unknown ~user
        raise UserError(f"{where}: {short_repr(spec)} is not a usable path ({type(error).__name__})") from None
    if looks_like_hub_id(spec) and not in_cwd and not local_folder:
        return spec  # a hub dataset
    hint = ("; the one in the working directory is not read: paths in a request file are relative to its "
            "folder, so write the path from there or give an absolute one" if in_cwd else
            "; paths in a request file are relative to its folder: check the path, or give an absolute one")
    raise UserError(f"{where}: {spec}: no such {what} (relative to {base.absolute()}){hint}")


def load_request(source: str | Path | dict | list | None = None, *, retain: str | None = None) -> UnlearningRequest:
    """Load a request file (YAML/JSON with `forget:`), a mapping of the same, or a plain data file
    or a list of items as the forget set.

    With no source, the built-in demo request. `retain` adds a retain set to a plain data file
    (a request holds its own: giving both is refused, not silently ignored).
    """
    if source is None:
        source = DEMO_REQUEST
    if isinstance(source, list):  # items in memory: the forget set
        source = {"forget": source}
    if isinstance(source, dict):
        spec, base, where = source, Path.cwd(), "request"
    else:
        path = Path(source).expanduser()  # a YAML value gets no shell to expand ~
        hub_id = looks_like_hub_id(source)
        source = str(path) if str(source).startswith("~") else source
        if not (path.exists() or hub_id):
            raise UserError(f"{path}: no such request file; check the path")
        spec = _read_request_spec(path) if path.is_file() else None
        base, where = path.parent, str(path)
    sources: list[str] = [] if isinstance(source, dict) else [str(source)]
    if retain is not None and isinstance(spec, dict) and ("rwku" in spec or "forget" in spec):
        raise UserError(f"{where}: retain= adds a retain set to a plain data file only; this is a request "
                        "(forget:/rwku:): put the retain set in it (retain: FILE) instead")
    if isinstance(spec, dict) and "rwku" in spec:  # an RWKU target (or several): data/rwku.py builds it
        request = _rwku_request(spec, base, where)
        request.sources[:0] = sources  # the request file, then the target files it read
        return request
    if isinstance(spec, dict) and "forget" not in spec and Path(str(source)).suffix.lower() in (".yaml", ".yml"):
        found = ", ".join(key_text(k) for k in list(spec)[:8]) or "nothing"
        hint = ("; this looks like a run config: pass it as --config" if {"method", "train", "model"} & set(spec)
                else "; add forget: (a file or a list of items), see docs/request.md")
        raise UserError(f"{where}: a request needs a 'forget:' key (found: {found}){hint}")
    if not isinstance(spec, dict) or "forget" not in spec:  # a plain data file: it is the forget set
        spec = {"forget": str(source), "retain": retain, "name": Path(str(source)).stem}
        sources, base = [], None  # names given on the command line: relative to the working directory
    _check_keys(spec, where)
    sets = {}
    for name in SETS:
        records = _load_set(spec.get(name), base, f"{where} [{name}]", sources)
        sets[name] = items_from_records(records, f"{where} [{name}]", passages=name == "forget")
        for item in sets[name]:
            item.subject = item.subject or spec.get("subject")
    passages = _passages(_load_set(spec.get("passages"), base, f"{where} [passages]", sources), f"{where} [passages]")
    if not sets["forget"]:
        raise UserError(f"{where}: the forget set is empty; give at least one item under 'forget'")
    refusals = spec.get("refusals")  # the refusals IDK-DPO / RT draw from, named by the request
    request = UnlearningRequest(**sets, passages=passages, name=str(spec.get("name", "request")), sources=sources,
                                refusals=resolve_source(refusals, base, f"{where} [refusals]") if refusals else
                                tofu_refusals_file(sources),
                                answers_are_refusals=spec.get("answers_are_refusals", False))
    overlap = {(i.question, i.answer) for i in request.forget} & {(i.question, i.answer) for i in request.retain}
    if overlap:
        request.warnings.append(f"{len(overlap)} forget item(s) also appear in the retain set")
    return request


def _read_request_spec(path: Path):
    if path.suffix.lower() in (".yaml", ".yml"):
        return parse_yaml(read_user_text(path), str(path))
    if path.suffix.lower() == ".json":
        text = read_user_text(path)  # bad bytes are reported here, with the line
        try:
            return parse_json(text, str(path))
        except UserError:
            return None  # maybe several arrays, one per line: the data loader reports errors
    return None


def describe(request: UnlearningRequest) -> dict:
    """Counts and field coverage, for `obliviate data validate`."""
    summary = {"name": request.name}
    for name in SETS:
        items = getattr(request, name)
        summary[name] = {
            "items": len(items),
            "with_paraphrased_answer": sum(i.paraphrased_answer is not None for i in items),
            "with_perturbed_answers": sum(bool(i.perturbed_answers) for i in items),
            "with_subject": sum(i.subject is not None for i in items),
        }
    summary["passages"] = len(request.passages)
    summary["warnings"] = request.warnings
    return summary


REQUEST_KEYS = ("name", "description", "forget", "retain", "neighbors", "passages", "subject", "refusals",
                "answers_are_refusals")


def _check_keys(spec: dict, where: str) -> None:
    """A request file's keys are known and of their type (name, subject and refusals text,
    answers_are_refusals true or false)."""
    unknown = {str(k) for k in spec} - set(REQUEST_KEYS)
    if unknown:
        raise UserError(f"{where}: unknown key(s) {', '.join(key_text(k) for k in sorted(unknown))}; allowed: "
                        f"{', '.join(REQUEST_KEYS)}")
    if not isinstance(spec.get("answers_are_refusals", False), bool):
        raise UserError(f"{where}: 'answers_are_refusals' must be true or false, got "
                        f"{short_repr(spec['answers_are_refusals'])}")
    if spec.get("refusals") is not None and not isinstance(spec["refusals"], str):
        raise UserError(f"{where}: 'refusals' must be a file name, got {short_repr(spec['refusals'])}")
    _text_keys(spec, where)


def _text_keys(spec: dict, where: str) -> None:
    """A request's `name` and `subject`, when given, are strings."""
    for key in ("name", "subject"):
        if spec.get(key) is not None and not isinstance(spec[key], str):
            raise UserError(f"{where}: '{key}' must be a string, got {short_repr(spec[key])}")


def _rwku_request(spec: dict, base: Path | None, where: str) -> UnlearningRequest:
    """`rwku: {data: DIR or hub name, targets: 1 | "1-3" | [names], forget: probes | refusals,
    passages: positive | passage | none}` -> the target's request (data/rwku.py)."""
    from obliviate.data.rwku import target_request  # the RWKU loader builds on this module

    extra = [key for key in spec if str(key) not in ("rwku", "name", "description")]
    if extra:
        raise UserError(f"{where}: key(s) {', '.join(key_text(k) for k in extra)} beside 'rwku:' would be ignored: "
                        "rwku: builds forget, neighbors and passages itself (only name and description may "
                        "stand beside it); drop the key(s), or write the sets by hand without rwku:")
    _text_keys(spec, where)
    options = spec["rwku"]
    allowed = {"data", "targets", "forget", "passages"}
    if not isinstance(options, dict) or not {"data", "targets"} <= set(options) or set(options) - allowed:
        raise UserError(f"{where}: 'rwku' must be a mapping with data and targets (and optionally forget, "
                        f"passages), got {short_repr(options)}")
    data = str(options["data"]) if isinstance(options["data"], Path) else options["data"]
    if not isinstance(data, str) or not data.strip() or "\x00" in data:
        raise UserError(f"{where}: rwku.data must be a folder or a hub dataset name, got {short_repr(data)}")
    # a local copy named relative to the request file (never the working directory), or a hub name
    data = resolve_source(data, base, f"{where} [rwku.data]", what="directory")
    passages = options.get("passages", "positive")
    request = target_request(data, options["targets"], forget=options.get("forget", "probes"),
                             passages=None if passages in (None, "none") else passages,
                             where=f"{where} [rwku]")
    request.name = spec["name"] if spec.get("name") is not None else request.name
    return request
