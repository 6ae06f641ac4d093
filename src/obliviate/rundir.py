"""Run directory helpers: the manifest that says how a run was made.

manifest.json holds the sha256 of every input data file, the base model's name and a hash of its
weights, a hash of every saved model, the device, package versions, the seed, wall time and peak
memory, so any result can be traced and rerun (`config.yaml` beside it holds the resolved
configuration). One schema for every method; method-specific facts sit under `method_stats`.
"""

from __future__ import annotations

import hashlib
import platform
import resource
import sys
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

import torch

from obliviate.errors import UserError
from obliviate.io import atomic_write_json, sha256_file

MANIFEST = "manifest.json"
PACKAGES = ("torch", "transformers", "peft", "accelerate", "datasets")


def prepare_run_dir(run_dir: str | Path, *, resume: bool = False) -> Path:
    """Create the run directory; refuse one that already holds a run unless resuming it."""
    run_dir = Path(run_dir)
    if not resume and ((run_dir / MANIFEST).exists() or (run_dir / "checkpoints").exists()):
        raise UserError(f"output_dir '{run_dir}' already holds a run; pass --resume to continue it, "
                        "or choose another output_dir")
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


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
    for name, tensor in sorted(model_or_dir.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
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


def write_manifest(run_dir: str | Path, facts: dict) -> Path:
    """Write run_dir/manifest.json (atomically) and return its path: the run's `facts` (method,
    seed, device, base model, request, models, wall time, method stats; methods/pipeline.py) with
    `inputs` turned into {path: sha256}, plus the creation time, package versions and peak memory."""
    inputs = facts.get("inputs", [])
    manifest = {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **facts,
        "inputs": {str(Path(p)): sha256_file(p) for p in sorted({str(p) for p in inputs}) if Path(p).is_file()},
        "versions": package_versions(),
        "peak_memory_mb": round(measure_peak_memory_mb(), 1),
    }
    if "wall_time_s" in manifest:
        manifest["wall_time_s"] = round(manifest["wall_time_s"], 3)
    return atomic_write_json(Path(run_dir) / MANIFEST, manifest)
