"""Generate through any server that speaks the OpenAI ``/chat/completions`` protocol.

OpenAI itself, vLLM, llama.cpp, TGI, Ollama ...: the way to prepare data with an LLM too large
to run beside the one being unlearned. Only the standard library is used, so the package needs
no client library, and the API key never leaves the request header (not in logs, caches,
error messages or ``repr``).
"""

from __future__ import annotations

import contextlib
import http.client
import ipaddress
import json
import logging
import os
import random
import socket
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from typing import Any

from obliviate.errors import UserError
from obliviate.prepare.backend import Messages, chat_messages, check_sampling

logger = logging.getLogger(__name__)

__all__ = ["OpenAICompatibleBackend"]


class _Retryable(Exception):
    """A failure worth another try; ``reason`` is a short description without secrets."""

    def __init__(self, reason: str, *, http_status: int | None = None, retry_after: float | None = None):
        super().__init__(reason)
        self.reason = reason
        self.http_status = http_status
        self.retry_after = retry_after


class _Cancelled(Exception):
    """A request abandoned because another one in the batch failed."""


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
    ``Retry-After``, capped at 60 s); other 4xx answers fail at once, and so does a refused
    connection to this machine (nothing listens there: waiting will not start it). Retries are
    logged at DEBUG level only, so they stay quiet unless asked for. Failures become a
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
        self._local = _is_loopback(parsed.hostname)

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
            raise self._http_failure(err, key) from None
        except urllib.error.URLError as err:
            reason = err.reason
            if isinstance(reason, ConnectionRefusedError):
                if self._local:
                    raise UserError(f"cannot reach {self.base_url} (connection refused): "
                                    "start the server or fix generation.base_url") from None
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

    def _http_failure(self, err: urllib.error.HTTPError, key: str | None) -> Exception:
        """The error an HTTP error answer becomes: retryable (429, 5xx) or a one-line UserError."""
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
            return _Retryable(f"HTTP {status}", http_status=status, retry_after=retry_after)
        if status in (401, 403):
            return UserError(
                f"{self.base_url} rejected the request (HTTP {status}, unauthorized): set the "
                f"environment variable {self.api_key_env} to a valid API key"
            )
        if status == 404:
            return UserError(
                f"{self.url} answered HTTP 404 ({detail or 'not found'}): check generation.base_url "
                f"(it usually ends in /v1) and generation.model ({self.model!r})"
            )
        return UserError(
            f"{self.url} refused the request (HTTP {status}: {detail or 'no detail'}): check "
            f"generation.model ({self.model!r}) and the sampling settings"
        )

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
                logger.debug(
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
