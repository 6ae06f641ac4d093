"""obliviate.prepare.openai_compatible against a fake OpenAI-compatible server on 127.0.0.1."""

from __future__ import annotations

import json
import socket
import sys
import threading
import time
import warnings
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from obliviate.errors import UserError
from obliviate.prepare.backend import GenerationBackend
from obliviate.prepare.cache import CachedGenerator, GenerationCache
from obliviate.prepare.openai_compatible import OpenAICompatibleBackend

SECRET = "sk-test-SECRET-value-1234567890"


class FakeServer:
    """Serves /v1/chat/completions on 127.0.0.1:<random port> in a background thread."""

    def __init__(self):
        self.lock = threading.Lock()
        self.requests: list[dict] = []
        self.auth_headers: list[str | None] = []
        self.fail_first: list[int] = []  # statuses to answer before succeeding
        self.always_status: int | None = None
        self.delay_s = 0.0
        self.raw_body: bytes | None = None  # a 200 answer's body as sent, instead of a JSON reply
        self.active = 0
        self.max_active = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output quiet
                pass

            def _send(self, status: int, payload: dict):
                body = server.raw_body if server.raw_body is not None and status == 200 else json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout test)
                    pass

            def do_POST(self):
                length = int(self.headers.get("Content-Length", 0))
                data = json.loads(self.rfile.read(length))
                with server.lock:
                    server.active += 1
                    server.max_active = max(server.max_active, server.active)
                    server.requests.append(data)
                    server.auth_headers.append(self.headers.get("Authorization"))
                    status = server.always_status or (server.fail_first.pop(0) if server.fail_first else 200)
                try:
                    if server.delay_s:
                        time.sleep(server.delay_s)
                    if self.path != "/v1/chat/completions":
                        code, payload = 404, {"error": {"message": "no such route"}}
                    elif status != 200:
                        code, payload = status, {"error": {"message": f"status {status}"}}
                    else:
                        last = data["messages"][-1]["content"]
                        reply = (
                            f"echo[{data['model']}|seed={data['seed']}|t={data['temperature']}|"
                            f"max={data['max_tokens']}]: {last}"
                        )
                        code, payload = 200, {"choices": [{"index": 0, "message": {"role": "assistant", "content": reply}}]}
                finally:
                    # leave the count before answering: once the client has its answer it may
                    # start the next request, which must not be counted as overlapping this one
                    with server.lock:
                        server.active -= 1
                self._send(code, payload)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = FakeServer()
    yield s
    s.close()


def msgs(text: str, **meta) -> list[dict]:
    return [{"role": "system", "content": "You are helpful."}, {"role": "user", "content": text, **meta}]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_openai_backend_sends_request_and_key(server, monkeypatch):
    monkeypatch.setenv("MY_KEY", SECRET)
    backend = OpenAICompatibleBackend(server.base_url, "test-model", api_key_env="MY_KEY")
    assert isinstance(backend, GenerationBackend)
    out = backend.generate([msgs("a"), msgs("b", question="meta is dropped")], max_new_tokens=7, seed=3)
    assert out == ["echo[test-model|seed=3|t=0.0|max=7]: a", "echo[test-model|seed=3|t=0.0|max=7]: b"]
    assert server.auth_headers == [f"Bearer {SECRET}"] * 2
    body = server.requests[0]
    assert set(body) == {"model", "messages", "max_tokens", "temperature", "top_p", "seed"}
    assert all(set(m) <= {"role", "content", "name"} for r in server.requests for m in r["messages"])
    assert SECRET not in repr(backend) and SECRET not in json.dumps(backend.cache_key_fields())


def test_openai_backend_no_key_no_header(server, monkeypatch):
    monkeypatch.delenv("MY_KEY", raising=False)
    backend = OpenAICompatibleBackend(server.base_url + "/", "m", api_key_env="MY_KEY")
    assert backend.generate([msgs("x")]) == ["echo[m|seed=0|t=0.0|max=256]: x"]
    assert server.auth_headers == [None]


def test_openai_backend_retries_5xx(server):
    server.fail_first = [500, 503]
    backend = OpenAICompatibleBackend(server.base_url, "m")
    assert backend.generate([msgs("retry me")]) == ["echo[m|seed=0|t=0.0|max=256]: retry me"]
    assert len(server.requests) == 3


