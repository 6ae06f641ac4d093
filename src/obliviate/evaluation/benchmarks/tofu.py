"""TOFU as a registered benchmark: its options and the two calls the registry needs."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from obliviate.evaluation.registry import (Benchmark, cache_option, decode_option, decode_rows_option,
                                          max_length_option, missing_path, prompt_format_option, register_benchmark,
                                          scoring_option, system_prompt_option)
from obliviate.evaluation.report import render_report
from obliviate.evaluation.results import json_safe
from obliviate.evaluation.tofu import evaluate_tofu
from obliviate.prompt_formats import check_system_prompt, resolve_format


@dataclass(frozen=True)
class TofuOptions:
    data: str = field(default="locuslab/TOFU", metadata={
        "help": "TOFU data: a local directory of <split>.json files (e.g. ../shared/data/tofu) or a hub name"})
    forget_split: str = field(default="forget01", metadata={"choices": ("forget01", "forget05", "forget10"),
                                                            "help": "forget set: forget01, forget05 or forget10"})
    retain_logs: str | None = field(default=None, metadata={
        "help": "the retain model's eval log (TOFU, open-unlearning or obliviate format), for Forget Quality"})
    retain_model: str | None = field(default=None, metadata={
        "help": "the retain model itself (hub id or directory), scored for Forget Quality and PrivLeak"})
    ds_size: int | None = field(default=None, metadata={
        "help": "evaluate only the first N items of each split (legacy TOFU used 300)"})
    batch_size: int = field(default=32, metadata={"help": "rows of a scoring forward pass"})
    max_new_tokens: int = field(default=200, metadata={"help": "greedy generation budget per question"})
    max_length: int = max_length_option()
    system_prompt: str | None = system_prompt_option()
    extras: bool = field(default=True, metadata={
        "help": "also extraction strength, exact memorisation and MIA AUCs on the forget set"})
    scoring: str = scoring_option()
    prompt_format: str = prompt_format_option()
    decode: str = decode_option()
    decode_batch_size: int | None = decode_rows_option()
    cache: bool = cache_option()


def run_tofu(model, tokenizer, options: TofuOptions, *, out_dir: Path, model_name: str, precision: str) -> dict:
    """:func:`~obliviate.evaluation.tofu.evaluate_tofu` with ``options``; writes tofu_eval.json,
    tofu_summary.json and tofu_report.md into ``out_dir``."""
    result = evaluate_tofu(model, tokenizer, **dataclasses.asdict(options), out_dir=out_dir,
                           model_name=model_name, precision=precision)
    return json_safe(result)


def check_tofu(options: TofuOptions) -> None:
    """Before the model loads: a local data directory holds the forget split; the retain log
    exists and (with local data) holds the evaluated forget items and no other split's
    (:func:`~obliviate.evaluation.tofu.retain_log.aligned_truth_ratios`); the prompt format is
    known and, if tags, without a system prompt beside it."""
    from obliviate.data.rwku import is_local
    from obliviate.evaluation.tofu.data import load_items
    from obliviate.evaluation.tofu.retain_log import aligned_truth_ratios

    where = "benchmark 'tofu' option"
    check_system_prompt(resolve_format(options.prompt_format, f"{where} 'prompt_format'"), options.system_prompt,
                        f"{where} 'system_prompt'")
    split_items = load_items(options.data, f"{options.forget_split}_perturbed") if is_local(options.data) else None
    missing_path(options.retain_logs, "benchmark 'tofu' option 'retain_logs'", "eval log")
    if options.retain_logs is not None and split_items is not None:
        aligned_truth_ratios(options.retain_logs, split_items[:options.ds_size], forget_split=options.forget_split,
                             split_items=split_items)


TOFU = register_benchmark(Benchmark(
    name="tofu",
    summary="TOFU: forget / retain / real authors / world facts; Forget Quality and Model Utility",
    options=TofuOptions,
    run=run_tofu,
    render=render_report,
    check=check_tofu,
))
