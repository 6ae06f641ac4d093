"""The result envelope every benchmark writes, so any figure can be traced and rerun.

An envelope is one JSON-safe dict::

    {"format": "obliviate.<benchmark>_eval/<n>", "benchmark": name, "created": UTC time,
     "config": {... the benchmark's settings, "device", "precision_used"},
     "versions": {package: version, "scoring_engine": ENGINE_VERSION},
     "n_samples": {set: count}, "timings_s": {stage: seconds, "total"},
     ... benchmark extras (e.g. "model_tokens", "cache_hits"),
     "summary": {the aggregates a report shows},
     "tasks": {task: {"n", "aggregates", "items": [per-item values]}}}
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import itertools
import math
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from obliviate.errors import UserError
from obliviate.evaluation.engine import ENGINE_VERSION, resolve_precision
from obliviate.hardware import model_device
from obliviate.io import atomic_write_json, atomic_write_text
from obliviate.rundir import RunLock, try_lock

BASE_PACKAGES = ("torch", "transformers", "numpy")


def versions(packages: tuple[str, ...] = BASE_PACKAGES) -> dict:
    """Versions of obliviate, python, ``packages`` and the scoring engine."""
    from obliviate.rundir import package_versions

    return {**package_versions(packages), "scoring_engine": ENGINE_VERSION}


def build_envelope(
    *,
    benchmark: str,
    format: str,
    model,
    precision: str,
    config: Mapping[str, Any],
    n_samples: Mapping[str, int],
    timings: Mapping[str, float],
    summary: Mapping[str, Any],
    tasks: Mapping[str, Any],
    packages: tuple[str, ...] = BASE_PACKAGES,
    extra: Mapping[str, Any] | None = None,
) -> dict:
    """The envelope (module docstring) of one evaluation. ``config["device"]`` is set to the
    device of the model's parameters and ``config["precision_used"]`` to the precision the
    engine resolved ``precision`` to (in place when ``config`` already names them)."""
    config = dict(config)
    config["device"] = str(model_device(model))
    config["precision_used"] = resolve_precision(model, precision)
    return {
        "format": format,
        "benchmark": benchmark,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "config": config,
        "versions": versions(packages),
        "n_samples": dict(n_samples),
        "timings_s": {stage: round(seconds, 3) for stage, seconds in timings.items()},
        **(extra or {}),
        "summary": dict(summary),
        "tasks": dict(tasks),
    }


def json_safe(value):
    """nan / inf -> None, so the JSON is standard."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def write_outputs(out_dir: str | Path, files: Mapping[str, Any]) -> list[Path]:
    """Write each ``{file name: content}`` atomically into ``out_dir``: a str as text, anything
    else as JSON (made JSON-safe first)."""
    out = Path(out_dir)
    written = []
    for name, content in files.items():
        if isinstance(content, str):
            written.append(atomic_write_text(out / name, content))
        else:
            written.append(atomic_write_json(out / name, json_safe(content)))
    return written


def check_output_dir(given: str | Path) -> None:
    """Refuse, before the model loads, an output_dir no results can be written to: a file, a path
    under a file, a folder that cannot be written (permissions, a read-only file system). It was
    found only when the results were written, after the whole evaluation. Creates nothing."""
    import os

    path = Path(given).expanduser()
    if path.exists() and not path.is_dir():
        raise UserError(f"output_dir '{given}' is a file, not a folder; give a folder for the results")
    existing = next(p for p in (path, *path.absolute().parents) if p.exists())
    if not existing.is_dir():
        raise UserError(f"output_dir '{given}': {existing} is a file, so no folder can be made under it; give "
                        "another output_dir")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"output_dir '{given}': cannot write in {existing} (no permission, or a read-only file "
                        "system); give another output_dir")


def default_output_dir(model_name: str, benchmark: str, root: str | Path = "runs") -> Path:
    """Where an evaluation writes when no output_dir is given: inside the run of a run's model
    (``runs/x/model`` -> ``runs/x/eval-<benchmark>``; ``runs/x/model_alpha0.3`` ->
    ``runs/x/eval-<benchmark>-model_alpha0.3``), else ``<root>/eval-<model name>-<benchmark>``.
    :func:`claim_fresh_dir` then numbers it so that no evaluation overwrites another."""
    path = Path(model_name)
    if path.is_dir() and any((path.parent / name).is_file() for name in ("manifest.json", "config.yaml")):
        suffix = "" if path.name == "model" else f"-{path.name}"
        return path.parent / f"eval-{benchmark}{suffix}"
    name = Path(str(model_name).rstrip("/")).name or "model"
    return Path(root) / f"eval-{name}-{benchmark}"


#: held in a claimed folder while its evaluation runs (removed when it ends)
CLAIM = ".obliviate-eval.lock"


@contextlib.contextmanager
def claim_fresh_dir(base: str | Path) -> Iterator[Path]:
    """The first of ``base``, ``base-2``, ``base-3``, ... that is absent or holds nothing but an
    unheld claim, created and claimed (a lock the OS drops when the process dies) for the time of
    the ``with``: two evaluations started together get different folders, and an evaluation
    killed before writing leaves a folder the rerun takes instead of the next number. Afterwards
    the claim is removed, and the folder too if nothing was written into it."""
    base = Path(base)
    base.parent.mkdir(parents=True, exist_ok=True)
    for number in itertools.count(1):
        candidate = base if number == 1 else base.with_name(f"{base.name}-{number}")
        lock = _claim(candidate)
        if lock is not None:
            break
    try:
        yield candidate
    finally:
        lock.release()
        with contextlib.suppress(OSError):
            candidate.rmdir()  # only when empty: an evaluation that wrote nothing


def _claim(folder: Path) -> RunLock | None:
    """The claim on ``folder`` if it is free (created here when absent), else None."""
    try:
        folder.mkdir(exist_ok=True)
    except (FileExistsError, NotADirectoryError):  # a file of that name
        return None
    try:
        if {p.name for p in folder.iterdir()} - {CLAIM}:
            return None
        lock = try_lock(folder / CLAIM)
    except (FileNotFoundError, UserError):
        if folder.exists():
            raise
        return None  # its evaluation ended and removed it meanwhile: the next number
    if isinstance(lock, str):
        return None  # another evaluation's, running
    if {p.name for p in folder.iterdir()} - {CLAIM}:  # it finished between the look and the lock
        lock.release()
        return None
    return lock
