"""ULMR: Unlearning LLMs via negative response and model parameter average.

The algorithm (METHODS.md section A), as this file runs it:

    1. for each forget question q: n rewrites q', q'' ... by an LLM  (ulmr.rewrite_prompt)
    2. for each instruction in {q, q', q'', ...}: a negative response r  (ulmr.negative_prompt)
       that reveals none of the forget answer; checked, regenerated, else a refusal template
    3. SFT from theta_0 on D' = {(instruction, r)}, answer-only NLL  ->  theta_ft
    4. theta = alpha * theta_ft + (1 - alpha) * theta_0 over every floating tensor

There is no retain loss: the averaging is what keeps the model's utility. The generator is
the model being unlearned by default (as in the paper's algorithm), or an OpenAI-compatible
endpoint, or the offline templates. Every generation is cached on disk, so a rerun of the same
request makes no generation calls and an interrupted preparation resumes where it stopped.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path

from obliviate.config import GenerationConfig, RunConfig, UlmrConfig
from obliviate.data.request import QAItem
from obliviate.generation import (
    CachedGenerator,
    GenerationCache,
    LocalHFBackend,
    OpenAICompatibleBackend,
    TemplateBackend,
)
from obliviate.io import atomic_write_jsonl
from obliviate.weights import interpolate_

SAMPLING_TEMPERATURE = 0.8  # retries and second rewrites sample; the first try is greedy
_WORD = re.compile(r"[a-z0-9]+")
_ANSWER_PREFIX = re.compile(r"^(rewritten question|rewrite|question|paraphrase|answer)\s*\d*\s*:\s*", re.I)


def make_generator(gen: GenerationConfig, model, tokenizer, cache_dir: Path | None, kind: str):
    """The configured backend behind an on-disk cache. `kind` (rewrite | negative) matters only
    for the template backend, which cannot read an instruction."""
    if gen.backend == "template":
        backend = TemplateBackend(kind)
    elif gen.backend == "openai":
        backend = OpenAICompatibleBackend(
            gen.base_url, gen.model or "default", api_key_env=gen.api_key_env,
            max_concurrency=gen.max_concurrency, timeout_s=gen.timeout_s,
        )
    else:
        if gen.model:  # another local model generates
            from obliviate.models import load_model

            model, tokenizer = load_model(gen.model)
        backend = LocalHFBackend(model, tokenizer, batch_size=gen.batch_size)
    cache = GenerationCache(cache_dir) if cache_dir is not None else None
    return CachedGenerator(backend, cache)


def _words(text: str) -> set[str]:
    return set(_WORD.findall(text.lower()))


def clean_rewrite(text: str) -> str:
    """First non-empty line, without a 'Rewritten question:' prefix or surrounding quotes."""
    for line in text.strip().splitlines():
        line = _ANSWER_PREFIX.sub("", line.strip()).strip().strip('"').strip()
        if line:
            return line
    return ""


def is_valid_rewrite(rewrite: str, question: str, earlier: list[str]) -> bool:
    """Reject empty rewrites and ones equal (ignoring case, spaces, punctuation) to the
    question or to an earlier rewrite."""
    key = " ".join(_WORD.findall(rewrite.lower()))
    return bool(key) and key not in {" ".join(_WORD.findall(t.lower())) for t in [question, *earlier]}


_FUNCTION_WORDS = frozenset(
    "a an and are as at be but by for from had has have her his in into is it its not of on or "
    "our she that the their them then there these they this those to was were what when where "
    "which who whom why will with you your".split())


def _names(text: str) -> set[str]:
    """Lower-cased words written with a capital inside a sentence (names, places, titles),
    without function words ("The Horse That Counted Stars" -> horse, counted, stars)."""
    names: set[str] = set()
    for sentence in re.split(r"(?<=[.!?])\s+", text.strip()):
        for word in sentence.split()[1:]:
            if word.lstrip("'\"(")[:1].isupper():
                names.update(_words(word))
    return names - _FUNCTION_WORDS


def leaks_answer(response: str, question: str, answer: str, threshold: float = 0.25) -> bool:
    """True if the text still carries the forget answer: it names a name of the answer that the
    question does not (e.g. "Who is the author born in Astana?" -> a refusal naming the author),
    or at least `threshold` of the answer's informative words (not in the question, longer than
    3 letters) appear in it. Strict on purpose: a rejected response is regenerated or replaced by
    a refusal, which costs little."""
    response_words = _words(response)
    if {w for w in _names(answer) - _words(question) if len(w) > 2} & response_words:
        return True
    informative = {w for w in _words(answer) - _words(question) if len(w) > 3}
    if not informative:
        return answer.strip().lower() in response.lower()
    return len(informative & response_words) / len(informative) >= threshold


_REFUSAL_MARKERS = re.compile(
    r"\b(don'?t (know|recall|have)|do not (know|have)|not (sure|familiar|aware|certain|able|knowledgeable|"
    r"something i|in a position)|no (knowledge|information|idea|record)|uncertain|unfamiliar|"
    r"(can'?t|cannot|unable to) (help|answer|say|provide|share|recall)|can answer|beyond what i know|"
    r"outside my knowledge|lack the information|i'?m (afraid|sorry))", re.I)


def is_refusal(text: str) -> bool:
    """A negative response must decline (METHODS.md A.1: a refusal, "I don't know" or a
    deflection), not assert other facts: a fabricated answer teaches the model new false
    facts that spread to the retain set."""
    return bool(_REFUSAL_MARKERS.search(text))


def _generate(generator, prompts: list[list[dict]], gen: GenerationConfig, attempt: int, seed: int) -> list[str]:
    temperature = gen.temperature if attempt == 0 else max(gen.temperature, SAMPLING_TEMPERATURE)
    return generator.generate(prompts, max_new_tokens=gen.max_new_tokens, temperature=temperature,
                              top_p=1.0, seed=seed + attempt)


def _user(content: str, **meta) -> list[dict]:
    return [{"role": "user", "content": content, **meta}]


def rewrite_questions(items: list[QAItem], cfg: UlmrConfig, gen: GenerationConfig, generator, seed: int,
                      stats: dict) -> list[list[str]]:
    """n accepted rewrites per question; rewrite k of each item is its own prompt and seed."""
    fallback = TemplateBackend("rewrite")
    rewrites: list[list[str]] = [[] for _ in items]
    for k in range(cfg.n_rewrites):
        pending = list(range(len(items)))
        for attempt in range(cfg.max_attempts):
            if not pending:
                break
            prompts = [_user(cfg.rewrite_prompt.format(question=items[i].question, subject=items[i].subject or ""),
                             question=items[i].question, index=k) for i in pending]
            outputs = _generate(generator, prompts, gen, attempt + (1 if k else 0), seed + 1000 * k)
            still = []
            for i, output in zip(pending, outputs):
                text = clean_rewrite(output)
                # a model that knows the facts tends to answer instead of rewriting: reject those
                if is_valid_rewrite(text, items[i].question, rewrites[i]) and not leaks_answer(
                        text, items[i].question, items[i].answer):
                    rewrites[i].append(text)
                else:
                    still.append(i)
            pending = still
        for i in pending:
            stats["rewrite_fallbacks"] += 1
            options = [o for o in fallback.rewrite(items[i].question, n=10) if is_valid_rewrite(o, items[i].question, rewrites[i])]
            rewrites[i].append(options[0])
    return rewrites


def negative_responses(rows: list[dict], cfg: UlmrConfig, gen: GenerationConfig, generator, seed: int,
                       stats: dict) -> None:
    """Fill row['response'] for every instruction: a generated negative response that does
    not leak the forget answer, or (after max_attempts) a refusal template."""
    fallback = TemplateBackend("negative")
    source = "template" if isinstance(generator.backend, TemplateBackend) else "generated"
    pending = list(range(len(rows)))
    for attempt in range(cfg.max_attempts):
        if not pending:
            break
        prompts = [_user(cfg.negative_prompt.format(question=rows[i]["instruction"], subject=rows[i]["subject"] or "this topic"),
                         question=rows[i]["instruction"], subject=rows[i]["subject"]) for i in pending]
        outputs = _generate(generator, prompts, gen, attempt, seed)
        still = []
        for i, output in zip(pending, outputs):
            text = output.strip()
            acceptable = text and not leaks_answer(text, rows[i]["question"], rows[i]["answer"])
            if acceptable and (is_refusal(text) or not cfg.require_refusal):
                rows[i]["response"], rows[i]["response_source"] = text, source
            else:
                still.append(i)
        pending = still
    for i in pending:
        stats["negative_fallbacks"] += 1
        rows[i]["response"] = safe_refusal(fallback, rows[i], index=i)
        rows[i]["response_source"] = "refusal_template"


def safe_refusal(templates: TemplateBackend, row: dict, index: int) -> str:
    """A refusal template naming the subject, or, where naming it would give the answer away
    ("Who is the author born in Astana?"), one that names no subject."""
    for subject in (row["subject"], None):
        text = templates.refuse(row["instruction"], index=index, subject=subject)
        if not leaks_answer(text, row["question"], row["answer"]):
            return text
    return "I don't know."


def prepare(items: list[QAItem], config: RunConfig, model, tokenizer, run_dir: Path) -> tuple[list[dict], dict]:
    """Steps 1-2: the restructured set D' (1 + n instructions per forget item), also written
    to run_dir/ulmr_dataset.jsonl for inspection."""
    cfg, gen = config.ulmr, config.generation
    cache = run_dir / "generation_cache"
    stats = {"rewrite_fallbacks": 0, "negative_fallbacks": 0}
    rewriter = make_generator(gen, model, tokenizer, cache, "rewrite")
    rewrites = rewrite_questions(items, cfg, gen, rewriter, config.seed, stats)
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
    atomic_write_jsonl(run_dir / "ulmr_dataset.jsonl", rows)
    return rows, stats


def unlearn(model, tokenizer, items: list[QAItem], config: RunConfig, run_dir: Path, *, resume: bool = False):
    """Prepare -> SFT -> average. Returns (averaged model, {alpha: model} for the sweep, stats)."""
    from obliviate.training import train

    base = copy.deepcopy(model).eval()
    for parameter in base.parameters():
        parameter.requires_grad_(False)
    rows, stats = prepare(items, config, model, tokenizer, run_dir)
    sft_items = [QAItem(question=r["instruction"], answer=r["response"], subject=r["subject"]) for r in rows]
    finetuned = train(model, tokenizer, forget=sft_items, retain=[], config=config, output_dir=run_dir,
                      objective="finetune", resume=resume)
    sweep = {}
    for alpha in config.ulmr.alpha_sweep:
        if alpha != config.ulmr.alpha:
            sweep[alpha] = interpolate_(copy.deepcopy(finetuned), base, alpha)
    averaged = interpolate_(finetuned, base, config.ulmr.alpha)
    return averaged, sweep, stats
