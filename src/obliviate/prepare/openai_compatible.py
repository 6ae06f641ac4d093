"""Generate through any server that speaks the OpenAI ``/chat/completions`` protocol.

OpenAI itself, vLLM, llama.cpp, TGI, Ollama ...: the way to prepare data with an LLM too large
to run beside the one being unlearned. Requests go through the official ``openai`` client
(``pip install 'obliviate[openai]'``), which brings the timeouts, the retries with backoff and
``Retry-After``; this module only turns its failures into one-line errors. The API key stays in
the request header (never in logs, caches, error messages or ``repr``).
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import socket
import threading
import urllib.parse
from collections.abc import Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from typing import Any

from obliviate.credentials import check_key, check_key_settings
from obliviate.errors import UserError
from obliviate.prepare.backend import Messages, chat_messages, check_sampling

logger = logging.getLogger(__name__)

__all__ = ["OpenAICompatibleBackend"]

_INSTALL_HINT = "pip install 'obliviate[openai]' (or pip install 'openai>=2.0')"
def _openai() -> Any:
    try:
        import openai
    except ImportError:
        raise UserError(f"the openai-compatible backend needs the openai client: {_INSTALL_HINT}") from None
    return openai


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
    ``api_key_env`` at each batch and sent as ``Authorization: Bearer ...``; when the variable
    is unset no header is sent (local servers usually need none). The key is never logged,
    never part of a cache key and never put in an error message.

    Up to ``max_concurrency`` requests run at once (one request per conversation). Each
    request is tried at most ``max_retries`` times in total by the ``openai`` client: 408,
    409, 429, 5xx, connection errors and timeouts are retried with its exponential backoff
    (or the server's ``Retry-After``); other 4xx answers fail at once, and so does a refused
    connection to this machine (nothing listens there: waiting will not start it). Failures
    become a one-line :class:`UserError`; the first failure in a batch cancels the requests
    not yet started.

    ``option``, ``model_option``, ``concurrency_option``: the caller's names of the URL, model
    and concurrency settings, which the error messages tell the user to fix (a run config's
    ``generation.*`` by default; the harmful benchmark's judge passes ``--judge_url`` ...);
    ``concurrency_option`` None: the caller has no such setting, none is suggested.

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
        *,
        option: str = "generation.base_url",
        model_option: str = "generation.model",
        concurrency_option: str | None = "generation.max_concurrency",
        key_option: str = "generation.api_key_env",
    ):
        check_key_settings(base_url, api_key_env, option, key_option)
        try:
            parsed = urllib.parse.urlparse(str(base_url))
            port = parsed.port  # raises for a port out of range or not a number
        except ValueError:
            parsed, port = None, None
        if parsed is None or parsed.scheme not in ("http", "https") or not parsed.netloc or not parsed.hostname:
            raise UserError(
                f"{option} must be an http(s) URL such as http://127.0.0.1:8000/v1, got {base_url!r}"
            )
        if not model:
            raise UserError(f"{model_option} must name the model the server serves")
        if max_concurrency < 1:
            raise UserError(f"{concurrency_option or 'max_concurrency'} must be >= 1, got {max_concurrency}")
        if max_retries < 1:
            raise UserError(f"generation.max_retries must be >= 1 (total tries), got {max_retries}")
        #: the caller's names of the URL and model settings, named in error messages
        self.option, self.model_option, self.concurrency_option = option, model_option, concurrency_option
        self.base_url = str(base_url).rstrip("/")
        self.model = str(model)
        self.model_id = self.model
        self.api_key_env = api_key_env
        self.max_concurrency = int(max_concurrency)
        self.timeout_s = float(timeout_s)
        self.max_retries = int(max_retries)
        #: conversations per CachedGenerator chunk: a few rounds of full concurrency.
        self.batch_size = 4 * self.max_concurrency
        self._host, self._port = parsed.hostname, port or (443 if parsed.scheme == "https" else 80)
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

    # -- the client and one request -------------------------------------------------------

    def _client(self, openai: Any, key: str | None) -> Any:
        # a local server is never reached through a proxy of the environment
        http_client = openai.DefaultHttpxClient(trust_env=False) if self._local else None
        return openai.OpenAI(
            base_url=self.base_url,
            api_key=key or "no-key",  # with no key the Authorization header is omitted per request
            timeout=self.timeout_s,
            max_retries=self.max_retries - 1,
            http_client=http_client,
        )

    def _check_listening(self) -> None:
        """A refused connection to this machine fails at once: retrying would not start a server."""
        if not self._local:
            return
        try:
            socket.create_connection((self._host, self._port), timeout=self.timeout_s).close()
        except ConnectionRefusedError:
            raise UserError(
                f"cannot reach {self.base_url} (connection refused): start the server or fix {self.option}"
            ) from None
        except OSError:
            pass  # anything else is the client's to retry and report

    def _request(self, client: Any, key: str | None, messages: Messages, params: dict[str, Any],
                 stop: threading.Event) -> str:
        if stop.is_set():
            raise _Cancelled()
        openai = _openai()
        headers = {} if key else {"Authorization": openai.Omit()}
        try:
            response = client.chat.completions.create(
                model=self.model, messages=chat_messages(messages), extra_headers=headers, **params
            )
        except openai.APIError as err:
            raise self._failure(openai, err, key) from None
        except json.JSONDecodeError as err:  # a 200 body that is not JSON: the client raises json's own error
            raise self._no_content(_redact(f"not JSON: {err}", key)) from None
        try:
            content = response.choices[0].message.content
        except (AttributeError, IndexError, TypeError):
            raise self._no_content(_redact(repr(response), key)) from None
        return (content or "").strip()

    def _no_content(self, shown: str) -> UserError:
        return UserError(
            f"{self.url} returned a response without choices[0].message.content: {shown!r}; "
            "is it an OpenAI-compatible server?"
        )

    def _failure(self, openai: Any, err: Exception, key: str | None) -> UserError:
        """The one-line error an ``openai.APIError`` (after the client's retries) becomes."""
        tries = f"{self.max_retries} {'try' if self.max_retries == 1 else 'tries'}"
        if isinstance(err, openai.APIStatusError):
            return self._status_failure(err, key, tries)
        if isinstance(err, openai.APITimeoutError):  # it is there, but slow
            raise_it = "raise generation.timeout_s, " if self.option == "generation.base_url" else ""
            return UserError(f"{self.base_url} did not answer within {self.timeout_s:g}s, {tries}: {raise_it}lower "
                             "the load on the server, or check its log")
        if isinstance(err, openai.APIConnectionError):
            reason = _connection_reason(err, key)
        else:  # a 200 answer the client could not parse
            return self._no_content(_redact(str(getattr(err, "body", None) or err), key))
        return UserError(
            f"cannot reach {self.base_url} ({reason}) after {tries}: start the server or fix {self.option}"
        )

    def _status_failure(self, err: Any, key: str | None, tries: str) -> UserError:
        status = int(err.status_code)
        body = err.body
        detail = body.get("message", body) if isinstance(body, dict) else body
        detail = _redact(str(detail or ""), key)
        if status in (408, 409, 429) or status >= 500:
            lower = f", lower {self.concurrency_option}" if self.concurrency_option else ""
            return UserError(
                f"{self.base_url} kept failing (HTTP {status}) after {tries}: the server is overloaded "
                f"or broken; retry later{lower} or check the server log"
            )
        if status in (401, 403):
            return UserError(
                f"{self.base_url} rejected the request (HTTP {status}, unauthorized): set the "
                f"environment variable {self.api_key_env} to a valid API key"
            )
        if status == 404:
            return UserError(
                f"{self.url} answered HTTP 404 ({detail or 'not found'}): check {self.option} "
                f"(it usually ends in /v1) and {self.model_option} ({self.model!r})"
            )
        return UserError(
            f"{self.url} refused the request (HTTP {status}: {detail or 'no detail'}): check "
            f"{self.model_option} ({self.model!r}) and the sampling settings"
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
        openai = _openai()
        self._check_listening()
        key = os.environ.get(self.api_key_env) or None
        if key is not None:
            check_key(key, self.api_key_env, self.base_url, self._local)
        client = self._client(openai, key)
        params = {"max_tokens": max_new_tokens, "temperature": temperature, "top_p": top_p, "seed": seed}
        stop = threading.Event()
        with client, ThreadPoolExecutor(max_workers=min(self.max_concurrency, len(prompts))) as pool:
            futures = {pool.submit(self._request, client, key, m, params, stop): i for i, m in enumerate(prompts)}
            done, pending = wait(futures, return_when=FIRST_EXCEPTION)
            failed = [f for f in done if f.exception() is not None and not isinstance(f.exception(), _Cancelled)]
            if failed:
                stop.set()
                for f in pending:
                    f.cancel()
                # report the failure of the earliest prompt, so the message is deterministic
                raise min(failed, key=lambda f: futures[f]).exception()  # type: ignore[misc]
            return [f.result() for f in futures]  # in prompt order


def _redact(text: str, key: str | None) -> str:
    if key:
        text = text.replace(key, "***")
    return " ".join(text.split())[:200]


def _connection_reason(err: Exception, key: str | None) -> str:
    """A short cause of an ``openai.APIConnectionError``, from the exceptions under it."""
    cause: BaseException | None = err
    while cause is not None:
        if isinstance(cause, ConnectionRefusedError) or "refused" in str(cause).lower():
            return "connection refused"
        if isinstance(cause, socket.gaierror) or "name or service not known" in str(cause).lower():
            return "unknown host"
        cause = cause.__cause__ or cause.__context__
    return _redact(str(err), key) or type(err).__name__
