"""Training checkpoints: which checkpoint-N folders under `output_dir/checkpoints` are complete
(a kill can tear the last one), which hold finite weights (the divergence guard's "last good
checkpoint"), and what a resume starts from."""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import torch


def _step(path: Path) -> int:
    return int(path.name.split("-")[-1])


def checkpoint_step(checkpoint: Path) -> int:
    """The optimiser step a (complete) checkpoint was saved at."""
    return json.loads((checkpoint / "trainer_state.json").read_text(encoding="utf-8"))["global_step"]


def _complete_checkpoints(checkpoint_dir: Path) -> list[Path]:
    """checkpoint-N folders whose trainer_state.json (written last, but not atomically) reads with
    its step, whose safetensors files open and whose torch.save files (optimizer, scheduler, RNG
    states) end in a zip directory: a torn one would crash the resume with a traceback instead of
    being removed and resumed from the one before."""
    from safetensors import safe_open

    def readable(path: Path) -> bool:
        try:
            state = json.loads((path / "trainer_state.json").read_text(encoding="utf-8"))
            for weights in path.glob("*.safetensors"):
                with safe_open(str(weights), framework="pt"):
                    pass
            if not all(zipfile.is_zipfile(saved) for suffix in ("pt", "pth") for saved in path.glob(f"*.{suffix}")):
                return False
            return isinstance(state, dict) and isinstance(state.get("global_step"), int)
        except Exception:  # noqa: BLE001 -- torn JSON, bad bytes, a SafetensorError (no OSError): not complete
            return False

    if not checkpoint_dir.is_dir():
        return []
    return sorted((p for p in checkpoint_dir.glob("checkpoint-*") if p.name.split("-")[-1].isdigit() and readable(p)),
                  key=_step)


def last_complete_checkpoint(checkpoint_dir: Path) -> Path | None:
    """The newest complete checkpoint-N (_complete_checkpoints); None if none."""
    return (_complete_checkpoints(checkpoint_dir) or [None])[-1]


def checkpoint_is_finite(checkpoint: Path) -> bool:
    """Whether every weight saved in a checkpoint (model or adapter safetensors) is finite."""
    from safetensors.torch import load_file

    files = sorted(checkpoint.glob("*.safetensors"))
    return bool(files) and all(torch.isfinite(t).all() for f in files for t in load_file(f).values()
                               if t.is_floating_point())


def last_good_checkpoint(checkpoint_dir: Path) -> Path | None:
    """The newest complete checkpoint whose weights are all finite (loaded and checked)."""
    for path in reversed(_complete_checkpoints(checkpoint_dir)):
        if checkpoint_is_finite(path):
            return path
    return None


def prepare_checkpoints(checkpoint_dir: Path, resume: bool, state) -> Path | None:
    """On resume: the checkpoint to continue from, after deleting half-written newer ones.
    Otherwise: clear the checkpoints an earlier run left in this directory. `state`: accelerate's
    PartialState (process 0 deletes, the others wait)."""
    last = last_complete_checkpoint(checkpoint_dir) if resume else None
    if state.is_main_process and checkpoint_dir.is_dir():
        step = _step(last) if last else -1
        for path in checkpoint_dir.glob("checkpoint-*"):
            if not path.name.split("-")[-1].isdigit():
                continue
            if not resume or (path != last and _step(path) > step):
                shutil.rmtree(path)  # an earlier run's, or one this run was killed while saving
    state.wait_for_everyone()
    if resume and last is None:
        print(f"[obliviate] no complete checkpoint under {checkpoint_dir}; training from the start", flush=True)
    return last
