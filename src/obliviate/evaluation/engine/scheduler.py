"""Ordering the work of one engine call: scoring groups and continuous decoding.

Prompts are sorted by answer-trie size and cut into groups of ``batch_size``; a group's
tree passes give all its scores (written to the result cache at once) and its prompts'
caches for decoding. Decoding runs continuously over all groups: whenever a decoding row is
free and no prompt waits, the next group is scored.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from obliviate.evaluation.engine.result_cache import ResultCache
from obliviate.evaluation.engine.runner import ModelRunner, inference_mode
from obliviate.evaluation.engine.settings import decode_rows
from obliviate.evaluation.engine.slot_decoder import SlotDecoder
from obliviate.evaluation.engine.static_decoder import StaticSlotDecoder
from obliviate.evaluation.engine.stats import AnswerStats
from obliviate.evaluation.engine.tree_pass import tree_pass
from obliviate.evaluation.engine.trie import Prompt, Row

ScoreKey = tuple[str, str, bool]  # (prompt text, answer, details)
#: Results written to the result cache at once (one write + fsync each).
FLUSH_EVERY = 256
#: The decoder of each decoding path (settings.DECODES, resolved).
DECODERS = {"plain": SlotDecoder, "static": StaticSlotDecoder}


class Scheduler:
    """Computes missing scores (into ``scores``) and generations (into ``texts``)."""

    def __init__(self, runner: ModelRunner, todo_scores: list[ScoreKey], todo_gens: list[str],
                 references: dict[str, ScoreKey], max_new_tokens: int, cache: ResultCache | None,
                 scores: dict[ScoreKey, AnswerStats], texts: dict[str, str], shard: tuple[int, int] = (0, 1)):
        self.runner, self.max_new_tokens, self.cache = runner, max_new_tokens, cache
        self.shard = shard  # (rank, processes): this process runs groups rank, rank + processes, ...
        self.scores, self.texts = scores, texts
        self.pending: dict[str, Any] = {}
        self.todo_scores = todo_scores
        self._build(todo_scores, todo_gens, references)

    def _build(self, todo_scores, todo_gens, references) -> None:
        """One Prompt per distinct context: a prompt text's own ids (generations, and scored
        answers tokenised apart), or, where prompt and answer are tokenised as one text, the
        joint text's first tokens, which may differ from the prompt's (' The' for ' ')."""
        runner = self.runner
        texts = list(dict.fromkeys([k[0] for k in todo_scores] + list(todo_gens)))
        with runner.timed("tokenise"):
            ids_of = dict(zip(texts, runner.prompt_ids(texts)))
            split = runner.score_ids([(k[0], k[1]) for k in todo_scores], ids_of)
        own = {text: Prompt(text, ids) for text, ids in ids_of.items()}
        by_context: dict[tuple, Prompt] = {(text, tuple(p.ids)): p for text, p in own.items()}
        self.rows: dict[ScoreKey, Row] = {}
        self.keys_of: dict[Prompt, list[ScoreKey]] = {}
        row_prompt: dict[ScoreKey, Prompt] = {}
        for key, (context, answer) in zip(todo_scores, split):
            prompt = by_context.setdefault((key[0], tuple(context)), Prompt(key[0], list(context)))
            row = Row(answer[: max(0, runner.max_length - len(prompt.ids))], key[2])  # cut as encode_qa does
            prompt.rows.append(row)
            self.rows[key], row_prompt[key] = row, prompt
            self.keys_of.setdefault(prompt, []).append(key)
        for text in todo_gens:
            own[text].generate = True
        for text, key in references.items():
            if row_prompt[key] is own[text]:  # a reference scored in another context gives no forced prefix
                own[text].reference = self.rows[key]
        prompts = [p for p in by_context.values() if p.rows or p.generate]
        self.prompt_ids = [p.ids for p in prompts]
        for prompt in prompts:
            prompt.build_trie()
        order = sorted(prompts, key=lambda p: (len(p.tokens), len(p.ids)))
        size = runner.batch_size
        rank, processes = self.shard
        # Whole groups per process, so each score comes from the same batch as in one process.
        self.groups = [order[s:s + size] for s in range(0, len(order), size)][rank::processes]
        longest = max((len(p.ids) for p in order if p.generate), default=0)
        self.capacity = longest + self.max_new_tokens
        self.n_generations = sum(p.generate for group in self.groups for p in group)
        self.n_prompts = sum(len(group) for group in self.groups)

    # -- results -------------------------------------------------------------------------------

    def flush(self, force: bool = False) -> None:
        if self.cache is not None and self.pending and (force or len(self.pending) >= FLUSH_EVERY):
            self.cache.put_many(dict(self.pending))
            self.pending.clear()

    def finish_generation(self, prompt: Prompt, tokens: list[int]) -> None:
        text = self.runner.decode(tokens[: self.max_new_tokens])
        self.texts[prompt.text] = text
        if self.cache is not None:
            self.pending[self.runner.generation_key(self.cache, prompt.text, self.max_new_tokens)] = text

    def _record_scores(self, group: list[Prompt]) -> None:
        for prompt in group:
            for key in self.keys_of.get(prompt, []):
                row = self.rows[key]
                if row.result is None:  # max_length left no answer token
                    row.result = AnswerStats.empty(key[2])
                stats = row.result if key[2] else row.result.summary()
                self.scores[key] = stats
                if self.cache is not None:
                    self.pending[self.runner.score_key(self.cache, key)] = stats.to_json()
            prompt.rows = []

    # -- scoring -------------------------------------------------------------------------------

    def score_group(self, group: list[Prompt], prefix_len: int, prefix_kv) -> list[Prompt]:
        """Tree passes over ``group`` (as many rows as fit ``max_tokens``); returns the prompts
        whose generation still needs decoding."""
        runner = self.runner
        width_q = max(len(p.ids) for p in group) - prefix_len
        chunk: list[Prompt] = []
        for prompt in group:  # ascending trie size: the newest member is the widest
            if chunk and (len(chunk) + 1) * (width_q + len(prompt.tokens)) > runner.max_tokens:
                tree_pass(runner, chunk, prefix_len, prefix_kv, width_q)
                chunk = []
            chunk.append(prompt)
        tree_pass(runner, chunk, prefix_len, prefix_kv, width_q)
        self._record_scores(group)
        ready = []
        stop = set(runner.stop_ids)
        for prompt in group:
            if not prompt.generate:
                continue
            known = prompt.forced[: self.max_new_tokens]
            ends = [i for i, token in enumerate(known) if token in stop]
            if ends:  # greedy decoding stops at the first (a chat-turn reference runs on past <|im_end|>)
                known = known[: ends[0] + 1]
            if ends or len(known) >= self.max_new_tokens or runner.stop_strings.found_anywhere(known):
                prompt.kv = None  # the greedy output is known already
                self.finish_generation(prompt, known)
            else:
                ready.append(prompt)
        self.flush()
        return ready

    def new_decoder(self, template: list[tuple[torch.Tensor, torch.Tensor]]) -> SlotDecoder:
        """The decoder of this call, its rows sized by :func:`~.settings.decode_rows` from the
        bytes of one row's key/value buffers (each layer's ``(heads, tokens, dim)`` template)."""
        runner = self.runner
        row_bytes = self.capacity * sum(t.shape[0] * t.shape[-1] * t.element_size() for kv in template for t in kv)
        rows = decode_rows(runner.device, runner.batch_size, runner.decode_batch_size, row_bytes,
                           precision=runner.precision, processes=self.shard[1])
        rows = min(rows, self.n_generations) or 1
        return DECODERS[runner.decode_mode](runner, rows, self.capacity, template, self.max_new_tokens)

    # -- the loop ------------------------------------------------------------------------------

    def run(self, progress: Callable[[int, int], None] | None = None) -> None:
        runner = self.runner
        with inference_mode(runner.model):
            with runner.timed("prefill"):
                prefix_len, prefix_kv = runner.prefix(self.prompt_ids)
            decoder: SlotDecoder | None = None
            waiting: list[Prompt] = []
            next_group, done = 0, 0
            while True:
                if decoder is not None:
                    for b in decoder.free_rows()[: len(waiting)]:
                        decoder.admit(b, waiting.pop(0))
                need_work = decoder is None or bool(decoder.free_rows())
                if need_work and not waiting and next_group < len(self.groups):
                    group = self.groups[next_group]
                    next_group += 1
                    with runner.timed("score"):
                        ready = self.score_group(group, prefix_len, prefix_kv)
                    done += len(group)
                    if progress is not None:
                        progress(done, self.n_prompts)
                    if ready and decoder is None:
                        decoder = self.new_decoder(ready[0].kv)
                    waiting.extend(ready)
                    continue
                if decoder is None or not decoder.busy():
                    if next_group < len(self.groups) or waiting:
                        continue
                    break
                with runner.timed("generate"):
                    finished = decoder.step()
                for prompt, tokens in finished:
                    self.finish_generation(prompt, tokens)
                self.flush()
            self.flush(force=True)
