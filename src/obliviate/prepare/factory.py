"""The configured generator: one ``generation:`` section -> a backend behind the on-disk cache."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from obliviate.prepare.cache import CachedGenerator, GenerationCache
from obliviate.prepare.local import LocalHFBackend
from obliviate.prepare.openai_compatible import OpenAICompatibleBackend
from obliviate.prepare.templates import TemplateBackend

if TYPE_CHECKING:  # pragma: no cover
    from obliviate.config import GenerationConfig

__all__ = ["make_generator"]


def make_generator(gen: GenerationConfig, model: Any, tokenizer: Any, cache_dir: Path | None,
                   kind: str) -> CachedGenerator:
    """The configured backend behind an on-disk cache (none when `cache_dir` is None).

    `model`/`tokenizer` are the model being unlearned: the local backend generates with them
    unless `gen.model` names another local model. `kind` (rewrite | negative) matters only for
    the template backend, which cannot read an instruction.
    """
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
