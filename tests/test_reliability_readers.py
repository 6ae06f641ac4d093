"""Every reader: bad bytes named with file and line, a UTF-8 BOM accepted, 1-based lines and
records, bounded nesting and numbers, YAML aliases refused before they expand, every used
field validated; and the network fails fast in one line."""

from __future__ import annotations

import json
import socket
import time

import pytest

from obliviate.config import load_config
from obliviate.data.loaders import load_records
from obliviate.data.request import load_request
from obliviate.errors import UserError
from obliviate.models import check_hub_reachable, resolve_model

ROWS = [{"question": "Who?", "answer": "Her."}, {"question": "When?", "answer": "Then."}]


def one_line(call, *args, match: str):
    with pytest.raises(UserError, match=match) as caught:
        call(*args)
    assert "\n" not in str(caught.value) and len(str(caught.value)) < 600
    return str(caught.value)


@pytest.mark.parametrize("name, data", [
    ("bom.json", b"\xef\xbb\xbf" + json.dumps(ROWS).encode()),
    ("bom.jsonl", b"\xef\xbb\xbf" + "\n".join(json.dumps(r) for r in ROWS).encode()),
    ("excel.csv", b"\xef\xbb\xbfquestion,answer\r\nWho?,Her.\r\nWhen?,Then.\r\n"),
])
def test_a_utf8_byte_order_mark_is_accepted(tmp_path, name, data):
    (tmp_path / name).write_bytes(data)
    assert load_records(str(tmp_path / name)) == ROWS


@pytest.mark.parametrize("name, data, line", [
    ("latin1.jsonl", json.dumps(ROWS[0]).encode() + b"\n" + '{"question": "caf\xe9", "answer": "x"}'.encode("latin-1"), 2),
    ("utf16.json", json.dumps(ROWS).encode("utf-16"), 1),
    ("latin1.csv", b"question,answer\nq,a\nq2,\xe9t\xe9\n", 3),
    ("binary.yaml", b"forget:\n  - \x89PNG\xff\xfe\n", 2),
])
def test_bad_bytes_name_the_file_and_line(tmp_path, name, data, line):
    (tmp_path / name).write_bytes(data)
    message = one_line(load_request, tmp_path / name, match="not UTF-8")
    assert f"{tmp_path / name}:{line}:" in message


def test_a_binary_config_is_one_line(tmp_path):
    (tmp_path / "run.yaml").write_bytes(b"\x00\x01\xff\xfe" * 50)
    one_line(load_config, tmp_path / "run.yaml", match=r"run\.yaml:1: not UTF-8")


@pytest.mark.parametrize("name, text, match", [
    ("digits.json", '[{"question": "q", "answer": ' + "9" * 10_000 + "}]", r"digits\.json: unusable JSON .*digits"),
    ("digits.jsonl", '{"question": "q", "answer": ' + "9" * 10_000 + "}", r"digits\.jsonl:1: unusable JSON"),
    ("deep.json", "[" * 100_000 + "]" * 100_000, r"deep\.json: .*nested"),
    ("deep.jsonl", '{"a": ' + "[" * 5_000 + "]" * 5_000 + "}", r"deep\.jsonl:1: .*nested"),
    ("deep.yaml", "forget: " + "[" * 20_000 + "]" * 20_000, r"deep\.yaml: .*nested"),
    ("digits.yaml", "forget:\n  - question: q\n    answer: " + "7" * 10_000, r"digits\.yaml:3: invalid YAML.*digits"),
    ("surrogate.json", '[{"question": "q\\ud800", "answer": "a"}]', r"surrogate"),
])
def test_nesting_and_number_sizes_are_bounded(tmp_path, name, text, match):
    (tmp_path / name).write_text(text)
    one_line(load_request, tmp_path / name, match=match)


def test_a_yaml_alias_bomb_is_refused_before_it_expands(tmp_path):
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 10)]
    (tmp_path / "bomb.yaml").write_text("\n".join(lines + ["method: *a9"]) + "\n")
    (tmp_path / "request.yaml").write_text("\n".join(lines + ["forget: *a9"]) + "\n")
    started = time.perf_counter()
    one_line(load_config, tmp_path / "bomb.yaml", match=r"bomb\.yaml:2: invalid YAML \(aliases")
    one_line(load_request, tmp_path / "request.yaml", match=r"request\.yaml:2: invalid YAML \(aliases")
    assert time.perf_counter() - started < 5


def test_an_override_alias_never_expands_into_the_message():
    with pytest.raises(UserError) as caught:
        load_config(None, ["method=&a [*a, *a]"])
    assert len(str(caught.value)) < 600


