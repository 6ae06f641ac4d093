"""What every generation backend is: the interface, the message format, the sampling limits.

A backend takes a batch of chat conversations (``list[list[dict]]``, each message a dict with
``role`` and ``content``) and returns one string per conversation. Messages may carry extra
metadata keys (``question``, ``subject``, ``index``): the model backends drop them with
:func:`chat_messages` before they build a prompt or a request, and the template backend reads
them, since a template cannot read an instruction. So one prompt list serves every backend.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

from obliviate.errors import UserError

Message = dict[str, Any]
Messages = list[Message]

#: Message keys that are sent to a model; every other key is metadata for TemplateBackend.
CHAT_KEYS = ("role", "content", "name")

__all__ = ["CHAT_KEYS", "GenerationBackend", "Message", "Messages", "chat_messages", "check_sampling", "user_turn"]


@runtime_checkable
class GenerationBackend(Protocol):
    """What every backend provides.

    ``name`` names the kind of backend, ``model_id`` the model behind it. ``generate`` returns
    one stripped string per conversation, in input order. ``cache_key_fields`` returns the
    JSON-serialisable fields that identify the backend's outputs (never a secret); the cache
    hashes them together with the messages and the sampling parameters. ``batch_size`` is how
    many conversations :class:`~obliviate.prepare.cache.CachedGenerator` hands over per call.
    """

    name: str
    model_id: str
    batch_size: int

    def generate(
        self,
        prompts: Sequence[Messages],
        *,
        max_new_tokens: int = 256,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int = 0,
    ) -> list[str]: ...

    def cache_key_fields(self) -> dict[str, Any]: ...


def user_turn(content: str, **meta) -> Messages:
    """A one-message conversation; `meta` (question, subject, index) is for TemplateBackend only."""
    return [{"role": "user", "content": content, **meta}]


def chat_messages(messages: Messages) -> list[dict[str, Any]]:
    """The messages as a model sees them: only ``role``, ``content`` and ``name`` are kept."""
    out = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or "role" not in message or "content" not in message:
            raise UserError(f"chat message {i} must be a dict with 'role' and 'content', got {message!r:.80}")
        out.append({k: message[k] for k in CHAT_KEYS if k in message})
    return out


def check_sampling(max_new_tokens: int, temperature: float, top_p: float, seed: int) -> None:
    """Raise UserError for sampling parameters no backend accepts."""
    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise UserError(f"generation max_new_tokens must be a positive integer, got {max_new_tokens!r}")
    if temperature < 0:
        raise UserError(f"generation temperature must be >= 0 (0 means greedy), got {temperature!r}")
    if not 0 < top_p <= 1:
        raise UserError(f"generation top_p must be in (0, 1], got {top_p!r}")
    if not isinstance(seed, int):
        raise UserError(f"generation seed must be an integer, got {seed!r}")
