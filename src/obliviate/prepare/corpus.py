"""RWKU's forget corpus: the model itself writes short biographies of the target.

RWKU (generation/pair_generation.py) prompts the original model with

    system: "{intro} You know {subject} very well."
    user:   "Please write a short biography of {subject}."

and prefills the assistant turn with each of 582 truncated openings
(``generation/all_truncated_outputs.json``, the first one empty), sampling at T = 1.0,
top-p 0.9, at most 512 new tokens; the outputs are ``positive.json``. So no probe is ever
trained on: the model is given only the target's name and one-line intro.

Here the prompts go through any generation backend behind the on-disk cache
(:func:`obliviate.prepare.factory.make_generator`); :func:`prefill_generator` gives the local
model with RWKU's assistant prefill (a backend without prefill gets the opening as a final
assistant message, which OpenAI-compatible servers may or may not continue). The shipped
corpora (``positive`` = RWKU's Llama-3 biographies, ``passage`` = Wikipedia) are the
alternative: :func:`obliviate.data.rwku.corpus_passages`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from obliviate.data.rwku import RwkuTarget, corpus_passages
from obliviate.errors import UserError
from obliviate.prepare.backend import Messages, chat_messages
from obliviate.prepare.cache import CachedGenerator, GenerationCache
from obliviate.prepare.local import LocalHFBackend
from obliviate.prompts import render_chat, template_pins

SYSTEM = "{intro} You know {subject} very well."
USER = "Please write a short biography of {subject}."
PREFIX_FILE = Path("generation") / "all_truncated_outputs.json"
#: RWKU's sampling (pair_generation.py).
SAMPLING = {"max_new_tokens": 512, "temperature": 1.0, "top_p": 0.9}


def load_prefixes(data: str | Path) -> list[str]:
    """RWKU's biography openings from ``<data>/generation/all_truncated_outputs.json``."""
    path = Path(data).expanduser() / PREFIX_FILE
    if not path.is_file():
        raise UserError(f"{path}: no such file; give RWKU's processed directory (it holds generation/)")
    prefixes = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(prefixes, list) or not all(isinstance(p, str) for p in prefixes):
        raise UserError(f"{path}: expected a JSON array of strings")
    return prefixes


def short_intro(target: RwkuTarget) -> str:
    """The one-line bio without RWKU's "Please forget X. " opening."""
    return target.intro.removeprefix(f"Please forget {target.name}.").strip()


def biography_prompts(target: RwkuTarget, prefixes: Sequence[str], count: int | None = None) -> list[Messages]:
    """One conversation per opening (the first ``count``): system, user and, for a non-empty
    opening, an assistant message to continue. ``index`` metadata keeps equal openings apart
    in the cache (each is a separate sample)."""
    if count is not None and count < 1:
        raise UserError(f"corpus count must be a positive integer, got {count}")
    prompts = []
    for index, prefix in enumerate(list(prefixes)[:count]):
        messages: Messages = [{"role": "system", "content": SYSTEM.format(intro=short_intro(target), subject=target.name)},
                              {"role": "user", "content": USER.format(subject=target.name), "index": index,
                               "subject": target.name}]
        if prefix:
            messages.append({"role": "assistant", "content": prefix})
        prompts.append(messages)
    return prompts


def join_opening(prefix: str, continuation: str) -> str:
    """opening + continuation; backends strip outputs, so the space between them is put back
    unless the continuation starts with punctuation."""
    if not prefix:
        return continuation
    glue = "" if not continuation or continuation[0] in ",.;:!?'’)" else " "
    return prefix + glue + continuation


class PrefillLocalBackend(LocalHFBackend):
    """:class:`LocalHFBackend` that continues a final assistant message (RWKU's prefill)
    instead of opening a new turn after it."""

    name = "local-hf-prefill"

    def _encode(self, prompts: Sequence[Messages]) -> list[list[int]]:
        encoded = []
        for messages in prompts:
            chat = chat_messages(messages)
            opening = chat.pop()["content"] if chat and chat[-1]["role"] == "assistant" else ""
            text = render_chat(self.tokenizer, chat, add_generation_prompt=True,
                               **template_pins(self.tokenizer)[0]) + opening
            encoded.append(list(self.tokenizer(text, add_special_tokens=False)["input_ids"]))
        return encoded


def prefill_generator(model: Any, tokenizer: Any, cache_dir: str | Path | None = None,
                      batch_size: int = 16) -> CachedGenerator:
    """The local model with prefill, behind the on-disk cache (none when ``cache_dir`` is None)."""
    cache = GenerationCache(cache_dir) if cache_dir is not None else None
    return CachedGenerator(PrefillLocalBackend(model, tokenizer, batch_size=batch_size), cache)


def generate_corpus(generator: CachedGenerator, target: RwkuTarget, prefixes: Sequence[str], *,
                    count: int | None = None, seed: int = 0, **sampling: Any) -> list[str]:
    """The generated forget corpus of ``target``: one biography per opening (``count`` of
    them), RWKU's sampling unless ``sampling`` overrides it; empty outputs are dropped."""
    prompts = biography_prompts(target, prefixes, count)
    outputs = generator.generate(prompts, seed=seed, **{**SAMPLING, **sampling})
    texts = [join_opening(p[-1]["content"] if p[-1]["role"] == "assistant" else "", out)
             for p, out in zip(prompts, outputs)]
    return [t for t in texts if t.strip()]


def forget_corpus(data: str | Path, target: RwkuTarget, source: str = "positive", *,
                  generator: CachedGenerator | None = None, count: int | None = None, **sampling: Any) -> list[str]:
    """The forget corpus by ``source``: ``"generate"`` (with ``generator``; openings from
    ``data``), or a shipped one, ``"positive"`` / ``"passage"`` (its first ``count`` texts)."""
    if source == "generate":
        if generator is None:
            raise UserError("corpus source 'generate' needs a generator (prefill_generator or make_generator)")
        return generate_corpus(generator, target, load_prefixes(data), count=count, **sampling)
    return corpus_passages(data, target, source)[:count]
