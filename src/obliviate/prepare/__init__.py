"""Preparation: everything that writes training data with a generator.

ULMR's rewrites and negative responses use it today; SNAP's hard positives and RWKU's corpus
generation are meant to arrive through the same parts:

* ``backend``: the interface every generator meets, and the chat message format.
* ``local``, ``openai_compatible``, ``templates``: the three generators (the model itself or
  another local one; any OpenAI-compatible server; offline templates of low quality).
* ``cache``: every output on disk, so a rerun makes no generation calls.
* ``factory``: the ``generation:`` config section -> a cached generator.
* ``checks``: is a generated text usable (rewrite validity, answer leaks, refusals).
* ``retry``: generate until valid, then fall back to a template.

This layer comes before training: it may use ``data``, ``models`` and ``hardware``, never
``training``, ``methods`` or ``evaluation``. The refusal vocabulary lives in
``obliviate.data.refusals``, shared with the objectives that train towards refusals.
"""

from obliviate.prepare.backend import CHAT_KEYS, GenerationBackend, Message, Messages, chat_messages, check_sampling
from obliviate.prepare.cache import CachedGenerator, GenerationCache, cache_key
from obliviate.prepare.checks import clean_rewrite, is_refusal, is_valid_rewrite, leaks_answer, safe_refusal
from obliviate.prepare.factory import make_generator
from obliviate.prepare.local import LocalHFBackend
from obliviate.prepare.openai_compatible import OpenAICompatibleBackend
from obliviate.prepare.retry import SAMPLING_TEMPERATURE, generate_until_valid
from obliviate.prepare.templates import TemplateBackend

__all__ = [
    "CHAT_KEYS",
    "SAMPLING_TEMPERATURE",
    "CachedGenerator",
    "GenerationBackend",
    "GenerationCache",
    "LocalHFBackend",
    "Message",
    "Messages",
    "OpenAICompatibleBackend",
    "TemplateBackend",
    "cache_key",
    "chat_messages",
    "check_sampling",
    "clean_rewrite",
    "generate_until_valid",
    "is_refusal",
    "is_valid_rewrite",
    "leaks_answer",
    "make_generator",
    "safe_refusal",
]
