"""Offline generation from fixed templates: paraphrases and canned refusals. LOW QUALITY.

It exists so that tests, offline demos and smoke runs need no model and no network, and as the
fallback when a real generator keeps producing unusable text. Results made with it measure
training on canned data, not a method's data preparation: do not report them as the method's.
The refusals are the shared vocabulary of :mod:`obliviate.data.refusals`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any, Literal

from obliviate.data.refusals import REFUSAL_TEMPLATES
from obliviate.errors import UserError
from obliviate.prepare.backend import Message, Messages, check_sampling

__all__ = ["TemplateBackend"]

_QUESTION_WORDS = {
    "what", "who", "whom", "whose", "when", "where", "which", "why", "how", "is", "are", "was",
    "were", "do", "does", "did", "can", "could", "should", "would", "will", "has", "have", "had",
    "in", "on", "at", "for", "from", "to", "with", "by", "of", "describe", "explain", "tell",
    "name", "list", "give", "please",
}  # fmt: skip

# {q}: the question body with a lower-cased first word where that is safe; {Q}: as written.
# {p}: the question's own final punctuation ("?" when it had none).
_REWRITE_TEMPLATES = (
    "Could you tell me {q}{p}",
    "I'd like to know: {Q}{p}",
    "Question: {Q}{p} Please answer.",
    "Can you help me with this? {Q}{p}",
    "Please answer the following: {Q}{p}",
    "I have a question for you: {Q}{p}",
    "Here is something I am curious about. {Q}{p}",
    "{Q}{p} I would appreciate a clear answer.",
    "Tell me, {q}{p}",
    "Do you happen to know this? {Q}{p}",
)


def _stable_hash(*parts: Any) -> int:
    """A hash that does not change between processes (unlike ``hash``)."""
    text = json.dumps(parts, sort_keys=True, ensure_ascii=False, default=str)
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big")


def _normalise(text: str) -> str:
    return " ".join(text.lower().split()).rstrip("?.!")


class TemplateBackend:
    """Offline fallback: template paraphrases and canned refusals. LOW QUALITY, for tests.

    ``kind`` picks the task, since a template cannot read an instruction:

    * ``"rewrite"``: each output is a paraphrase of the question, made by wrapping it in one of
      ten fixed wordings ("Could you tell me ...", "I'd like to know: ...", "Question: ...
      Please answer.", ...). The wording is chosen by a hash of the question and an index, and
      the output never equals the question.
    * ``"negative"``: each output is a refusal ("I don't know.", "I'm not familiar with ...")
      chosen by a hash of the question and the index; it contains no words of the question
      except the ``subject`` when one is given.

    Direct use: :meth:`rewrite` (``n`` distinct paraphrases) and :meth:`refuse`.

    Through :meth:`generate` (the common interface), the question of each conversation is taken
    from the last user message: its ``question`` metadata key if present, else its
    ``content``. Optional metadata keys on that message: ``index`` (which paraphrase or refusal;
    defaults to ``seed``, so ``seed=0`` and ``seed=1`` give two different paraphrases) and
    ``subject`` (named in refusals). The model backends ignore these keys, so a caller may
    attach them to prompts meant for any backend.
    """

    name = "template"
    VERSION = 1

    def __init__(self, kind: Literal["rewrite", "negative"]):
        if kind not in ("rewrite", "negative"):
            raise UserError(f"TemplateBackend kind must be 'rewrite' or 'negative', got {kind!r}")
        self.kind = kind
        self.model_id = f"template-{kind}-v{self.VERSION}"
        self.batch_size = 1024

    def cache_key_fields(self) -> dict[str, Any]:
        return {"backend": self.name, "model_id": self.model_id}

    @staticmethod
    def _parts(question: str) -> dict[str, str]:
        q = " ".join(question.split())
        body = q.rstrip("?.! ")
        punct = q[len(body) :].strip()
        p = "?" if not punct or "?" in punct else punct[-1]
        words = body.split(" ", 1)
        lowered = body
        if words and words[0].lower() in _QUESTION_WORDS and words[0] != words[0].upper():
            lowered = words[0].lower() + (" " + words[1] if len(words) > 1 else "")
        return {"q": lowered, "Q": body[:1].upper() + body[1:], "p": p}

    def rewrite(self, question: str, n: int = 2) -> list[str]:
        """``n`` different paraphrases of ``question``, none equal to it (n <= 10)."""
        if not question.strip():
            raise UserError("cannot paraphrase an empty question")
        options = self._rewrite_options(question)
        if n > len(options):
            raise UserError(f"TemplateBackend can make at most {len(options)} paraphrases per question, asked for {n}")
        return options[:n]

    def _rewrite_options(self, question: str) -> list[str]:
        parts = self._parts(question)
        start = _stable_hash("rewrite", question) % len(_REWRITE_TEMPLATES)
        seen = {_normalise(question)}
        options = []
        for k in range(len(_REWRITE_TEMPLATES)):
            text = _REWRITE_TEMPLATES[(start + k) % len(_REWRITE_TEMPLATES)].format(**parts)
            if _normalise(text) not in seen:
                seen.add(_normalise(text))
                options.append(text)
        return options

    def refuse(self, question: str, index: int = 0, subject: str | None = None) -> str:
        """A refusal for ``question``; ``index`` picks another wording, ``subject`` is named."""
        named = subject.strip() if subject and subject.strip() else "that topic"
        pick = _stable_hash("refuse", question, index) % len(REFUSAL_TEMPLATES)
        return REFUSAL_TEMPLATES[pick].format(subject=named)

    @staticmethod
    def _last_user(messages: Messages) -> Message:
        for message in reversed(messages):
            if isinstance(message, dict) and message.get("role") == "user":
                return message
        raise UserError("TemplateBackend needs a conversation with a user message")

    def generate(
        self,
        prompts: Sequence[Messages],
        *,
        max_new_tokens: int = 256,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int = 0,
    ) -> list[str]:
        check_sampling(max_new_tokens, temperature, top_p, seed)
        out = []
        for messages in prompts:
            message = self._last_user(messages)
            question = str(message.get("question") or message.get("content") or "")
            index = int(message.get("index", seed))
            if self.kind == "rewrite":
                options = self._rewrite_options(question)
                out.append(options[index % len(options)])
            else:
                out.append(self.refuse(question, index=index, subject=message.get("subject")))
        return out
