"""The bench's row YAML: the protocol, the teaching recipe and one row per method.

    protocol:            # what every stage shares (paths relative to this file)
      model: smollm2-135m-instruct
      data: ../../../shared/data/tofu
      forget_split: forget01
      retain_split: retain_perturbed   # the retain facts the target learns and the methods keep
      ds_size: 40                      # evaluation: first N items of each split
      max_new_tokens: 64
    teach: {train.learning_rate: 1.0e-4, train.num_epochs: 4}   # target and oracle fine-tunes
    common: {train.batch_size: 8}                               # under every row's own overrides
    rows:
      - name: GA
        method: ga
        overrides: {train.learning_rate: 1.0e-5}
        note: why these values
        requires: [ulmr.retain_mix]    # config keys the row needs; absent -> the row is skipped

Override values are what `load_config` takes for dotted keys; "{data}" in a text value is the
protocol's data directory. A bad key fails at load time with the file and the row named.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from obliviate.config import RunConfig, canonical_key, load_config
from obliviate.errors import UserError
from obliviate.io import key_text, parse_yaml, read_user_text, short_repr, written_as_path

TOP_KEYS = ("description", "protocol", "teach", "common", "rows")
ROW_KEYS = ("name", "method", "overrides", "note", "requires")
TYPES = {"ds_size": ((int, type(None)), "an integer or null"), "max_new_tokens": (int, "an integer"),
         "eval_batch_size": (int, "an integer")}
#: the least value of each integer key (ds_size 0 or null: every item)
LEAST = {"ds_size": 0, "max_new_tokens": 1, "eval_batch_size": 1}


@dataclass
class Protocol:
    model: str = "smollm2-135m-instruct"
    data: str = "../shared/data/tofu"
    forget_split: str = "forget01"
    retain_split: str = "retain_perturbed"
    ds_size: int | None = 40
    max_new_tokens: int = 64
    eval_batch_size: int = 32
    target: str | None = None  # an already trained target model (skips the target stage)
    oracle: str | None = None  # an already trained retain-only model (skips the oracle stage)


@dataclass
class Row:
    name: str
    method: str
    overrides: dict[str, Any] = field(default_factory=dict)
    note: str = ""
    requires: list[str] = field(default_factory=list)

    @property
    def slug(self) -> str:
        return re.sub(r"[^a-z0-9]+", "_", self.name.lower()).strip("_") or "row"


@dataclass
class BenchSpec:
    protocol: Protocol
    teach: dict[str, Any]
    common: dict[str, Any]
    rows: list[Row]
    source: str  # the file (or "packaged default")
    description: str = ""
    # protocol key -> (who gave it, the value as given, a note) for errors: ("FILE: protocol.data:",
    # "../tofu", " (relative to DIR)") from the file, ("--data", "/x", "") from a flag (bench/cli.py)
    given: dict[str, tuple[str, Any, str]] = field(default_factory=dict)

    def named(self, key: str) -> str:
        """Protocol `key` as the user gave it, for an error: `--data /x`, `FILE: protocol.data: ../tofu`
        (with the note, e.g. the folder it is relative to) or `FILE: protocol.data (default): ...`."""
        label, value, note = self.given.get(key, (f"{self.source}: protocol.{key} (default):",
                                                  getattr(self.protocol, key), ""))
        return f"{label} {value}{note}"

    def from_flag(self, key: str) -> bool:
        return self.given.get(key, ("",))[0].startswith("--")


def load_spec(path: str | Path | None) -> BenchSpec:
    """The row YAML at `path`, or the packaged default (bench/default_rows.py)."""
    if path is None:
        from obliviate.bench.default_rows import DEFAULT_ROWS

        return parse_spec(parse_yaml(DEFAULT_ROWS, "packaged default rows"), "packaged default rows", Path.cwd())
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such bench config; give a row YAML like examples/bench/tofu_small.yaml")
    return parse_spec(parse_yaml(read_user_text(path), str(path)), str(path), path.parent)


def parse_spec(data, where: str, base: Path) -> BenchSpec:
    if not isinstance(data, dict):
        raise UserError(f"{where}: expected a mapping with keys {', '.join(TOP_KEYS)}")
    _no_unknown(data, TOP_KEYS, where)
    given: dict[str, tuple[str, Any, str]] = {}
    protocol = _protocol(data.get("protocol") or {}, f"{where}: protocol", base, given)
    rows_data = data.get("rows")
    if not isinstance(rows_data, list) or not rows_data:
        raise UserError(f"{where}: 'rows' must be a non-empty list of rows (name, method, overrides)")
    rows = [_row(item, f"{where}: rows[{index}]") for index, item in enumerate(rows_data)]
    seen: dict[str, str] = {}
    for row in rows:
        if row.slug in seen:
            raise UserError(f"{where}: rows '{seen[row.slug]}' and '{row.name}' share the directory name "
                            f"'{row.slug}'; rename one")
        seen[row.slug] = row.name
    return BenchSpec(protocol, _mapping(data.get("teach"), f"{where}: teach"),
                     _mapping(data.get("common"), f"{where}: common"), rows, where, str(data.get("description", "")),
                     given)


def _no_unknown(data: dict, allowed, where: str) -> None:
    unknown = sorted(str(k) for k in data if k not in allowed)
    if unknown:
        raise UserError(f"{where}: unknown key(s) {', '.join(key_text(k) for k in unknown)}; allowed: {', '.join(allowed)}")


def _mapping(value, where: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise UserError(f"{where}: expected a mapping of dotted config keys to values, got {short_repr(value)}")
    return dict(value)


def _protocol(data, where: str, base: Path, given: dict) -> Protocol:
    if not isinstance(data, dict):
        raise UserError(f"{where}: expected a mapping, got {short_repr(data)}")
    names = [f.name for f in dataclasses.fields(Protocol)]
    _no_unknown(data, names, where)
    values = {}
    for key, value in data.items():
        expected, what = TYPES.get(key, ((str, type(None)), "a text or null"))
        if isinstance(value, bool) or not isinstance(value, expected):
            raise UserError(f"{where}.{key} = {short_repr(value)} is invalid; expected {what}")
        if isinstance(value, int) and value < LEAST.get(key, value):
            raise UserError(f"{where}.{key} = {value} is invalid; expected an integer >= {LEAST[key]}")
        note = ""
        if _is_path(key, value, base):
            expanded = Path(value).expanduser()
            note = "" if expanded.is_absolute() else f" (relative to {base.absolute()})"
            value = str(expanded if expanded.is_absolute() else base / value)
        given[key] = (f"{where}.{key}:", data[key], note)
        values[key] = value
    return Protocol(**values)


def _is_path(key: str, value, base: Path) -> bool:
    """Whether a protocol value is a path, read relative to the row file: data, target and oracle
    always; model when written as one (``./m``, ``~/m``) or found beside the file (else a hub id
    or the default model's name)."""
    if value is None or key not in ("data", "target", "oracle", "model"):
        return False
    return key != "model" or written_as_path(value) or (base / value).exists()


def _row(item, where: str) -> Row:
    if not isinstance(item, dict):
        raise UserError(f"{where}: expected a mapping with keys {', '.join(ROW_KEYS)}, got {short_repr(item)}")
    _no_unknown(item, ROW_KEYS, where)
    for key in ("name", "method"):
        if not isinstance(item.get(key), str) or not item[key].strip():
            raise UserError(f"{where}: '{key}' must be a non-empty text")
    requires = item.get("requires") or []
    if not isinstance(requires, list) or not all(isinstance(k, str) for k in requires):
        raise UserError(f"{where}: 'requires' must be a list of dotted config keys")
    overrides = _mapping(item.get("overrides"), f"{where} ({item['name']}): overrides")
    return Row(item["name"].strip(), item["method"].strip(), overrides, str(item.get("note") or ""), requires)


def known_key(dotted: str) -> bool:
    """Whether `dotted` names a field of the run config (with every registered method's section)."""
    node: Any = RunConfig().to_dict()
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def missing_requirements(row: Row) -> list[str]:
    return [key for key in row.requires if not known_key(key)]


def substitute(value, data: str):
    """"{data}" in a text value -> the protocol's data directory (also inside lists)."""
    if isinstance(value, str):
        return value.replace("{data}", data)
    if isinstance(value, list):
        return [substitute(v, data) for v in value]
    return value


BENCH_SET = ("method", "model", "request", "output_dir")  # keys a row's overrides cannot set


def row_config(spec: BenchSpec, row: Row, *, model: str, request: str, output_dir: str) -> RunConfig:
    """The row's run config: common <- row overrides <- (model, request, output_dir); a bad key or
    value is refused naming the file and the row."""
    data = str(spec.protocol.data)
    common = _one_spelling(spec.common, f"{spec.source}: common")  # a row may set common's key in its
    mine = _one_spelling(row.overrides, f"{spec.source}: row '{row.name}'")  # other spelling: it wins
    for where, keys in ((f"{spec.source}: common", common), (f"{spec.source}: row '{row.name}'", mine)):
        taken = [key for key in keys if key in BENCH_SET]
        if taken:  # the bench's own values came last and won, silently
            raise UserError(f"{where}: '{taken[0]}' is the bench's to set (method: the row's method; model: "
                            "protocol.model or the target; request, output_dir: the bench's folders); leave it out")
    overrides = [("method", row.method), *((k, substitute(v, data)) for k, v in common.items()),
                 *((k, substitute(v, data)) for k, v in mine.items()),
                 ("model", model), ("request", request), ("output_dir", output_dir)]
    try:
        return load_config(None, overrides)
    except UserError as error:
        _check_common(spec, row, [("model", model), ("request", request), ("output_dir", output_dir)])
        raise UserError(f"{spec.source}: row '{row.name}': {error}") from None


def _one_spelling(overrides: dict, where: str) -> dict:
    """`overrides` under our key names (config.canonical_key: train.num_train_epochs ->
    train.num_epochs); both spellings of one key in the same section are refused."""
    out, spelled = {}, {}
    for key, value in overrides.items():
        name = canonical_key(str(key))
        if name in spelled:
            raise UserError(f"{where}: '{spelled[name]}' and '{key}' name the same setting; keep one")
        out[name], spelled[name] = value, key
    return out


def _check_common(spec: BenchSpec, row: Row, fixed: list) -> None:
    """Blame `common:` when it fails without the row's overrides (under the row's method, when
    that is a method: else the row is the one to fix): its keys are under every row."""
    from obliviate.methods import registry

    if not spec.common or row.method not in registry.methods():
        return
    data = str(spec.protocol.data)
    try:
        load_config(None, [("method", row.method), *((k, substitute(v, data)) for k, v in spec.common.items()),
                           *fixed])
    except UserError as error:
        raise UserError(f"{spec.source}: common: {error}") from None


def teach_config(spec: BenchSpec, *, model: str, request: str, output_dir: str) -> RunConfig:
    data = str(spec.protocol.data)
    overrides = [("method", "finetune"), *((k, substitute(v, data)) for k, v in spec.teach.items()),
                 ("model", model), ("request", request), ("output_dir", output_dir)]
    try:
        return load_config(None, overrides)
    except UserError as error:
        raise UserError(f"{spec.source}: teach: {error}") from None


def select_rows(spec: BenchSpec, names: str | None) -> list[Row]:
    """`--methods a,b`: rows by name or by method (case-insensitive), in the file's order."""
    if not names:
        return list(spec.rows)
    wanted = [n.strip().lower() for n in names.split(",") if n.strip()]
    unknown = [n for n in wanted if not any(n in (r.name.lower(), r.method.lower(), r.slug) for r in spec.rows)]
    if unknown:
        raise UserError(f"--methods: unknown row(s) {', '.join(unknown)}; the rows of {spec.source} are "
                        f"{', '.join(r.name for r in spec.rows)}")
    return [r for r in spec.rows if any(n in (r.name.lower(), r.method.lower(), r.slug) for n in wanted)]
