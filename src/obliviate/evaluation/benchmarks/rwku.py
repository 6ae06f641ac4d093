"""RWKU as a registered benchmark: its options and the two calls the registry needs."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from obliviate.errors import UserError
from obliviate.evaluation.registry import (MIN_LENGTH, Benchmark, cache_option, decode_option, decode_rows_option,
                                          register_benchmark)
from obliviate.evaluation.results import json_safe
from obliviate.evaluation.rwku.report import render_rwku
from obliviate.evaluation.rwku.suite import evaluate_rwku


@dataclass(frozen=True)
class RwkuOptions:
    data: str = field(default="jinzhuoran/RWKU", metadata={
        "help": "RWKU data: the processed directory (holds Target/<id>_<Name>/, e.g. ../shared/data/rwku) or a hub name"})
    targets: str = field(default="1", metadata={"comma_list": True,
        "help": "targets: ids, ranges or names, comma-separated (1,2,3 / 1-10 / 'Stephen King'; in a config or "
                "the API also an int or a list); several = batch"})
    ds_size: int | None = field(default=None, metadata={
        "help": "score only the first N records of every set (probes, MIA, utility) per target"})
    utility: str = field(default="all", metadata={
        "help": "utility sets: all, none or a comma list of mmlu, bbh, truthfulqa, triviaqa, fluency"})
    utility_size: int | None = field(default=None, metadata={
        "help": "score only the first N records of each utility set (default: --ds_size)"})
    use_prompt: bool = field(default=False, metadata={
        "help": "prefix every prompt and MIA text (probes, utility sets) with RWKU's in-context-unlearning "
                "instruction (the ICU baseline)"})
    batch_size: int = field(default=32, metadata={"help": "rows of a scoring forward pass"})
    max_length: int = field(default=2048, metadata={"min": MIN_LENGTH, "min_reason": "fewer tokens leave little "
                                                    "or nothing to score; as train.max_length",
        "help": f"tokens kept per scored text or prompt + answer (at least {MIN_LENGTH})"})
    decode: str = decode_option()
    decode_batch_size: int | None = decode_rows_option()
    cache: bool = cache_option()


def run_rwku(model, tokenizer, options: RwkuOptions, *, out_dir: Path, model_name: str, precision: str) -> dict:
    """:func:`~obliviate.evaluation.rwku.evaluate_rwku` with ``options``; writes rwku_eval.json,
    rwku_summary.json and rwku_report.md into ``out_dir``."""
    result = evaluate_rwku(model, tokenizer, **dataclasses.asdict(options), out_dir=out_dir,
                           model_name=model_name, precision=precision)
    return json_safe(result)


def check_rwku(options: RwkuOptions) -> None:
    """Before the model loads: the utility sets are known ones and a local data directory holds
    the targets asked for."""
    from obliviate.data.rwku import is_local, resolve_targets
    from obliviate.evaluation.rwku.suite import parse_sets
    from obliviate.evaluation.rwku.utility import UTILITY_SETS

    try:
        parse_sets(options.utility, UTILITY_SETS, "utility set")
    except UserError as error:
        raise UserError(f"benchmark 'rwku' option 'utility': {error}") from None
    if is_local(options.data):
        resolve_targets(options.data, options.targets)


RWKU = register_benchmark(Benchmark(
    name="rwku",
    summary="RWKU: forget FB / QA / AA, neighbor FB / QA, MIA (FM / RM), utility; real-world targets",
    options=RwkuOptions,
    run=run_rwku,
    render=render_rwku,
    check=check_rwku,
))
