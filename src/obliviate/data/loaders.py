"""Read records (dicts) from JSON, JSONL, CSV, Parquet files or Hugging Face `datasets`.

Every loader returns a list of dicts and raises `UserError` with file and 1-based line (or
"record N", counted from 1) on bad input. Files are UTF-8, with or without a byte-order mark (as
Excel writes CSV); nesting and integer sizes are bounded (obliviate.io).
JSON may be one array, or one array per line (TOFU's `full.json`, the `datasets.to_json` quirk).
"""

from __future__ import annotations

import contextlib
import csv
import io
import threading
from pathlib import Path

from obliviate.errors import UserError, os_error_line
from obliviate.io import parse_json, read_user_text, written_as_path

SUFFIXES = {".json", ".jsonl", ".csv", ".parquet"}


def load_records(source: str, *, config: str | None = None, split: str | None = None) -> list[dict]:
    """Records from a file, a local `datasets` directory, or a hub dataset `name[:config]`.

    `split` picks a split of a `datasets` source (default: `train`).
    """
    try:
        path = Path(source).expanduser()
        is_file, is_dir = path.is_file(), path.is_dir()
    except (OSError, RuntimeError, ValueError) as error:  # a name too long, an unknown ~user, a NUL
        raise UserError(f"{source[:120]!r}: not a usable path ({error.__class__.__name__}); check it") from None
    if is_file:
        suffix = path.suffix.lower()
        readers = {".json": _read_json, ".jsonl": _read_jsonl, ".csv": _read_csv, ".parquet": _read_parquet}
        if suffix not in readers:
            raise UserError(f"{path}: unknown file type '{suffix}'; use .json, .jsonl, .csv or .parquet")
        try:
            return readers[suffix](path)
        except OSError as error:
            raise UserError(os_error_line(error, path, "cannot read")) from None
    if is_dir:
        return _read_datasets_dir(path, split)
    if written_as_path(source) or Path(source).suffix.lower() in SUFFIXES:
        raise UserError(f"{source}: no such file; check the path")
    return _read_hub_dataset(source, config, split)


def _read_json(path: Path) -> list[dict]:
    text = read_user_text(path)
    if not text.strip():
        raise UserError(f"{path}: the file is empty; give a JSON array of records")
    try:
        data = parse_json(text, str(path))
    except UserError:
        data = _json_arrays_per_line(path, text)
        if data is None:  # not that shape either: the whole-file error is the one to show
            raise
    if isinstance(data, dict):
        for key in ("data", "records", "items", "examples"):
            if isinstance(data.get(key), list):
                data = data[key]
                break
        else:
            raise UserError(f"{path}:1: expected a JSON array of records, got an object; wrap the records in [...]")
    if not isinstance(data, list):
        raise UserError(f"{path}:1: expected a JSON array of records, got {type(data).__name__}")
    return _check_dicts(path, data)


def _json_arrays_per_line(path: Path, text: str) -> list | None:
    """Parse `[...]\\n[...]\\n` (several arrays, one per line); report the first bad line.
    None when the text does not have that shape."""
    # split on "\n" only: splitlines() also breaks at U+2028 etc., which editors do not count
    lines = [(n, line) for n, line in enumerate(text.split("\n"), 1) if line.strip()]
    one_array_per_line = all(l.strip().startswith("[") and l.strip().endswith("]") for _, l in lines)
    if len(lines) < 2 or not one_array_per_line:
        return None
    records: list = []
    for lineno, line in lines:
        chunk = parse_json(line, str(path), lineno)
        if not isinstance(chunk, list):
            raise UserError(f"{path}:{lineno}: expected a JSON array on this line, got {type(chunk).__name__}")
        records.extend(chunk)
    return records


def _read_jsonl(path: Path) -> list[dict]:
    records = []
    for lineno, line in enumerate(read_user_text(path).split("\n"), 1):
        if not line.strip():
            continue
        record = parse_json(line, str(path), lineno, "JSON line")
        if not isinstance(record, dict):
            raise UserError(f"{path}:{lineno}: expected a JSON object, got {type(record).__name__}")
        records.append(record)
    if not records:
        raise UserError(f"{path}: the file has no records; give one JSON object per line")
    return records


