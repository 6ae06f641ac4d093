"""ULMR: Unlearning LLMs via negative response and model parameter average.

The algorithm (METHODS.md section A), as this file runs it:

    1. for each forget question q: n rewrites q', q'' ... by an LLM  (ulmr.rewrite_prompt)
    2. for each instruction in {q, q', q'', ...}: a negative response r  (ulmr.negative_prompt)
       that reveals none of the forget answer; checked, regenerated, else a refusal template
    3. SFT from theta_0 on D' = {(instruction, r)}, answer-only NLL  ->  theta_ft
    4. theta = alpha * theta_ft + (1 - alpha) * theta_0 over every floating tensor

There is no retain loss: the averaging is what keeps the model's utility (beyond the paper,
ulmr.retain_mix=true also puts the retain items in D': methods/ulmr_mix.py). The generator is
the model being unlearned by default (as in the paper's algorithm), or an OpenAI-compatible
endpoint, or the offline templates. Every generation is cached on disk, so a rerun of the same
request makes no generation calls and an interrupted preparation resumes where it stopped.

    obliviate unlearn --method ulmr request=my_request.yaml ulmr.alpha=0.5 generation.backend=openai

The run directory (methods/pipeline.py) gets model/ (alpha = ulmr.alpha), model_alpha<a>/ for
each other alpha of ulmr.alpha_sweep, ulmr_dataset.jsonl (D' with each response's source) and the
preparation counts under manifest.json's method_stats.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path

from obliviate.config import GenerationConfig, RunConfig
from obliviate.data.request import QAItem
from obliviate.io import atomic_write_jsonl
from obliviate.methods.registry import Method, register_method
from obliviate.methods.ulmr_mix import retain_rows
from obliviate.prepare.backend import user_turn
from obliviate.prepare.checks import (clean_rewrite, is_refusal, is_valid_rewrite, leak_checked_items, leaks_answer,
                                      safe_refusal)
from obliviate.prepare.factory import make_generator
from obliviate.prepare.retry import generate_until_valid
from obliviate.prepare.templates import TemplateBackend
from obliviate.prompts import fill_check
from obliviate.weights import interpolate_


@dataclass
class UlmrConfig:
    n_rewrites: int = 2
    alpha: float = 0.5  # theta = alpha * theta_ft + (1 - alpha) * theta_0
    alpha_sweep: list[float] = field(default_factory=list)  # also save these alphas
    rewrite_prompt: str = (
        "Rewrite the following question so it asks for the same information with different wording. "
        "Output only the rewritten question.\n\nQuestion: {question}"
    )
    negative_prompt: str = (
        "Answer the question as an assistant that has no knowledge of {subject}. Politely say you "
        "don't know and give no facts about {subject}.\n\nQuestion: {question}"
    )
    max_attempts: int = 2  # generations per instruction before the refusal-template fallback
    require_refusal: bool = True  # negative responses must decline, not state other "facts"
    retain_mix: bool = False  # beyond the paper: retain items (question, true answer) in the SFT set

    def checks(self) -> list[tuple[bool, str, str]]:
        return [(self.n_rewrites >= 0, "n_rewrites", "an integer >= 0"),
                (0.0 <= self.alpha <= 1.0, "alpha", "a number in [0, 1]"),
                (all(0.0 <= a <= 1.0 for a in self.alpha_sweep), "alpha_sweep", "numbers in [0, 1]"),
                (self.max_attempts >= 1, "max_attempts", "an integer >= 1"),  # 0 would skip generation
                fill_check(self.rewrite_prompt, "rewrite_prompt", ("question", "subject")),
                fill_check(self.negative_prompt, "negative_prompt", ("question", "subject"))]


def rewrite_questions(items: list[QAItem], cfg: UlmrConfig, gen: GenerationConfig, generator, seed: int,
                      stats: dict) -> list[list[str]]:
    """n accepted rewrites per question; rewrite k of each item is its own prompt and seed."""
    templates = TemplateBackend("rewrite")
    rewrites: list[list[str]] = [[] for _ in items]

    def accept(i: int, output: str) -> str | None:
        text, item = clean_rewrite(output), items[i]
        # a model that knows the facts tends to answer instead of rewriting: reject those
        usable = is_valid_rewrite(text, item.question, rewrites[i]) and not leaks_answer(
            text, item.question, item.answer)
        return text if usable else None

    def fallback(i: int) -> str:
        stats["rewrite_fallbacks"] += 1
        question = items[i].question
        options = templates.rewrite(question, n=10)
        fresh = next((o for o in options if is_valid_rewrite(o, question, rewrites[i])), None)
        stats["rewrite_repeats"] += fresh is None  # the 10 wordings used up: one comes again
        return fresh or options[len(rewrites[i]) % len(options)]

    for k in range(cfg.n_rewrites):
        def prompt(i: int, k: int = k) -> list[dict]:
            item = items[i]
            return user_turn(cfg.rewrite_prompt.format(question=item.question, subject=item.subject or ""),
                         question=item.question, index=k)

        # rewrites after the first sample from their first try, so that they differ from it
        accepted = generate_until_valid(generator, range(len(items)), prompt, accept, gen, attempts=cfg.max_attempts,
                                        seed=seed + 1000 * k, on_fallback=fallback, first_attempt=1 if k else 0)
        for i, text in accepted.items():
            rewrites[i].append(text)
    return rewrites


def negative_responses(rows: list[dict], cfg: UlmrConfig, gen: GenerationConfig, generator, seed: int,
                       stats: dict) -> None:
    """Fill row['response'] for every instruction: a generated negative response that does
    not leak the forget answer, or (after max_attempts) a refusal template."""
    templates = TemplateBackend("negative")
    source = "template" if isinstance(generator.backend, TemplateBackend) else "generated"
    fell_back: set[int] = set()

    def prompt(i: int) -> list[dict]:
        row = rows[i]
        return user_turn(cfg.negative_prompt.format(question=row["instruction"], subject=row["subject"] or "this topic"),
                     question=row["instruction"], subject=row["subject"])

    def accept(i: int, output: str) -> str | None:
        text = output.strip()
        acceptable = text and not leaks_answer(text, rows[i]["question"], rows[i]["answer"])
        return text if acceptable and (is_refusal(text) or not cfg.require_refusal) else None

    def fallback(i: int) -> str:
        stats["negative_fallbacks"] += 1
        fell_back.add(i)
        return safe_refusal(templates, rows[i], index=i)

    responses = generate_until_valid(generator, range(len(rows)), prompt, accept, gen, attempts=cfg.max_attempts,
                                     seed=seed, on_fallback=fallback)
    for i, text in responses.items():
        rows[i]["response"] = text
        rows[i]["response_source"] = "refusal_template" if i in fell_back else source


def prepare(items: list[QAItem], config: RunConfig, model, tokenizer, run_dir: Path,
            retain: list[QAItem] = ()) -> tuple[list[dict], dict]:
    """Steps 1-2: the restructured set D' (1 + n instructions per forget item, then the retain
    items when ulmr.retain_mix), also written to run_dir/ulmr_dataset.jsonl for inspection."""
    mixed = retain_rows(list(retain), config.ulmr.retain_mix)  # checked before any generation
    cfg, gen = config.ulmr, config.generation
    cache = run_dir / "generation_cache"
    stats = {"rewrite_fallbacks": 0, "rewrite_repeats": 0, "negative_fallbacks": 0}
    rewriter = make_generator(gen, model, tokenizer, cache, "rewrite")
    rewrites = rewrite_questions(items, cfg, gen, rewriter, config.seed, stats)
    if stats["rewrite_repeats"]:
        print(f"[obliviate] warning: ULMR: {stats['rewrite_repeats']} rewrite(s) repeat an earlier one of their "
              "question (trained twice): the 10 template wordings ran out; lower ulmr.n_rewrites", flush=True)
    negator = rewriter if gen.backend != "template" else make_generator(gen, model, tokenizer, cache, "negative")
    rows = [
        {"item": index, "kind": "original" if k == 0 else f"rewrite{k}", "instruction": instruction,
         "question": item.question, "answer": item.answer, "subject": item.subject}
        for index, (item, extra) in enumerate(zip(items, rewrites))
        for k, instruction in enumerate([item.question, *extra])
    ]
    negative_responses(rows, cfg, gen, negator, config.seed, stats)
    stats["generation_calls"] = rewriter.calls + (negator.calls if negator is not rewriter else 0)
    stats["generation_cache_hits"] = rewriter.hits + (negator.hits if negator is not rewriter else 0)
    stats.update(negative_items=len(rows), retain_mix_items=len(mixed))
    if gen.backend != "template" and rows and stats["negative_fallbacks"] == len(rows):
        print(f"[obliviate] warning: ULMR: every negative response ({len(rows)}) is a refusal template: the "
              f"generator's outputs were all empty or rejected (leaking, not refusing); check {gen.backend} "
              "generation (generation.model, the server) or ulmr.negative_prompt", flush=True)
    rows += mixed
    atomic_write_jsonl(run_dir / "ulmr_dataset.jsonl", rows)
    return rows, stats


def recipe(run) -> dict:
    """The algorithm box: prepare D' -> SFT from theta_0 -> average with theta_0 (and the sweep's alphas)."""
    cfg = run.config.ulmr
    base = copy.deepcopy(run.model).eval()  # theta_0, on the same device as the model
    base.requires_grad_(False)
    with run.main_first():  # one process generates, the others read its cache
        rows, stats = prepare(leak_checked_items(run.request, run.config.generation.backend, "ULMR"), run.config,
                              run.model, run.tokenizer, run.run_dir, run.request.retain)
    sft_items = [QAItem(question=r["instruction"], answer=r["response"], subject=r["subject"]) for r in rows]
    finetuned = run.train(forget=sft_items, objective="finetune")
    models = {f"model_alpha{alpha:g}": interpolate_(copy.deepcopy(finetuned), base, alpha)
              for alpha in cfg.alpha_sweep if alpha != cfg.alpha}
    models["model"] = interpolate_(finetuned, base, cfg.alpha)
    run.stats.update(ulmr=stats, alpha=cfg.alpha, alpha_sweep=sorted(a for a in cfg.alpha_sweep if a != cfg.alpha))
    return models


register_method(Method("ulmr", recipe, "rewrite forget questions, negative responses, fine-tune, average with "
                       "the original (ULMR)", section=("ulmr", UlmrConfig), refusal_answers=True))