def test_openai_backend_retries_429_then_gives_up(server):
    server.always_status = 429
    backend = OpenAICompatibleBackend(server.base_url, "m", max_retries=3)
    with pytest.raises(UserError, match=r"HTTP 429.*after 3 tries"):
        backend.generate([msgs("x")])
    assert len(server.requests) == 3


def test_openai_backend_401_names_env_var_not_key(server, monkeypatch):
    monkeypatch.setenv("MY_KEY", SECRET)
    server.always_status = 401
    backend = OpenAICompatibleBackend(server.base_url, "m", api_key_env="MY_KEY")
    with pytest.raises(UserError) as info:
        backend.generate([msgs("x")])
    message = str(info.value)
    assert "MY_KEY" in message and "401" in message
    assert SECRET not in message and "\n" not in message
    assert len(server.requests) == 1  # 4xx is not retried


def test_openai_backend_error_in_parallel_batch_stops_quickly(server):
    server.always_status = 403
    server.delay_s = 0.02
    backend = OpenAICompatibleBackend(server.base_url, "m", max_concurrency=4)
    start = time.monotonic()
    with pytest.raises(UserError, match="OPENAI_API_KEY"):
        backend.generate([msgs(f"q{i}") for i in range(40)])
    assert time.monotonic() - start < 5
    assert len(server.requests) < 40  # pending requests were cancelled


def test_openai_backend_404_hints_base_url(server):
    backend = OpenAICompatibleBackend(f"http://127.0.0.1:{server.port}", "m")  # missing /v1
    with pytest.raises(UserError, match=r"404.*base_url"):
        backend.generate([msgs("x")])


def test_openai_backend_unreachable_is_quick_user_error():
    port = free_port()
    backend = OpenAICompatibleBackend(f"http://127.0.0.1:{port}/v1", "m", max_retries=4)
    start = time.monotonic()
    with pytest.raises(UserError) as info:
        backend.generate([msgs("x"), msgs("y")])
    assert time.monotonic() - start < 5
    assert str(info.value) == (
        f"cannot reach http://127.0.0.1:{port}/v1 (connection refused): "
        "start the server or fix generation.base_url"
    )


def test_openai_backend_respects_concurrency(server):
    server.delay_s = 0.05
    backend = OpenAICompatibleBackend(server.base_url, "m", max_concurrency=3)
    prompts = [msgs(f"q{i}") for i in range(12)]
    out = backend.generate(prompts)
    assert out == [f"echo[m|seed=0|t=0.0|max=256]: q{i}" for i in range(12)]
    assert 2 <= server.max_active <= 3


def test_openai_backend_rejects_bad_settings():
    with pytest.raises(UserError, match="base_url"):
        OpenAICompatibleBackend("127.0.0.1:8000/v1", "m")
    backend = OpenAICompatibleBackend("http://127.0.0.1:1/v1", "m")
    with pytest.raises(UserError, match="top_p"):
        backend.generate([msgs("x")], top_p=0)
    with pytest.raises(UserError, match="temperature"):
        backend.generate([msgs("x")], temperature=-1)


def test_api_key_never_in_cache_files(server, tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    backend = OpenAICompatibleBackend(server.base_url, "m")
    gen = CachedGenerator(backend, GenerationCache(tmp_path / "cache"))
    out = gen.generate([msgs(f"q{i}") for i in range(3)])
    assert len(out) == 3 and gen.calls == 3
    files = [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]
    assert len(files) == 3
    for path in files:
        text = path.read_text()
        assert SECRET not in text and "sk-test" not in text
        assert json.loads(text)["output"] in out
    assert not list((tmp_path / "cache").rglob(".tmp-*"))


def test_openai_backend_timeout_is_one_line(server):
    server.delay_s = 1.0
    backend = OpenAICompatibleBackend(server.base_url, "m", timeout_s=0.2, max_retries=1)
    with pytest.raises(UserError) as info:
        backend.generate([msgs("slow")])
    assert str(info.value) == (  # the server is there: starting it or fixing the URL would not help
        f"{server.base_url} did not answer within 0.2s, 1 try: raise generation.timeout_s, "
        "lower the load on the server, or check its log"
    )


def test_a_body_that_is_not_json_is_one_line(server):
    """A 200 answer with a torn JSON body was a JSONDecodeError traceback (the client does not wrap it)."""
    server.raw_body = b'{"choices": [ {"message": '
    backend = OpenAICompatibleBackend(server.base_url, "m", max_retries=1)
    with pytest.raises(UserError, match=r"returned a response without choices\[0\].message.content: 'not JSON: "):
        backend.generate([msgs("q")])


def test_missing_openai_client_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "openai", None)  # import openai now raises ImportError
    backend = OpenAICompatibleBackend("http://127.0.0.1:1/v1", "m")
    with pytest.raises(UserError, match=r"needs the openai client: pip install 'obliviate\[openai\]'"):
        backend.generate([msgs("x")])


