"""`objective.refusals` files (data/refusals.py::load_refusals): .txt, .jsonl and .json are read;
anything unusable is one line naming the file (and line or record) and how to fix it."""

from __future__ import annotations

import json

import pytest

from obliviate.data.refusals import load_refusals
from obliviate.errors import UserError


def _one_line_error(path) -> str:
    with pytest.raises(UserError) as error:
        load_refusals(path)
    message = str(error.value)
    assert "\n" not in message and str(path) in message
    return message


def test_json_array_of_strings_or_text_records(tmp_path):
    path = tmp_path / "r.json"
    path.write_text(json.dumps(["I do not know.", " No idea. "]), encoding="utf-8")
    assert load_refusals(path) == ["I do not know.", "No idea."]
    path.write_text(json.dumps([{"text": "I can't say."}, "Unknown to me."], indent=2), encoding="utf-8")
    assert load_refusals(path) == ["I can't say.", "Unknown to me."]
    upper = tmp_path / "R.JSON"
    upper.write_text('["Not sure."]', encoding="utf-8")
    assert load_refusals(upper) == ["Not sure."]


def test_rwku_reject_json_is_refused_with_the_record_and_a_fix(tmp_path):
    path = tmp_path / "reject.json"
    path.write_text(json.dumps([{"intro": "x", "instruction": "Who?", "input": "", "subject": "Ada",
                                 "output": "I'm not certain about that."}], indent=4), encoding="utf-8")
    message = _one_line_error(path)
    assert "record 1" in message and "'text'" in message and "'output' values" in message


@pytest.mark.parametrize("content, expected", [
    ('{"text": "I do not know."}', "expected a JSON array"),
    ('["I do not know.", 3]', "record 2: expected a non-empty string"),
    ('["I do not know.", {"answer": "x"}]', "record 2: a record without a 'text' field"),
    ('["I do not know.", "  "]', "record 2: expected a non-empty string"),
    ("[]", "no refusal strings found"),
    ('["I do not know."', "invalid JSON"),
])
def test_unusable_json_is_one_line(tmp_path, content, expected):
    path = tmp_path / "r.json"
    path.write_text(content, encoding="utf-8")
    assert expected in _one_line_error(path)


def test_json_written_as_txt_is_not_read_as_refusals(tmp_path):
    path = tmp_path / "r.txt"
    path.write_text('[\n  "I do not know."\n]\n', encoding="utf-8")
    message = _one_line_error(path)
    assert f"{path}:1:" in message and "name the file .json" in message


def test_non_utf8_file_is_one_line(tmp_path):
    for name in ("r.txt", "r.jsonl", "r.json"):
        path = tmp_path / name
        path.write_bytes(b"I don\xe9t know.\n")
        assert "not UTF-8 text" in _one_line_error(path)


def test_data_files_are_refused(tmp_path):
    path = tmp_path / "r.csv"
    path.write_text("text\nI do not know.\n", encoding="utf-8")
    assert "not a refusals file" in _one_line_error(path)


def test_txt_and_jsonl_still_read(tmp_path):
    (tmp_path / "r.txt").write_text("\ufeffNo idea.\n\nNot sure.\n...\n\u2014\n", encoding="utf-8")
    assert load_refusals(tmp_path / "r.txt") == ["No idea.", "Not sure.", "...", "\u2014"]  # wordless, not JSON
    (tmp_path / "r.jsonl").write_text('"I can\'t say."\n{"text": "Unknown to me."}\nplain text line\n', encoding="utf-8")
    assert load_refusals(tmp_path / "r.jsonl") == ["I can't say.", "Unknown to me.", "plain text line"]
    (tmp_path / "bad.jsonl").write_text('{"answer": "x"}\n', encoding="utf-8")
    assert f"{tmp_path / 'bad.jsonl'}:1:" in _one_line_error(tmp_path / "bad.jsonl")


def test_a_bad_refusals_file_is_refused_before_the_model_loads(tmp_path):
    """An RT / IDK-DPO run reads its refusals file before loading the model (minutes for a real
    one): here the model path does not exist, so only the early check can name the file."""
    from obliviate.config import load_config
    from obliviate.methods import pipeline

    bad = tmp_path / "refusals.json"
    bad.write_text('{"not": "a list"}')
    config = load_config(None, ["method=rt", f"model={tmp_path / 'no-model-here'}", f"output_dir={tmp_path / 'run'}",
                                f"objective.refusals={bad}"])
    request = {"forget": [{"question": "Q?", "answer": "A."}], "retain": [{"question": "R?", "answer": "B."}]}
    with pytest.raises(UserError, match="refusals.json"):
        pipeline.run(config, request=request)
    assert not (tmp_path / "run").exists()