def _read_csv(path: Path) -> list[dict]:
    reader = csv.DictReader(io.StringIO(read_user_text(path), newline=""))
    try:
        return _csv_rows(path, reader)
    except csv.Error as error:  # a NUL byte, a field over the size limit, a stray quote
        raise UserError(f"{path}:{reader.line_num}: invalid CSV ({error}); check the quoting") from None


def _csv_rows(path: Path, reader: csv.DictReader) -> list[dict]:
    if not reader.fieldnames:
        raise UserError(f"{path}:1: no header row; the first line must name the columns")
    records = []
    for row in reader:
        if None in row:  # more cells than header columns
            raise UserError(
                f"{path}:{reader.line_num}: {len(reader.fieldnames) + len(row[None])} cells but "
                f"{len(reader.fieldnames)} columns in the header; quote fields that contain commas"
            )
        records.append({k: v for k, v in row.items()})
    for record in records:
        for key in ("perturbed_answer", "perturbed_answers"):
            value = record.get(key)
            if isinstance(value, str) and value.startswith("["):
                try:
                    record[key] = parse_json(value, str(path))
                except UserError:
                    pass  # not a JSON list after all: the request check reports the type
    return records


def _read_parquet(path: Path) -> list[dict]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise UserError(f"{path}: reading Parquet needs pyarrow; `pip install pyarrow`") from None
    try:
        return pq.read_table(path).to_pylist()  # to_pylist decodes the strings: bad bytes fail there
    except Exception as error:  # pyarrow raises several types for corrupt files
        first = str(error).splitlines()[0][:160] if str(error).strip() else type(error).__name__
        raise UserError(f"{path}: not a readable Parquet file ({first})") from None


def _read_datasets_dir(path: Path, split: str | None) -> list[dict]:
    import datasets

    try:
        loaded = datasets.load_from_disk(str(path))
    except (FileNotFoundError, ValueError) as error:
        raise UserError(
            f"{path}: not a `datasets` directory saved with save_to_disk ({str(error).splitlines()[0][:120]}); "
            "give a data file instead"
        ) from None
    return _pick_split(loaded, split, str(path))


_HUB_LOCK = threading.Lock()


@contextlib.contextmanager
def _datasets_offline():
    """datasets' offline mode (HF_HUB_OFFLINE, read at its import) for the calls inside."""
    import datasets

    before, datasets.config.HF_HUB_OFFLINE = datasets.config.HF_HUB_OFFLINE, True
    try:
        yield
    finally:
        datasets.config.HF_HUB_OFFLINE = before


def _read_hub_dataset(name: str, config: str | None, split: str | None) -> list[dict]:
    """A hub dataset's records; where the hub cannot be reached, from the local cache alone
    (datasets' offline mode for this call), so a missing copy fails at once instead of after
    the hub client's half a minute of retries."""
    import datasets

    from obliviate.models import hub_unreachable

    unreachable = None
    try:
        with _HUB_LOCK:  # the offline switch is process-wide: one hub load at a time
            unreachable = None if datasets.config.HF_HUB_OFFLINE else hub_unreachable()
            with _datasets_offline() if unreachable else contextlib.nullcontext():
                loaded = datasets.load_dataset(name, config, split=split or "train")
    except Exception as error:  # offline, unknown name, unknown config: all one message to the user
        why = str(error).splitlines()[0][:160] if str(error) else type(error).__name__
        raise UserError(
            f"dataset '{name}' (config {config!r}, split {split or 'train'!r}) could not be loaded "
            f"({why}{'; not in the local cache and ' + unreachable if unreachable else ''}); "
            "give a local file or directory, or check the name"
        ) from None
    return list(loaded)


def _pick_split(loaded, split: str | None, where: str) -> list[dict]:
    import datasets

    if isinstance(loaded, datasets.DatasetDict):
        name = split or ("train" if "train" in loaded else next(iter(loaded)))
        if name not in loaded:
            raise UserError(f"{where}: no split '{name}'; available: {', '.join(loaded)}")
        loaded = loaded[name]
    return list(loaded)


def _check_dicts(path: Path, records: list) -> list[dict]:
    for index, record in enumerate(records):
        if not isinstance(record, dict):
            raise UserError(f"{path}: record {index + 1} is a {type(record).__name__}, not an object; give objects")
    return records
