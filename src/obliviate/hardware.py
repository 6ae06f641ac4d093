"""Devices and precision, one answer for every stage (training, generation, scoring, weights).

Device: `auto` is the best accelerator present (CUDA, else Apple MPS, else the CPU); `cpu`,
`cuda`, `cuda:N` and `mps` choose one. Precision: bf16 autocast over fp32 master weights pays
off only where the hardware multiplies bf16 natively (CUDA GPUs that support it, CPUs with AMX
or AVX512-BF16). Elsewhere (e.g. AVX2-only CPUs) bf16 is emulated and measured 60x slower than
fp32 (docs/training.md), so `auto` means fp32 there.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re

import torch

from obliviate.errors import UserError

PRECISIONS = ("auto", "bf16", "fp32")
_DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


def resolve_device(name: str = "auto", *, key: str = "device") -> torch.device:
    """The torch device that `name` means on this machine; UserError (naming `key`) if absent."""
    name = str(name).strip().lower()
    if not _DEVICE.match(name):
        raise UserError(f"{key} '{name}' is not known; use auto, cpu, cuda, cuda:N or mps")
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"{key} '{name}': this machine has no CUDA device; use {key}=auto or cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UserError(f"{key} '{name}': only {torch.cuda.device_count()} CUDA device(s) here; "
                            f"use cuda:0 .. cuda:{torch.cuda.device_count() - 1}")
    if device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise UserError(f"{key} '{name}': this machine has no MPS device; use {key}=auto or cpu")
    return device


def process_state(device: str = "auto"):
    """accelerate's PartialState of this launch, as TrainingArguments will see it: on the CPU (no
    accelerator, or device=cpu) the processes of `accelerate launch` / torchrun form a gloo group
    (MULTI_CPU) instead of each working alone; a group smaller than the launch is one line."""
    from accelerate import PartialState

    state = PartialState(cpu=resolve_device(device).type == "cpu")
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if state.num_processes != launched:
        raise UserError(f"{launched} processes were launched (WORLD_SIZE) but accelerate formed a "
                        f"group of {state.num_processes}; launch with `accelerate launch --num_processes N` or torchrun")
    return state


def model_device(model) -> torch.device:
    """The device of a model's first parameter (where its inputs must go)."""
    return next(model.parameters()).device


@functools.cache
def bf16_is_fast(device_type: str | None = None) -> bool:
    """Whether bf16 matmuls are native on this device type ('cuda' or 'cpu'; None: CUDA if present)."""
    if device_type is None:
        device_type = "cuda" if torch.cuda.is_available() else "cpu"
    if device_type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device_type != "cpu":
        return False
    capabilities = torch.cpu.get_capabilities() if hasattr(torch.cpu, "get_capabilities") else {}
    return bool(capabilities.get("amx_bf16") or capabilities.get("avx512_bf16"))


def resolve_precision(precision: str = "auto", device_type: str | None = None, *, key: str = "precision") -> str:
    """auto -> 'bf16' where the device has fast bf16, else 'fp32'. bf16 means autocast over fp32 weights."""
    if precision not in PRECISIONS:
        raise UserError(f"{key} '{precision}' is not known; use one of {', '.join(PRECISIONS)}")
    if precision == "auto":
        return "bf16" if bf16_is_fast(device_type) else "fp32"
    return precision


def autocast_context(device: torch.device | str, precision: str = "auto") -> contextlib.AbstractContextManager:
    """bf16 autocast when `precision` resolves to bf16 on `device`'s type, else a no-op context."""
    device = torch.device(device)
    if device.type in ("cuda", "cpu") and resolve_precision(precision, device.type) == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


#: Where Linux keeps memory limits: cgroup v2 (one hierarchy) and v1 (the memory controller's).
CGROUP_ROOTS = {"": ("/sys/fs/cgroup", "memory.max"), "memory": ("/sys/fs/cgroup/memory", "memory.limit_in_bytes")}
PROC_CGROUP = "/proc/self/cgroup"


def physical_memory() -> int | None:
    """Bytes of RAM this process may use: the machine's (POSIX sysconf), or the lowest memory
    limit of its cgroup and the cgroups above it (containers, Slurm jobs) where that is lower;
    None where the platform does not say."""
    try:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):  # Windows has no sysconf
        return None
    for path in _cgroup_limit_files():
        try:
            with open(path) as file:
                text = file.read().strip()
        except OSError:
            continue
        if text.isdigit():  # "max": no limit
            ram = min(ram, int(text))
    return ram


def _cgroup_limit_files() -> list[str]:
    """The memory-limit files of this process's cgroups, from its own up to each hierarchy's root."""
    try:
        with open(PROC_CGROUP) as file:
            lines = file.read().splitlines()
    except OSError:
        lines = []
    groups = {"": "/", "memory": "/"}  # the roots, also where a cgroup namespace puts us
    for line in lines:  # "0::/path" (v2) or "4:memory:/path" (v1)
        _, controllers, path = (line.split(":", 2) + ["", ""])[:3]
        for name in set(controllers.split(",")) & set(groups):
            groups[name] = path or "/"
    files = []
    for name, (root, leaf) in CGROUP_ROOTS.items():
        parts = [p for p in groups[name].split("/") if p]
        files += [os.path.join(root, *parts[:depth], leaf) for depth in range(len(parts), -1, -1)]
    return files
