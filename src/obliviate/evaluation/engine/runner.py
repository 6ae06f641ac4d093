"""The model side of the engine: tokenisation, decoder and output-layer calls, caches.

The engine calls ``model.get_decoder()`` and ``model.get_output_embeddings()`` separately
(standard for Hugging Face causal LMs: ``logits = lm_head(decoder(x))``), so the output
layer runs only where a prediction is needed; Gemma-style ``final_logit_softcapping`` and
Cohere-style ``logit_scale`` are applied when the config has them.
"""

from __future__ import annotations

import contextlib
import inspect
import time
from collections.abc import Iterable, Sequence

import torch

from obliviate.errors import UserError
from obliviate.evaluation.engine.formatters import PromptFormatter
from obliviate.evaluation.engine.settings import precision_context, resolve_decode, resolve_precision
from obliviate.evaluation.engine.stops import StopStrings, stop_token_ids
from obliviate.evaluation.engine.trie import shared_prefix_length
from obliviate.hardware import model_device
from obliviate.prompt_formats import PromptFormat, resolve_format
from obliviate.prompts import answer_suffix, prompt_token_ids, split_joint


class ModelRunner:
    """One engine call's model, tokenizer and settings, with its phase timings and token counts."""

    def __init__(self, model, tokenizer, *, precision: str, formatter: PromptFormatter, max_length: int,
                 batch_size: int, max_tokens: int, stop_strings: Sequence[str] = (), scoring: str = "answer",
                 decode: str = "auto", decode_batch_size: int | None = None,
                 prompt_format: str | PromptFormat = "auto"):
        if batch_size < 1:
            raise UserError(f"evaluation batch_size must be >= 1, got {batch_size}")
        if decode_batch_size is not None and (not isinstance(decode_batch_size, int) or decode_batch_size < 1):
            raise UserError(f"decode_batch_size must be a positive integer or None, got {decode_batch_size!r}")
        self.model, self.tokenizer, self.formatter = model, tokenizer, formatter
        self.format = resolve_format(prompt_format)  # how prompt texts are tokenised (chat template or tags)
        self.scoring, self.suffix = scoring, answer_suffix(tokenizer, scoring, self.format)
        self.max_length, self.batch_size, self.max_tokens = max_length, batch_size, max(max_tokens, 1)
        self.decode_batch_size = decode_batch_size  # rows decoded together (None: settings.decode_rows)
        self.precision = resolve_precision(model, precision)
        self.device = model_device(model)
        self.decode_mode = resolve_decode(model, decode)
        self.autocast_cache = True  # off while a CUDA graph is captured (settings.precision_context)
        self.decoder = model.get_decoder()
        self.head = model.get_output_embeddings()
        config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
        self.softcap = getattr(config, "final_logit_softcapping", None)
        self.logit_scale = getattr(config, "logit_scale", None)
        self.eager = getattr(config, "_attn_implementation", "sdpa") == "eager"
        # transformers 5.24 renamed the decoder's past_key_values to cache (the old name warns);
        # the class's forward, as an instance's may be wrapped (hooks, counters).
        forward_parameters = inspect.signature(type(self.decoder).forward).parameters
        self.cache_kwarg = "cache" if "cache" in forward_parameters else "past_key_values"
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.pad_id = int(pad if pad is not None else 0)
        self.stop_ids = stop_token_ids(model, tokenizer, template=self.format.uses_template(tokenizer))
        self.stop_strings = StopStrings(tokenizer, stop_strings)
        self.timings = {"tokenise": 0.0, "prefill": 0.0, "score": 0.0, "generate": 0.0}
        self.tokens = {"prompt": 0, "answer": 0, "generated": 0}

    @contextlib.contextmanager
    def timed(self, phase: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.timings[phase] += time.perf_counter() - start

    # -- result cache keys ------------------------------------------------------------------------

    def batch_shapes_round(self) -> bool:
        """Whether the batch shapes change this call's results beyond float rounding: under bf16
        (any precision but fp32) the matrix products round differently at another number of rows,
        which flips near-tied greedy tokens (22 of 48 generations between 16 and 48 rows,
        docs/speed.md) and moves scores (up to 0.03 nats an answer between batch 4 and 24 on a
        6-layer model of the default shape); on a CPU at fp32 scores moved by ~1e-5 and no greedy
        output changed where measured. Where they do, cached results are kept apart per scoring
        batch size and per configured decoding rows (off the CPU too: not measured there). Not a
        guarantee of bit-identical reruns: which prompts share a batch, and how many rows are
        left to decode (fewer in a resumed run), also change bf16 rounding (docs/metrics.md)."""
        return not (self.precision == "fp32" and self.device.type == "cpu")

    def score_key(self, cache, key: tuple[str, str, bool]) -> str:
        """The result-cache key of a scored (prompt text, answer, details); a tag format's text
        is part of it (the same prompt text is tokenised otherwise through a chat template)."""
        return cache.score_key(*key, scoring=self.scoring, batch=self.batch_size if self.batch_shapes_round() else None,
                               prompt_format=self.format.tags)

    def generation_key(self, cache, prompt: str, max_new_tokens: int) -> str:
        """The result-cache key of a greedy generation from ``prompt`` (text)."""
        rows = (self.decode_batch_size or self.batch_size) if self.batch_shapes_round() else None
        return cache.generation_key(prompt, max_new_tokens, self.stop_strings.strings, self.decode_mode, rows=rows,
                                    prompt_format=self.format.tags)

    # -- text and tokens (identical to prompts.encode_qa / split_qa for the default formatter) ---

    def prompt_ids(self, texts: Sequence[str]) -> list[list[int]]:
        ids = prompt_token_ids(self.tokenizer, list(texts), self.format)
        for text, x in zip(texts, ids):
            if not x:
                raise UserError(f"prompt {text!r} has no tokens; a prompt needs at least one token")
        return ids

    def answer_ids(self, answers: Sequence[str]) -> list[list[int]]:
        ids = self.tokenizer(list(answers), add_special_tokens=False)["input_ids"] if answers else []
        return [list(x) + [self.tokenizer.eos_token_id] for x in ids]

    def score_ids(self, pairs: Sequence[tuple[str, str]], prompt_ids: dict[str, list[int]]):
        """(context ids, label ids) per (prompt text, answer), as prompts.split_qa gives them:
        the prompt's ids and the answer tokenised alone, or one joint text split at the
        prompt's token count (no chat template, a tag format, or scoring "chat_turn")."""
        if self.suffix is None:
            answers = self.answer_ids([answer for _, answer in pairs])
            return [(prompt_ids[text], ids) for (text, _), ids in zip(pairs, answers)]
        fulls = prompt_token_ids(self.tokenizer, [text + answer + self.suffix for text, answer in pairs], self.format)
        eos = self.tokenizer.eos_token_id
        return [split_joint(prompt_ids[text], full, eos) for (text, _), full in zip(pairs, fulls)]

    def decode(self, tokens: list[int]) -> str:
        """New tokens as text: special tokens dropped, cut at a stop string, stripped."""
        return self.stop_strings.cut(self.tokenizer.decode(tokens, skip_special_tokens=True)).strip()

    # -- model calls ----------------------------------------------------------------------------

    def forward(self, input_ids, attention_mask, position_ids, cache) -> torch.Tensor:
        if attention_mask.dim() == 4 and self.eager:  # eager attention adds a float mask
            attention_mask = torch.zeros(attention_mask.shape, dtype=self.model.dtype,
                                         device=attention_mask.device).masked_fill(
                ~attention_mask, torch.finfo(self.model.dtype).min)
        with precision_context(self.model, self.precision, self.autocast_cache):
            out = self.decoder(
                input_ids=input_ids.to(self.device),
                attention_mask=attention_mask.to(self.device),
                position_ids=position_ids.to(self.device),
                use_cache=True,
                **{self.cache_kwarg: cache},
            )
        return out.last_hidden_state

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        with precision_context(self.model, self.precision, self.autocast_cache):
            logits = self.head(hidden)
        logits = logits.float()
        if self.logit_scale is not None:
            logits = logits * self.logit_scale
        if self.softcap:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits

    @staticmethod
    def new_cache(layers: Iterable[tuple[torch.Tensor, torch.Tensor]] | None = None):
        from transformers import DynamicCache

        return DynamicCache(list(layers)) if layers is not None else DynamicCache()

    def prefix(self, prompts: list[list[int]]) -> tuple[int, list[tuple[torch.Tensor, torch.Tensor]] | None]:
        """Length and key/values of the token prefix of all prompts (each keeps >= 1 token)."""
        length = shared_prefix_length(prompts)
        if length <= 0:
            return 0, None
        cache = self.new_cache()
        ids = torch.tensor([prompts[0][:length]])
        self.forward(ids, torch.ones_like(ids), torch.arange(length)[None], cache)
        self.tokens["prompt"] += length
        return length, [(layer.keys, layer.values) for layer in cache.layers]


@contextlib.contextmanager
def inference_mode(model):
    """Eval mode and no autograd for the engine's calls, on sdpa or eager attention (the
    answer-trie pass needs a 4-D mask, which both accept); the model is restored after."""
    attn = getattr(model.config, "_attn_implementation", "sdpa")
    switch = attn not in ("sdpa", "eager") and hasattr(model, "set_attn_implementation")
    was_training = model.training
    model.eval()
    try:
        if switch:
            model.set_attn_implementation("sdpa")
        with torch.inference_mode():
            yield
    finally:
        if switch:
            model.set_attn_implementation(attn)
        if was_training:
            model.train()
