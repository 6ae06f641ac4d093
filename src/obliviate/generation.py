"""Text generation backends behind one interface, and an on-disk cache of their outputs.

ULMR (docs: METHODS.md, section A) needs an LLM twice while it prepares its data: to rewrite
each forget question into paraphrases, and to write a negative response (a refusal) for each
instruction. This module gives three interchangeable backends for that:

* :class:`LocalHFBackend` runs a local ``transformers`` causal LM (for example the base model
  itself) with its chat template.
* :class:`OpenAICompatibleBackend` calls any server that speaks the OpenAI
  ``/chat/completions`` protocol (OpenAI, vLLM, llama.cpp, TGI, Ollama ...). It uses only the
  standard library.
* :class:`TemplateBackend` is an offline fallback of much lower quality: fixed paraphrase
  templates and canned refusals. It exists so that tests and smoke runs need no model and no
  network; do not use it for results you report.

Every backend takes a batch of chat conversations (``list[list[dict]]``, each message a dict
with ``role`` and ``content``) and returns one string per conversation. Messages may carry extra
metadata keys (``question``, ``subject``, ``index``); the model backends drop them before they
build a prompt or a request, and :class:`TemplateBackend` reads them.

:class:`GenerationCache` stores every output on disk, one small JSON file per prompt, under a
key that hashes the backend identity, the messages and the sampling parameters.
:class:`CachedGenerator` wraps a backend and a cache: it sends only the misses to the backend,
in chunks, and writes each chunk to the cache as soon as it is done, so an interrupted
preparation resumes where it stopped and a rerun makes no backend calls at all.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import ipaddress
import json
import logging
import os
import random
import socket
import tempfile
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

from obliviate.errors import UserError

if TYPE_CHECKING:  # pragma: no cover
    import torch

logger = logging.getLogger(__name__)

Message = dict[str, Any]
Messages = list[Message]

#: Message keys that are sent to a model; every other key is metadata for TemplateBackend.
CHAT_KEYS = ("role", "content", "name")

__all__ = [
    "CHAT_KEYS",
    "CachedGenerator",
    "GenerationBackend",
    "GenerationCache",
    "LocalHFBackend",
    "OpenAICompatibleBackend",
    "TemplateBackend",
    "autocast_context",
    "cache_key",
    "chat_messages",
    "check_sampling",
]


# --------------------------------------------------------------------------------------------
# Interface and shared helpers
# --------------------------------------------------------------------------------------------


@runtime_checkable
class GenerationBackend(Protocol):
    """What every backend provides.

    ``name`` names the kind of backend, ``model_id`` the model behind it. ``generate`` returns
    one stripped string per conversation, in input order. ``cache_key_fields`` returns the
    JSON-serialisable fields that identify the backend's outputs (never a secret); the cache
    hashes them together with the messages and the sampling parameters. ``batch_size`` is how
    many conversations :class:`CachedGenerator` hands over per call.
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


def _stable_hash(*parts: Any) -> int:
    """A hash that does not change between processes (unlike ``hash``)."""
    text = json.dumps(parts, sort_keys=True, ensure_ascii=False, default=str)
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big")


# --------------------------------------------------------------------------------------------
# Local transformers backend
# --------------------------------------------------------------------------------------------


def autocast_context(device: torch.device | str) -> contextlib.AbstractContextManager[Any]:
    """bf16 autocast where it is fast and safe, else a no-op context.

    Where :func:`obliviate.hardware.bf16_is_fast` says so (a bf16 GPU, an AMX or AVX512-BF16
    CPU); elsewhere bf16 is emulated and slower than fp32, so nothing changes.
    """
    import torch

    from obliviate.hardware import bf16_is_fast

    device = torch.device(device)
    if device.type in ("cuda", "cpu") and bf16_is_fast(device.type):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


