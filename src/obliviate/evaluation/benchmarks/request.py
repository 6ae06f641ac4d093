"""An unlearning request's own sets as a registered benchmark.

    obliviate eval --benchmark request --request src/obliviate/data/demo/demo_request.json \
        --model runs/npo/model --base_model smollm2-135m-instruct        # -> runs/npo/eval-request
    obliviate eval --benchmark request --request my_request.yaml --model runs/npo/model \
        --base_result runs/eval-smollm2-135m-instruct-request/request_eval.json
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from obliviate.errors import UserError
from obliviate.evaluation.registry import (Benchmark, cache_option, decode_option, decode_rows_option,
                                          max_length_option, missing_path, prompt_format_option, register_benchmark,
                                          scoring_option, system_prompt_option)
from obliviate.evaluation.request.report import render_request
from obliviate.evaluation.results import json_safe
from obliviate.prompt_formats import check_system_prompt, resolve_format


@dataclass(frozen=True)
class RequestOptions:
    request: str | None = field(default=None, metadata={
        "help": "the request file whose sets are scored (docs/request.md; required)"})
    ds_size: int | None = field(default=None, metadata={"help": "score only the first N items of each set"})
    holdout: str | None = field(default=None, metadata={
        "help": "QA items the model never saw (a data file), the non-members of the forget-set MIA AUCs"})
    base_model: str | None = field(default=None, metadata={
        "help": "the model before unlearning (hub id or directory), scored now on the same items: the change"})
    base_result: str | None = field(default=None, metadata={
        "help": "the base model's request_eval.json from an earlier run on the same request: the change"})
    paraphrased_questions: bool = field(default=True, metadata={
        "help": "also answer each item's paraphrased_question, where it has one (ROUGE-L recall)"})
    extras: bool = field(default=True, metadata={
        "help": "also extraction strength, exact memorisation (and MIA AUCs with holdout) on the forget set"})
    batch_size: int = field(default=32, metadata={"help": "rows of a scoring forward pass"})
    max_new_tokens: int = field(default=200, metadata={"help": "greedy generation budget per question"})
    max_length: int = max_length_option()
    system_prompt: str | None = system_prompt_option()
    scoring: str = scoring_option()
    prompt_format: str = prompt_format_option()
    decode: str = decode_option()
    decode_batch_size: int | None = decode_rows_option()
    cache: bool = cache_option()


def run_request(model, tokenizer, options: RequestOptions, *, out_dir: Path, model_name: str, precision: str) -> dict:
    """:func:`~obliviate.evaluation.request.evaluate_request` with ``options``; writes
    request_eval.json, request_summary.json and request_report.md into ``out_dir``."""
    from obliviate.evaluation.request import evaluate_request

    result = evaluate_request(model, tokenizer, **dataclasses.asdict(options), out_dir=out_dir,
                              model_name=model_name, precision=precision)
    return json_safe(result)


def check_request(options: RequestOptions) -> None:
    """Before the model loads: the prompt format is known (tags without a system prompt beside them),
    a request is given and reads (no forget set of passages only), the holdout file holds items, a
    base model directory is there, and a base result holds the same items as the request (and not
    together with base_model)."""
    from obliviate.evaluation.request.compare import read_base_result
    from obliviate.evaluation.request.sets import request_sets
    from obliviate.io import written_as_path

    where = "benchmark 'request' option"
    check_system_prompt(resolve_format(options.prompt_format, f"{where} 'prompt_format'"), options.system_prompt,
                        f"{where} 'system_prompt'")
    if options.base_model is not None and options.base_result is not None:
        raise UserError("benchmark 'request': give either base_model or base_result, not both")
    if options.base_model is not None and written_as_path(options.base_model):
        missing_path(options.base_model, "benchmark 'request' option 'base_model'", "model directory")
    sets = request_sets(options.request, ds_size=options.ds_size, holdout=options.holdout)
    if options.base_result is not None:
        read_base_result(options.base_result, sets)


REQUEST = register_benchmark(Benchmark(
    name="request",
    summary="an unlearning request's own sets: forget / retain / neighbours ROUGE-L, probability, truth ratio; "
            "change from the base model",
    options=RequestOptions,
    run=run_request,
    render=render_request,
    check=check_request,
))
