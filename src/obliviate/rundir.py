"""Run directory helpers: one run per directory at a time, and the manifest that says how a run
was made.

The lock is `flock` on `<run_dir>/.obliviate.lock`, taken before anything else is written there:
the kernel drops it when its process dies (kill -9 included), so a dead run's lock is never in
the way, and the file names the holder (pid, host, start time) for the one-line refusal.

manifest.json holds the sha256 of every input data file, the base model's name and a hash of its
weights, a hash of every saved model, the device, package versions, the seed, wall time and peak
memory, so any result can be traced and rerun (`config.yaml` beside it holds the resolved
configuration). One schema for every method; method-specific facts sit under `method_stats`.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import platform
import resource
import socket
import sys
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

import torch

from obliviate.errors import UserError, os_error_line
from obliviate.fingerprints import update_with_weights
from obliviate.io import atomic_write_json, parse_json, read_user_text, sha256_file

MANIFEST = "manifest.json"
CONFIG = "config.yaml"
STARTED_FROM = "started_from.json"  # base weights and inputs a run started from (check_started_from)
TRAIN_LOG = "train_log.jsonl"  # one line per logged step (training.TrainLog)
CHECKPOINTS = "checkpoints"
#: config keys a resumed run may change: where and how often it saves and logs, which device,
#: how it reaches a generation server, and a method section's `*_sweep` list (the extra models
#: saved after training: ulmr.alpha_sweep, sku.lambda_sweep); anything else would make the run
#: describe another run
RESUME_SAFE = ("output_dir", "device", "train.save_steps", "train.save_total_limit", "train.logging_steps",
               "train.report_to", "train.gradient_checkpointing", "train.torch_compile", "generation.base_url",
               "generation.api_key_env", "generation.max_concurrency", "generation.timeout_s")
LOCK = ".obliviate.lock"
#: keys added since runs were first saved, with the value that a run saved before them ran with
ADDED_KEYS = {"train.max_grad_norm": 1.0}
REQUEST_COPY = "request.json"  # a request given in memory, written beside config.yaml (methods/pipeline.py)
PACKAGES = ("torch", "transformers", "peft", "accelerate", "datasets")


def check_run_dir(run_dir: str | Path, *, resume: bool = False, probe_lock: bool = False) -> Path:
    """Refuse a directory that already holds a run unless resuming it; writes nothing. With
    `probe_lock` (the check before a run takes the lock, in the process that will take it), first
    a directory another run is using: its lock held is told, as --resume would not help (the
    probe takes and releases a lock file left there)."""
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"output_dir '{run_dir}' is a file, not a directory; choose another output_dir")
    if probe_lock and (run_dir / LOCK).is_file():
        probe = try_lock(run_dir / LOCK)
        if isinstance(probe, str):
            raise UserError(f"output_dir '{run_dir}' is in use by another run ({probe}); wait for it to end or "
                            "choose another output_dir")
        probe.release()
    if not resume and ((run_dir / MANIFEST).exists() or (run_dir / "checkpoints").exists()):
        raise UserError(f"output_dir '{run_dir}' already holds a run; pass --resume to continue it, "
                        "or choose another output_dir")
    return run_dir


def check_resume_config(run_dir: str | Path, config: dict) -> None:
    """Refuse to resume `run_dir` with a config (`RunConfig.to_dict()`) that differs from the saved
    config.yaml in any key but RESUME_SAFE; the error names the first such key and both values.
    Keys only one side has (a newer obliviate's new field) are not compared, but for ADDED_KEYS,
    whose old value is known (an SKU run saved before train.max_grad_norm clipped at 1.0)."""
    import yaml

    from obliviate.io import flatten_keys, parse_yaml, read_user_text, short_repr

    path = Path(run_dir) / CONFIG
    if not path.is_file():
        return  # killed before it saved its config: nothing to compare with
    saved = {**ADDED_KEYS, **flatten_keys(parse_yaml(read_user_text(path), str(path)) or {})}
    new = flatten_keys(yaml.safe_load(yaml.safe_dump(config)))  # the types a saved config reads back as
    for key, value in saved.items():
        if key == "request" and Path(str(new.get(key))).name == REQUEST_COPY and (
                value is None or Path(str(value)).name == REQUEST_COPY):
            continue  # a request given in memory (its copy, or none by an older version): its hash decides
        if key in new and key not in RESUME_SAFE and not key.endswith("_sweep") and new[key] != value:
            raise UserError(f"--resume: config key '{key}' = {short_repr(new[key])} differs from the run's "
                            f"{short_repr(value)} ({path}); resume with the run's config, or choose another "
                            "output_dir for a new run")


def prepare_run_dir(run_dir: str | Path, *, resume: bool = False) -> Path:
    """Create the run directory; refuse one that already holds a run unless resuming it."""
    run_dir = check_run_dir(run_dir, resume=resume)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserError(os_error_line(error, run_dir, "cannot create output_dir")) from None
    return run_dir


class RunLock:
    """An exclusive lock on a run directory, held until `release()` or the process's end."""

    def __init__(self, path: Path, fd: int):
        self.path, self.fd = path, fd

    def release(self) -> None:
        if self.fd < 0:
            return
        # unlink while still holding it: a waiter that opened this file sees the inode change
        with contextlib.suppress(OSError):
            os.unlink(self.path)
        os.close(self.fd)
        self.fd = -1


def lock_run_dir(run_dir: str | Path, *, resume: bool = False) -> RunLock:
    """Create the run directory and take its lock; refuse (one line naming the holder) while
    another run holds it, then refuse a directory that holds a finished or started run."""
    run_dir = prepare_run_dir(run_dir, resume=resume)
    lock = take_lock(run_dir / LOCK, busy=f"output_dir '{run_dir}' is in use by another run")
    try:
        check_run_dir(run_dir, resume=resume)  # again, now that no other run can be starting here
    except UserError:
        lock.release()
        raise
    return lock


def config_agrees(run_dir: str | Path, config: dict) -> bool:
    """True if `run_dir`'s saved config.yaml (if any) agrees with `config` as check_resume_config
    compares them: a finished run of this config can be reused, a resumed one continued."""
    try:
        check_resume_config(run_dir, config)
    except UserError:
        return False
    return True


def discard_unstarted_run(run_dir: str | Path, lock: RunLock, *, created: bool = True) -> bool:
    """After a fresh run failed (a refusal, a crash, Ctrl-C), still holding its `lock`: remove an
    empty checkpoints/ and an empty train log (any checkpoints/ makes check_run_dir take the
    folder for a started run, which refused the corrected rerun), then config.yaml,
    started_from.json and request.json when nothing else is left; release the lock, then remove the folder if this
    run `created` it and it is empty (a run started there meanwhile keeps it). True if nothing of
    the run is left. Anything else (a checkpoint, a log line, ULMR's generation cache) stays, and
    the folder with it."""
    run_dir = Path(run_dir)
    try:
        if not run_dir.is_dir():
            return False
        with contextlib.suppress(OSError):
            if (run_dir / CHECKPOINTS).is_dir() and not any((run_dir / CHECKPOINTS).iterdir()):
                (run_dir / CHECKPOINTS).rmdir()
            if (run_dir / TRAIN_LOG).is_file() and (run_dir / TRAIN_LOG).stat().st_size == 0:
                (run_dir / TRAIN_LOG).unlink()
        if {p.name for p in run_dir.iterdir()} - {CONFIG, STARTED_FROM, REQUEST_COPY, LOCK}:
            return False
        with contextlib.suppress(OSError):
            for name in (CONFIG, STARTED_FROM, REQUEST_COPY):
                (run_dir / name).unlink(missing_ok=True)
    finally:
        lock.release()
    with contextlib.suppress(OSError):
        if created:
            run_dir.rmdir()  # fails, as it should, when another run has taken the folder meanwhile
    return not any(run_dir.iterdir()) if run_dir.exists() else True


def take_lock(path: Path, *, busy: str) -> RunLock:
    """An exclusive lock on the file `path` (created), recording this process as its holder;
    while another process holds it: UserError "<busy> (<holder>); wait for it to end or choose
    another output_dir". The OS releases it when the holder dies."""
    lock = try_lock(path)
    if isinstance(lock, str):
        raise UserError(f"{busy} ({lock}); wait for it to end or choose another output_dir")
    return lock


def try_lock(path: Path) -> RunLock | str:
    """take_lock without the refusal: the lock, or the holder's description while another
    process holds it. UserError only when the lock file cannot be created."""
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as error:
            raise UserError(os_error_line(error, path, "cannot create the lock file")) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            return holder
        if _same_file(fd, path):
            break
        os.close(fd)  # the holder released and removed it between our open and our flock: again
    os.ftruncate(fd, 0)
    os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                             "started": datetime.now(timezone.utc).isoformat(timespec="seconds")}).encode())
    return RunLock(path, fd)