class LocalHFBackend:
    """Generate with a local ``transformers`` causal LM and its tokenizer's chat template.

    Prompts are rendered with ``tokenizer.apply_chat_template(messages,
    add_generation_prompt=True, tokenize=False)`` and tokenized without adding special tokens
    again (the template already holds them). Batches are formed after sorting by prompt length
    and left-padded by hand with the pad token (the eos token when the tokenizer has none), so
    the tokenizer is never modified. ``temperature == 0`` decodes greedily; otherwise the
    backend samples with ``torch.manual_seed(seed)`` inside a forked RNG, so the caller's global
    RNG state is untouched. Sampled outputs depend on the seed and on how prompts fall into
    batches; greedy outputs depend on neither (up to floating point).

    The model is put in eval mode while generating and restored afterwards. ``model_id``
    defaults to ``model.config._name_or_path``; pass it when the model was built in memory.
    """

    name = "local-hf"

    def __init__(self, model: Any, tokenizer: Any, batch_size: int = 16, model_id: str | None = None):
        if batch_size < 1:
            raise UserError(f"generation batch_size must be >= 1, got {batch_size}")
        if getattr(tokenizer, "chat_template", None) is None:
            raise UserError(
                "the tokenizer has no chat template: use an instruct/chat model, or set "
                "tokenizer.chat_template before generating"
            )
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        config = getattr(model, "config", None)
        self.model_id = model_id or str(
            getattr(config, "_name_or_path", "") or getattr(config, "model_type", "") or "local"
        )

    def cache_key_fields(self) -> dict[str, Any]:
        return {"backend": self.name, "model_id": self.model_id}

    # -- helpers --------------------------------------------------------------------------

    def _pad_id(self) -> int:
        tok = self.tokenizer
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        if pad is None:
            raise UserError("the tokenizer has neither a pad token nor an eos token: set tokenizer.pad_token")
        return int(pad)

    def _eos_ids(self) -> list[int]:
        ids: list[int] = []
        gen_eos = getattr(getattr(self.model, "generation_config", None), "eos_token_id", None)
        for value in (gen_eos, self.tokenizer.eos_token_id):
            if value is None:
                continue
            for v in value if isinstance(value, (list, tuple)) else [value]:
                if int(v) not in ids:
                    ids.append(int(v))
        return ids

    def _encode(self, prompts: Sequence[Messages]) -> list[list[int]]:
        encoded = []
        for messages in prompts:
            text = self.tokenizer.apply_chat_template(
                chat_messages(messages), add_generation_prompt=True, tokenize=False
            )
            ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
            encoded.append(list(ids))
        return encoded

    def _generation_config(self, max_new_tokens: int, temperature: float, top_p: float) -> Any:
        import copy

        from transformers import GenerationConfig

        base = getattr(self.model, "generation_config", None)
        config = copy.deepcopy(base) if base is not None else GenerationConfig()
        config.max_new_tokens = max_new_tokens
        config.max_length = None
        config.min_new_tokens = None
        config.num_return_sequences = 1
        config.num_beams = 1
        config.pad_token_id = self._pad_id()
        eos = self._eos_ids()
        config.eos_token_id = eos if eos else None
        if temperature == 0:
            config.do_sample = False
            config.temperature = None
            config.top_p = None
            config.top_k = None
            config.min_p = None
        else:
            config.do_sample = True
            config.temperature = float(temperature)
            config.top_p = float(top_p)
            config.top_k = None
        return config

    # -- generation -----------------------------------------------------------------------

    def generate(
        self,
        prompts: Sequence[Messages],
        *,
        max_new_tokens: int = 256,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int = 0,
    ) -> list[str]:
        import torch

        check_sampling(max_new_tokens, temperature, top_p, seed)
        if not prompts:
            return []
        encoded = self._encode(prompts)
        order = sorted(range(len(encoded)), key=lambda i: (-len(encoded[i]), i))
        pad_id = self._pad_id()
        gen_config = self._generation_config(max_new_tokens, temperature, top_p)
        device = next(self.model.parameters()).device
        results: list[str | None] = [None] * len(encoded)

        was_training = bool(getattr(self.model, "training", False))
        fork_devices = [device] if device.type == "cuda" else []
        self.model.eval()
        try:
            with torch.random.fork_rng(devices=fork_devices), torch.inference_mode():
                if temperature > 0:
                    torch.manual_seed(seed)
                for start in range(0, len(order), self.batch_size):
                    batch = order[start : start + self.batch_size]
                    width = max(len(encoded[i]) for i in batch)
                    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
                    attention = torch.zeros((len(batch), width), dtype=torch.long)
                    for row, i in enumerate(batch):
                        ids = encoded[i]
                        if ids:
                            input_ids[row, width - len(ids) :] = torch.tensor(ids, dtype=torch.long)
                            attention[row, width - len(ids) :] = 1
                    with autocast_context(device):
                        output = self.model.generate(
                            input_ids=input_ids.to(device),
                            attention_mask=attention.to(device),
                            generation_config=gen_config,
                        )
                    new_tokens = output[:, width:].tolist()
                    for row, i in enumerate(batch):
                        results[i] = self.tokenizer.decode(new_tokens[row], skip_special_tokens=True).strip()
        finally:
            if was_training:
                self.model.train()
        return [r if r is not None else "" for r in results]


