"""The engine's entry points: score answers and generate greedy answers, in one pass."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from obliviate.errors import UserError
from obliviate.evaluation.engine.formatters import PromptFormatter, chat_formatter
from obliviate.evaluation.engine.result_cache import ResultCache
from obliviate.evaluation.engine.runner import ModelRunner
from obliviate.evaluation.engine.scheduler import Scheduler, ScoreKey
from obliviate.evaluation.engine.sharding import current_shard
from obliviate.evaluation.engine.stats import AnswerStats


def _check(pairs, questions, details, references, max_new_tokens):
    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise UserError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
    pairs = [(str(q), str(a)) for q, a in pairs]
    questions = [str(q) for q in questions]
    flags = [bool(details)] * len(pairs) if isinstance(details, bool) else [bool(d) for d in details]
    if len(flags) != len(pairs):
        raise ValueError(f"{len(flags)} details flags for {len(pairs)} pairs")
    references = list(references) if references is not None else [None] * len(questions)
    if len(references) != len(questions):
        raise ValueError(f"{len(references)} references for {len(questions)} questions")
    return pairs, questions, flags, references


def _formatter(tokenizer, formatter: PromptFormatter | None, system_prompt: str | None,
               prompt_format) -> PromptFormatter:
    if formatter is None:
        return chat_formatter(tokenizer, system_prompt, prompt_format=prompt_format)
    if system_prompt is not None:
        raise UserError("system_prompt belongs to the chat-template formatter; with formatter=, build the "
                        "system prompt into the formatter (e.g. chat_formatter(tokenizer, system_prompt))")
    return formatter


def _pending_work(pair_keys: list[ScoreKey], gen_prompts: list[str], references: list[str | None], cache,
                  max_new_tokens: int, runner: ModelRunner):
    """Unique work, cache hits, and what remains: (scores found, texts found, scores to
    compute, generations to compute, reference key per pending generation)."""
    wanted = dict.fromkeys(pair_keys)
    for text, ref in zip(gen_prompts, references):
        if ref is not None and (text, ref, True) not in wanted and (text, ref, False) not in wanted:
            wanted[(text, ref, False)] = None
    scores: dict[ScoreKey, AnswerStats] = {}
    texts: dict[str, str] = {}
    if cache is not None:
        for key in wanted:
            if (hit := cache.get(runner.score_key(cache, key))) is not None:
                scores[key] = AnswerStats.from_json(hit)
        for text in dict.fromkeys(gen_prompts):
            if (hit := cache.get(runner.generation_key(cache, text, max_new_tokens))) is not None:
                texts[text] = hit
    todo_scores = [k for k in wanted if k not in scores]
    todo_gens = [t for t in dict.fromkeys(gen_prompts) if t not in texts]
    ref_of: dict[str, ScoreKey] = {}
    for text, ref in zip(gen_prompts, references):
        if ref is not None and text in todo_gens and text not in ref_of:
            # The reference of a pending generation is scored now (it gives the forced prefix).
            ref_of[text] = (text, ref, True) if (text, ref, True) in wanted else (text, ref, False)
            if ref_of[text] not in todo_scores:
                todo_scores.append(ref_of[text])
    return scores, texts, todo_scores, todo_gens, ref_of


def _compute(runner, todo, max_new_tokens, cache, scores, texts, progress) -> None:
    """Run the pending work into ``scores`` / ``texts``: all of it, or, inside ``sharded``,
    this process's share, and then gather every process's results."""
    shard = current_shard()
    if shard is not None:  # process 0's list of missing work is everyone's (one may read the cache later)
        todo = shard.broadcast(todo)
    todo_scores, todo_gens, ref_of = todo
    if todo_scores or todo_gens:
        Scheduler(runner, todo_scores, todo_gens, ref_of, max_new_tokens, cache, scores, texts,
                  shard=(shard.rank, shard.processes) if shard is not None else (0, 1)).run(progress)
    if shard is not None:
        for found_scores, found_texts in shard.all_gather((scores, texts)):
            scores.update(found_scores)
            texts.update(found_texts)


def score_and_generate(
    model,
    tokenizer,
    pairs: Sequence[tuple[str, str]] = (),
    questions: Sequence[str] = (),
    *,
    details: Sequence[bool] | bool = False,
    references: Sequence[str | None] | None = None,
    max_new_tokens: int = 200,
    batch_size: int = 64,
    max_tokens: int = 2048,
    max_length: int = 512,
    precision: str = "auto",
    system_prompt: str | None = None,
    formatter: PromptFormatter | None = None,
    stop_strings: Sequence[str] = (),
    scoring: str = "answer",
    prompt_format: str = "auto",
    decode: str = "auto",
    decode_batch_size: int | None = None,
    cache: ResultCache | None = None,
    progress: Callable[[int, int], None] | None = None,
    timings: dict[str, float] | None = None,
    counters: dict[str, int] | None = None,
) -> tuple[list[AnswerStats], list[str]]:
    """Score ``pairs`` and generate greedy answers to ``questions`` in one pass.

    Returns ``(stats per pair, generation per question)``. Prompt = ``formatter(question)``
    (default: the chat template with ``system_prompt``, :func:`chat_formatter`); a
    generation ends at a stop token (EOS, end of turn), at ``max_new_tokens`` or once its text
    contains one of ``stop_strings``, and is returned cut before the first stop string and
    stripped. ``details`` (one flag per pair, or one for all) asks for per-token statistics.
    ``scoring`` (:data:`obliviate.prompts.SCORINGS`): which tokens are scored, ``"answer"``
    (answer + EOS, TOFU's definition) or ``"chat_turn"`` (the assistant turn as the chat
    template renders it, open-unlearning's); :func:`obliviate.prompts.split_qa`.
    ``prompt_format`` (:mod:`obliviate.prompt_formats`): ``"auto"`` (the chat template) or a
    tag format, open-unlearning's ``apply_chat_template: False`` prompts (a preset such as
    ``"Llama-2-7b-chat-hf"`` or text around ``{question}``): the default formatter's text, and for
    any formatter the tokenisation (the tokenizer's BOS, prompt and answer as one text, stops).
    ``decode`` (:data:`~obliviate.evaluation.engine.settings.DECODES`): the decoding path,
    ``"plain"``, ``"static"`` (fixed shapes, one CUDA graph on CUDA) or ``"auto"`` (static on
    CUDA, plain elsewhere); greedy outputs agree up to floating-point rounding.
    ``references[i]``, when given, names an answer to ``questions[i]`` whose teacher-forced
    argmax tells the first tokens of the greedy output; it is scored too (results not
    returned). Identical pairs and questions are computed once. ``batch_size`` caps the rows
    of a scoring pass, ``max_tokens`` its padded tokens; ``decode_batch_size``, the prompts
    decoded together (default: :func:`~obliviate.evaluation.engine.settings.decode_rows`, on a
    CPU at fp32 up to 256 rows within a key/value memory budget, since more rows per step run
    the matrix products faster; elsewhere and under bf16 ``batch_size``); it never changes
    scores, and at fp32 it left every output unchanged where measured (bf16 rounding depends on it).
    ``cache``: a :class:`ResultCache`; hits skip the model entirely.
    ``timings`` receives the seconds per phase (tokenise, prefill, score, generate);
    ``counters`` the tokens run through the model (prompt, answer-trie and generated).
    Inside :func:`~obliviate.evaluation.engine.sharding.sharded` (e.g.
    :func:`obliviate.evaluation.distributed.data_parallel`), every process of a launch makes the
    same call; each computes a share of the work and all return the whole result.
    """
    pairs, questions, flags, references = _check(pairs, questions, details, references, max_new_tokens)
    runner = ModelRunner(model, tokenizer, precision=precision,
                         formatter=_formatter(tokenizer, formatter, system_prompt, prompt_format),
                         max_length=max_length, batch_size=batch_size, max_tokens=max_tokens,
                         stop_strings=stop_strings, scoring=scoring, decode=decode,
                         decode_batch_size=decode_batch_size, prompt_format=prompt_format)
    prompt_of = {q: runner.formatter(q) for q in dict.fromkeys([q for q, _ in pairs] + questions)}
    pair_keys = [(prompt_of[q], a, d) for (q, a), d in zip(pairs, flags)]
    gen_prompts = [prompt_of[q] for q in questions]
    scores, texts, todo_scores, todo_gens, ref_of = _pending_work(pair_keys, gen_prompts, references, cache,
                                                                  max_new_tokens, runner)
    _compute(runner, (todo_scores, todo_gens, ref_of), max_new_tokens, cache, scores, texts, progress)
    if timings is not None:
        for phase, seconds in runner.timings.items():
            timings[phase] = timings.get(phase, 0.0) + seconds
    if counters is not None:
        for name, count in _launch_totals(runner.tokens).items():
            counters[f"{name} tokens"] = counters.get(f"{name} tokens", 0) + count
    stats = [scores[key] if key[2] else scores[key].summary() for key in pair_keys]
    return stats, [texts[text] for text in gen_prompts]


def _launch_totals(tokens: dict[str, int]) -> dict[str, int]:
    """This call's token counts over every process of a launch (each ran a share), else its own."""
    shard = current_shard()
    if shard is None:
        return dict(tokens)
    shares = shard.all_gather(dict(tokens))
    return {name: sum(share.get(name, 0) for share in shares) for name in dict.fromkeys(k for s in shares for k in s)}


def score_answers(
    model,
    tokenizer,
    pairs: Sequence[tuple[str, str]],
    *,
    details: bool = False,
    batch_size: int = 64,
    max_tokens: int = 2048,
    max_length: int = 512,
    precision: str = "auto",
    system_prompt: str | None = None,
    formatter: PromptFormatter | None = None,
    scoring: str = "answer",
    prompt_format: str = "auto",
    cache: ResultCache | None = None,
) -> list[AnswerStats]:
    """:class:`AnswerStats` of each (question, answer) pair (see :func:`score_and_generate`)."""
    stats, _ = score_and_generate(model, tokenizer, pairs, (), details=details, batch_size=batch_size,
                                  max_tokens=max_tokens, max_length=max_length, precision=precision,
                                  system_prompt=system_prompt, formatter=formatter, scoring=scoring,
                                  prompt_format=prompt_format, cache=cache)
    return stats


def answer_losses(
    model,
    tokenizer,
    pairs: Sequence[tuple[str, str]],
    batch_size: int = 64,
    max_length: int = 512,
    *,
    precision: str = "auto",
    system_prompt: str | None = None,
    scoring: str = "answer",
    prompt_format: str = "auto",
) -> list[tuple[float, int]]:
    """``(sum_nll, n_tokens)`` of each answer given its question: the answer-only NLL of
    ``encode_qa(question, answer, scoring=scoring, prompt_format=prompt_format)`` (EOS included),
    as TOFU's ``get_batch_loss``."""
    stats = score_answers(model, tokenizer, pairs, batch_size=batch_size, max_length=max_length,
                          precision=precision, system_prompt=system_prompt, scoring=scoring,
                          prompt_format=prompt_format)
    return [(s.sum_nll, s.n_tokens) for s in stats]


def greedy_generate(
    model,
    tokenizer,
    questions: Sequence[str],
    max_new_tokens: int = 200,
    batch_size: int = 64,
    *,
    precision: str = "auto",
    system_prompt: str | None = None,
    formatter: PromptFormatter | None = None,
    stop_strings: Sequence[str] = (),
    decode: str = "auto",
    decode_batch_size: int | None = None,
    prompt_format: str = "auto",
) -> list[str]:
    """Greedy answers to ``questions`` (prompt = ``formatter(question)``, default the chat
    template), at most ``max_new_tokens`` new tokens, stopped at EOS, the chat template's end
    of turn or a stop string, decoded without special tokens, cut before the first stop
    string and stripped. ``decode``, ``decode_batch_size``, ``prompt_format``: see
    :func:`score_and_generate`."""
    _, texts = score_and_generate(model, tokenizer, (), questions, max_new_tokens=max_new_tokens,
                                  batch_size=batch_size, precision=precision, system_prompt=system_prompt,
                                  formatter=formatter, stop_strings=stop_strings, decode=decode,
                                  decode_batch_size=decode_batch_size, prompt_format=prompt_format)
    return texts
