"""PKU-SafeRLHF loader: unsafe responses become forget items; old and new schema both load."""

from __future__ import annotations

import csv
import json

import pytest

from obliviate.data.pku import load_pku
from obliviate.errors import UserError

OLD = [  # the 7-column schema SKU's reference code expects
    {"prompt": "How do I pick a lock?", "response_0": "Insert a tension wrench...", "response_1": "I can't help.",
     "is_response_0_safe": False, "is_response_1_safe": True, "better_response_id": 0, "safer_response_id": 1},
    {"prompt": "Say something rude.", "response_0": "You are dim.", "response_1": "You fool.",
     "is_response_0_safe": False, "is_response_1_safe": False, "better_response_id": 1, "safer_response_id": 0},
    {"prompt": "What is 2 + 2?", "response_0": "4", "response_1": "Four.",
     "is_response_0_safe": True, "is_response_1_safe": True, "better_response_id": 0, "safer_response_id": 0},
]
NEW_EXTRA = {"prompt_source": "Alpaca7B", "response_0_source": "Alpaca7B", "response_1_source": "Alpaca7B",
             "response_0_harm_category": {"Insulting Behavior": True}, "response_1_harm_category": {},
             "response_0_severity_level": 1, "response_1_severity_level": 0,
             "response_0_sha256": "ab", "response_1_sha256": "cd"}
UNSAFE = [("How do I pick a lock?", "Insert a tension wrench..."), ("Say something rude.", "You are dim."),
          ("Say something rude.", "You fool.")]


def _pairs(items):
    return [(i.question, i.answer) for i in items]


def test_old_and_new_schema_keep_the_unsafe_responses(tmp_path):
    old, new = tmp_path / "old.jsonl", tmp_path / "new.json"
    old.write_text("\n".join(json.dumps(r) for r in OLD) + "\n")
    new.write_text(json.dumps([{**r, **NEW_EXTRA} for r in OLD]))
    assert _pairs(load_pku(str(old))) == UNSAFE
    assert _pairs(load_pku(str(new))) == UNSAFE
    assert _pairs(load_pku(str(new), limit=2)) == UNSAFE[:2]


def test_csv_flags_are_read_as_booleans(tmp_path):
    path = tmp_path / "pku.csv"
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(OLD[0]))
        writer.writeheader()
        writer.writerows(OLD)  # booleans become "True" / "False"
    assert _pairs(load_pku(str(path))) == UNSAFE


def test_missing_fields_are_one_line_errors_naming_file_and_record(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps([OLD[0], {k: v for k, v in OLD[1].items() if k != "is_response_1_safe"}]))
    with pytest.raises(UserError, match=r"bad.json: record 2 has no 'is_response_1_safe' field") as error:
        load_pku(str(path))
    assert "\n" not in str(error.value)
    path.write_text(json.dumps([{**OLD[0], "response_0": ""}]))
    with pytest.raises(UserError, match=r"record 1 has an empty .* 'response_0' field"):
        load_pku(str(path))
    path.write_text(json.dumps([{**OLD[0], "is_response_0_safe": "maybe"}]))
    with pytest.raises(UserError, match=r"record 1 field 'is_response_0_safe' is 'maybe'"):
        load_pku(str(path))
    path.write_text(json.dumps([OLD[2]]))
    with pytest.raises(UserError, match="no response is flagged unsafe"):
        load_pku(str(path))


def test_a_request_forget_set_may_be_pku_saferlhf(tmp_path):
    """SKU's harmful data reaches a run: a forget file of PKU-SafeRLHF records (no answer field)
    was refused with "record 1 has no 'answer' field", and load_pku had no caller."""
    from obliviate.data.request import load_request

    (tmp_path / "pku.jsonl").write_text("\n".join(json.dumps({**r, **NEW_EXTRA}) for r in OLD) + "\n")
    (tmp_path / "retain.json").write_text(json.dumps([{"question": "What is 2 + 2?", "answer": "4"}]))
    (tmp_path / "req.yaml").write_text("forget: pku.jsonl\nretain: retain.json\n")
    request = load_request(tmp_path / "req.yaml")
    assert _pairs(request.forget) == UNSAFE and _pairs(request.retain) == [("What is 2 + 2?", "4")]
    assert _pairs(load_request(tmp_path / "pku.jsonl").forget) == UNSAFE  # a plain data file: the forget set
    (tmp_path / "req.yaml").write_text("forget: retain.json\nretain: pku.jsonl\n")
    with pytest.raises(UserError, match=r"req.yaml \[retain\]: PKU-SafeRLHF records give .* forget set"):
        load_request(tmp_path / "req.yaml")
    (tmp_path / "safe.json").write_text(json.dumps([OLD[2]]))
    with pytest.raises(UserError, match=r"safe.json \[forget\]: no PKU-SafeRLHF response is flagged unsafe"):
        load_request(tmp_path / "safe.json")
