"""Property-based tests of every reader and of the config parser (hypothesis): for any bytes,
a one-line UserError or a valid value; never another exception; nothing written. The readers
and the check are benchmarks/fuzz_readers.py's, which runs >= 10,000 inputs per reader."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from obliviate.errors import UserError

SPEC = importlib.util.spec_from_file_location(
    "fuzz_readers", Path(__file__).resolve().parents[1] / "benchmarks" / "fuzz_readers.py")
fuzz = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(fuzz)

JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
        st.sampled_from(["question", "answer", "forget", "retain", "passages", "text", "name", "subject",
                         "perturbed_answer", "dataset", "train", "learning_rate", "method", "seed"]) | st.text(max_size=8),
        inner, max_size=5),
    max_leaves=20,
)


def as_bytes(reader: str, value) -> bytes:
    import yaml

    if reader.endswith(("yaml", "override")):
        return yaml.safe_dump(value, allow_unicode=True).encode("utf-8", "surrogatepass")
    if reader == "records.jsonl" and isinstance(value, list):
        return "\n".join(json.dumps(v) for v in value).encode()
    return json.dumps(value).encode()


@pytest.mark.parametrize("reader", sorted(fuzz.READERS))
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.one_of(st.binary(max_size=300), st.tuples(JSONISH, st.booleans())))
def test_any_input_is_a_value_or_one_line(tmp_path, reader, data):
    if isinstance(data, tuple):  # structured: valid syntax, arbitrary shape; sometimes with a BOM
        value, bom = data
        data = (b"\xef\xbb\xbf" if bom else b"") + as_bytes(reader, value)
    assert fuzz.check(reader, data, tmp_path / reader) in ("ok", "refused")


@pytest.mark.parametrize("text", ['{"forget": "x.json", "a\\nb": 1}', 'forget: x.json\n"a\\nb": 1\n'])
def test_an_unknown_request_key_holding_a_newline_stays_on_one_line(tmp_path, text):
    """Found by the reader fuzz (CI, 2026-11-27): the key was printed raw, newline included."""
    from obliviate.data.request import load_request

    path = tmp_path / ("request.json" if text.startswith("{") else "request.yaml")
    path.write_text(text)
    with pytest.raises(UserError) as caught:
        load_request(path)
    message = str(caught.value)
    assert "\n" not in message and "'a\\nb'" in message and "unknown key" in message


def test_an_unknown_bench_or_benchmark_key_holding_a_newline_stays_on_one_line():
    from obliviate.bench.rows import _no_unknown
    from obliviate.evaluation.registry import build_options, get_benchmark

    with pytest.raises(UserError) as caught:
        _no_unknown({"a\nb": 1}, ("rows", "common"), "bench.yaml")
    assert "\n" not in str(caught.value) and "'a\\nb'" in str(caught.value)
    with pytest.raises(UserError) as caught:
        build_options(get_benchmark("tofu"), {"a\nb": 1})
    assert "\n" not in str(caught.value) and "'a\\nb'" in str(caught.value)


def test_a_raw_passage_record_is_a_forget_item_without_a_question(tmp_path):
    """Found by this fuzz in CI: `[{"text": "0"}]` is a request whose forget set is one raw passage
    (PassageItem, no question), which the harness had taken for a broken item."""
    assert fuzz.check("request.json", b'[{"text": "0"}]', tmp_path / "a") == "ok"
    assert fuzz.check("request.json", b'[{"text": " "}]', tmp_path / "b") == "refused"