def _same_file(fd: int, path: Path) -> bool:
    try:
        return os.fstat(fd).st_ino == os.stat(path).st_ino
    except FileNotFoundError:
        return False


def _holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0).decode("utf-8"))
        return f"pid {info['pid']} on {info['host']}, started {info['started']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "holder unknown: it is just starting"


def weights_sha256(model_or_dir) -> str:
    """sha256 over a model's weights: the state dict's tensors in sorted key order (names, dtypes,
    shapes and bytes), or, for a saved model directory, its *.safetensors files in name order."""
    digest = hashlib.sha256()
    if isinstance(model_or_dir, (str, Path)):
        files = sorted(Path(model_or_dir).glob("*.safetensors"))
        if not files:
            raise FileNotFoundError(f"{model_or_dir}: no .safetensors files to hash")
        for path in files:
            digest.update(path.name.encode() + bytes.fromhex(sha256_file(path)))
        return digest.hexdigest()
    update_with_weights(digest, model_or_dir)
    return digest.hexdigest()


def measure_peak_memory_mb() -> float:
    """Peak memory of this process: GPU memory allocated on CUDA, else the peak resident set size."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 1024  # bytes on macOS, KiB on Linux


def package_versions(packages: tuple[str, ...] = PACKAGES) -> dict[str, str | None]:
    from obliviate import __version__

    versions = {"obliviate": __version__, "python": platform.python_version()}
    for name in packages:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def check_started_from(run_dir: str | Path, facts: dict, resume: bool) -> None:
    """Record what a run starts from ({"base_model_sha256", "inputs": {path: sha256},
    "request_sha256"}) in
    run_dir/started_from.json; on resume, refuse a run whose base weights or input files changed
    since (a retrained model or an edited request under the same path), naming the first."""
    path = Path(run_dir) / STARTED_FROM
    if resume and path.is_file():
        saved = parse_json(read_user_text(path), str(path))
        if saved.get("base_model_sha256") != facts["base_model_sha256"]:
            raise UserError(f"--resume: the base model's weights differ from those the run in '{run_dir}' started "
                            "from (it was retrained or replaced: a model object that the interrupted api.unlearn "
                            "trained in place must be loaded again from its files); choose another output_dir")
        for name, digest in saved.get("inputs", {}).items():
            if facts["inputs"].get(name) not in (None, digest):
                raise UserError(f"--resume: {name} changed since the run in '{run_dir}' started; restore it or "
                                "choose another output_dir")
        if saved.get("request_sha256") not in (None, facts.get("request_sha256")):  # None: a run of an older build
            raise UserError(f"--resume: the request's items differ from those the run in '{run_dir}' started with "
                            "(another request, or its files changed); give the same request or choose another "
                            "output_dir")
        return
    atomic_write_json(path, facts)


def started_from(base_sha: str, inputs, request_sha: str | None = None) -> dict:
    """The facts check_started_from keeps: base weights' sha256, each input file's, and the
    request's items' (a request given in memory has no file to hash)."""
    facts = {"base_model_sha256": base_sha, "inputs": input_hashes(inputs)}
    return facts | ({"request_sha256": request_sha} if request_sha else {})


def input_hashes(paths) -> dict[str, str]:
    """{path: sha256} of the files among `paths` (each once, in name order; absent ones left out)."""
    return {str(Path(p)): sha256_file(p) for p in sorted({str(p) for p in paths}) if Path(p).is_file()}


def write_manifest(run_dir: str | Path, facts: dict) -> Path:
    """Write run_dir/manifest.json (atomically) and return its path: the run's `facts` (method,
    seed, device, base model, request, models, wall time, method stats; methods/pipeline.py) with
    `inputs` turned into {path: sha256}, plus the creation time, package versions and peak memory."""
    manifest = {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **facts,
        "inputs": input_hashes(facts.get("inputs", [])),
        "versions": package_versions(),
        "peak_memory_mb": round(measure_peak_memory_mb(), 1),
    }
    if "wall_time_s" in manifest:
        manifest["wall_time_s"] = round(manifest["wall_time_s"], 3)
    return atomic_write_json(Path(run_dir) / MANIFEST, manifest)
