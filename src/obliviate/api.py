"""The Python API, mirroring the command line.

    import obliviate.api as ob
    config = ob.load_config("run.yaml", ["method=ulmr", "ulmr.alpha=0.5"])
    run_dir = ob.unlearn(config)                     # runs/<...>/model is a normal HF directory
    result = ob.evaluate(str(run_dir / "model"), benchmark="tofu", data="../shared/data/tofu",
                         forget_split="forget01")   # the result envelope; result["summary"] has the table
    ob.methods(), ob.benchmarks()                    # what is registered, with one-line summaries
"""

from __future__ import annotations

from pathlib import Path

from obliviate.config import RunConfig, load_config

__all__ = ["load_config", "unlearn", "evaluate", "methods", "benchmarks"]


def unlearn(config: RunConfig, *, resume: bool = False, model=None, tokenizer=None) -> Path:
    """Run config.method on config.model and config.request; returns the run directory."""
    from obliviate.methods.pipeline import run

    return run(config, resume=resume, model=model, tokenizer=tokenizer)


def evaluate(model: str, *, benchmark: str = "tofu", output_dir: str | Path = "runs/eval", device: str = "auto",
             precision: str = "auto", trust_remote_code: bool = False, **options) -> dict:
    """Evaluate a model (name or directory) on a registered benchmark; `options` are the benchmark's
    own (TOFU: data, forget_split, retain_logs, ...). Writes the benchmark's files into output_dir
    and returns its result envelope (it records the device and precision it ran with)."""
    from obliviate.evaluation.registry import build_options, get_benchmark
    from obliviate.hardware import resolve_device, resolve_precision
    from obliviate.models import load_model

    spec = get_benchmark(benchmark)
    settings = build_options(spec, options, where=f"benchmark '{benchmark}' option")
    resolve_precision(precision, key="precision")  # refuse a bad value before loading anything
    loaded, tokenizer = load_model(model, trust_remote_code=trust_remote_code, device=resolve_device(device))
    return spec.run(loaded, tokenizer, settings, out_dir=Path(output_dir), model_name=model, precision=precision)


def methods() -> dict[str, str]:
    """Registered unlearning methods: name -> one-line summary."""
    from obliviate.methods.registry import methods as registered

    return {name: method.summary for name, method in registered().items()}


def benchmarks() -> dict[str, str]:
    """Registered benchmarks: name -> one-line summary."""
    from obliviate.evaluation.registry import benchmarks as registered

    return {name: spec.summary for name, spec in registered().items()}