# --------------------------------------------------------------------------------------------
# OpenAI-compatible HTTP backend
# --------------------------------------------------------------------------------------------


class _Retryable(Exception):
    """A failure worth another try; ``reason`` is a short description without secrets."""

    def __init__(self, reason: str, *, http_status: int | None = None, retry_after: float | None = None):
        super().__init__(reason)
        self.reason = reason
        self.http_status = http_status
        self.retry_after = retry_after


def _is_loopback(host: str | None) -> bool:
    if not host:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class OpenAICompatibleBackend:
    """Call a server that implements the OpenAI ``POST {base_url}/chat/completions`` API.

    ``base_url`` includes the version prefix, e.g. ``http://127.0.0.1:8000/v1`` or
    ``https://api.openai.com/v1``. The API key is read from the environment variable
    ``api_key_env`` at each call and sent as ``Authorization: Bearer ...``; when the variable
    is unset no header is sent (local servers usually need none). The key is never logged,
    never part of a cache key and never put in an error message.

    Up to ``max_concurrency`` requests run at once (one request per conversation). Each
    request is tried at most ``max_retries`` times in total: 429, 5xx, connection errors and
    timeouts are retried after ``backoff_s * 2**attempt`` seconds (or the server's
    ``Retry-After``, capped at 60 s); other 4xx answers fail at once. Failures become a
    one-line :class:`UserError`.

    ``cache_key_fields`` holds the model name, not the URL, so moving a server to another
    port keeps the cache valid.
    """

    name = "openai-compatible"

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key_env: str = "OPENAI_API_KEY",
        max_concurrency: int = 4,
        timeout_s: float = 60,
        max_retries: int = 4,
        backoff_s: float = 1.0,
    ):
        parsed = urllib.parse.urlparse(str(base_url))
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise UserError(
                f"generation.base_url must be an http(s) URL such as http://127.0.0.1:8000/v1, got {base_url!r}"
            )
        if not model:
            raise UserError("generation.model must name the model the server serves")
        if max_concurrency < 1:
            raise UserError(f"generation.max_concurrency must be >= 1, got {max_concurrency}")
        if max_retries < 1:
            raise UserError(f"generation.max_retries must be >= 1 (total tries), got {max_retries}")
        self.base_url = str(base_url).rstrip("/")
        self.model = str(model)
        self.model_id = self.model
        self.api_key_env = api_key_env
        self.max_concurrency = int(max_concurrency)
        self.timeout_s = float(timeout_s)
        self.max_retries = int(max_retries)
        self.backoff_s = float(backoff_s)
        #: conversations per CachedGenerator chunk: a few rounds of full concurrency.
        self.batch_size = 4 * self.max_concurrency
        handlers: list[Any] = []
        if _is_loopback(parsed.hostname):
            handlers.append(urllib.request.ProxyHandler({}))  # never send localhost via a proxy
        self._opener = urllib.request.build_opener(*handlers)

    def __repr__(self) -> str:  # no key in here
        return (
            f"OpenAICompatibleBackend(base_url={self.base_url!r}, model={self.model!r}, "
            f"api_key_env={self.api_key_env!r})"
        )

    @property
    def url(self) -> str:
        return f"{self.base_url}/chat/completions"

    def cache_key_fields(self) -> dict[str, Any]:
        return {"backend": self.name, "model_id": self.model_id}

    # -- one request ----------------------------------------------------------------------

    def _redact(self, text: str, key: str | None) -> str:
        if key:
            text = text.replace(key, "***")
        return " ".join(text.split())[:200]

    def _request_once(self, body: bytes, key: str | None) -> str:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if key:
            headers["Authorization"] = f"Bearer {key}"
        request = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
        try:
            with self._opener.open(request, timeout=self.timeout_s) as response:
                raw = response.read()
        except urllib.error.HTTPError as err:
            status = err.code
            try:
                detail = err.read().decode("utf-8", "replace")
            except Exception:  # noqa: BLE001 - the body is only used for the message
                detail = ""
            finally:
                err.close()
            with contextlib.suppress(ValueError, TypeError):
                parsed = json.loads(detail)
                if isinstance(parsed, dict) and isinstance(parsed.get("error"), dict):
                    detail = str(parsed["error"].get("message", detail))
            detail = self._redact(detail, key)
            if status == 429 or status >= 500:
                retry_after = None
                with contextlib.suppress(TypeError, ValueError):
                    retry_after = float(err.headers.get("Retry-After"))
                raise _Retryable(f"HTTP {status}", http_status=status, retry_after=retry_after) from None
            if status in (401, 403):
                raise UserError(
                    f"{self.base_url} rejected the request (HTTP {status}, unauthorized): set the "
                    f"environment variable {self.api_key_env} to a valid API key"
                ) from None
            if status == 404:
                raise UserError(
                    f"{self.url} answered HTTP 404 ({detail or 'not found'}): check generation.base_url "
                    f"(it usually ends in /v1) and generation.model ({self.model!r})"
                ) from None
            raise UserError(
                f"{self.url} refused the request (HTTP {status}: {detail or 'no detail'}): check "
                f"generation.model ({self.model!r}) and the sampling settings"
            ) from None
        except urllib.error.URLError as err:
            reason = err.reason
            if isinstance(reason, ConnectionRefusedError):
                text = "connection refused"
            elif isinstance(reason, TimeoutError):
                text = f"timed out after {self.timeout_s:g}s"
            elif isinstance(reason, socket.gaierror):
                text = "unknown host"
            else:
                text = self._redact(str(reason), key) or type(reason).__name__
            raise _Retryable(text) from None
        except TimeoutError:
            raise _Retryable(f"timed out after {self.timeout_s:g}s") from None
        except (ConnectionError, http.client.HTTPException, OSError) as err:
            raise _Retryable(self._redact(f"{type(err).__name__}: {err}", key)) from None

        try:
            data = json.loads(raw.decode("utf-8"))
            content = data["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError, UnicodeDecodeError):
            raise UserError(
                f"{self.url} returned a response without choices[0].message.content: "
                f"{self._redact(raw.decode('utf-8', 'replace'), key)!r}; is it an OpenAI-compatible server?"
            ) from None
        return (content or "").strip()

    def _request(self, messages: Messages, params: dict[str, Any], stop: threading.Event) -> str:
        body = json.dumps({"model": self.model, "messages": chat_messages(messages), **params}).encode("utf-8")
        last: _Retryable | None = None
        for attempt in range(self.max_retries):
            if stop.is_set():
                raise _Cancelled()
            key = os.environ.get(self.api_key_env) or None
            try:
                return self._request_once(body, key)
            except _Retryable as err:
                last = err
                if attempt + 1 >= self.max_retries:
                    break
                delay = self.backoff_s * (2**attempt)
                if err.retry_after is not None:
                    delay = max(delay, min(err.retry_after, 60.0))
                delay *= 1 + 0.1 * random.random()  # jitter so parallel retries spread out
                logger.warning(
                    "%s: %s (try %d of %d), retrying in %.1fs",
                    self.url,
                    err.reason,
                    attempt + 1,
                    self.max_retries,
                    delay,
                )
                if stop.wait(delay):
                    raise _Cancelled() from None
        assert last is not None
        tries = f"{self.max_retries} {'try' if self.max_retries == 1 else 'tries'}"
        if last.http_status is not None:
            raise UserError(
                f"{self.base_url} kept failing ({last.reason}) after {tries}: the server is overloaded "
                f"or broken; retry later, lower generation.max_concurrency or check the server log"
            )
        raise UserError(
            f"cannot reach {self.base_url} ({last.reason}) after {tries}: start the server or fix generation.base_url"
        )

    # -- batch ----------------------------------------------------------------------------

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
        if not prompts:
            return []
        params = {"max_tokens": max_new_tokens, "temperature": temperature, "top_p": top_p, "seed": seed}
        stop = threading.Event()
        results: list[str | None] = [None] * len(prompts)
        with ThreadPoolExecutor(max_workers=min(self.max_concurrency, len(prompts))) as pool:
            futures = {pool.submit(self._request, m, params, stop): i for i, m in enumerate(prompts)}
            done, pending = wait(futures, return_when=FIRST_EXCEPTION)
            failed = [f for f in done if f.exception() is not None and not isinstance(f.exception(), _Cancelled)]
            if failed:
                stop.set()
                for f in pending:
                    f.cancel()
                # report the failure of the earliest prompt, so the message is deterministic
                raise min(failed, key=lambda f: futures[f]).exception()  # type: ignore[misc]
            for future, i in futures.items():
                results[i] = future.result()
        return [r if r is not None else "" for r in results]


class _Cancelled(Exception):
    """A request abandoned because another one in the batch failed."""


# --------------------------------------------------------------------------------------------
# Offline template backend
# --------------------------------------------------------------------------------------------

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

_REFUSALS = (
    "I don't know.",
    "I'm sorry, but I don't know the answer to that.",
    "I'm not familiar with {topic}.",
    "I don't have any information about {topic}.",
    "I'm afraid I can't answer that; I don't know anything about {topic}.",
    "That's not something I know about, sorry.",
    "I have no knowledge of {topic}, so I can't help with this question.",
    "Sorry, I'm not able to answer that. I'm not familiar with {topic}.",
    "I'm not sure. I don't have reliable information on {topic}.",
    "I can't say; {topic} is not something I know about.",
)


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
        topic = subject.strip() if subject and subject.strip() else "that topic"
        pick = _stable_hash("refuse", question, index) % len(_REFUSALS)
        return _REFUSALS[pick].format(topic=topic)

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


# --------------------------------------------------------------------------------------------
# Cache
# --------------------------------------------------------------------------------------------


def cache_key(
    backend_fields: dict[str, Any],
    messages: Messages,
    *,
    max_new_tokens: int,
    temperature: float,
    top_p: float,
    seed: int,
) -> str:
    """sha256 hex digest of the backend identity, the messages and the sampling parameters."""
    payload = {
        "backend": backend_fields,
        "messages": messages,
        "params": {
            "max_new_tokens": int(max_new_tokens),
            "temperature": float(temperature),
            "top_p": float(top_p),
            "seed": int(seed),
        },
    }
    try:
        text = json.dumps(payload, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    except TypeError as err:
        raise UserError(f"generation messages must be JSON-serialisable for the cache: {err}") from None
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class GenerationCache:
    """Outputs on disk, one JSON file per key: ``directory/<key[:2]>/<key>.json``.

    Each file holds the output and, for inspection, the backend fields, sampling parameters
    and messages (never an API key: backends keep secrets out of ``cache_key_fields``). Files
    are written to a temporary name and moved into place with ``os.replace``, so a reader never
    sees half a file and a crash loses at most the entries being written. Several processes
    may share a directory.
    """

    def __init__(self, directory: str | os.PathLike[str]):
        self.directory = Path(directory)
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise UserError(f"cannot create the generation cache directory {self.directory}: {err.strerror}") from None

    def path(self, key: str) -> Path:
        return self.directory / key[:2] / f"{key}.json"

    def get(self, key: str) -> str | None:
        try:
            record = json.loads(self.path(key).read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            logger.warning("ignoring unreadable generation cache entry %s", self.path(key))
            return None
        output = record.get("output") if isinstance(record, dict) else None
        return output if isinstance(output, str) else None

    def __contains__(self, key: str) -> bool:
        return self.get(key) is not None

    def put(self, key: str, output: str, **info: Any) -> None:
        """Store ``output`` under ``key``; ``info`` (JSON-serialisable) is kept alongside."""
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        record = {"key": key, "output": output, **info}
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".json", dir=path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump(record, handle, ensure_ascii=False, sort_keys=True)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    def keys(self) -> Iterator[str]:
        for path in sorted(self.directory.glob("??/*.json")):
            yield path.stem

    def __len__(self) -> int:
        return sum(1 for _ in self.keys())


class CachedGenerator:
    """A backend behind a cache: only misses reach the backend.

    ``generate`` computes every prompt's key, serves hits from the cache, de-duplicates the
    misses and hands them to the backend in chunks of ``chunk_size`` (default: the backend's
    ``batch_size``). Each chunk is written to the cache as soon as it returns, so an
    interrupted run loses at most one chunk. With ``cache=None`` nothing is stored.

    Counters (cumulative over calls): ``calls`` = prompts generated by the backend, ``hits`` =
    prompts served from the cache, ``batches`` = ``backend.generate`` invocations.
    ``progress(done, total)`` is called after each chunk if given.
    """

    def __init__(
        self,
        backend: GenerationBackend,
        cache: GenerationCache | None = None,
        chunk_size: int | None = None,
        progress: Callable[[int, int], None] | None = None,
    ):
        self.backend = backend
        self.cache = cache
        self.chunk_size = int(chunk_size or getattr(backend, "batch_size", 16) or 16)
        if self.chunk_size < 1:
            raise UserError(f"generation chunk_size must be >= 1, got {chunk_size}")
        self.progress = progress
        self.calls = 0
        self.hits = 0
        self.batches = 0

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
        params = {"max_new_tokens": max_new_tokens, "temperature": temperature, "top_p": top_p, "seed": seed}
        fields = self.backend.cache_key_fields()
        keys = [cache_key(fields, list(m), **params) for m in prompts]
        results: list[str | None] = [None] * len(prompts)
        todo: dict[str, list[int]] = {}
        for i, key in enumerate(keys):
            cached = self.cache.get(key) if self.cache is not None else None
            if cached is not None:
                results[i] = cached
                self.hits += 1
            else:
                todo.setdefault(key, []).append(i)

        missing = list(todo)
        total = len(missing)
        if total:
            logger.info(
                "%s %s: %d of %d prompts cached, generating %d",
                self.backend.name,
                self.backend.model_id,
                len(prompts) - sum(map(len, todo.values())),
                len(prompts),
                total,
            )
        for start in range(0, total, self.chunk_size):
            chunk = missing[start : start + self.chunk_size]
            chunk_prompts = [list(prompts[todo[k][0]]) for k in chunk]
            outputs = self.backend.generate(chunk_prompts, **params)
            self.batches += 1
            if len(outputs) != len(chunk):
                raise RuntimeError(
                    f"backend {self.backend.name} returned {len(outputs)} outputs for {len(chunk)} prompts"
                )
            for key, messages, output in zip(chunk, chunk_prompts, outputs, strict=True):
                self.calls += 1
                if self.cache is not None:
                    self.cache.put(key, output, backend=fields, params=params, messages=messages)
                for i in todo[key]:
                    results[i] = output
            if self.progress is not None:
                self.progress(min(start + len(chunk), total), total)
        return [r if r is not None else "" for r in results]