@pytest.mark.parametrize("text, match", [
    ('{"forget": [{"question": "q", "answer": "a"}], "passages": [{"text": null}]}', r"passage 1 has no text"),
    ('{"forget": [{"question": "q", "answer": "a"}], "passages": [3]}', r"passage 1 has no text"),
    ('{"forget": [{"question": "q", "answer": "a"}, 5]}', r"record 2 is a int"),
    ('{"forget": [{"question": "q", "answer": "a"}], "name": ["x"]}', r"'name' must be a string"),
    ('{"forget": {"dataset": 5}}', r"'dataset' must be a string"),
])
def test_every_used_field_is_validated(tmp_path, text, match):
    (tmp_path / "request.json").write_text(text)
    one_line(load_request, tmp_path / "request.json", match=match)


def test_record_numbers_and_lines_count_from_one(tmp_path):
    (tmp_path / "data.jsonl").write_text(json.dumps(ROWS[0]) + "\n\n" + '{"question": "q"}\n')
    one_line(load_request, tmp_path / "data.jsonl", match="record 2 has no 'answer'")
    (tmp_path / "bad.jsonl").write_text(json.dumps(ROWS[0]) + "\n" + '{"question": "a\u2028b", "answer": 1' + "\n")
    one_line(load_request, tmp_path / "bad.jsonl", match=r"bad\.jsonl:2: invalid JSON line")


def test_a_model_directory_with_a_bad_config_is_one_line(tmp_path):
    (tmp_path / "config.json").write_bytes(b'{"model_type": "llama", "name": "caf\xe9"}')
    one_line(resolve_model, str(tmp_path), match=r"config\.json:1: not UTF-8")


def test_an_unreachable_hub_fails_fast_in_one_line(monkeypatch):
    from huggingface_hub import constants

    with socket.socket() as sock:  # a local port nothing listens on: connection refused
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{port}")
    started = time.perf_counter()
    message = one_line(check_hub_reachable, "someone/not-cached-model", match="cannot be reached")
    assert time.perf_counter() - started < 5 and "someone/not-cached-model" in message
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    one_line(check_hub_reachable, "someone/not-cached-model", match="HF_HUB_OFFLINE")


def test_a_hub_dataset_without_the_hub_comes_from_the_cache_or_fails_fast(monkeypatch):
    """Where the hub cannot be reached, datasets runs offline for the call (its cache, or an error at
    once instead of half a minute of retries); where it can, online as before."""
    import datasets
    from huggingface_hub import constants

    from obliviate.data import loaders

    with socket.socket() as sock:  # a local port nothing listens on: connection refused
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    offline_during_call = []

    def load_dataset(name, config, split):
        offline_during_call.append(datasets.config.HF_HUB_OFFLINE)
        if datasets.config.HF_HUB_OFFLINE:
            raise ConnectionError(f"Couldn't reach '{name}' on the Hub (OfflineModeIsEnabled)")
        return [{"question": "q", "answer": "a"}]

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    message = one_line(loaders._read_hub_dataset, "someone/data", "forget01", None, match="cannot be reached")
    assert "not in the local cache" in message and f"127.0.0.1:{port}" in message
    assert offline_during_call == [True] and datasets.config.HF_HUB_OFFLINE is False  # restored after the call
    monkeypatch.setattr("obliviate.models.hub_unreachable", lambda timeout_s=3.0: None)
    assert loaders._read_hub_dataset("someone/data", "forget01", None) == [{"question": "q", "answer": "a"}]
    assert offline_during_call == [True, False]


def test_behind_a_proxy_the_hub_check_connects_to_the_proxy(monkeypatch):
    """The hub client goes through HTTPS_PROXY; so does the check (a direct connection would find
    the hub unreachable and make datasets run offline on a machine that can download)."""
    from huggingface_hub import constants

    from obliviate.models import hub_unreachable

    monkeypatch.setattr(constants, "ENDPOINT", "https://hub.example.invalid")  # no direct route
    for name in ("NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy", "https_proxy"):
        monkeypatch.delenv(name, raising=False)
    with socket.socket() as proxy:
        proxy.bind(("127.0.0.1", 0))
        proxy.listen()
        monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{proxy.getsockname()[1]}")
        assert hub_unreachable(timeout_s=2.0) is None
        closed = proxy.getsockname()[1]
    monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{closed}")  # now nothing listens there
    reason = hub_unreachable(timeout_s=2.0)
    assert reason.startswith("hub.example.invalid:443 cannot be reached through the proxy 127.0.0.1:")
