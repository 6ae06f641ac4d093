"""Load time of the default model: the first load converts the GGUF once, later loads read the
cached safetensors (goal: < 3 s on a quiet machine).

    .venv/bin/python benchmarks/model_load.py
"""

from __future__ import annotations

import os
import time

from obliviate.models import _converted_gguf_dir, load_model, resolve_model


def main() -> None:
    converted = _converted_gguf_dir(resolve_model("smollm2-135m-instruct"))
    cold = not (converted / "config.json").is_file()
    started = time.perf_counter()
    load_model("smollm2-135m-instruct")
    first = time.perf_counter() - started
    started = time.perf_counter()
    load_model("smollm2-135m-instruct")
    cached = time.perf_counter() - started
    print(f"first load ({'GGUF conversion' if cold else 'cached'}): {first:.1f} s")
    print(f"cached load: {cached:.2f} s (goal < 3 s; {os.cpu_count()} CPUs)")


if __name__ == "__main__":
    main()
