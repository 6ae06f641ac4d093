"""Files in and out: atomic writes (a temporary sibling, then rename), hashing of inputs, and
reading the user's text files (UTF-8 with or without a byte-order mark, JSON and YAML with
bounded nesting and number sizes) so that any bytes end in a one-line UserError or a value."""

from __future__ import annotations

import hashlib
import json
import os
import reprlib
import tempfile
from pathlib import Path

import yaml

from obliviate.errors import UserError, os_error_line

MAX_INT_DIGITS = 100  # no field we read needs more; Python refuses > 4300 digits with a traceback
MAX_DEPTH = 64  # records are flat; deep nesting is a mistake or an attack, and recursion has limits


def written_as_path(text: str | Path) -> bool:
    """Whether a name is written as a file-system path (``./``, ``../``, ``/``, ``~``): then it is
    never a hub id, and a missing file or folder is the error to report."""
    return str(text).startswith((".", "/", "~"))


def _umask() -> int:
    """The process umask, read without changing it where /proc allows (threads may be writing)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def flatten_keys(data, prefix: str = "") -> dict:
    """A nested mapping as dotted keys: ``{"train": {"lr": 1}}`` -> ``{"train.lr": 1}`` (a value
    that is not a mapping stands under ``prefix`` itself)."""
    if not isinstance(data, dict):
        return {prefix.rstrip("."): data}
    flat = {}
    for key, value in data.items():
        flat.update(flatten_keys(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value})
    return flat


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write `text` to a temporary sibling, then rename it over `path`. The file gets the mode a
    plain `open(path, "w")` would give: the existing file's, else 0666 less the umask (mkstemp
    alone makes it 0600, readable by the owner only)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        mode = path.stat().st_mode & 0o7777
    except OSError:
        mode = 0o666 & ~_umask()
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def atomic_write_json(path: str | Path, data) -> Path:
    return atomic_write_text(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def atomic_write_jsonl(path: str | Path, rows) -> Path:
    return atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def key_text(key) -> str:
    """A mapping key as a one-line message shows it: as written when it is a plain name, else its
    bounded repr (quotes, and newlines or control characters escaped)."""
    text = str(key)
    return text if text.isidentifier() else short_repr(text)


def short_repr(value) -> str:
    """A bounded repr for error messages: a shared (aliased) structure or a huge number must
    never be expanded into the message."""
    shortener = reprlib.Repr()
    shortener.maxlevel, shortener.maxstring, shortener.maxother, shortener.maxlong = 3, 80, 80, 40
    shortener.maxlist = shortener.maxdict = shortener.maxtuple = 6
    return shortener.repr(value)


def read_user_text(path: str | Path) -> str:
    """A user's text file as str: UTF-8, a leading byte-order mark (Excel, Notepad) dropped.
    Bad bytes and unreadable files become a UserError naming the file (and line)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as error:
        raise UserError(os_error_line(error, path, "cannot read")) from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        hint = " (it looks like UTF-16)" if data[:2] in (b"\xff\xfe", b"\xfe\xff") else ""
        raise UserError(f"{path}:{line}: not UTF-8 text (byte 0x{data[error.start]:02x}){hint}; "
                        "save the file as UTF-8") from None


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise ValueError(f"an integer with {len(text)} digits (at most {MAX_INT_DIGITS})")
    return int(text)


def parse_json(text: str, where: str, line: int | None = None, what: str = "JSON"):
    """json.loads with bounded integers and nesting; errors are one line naming `where`:line."""
    try:
        value = json.loads(text, parse_int=_bounded_int)
    except json.JSONDecodeError as error:
        at = line if line is not None else error.lineno
        raise UserError(f"{where}:{at}: invalid {what} ({error.msg}, column {error.colno}); fix the syntax") from None
    except (ValueError, RecursionError) as error:
        at = f":{line}" if line is not None else ""
        raise UserError(f"{where}{at}: unusable JSON ({_why(error)}); fix the value") from None
    check_depth(value, f"{where}:{line}" if line is not None else where)
    return value


def check_depth(value, where: str) -> None:
    """Refuse structures nested deeper than MAX_DEPTH (iteratively, so no recursion limit), and
    strings with lone surrogates (`"\\ud800"`): valid escapes, but no file can hold them as UTF-8."""
    stack = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise UserError(f"{where}: nested more than {MAX_DEPTH} levels deep; records are flat")
        if isinstance(node, str):
            try:
                node.encode("utf-8")
            except UnicodeEncodeError:
                raise UserError(f"{where}: a string holds a lone surrogate escape (\\ud800-\\udfff); "
                                "fix the text") from None
        elif isinstance(node, dict):
            stack.extend((v, depth + 1) for v in [*node.keys(), *node.values()])
        elif isinstance(node, list):
            stack.extend((v, depth + 1) for v in node)


def _why(error: BaseException) -> str:
    if isinstance(error, RecursionError):
        return f"nested more than {MAX_DEPTH} levels deep"
    return str(error).splitlines()[0][:160] if str(error) else type(error).__name__


class NoAliasSafeLoader(yaml.SafeLoader):
    """SafeLoader that refuses YAML aliases (`*name`) before composing them: a few lines of
    aliases can stand for gigabytes once expanded (an alias bomb), and no config needs them."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            mark = self.peek_event().start_mark
            raise yaml.composer.ComposerError(None, None, "aliases (*name) are not allowed", mark)
        return super().compose_node(parent, index)

    def construct_mapping(self, node, deep=False):
        """A key given twice in one mapping is refused (PyYAML keeps the last one silently)."""
        if isinstance(node, yaml.MappingNode):
            seen = set()
            for key_node, _ in node.value:
                if not isinstance(key_node, yaml.ScalarNode):
                    continue
                key = self.construct_object(key_node)  # 1 and "1" differ, true and True do not
                if (type(key), key) in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"key '{key_node.value[:80]}' appears twice in one mapping", key_node.start_mark)
                seen.add((type(key), key))
        return super().construct_mapping(node, deep=deep)


def _bounded_yaml_int(loader, node):
    text = node.value.replace("_", "")
    if len(text.lstrip("+-")) > MAX_INT_DIGITS:
        raise yaml.constructor.ConstructorError(
            None, None, f"an integer with {len(text)} digits (at most {MAX_INT_DIGITS})", node.start_mark)
    return yaml.SafeLoader.construct_yaml_int(loader, node)


NoAliasSafeLoader.add_constructor("tag:yaml.org,2002:int", _bounded_yaml_int)


def parse_yaml(text: str, where: str):
    """yaml.safe_load without aliases, with bounded integers and nesting; one-line errors."""
    try:
        value = yaml.load(text, Loader=NoAliasSafeLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        line = f":{mark.line + 1}" if mark else ""
        problem = " ".join(str(getattr(error, "problem", None) or error).split())[:160]
        raise UserError(f"{where}{line}: invalid YAML ({problem}); fix the syntax") from None
    except (ValueError, RecursionError, OverflowError) as error:
        raise UserError(f"{where}: unusable YAML ({_why(error)}); fix the value") from None
    check_depth(value, where)
    return value