@pytest.mark.parametrize("url, what", [("http://alice:hunter2@127.0.0.1:1/v1", "user:password@"),
                                       ("https://llm.example/v1?api_key=hunter2", "?api_key="),
                                       ("https://llm.example/v1?api-version=1&token=hunter2", "?token=")])
def test_a_credential_in_the_url_is_refused_unshown(url, what):
    """Such a URL was saved in config.yaml and printed in every error (with the Basic auth header
    a server echoed); the key belongs in the environment."""
    with pytest.raises(UserError) as info:
        OpenAICompatibleBackend(url, "m", option="--judge_url")
    assert f"--judge_url holds a credential ({what})" in str(info.value) and "hunter2" not in str(info.value)
    OpenAICompatibleBackend("https://llm.example/v1?api-version=2024-06-01", "m")  # a plain query stays


def test_api_key_env_that_holds_the_key_is_refused_unshown():
    """The key given where its variable's name goes was saved in config.yaml and printed by the 401 message."""
    with pytest.raises(UserError, match=r"^generation.api_key_env must name an environment variable") as info:
        OpenAICompatibleBackend("http://127.0.0.1:1/v1", "m", api_key_env=SECRET)
    assert SECRET not in str(info.value)


@pytest.mark.parametrize("key", [SECRET + "\n", f"{SECRET}\u00e9"])
def test_a_key_no_header_can_carry_is_one_line(server, monkeypatch, key):
    """A trailing newline read as 'cannot reach ... start the server'; a non-ASCII key was a
    UnicodeEncodeError traceback."""
    monkeypatch.setenv("MY_KEY", key)
    backend = OpenAICompatibleBackend(server.base_url, "m", api_key_env="MY_KEY", max_retries=1)
    with pytest.raises(UserError, match=r"^the environment variable MY_KEY holds a space, a newline") as info:
        backend.generate([msgs("x")])
    assert SECRET not in str(info.value) and not server.requests


def test_a_key_sent_in_clear_text_to_another_machine_is_warned_about(monkeypatch):
    """An exported OPENAI_API_KEY went to any base_url, a LAN server over plain http included."""
    from obliviate.credentials import check_key

    with pytest.warns(UserWarning, match=r"MY_KEY is sent unencrypted \(plain http\) to 10.0.0.7") as caught:
        check_key(SECRET, "MY_KEY", "http://10.0.0.7:8000/v1", local=False)
    assert SECRET not in str(caught[0].message)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_key(SECRET, "MY_KEY", "https://10.0.0.7/v1", local=False)
        check_key(SECRET, "MY_KEY", "http://127.0.0.1:8000/v1", local=True)


@pytest.mark.parametrize("url", ["alice:hunter2@10.0.0.7:8000/v1", "http:alice:hunter2@10.0.0.7/v1",
                                 "//alice:hunter2@10.0.0.7/v1", "http://[::1/v1?api_key=hunter2"])
def test_a_credential_in_a_url_urlsplit_misreads_is_refused_unshown(url):
    """Without '//' urlsplit reads 'alice' as the scheme (no netloc, no '@' seen), an unbalanced
    '[' raises: such a URL passed the config check, was saved in config.yaml and the backend's
    'must be an http(s) URL ..., got <url>' printed the key."""
    from obliviate.config import load_config

    with pytest.raises(UserError) as info:
        OpenAICompatibleBackend(url, "m")
    assert "holds a credential" in str(info.value) and "hunter2" not in str(info.value)
    with pytest.raises(UserError, match="holds a credential") as info:
        load_config(None, [("generation.base_url", url)])
    assert "hunter2" not in str(info.value)
