"""RWKU requests: keys beside `rwku:`, targets without the shipped corpus or refusals, reversed
ranges. Each error is one line saying what, where and how to fix (data/request.py, data/rwku.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from obliviate.data import rwku as rwku_data
from obliviate.data.request import load_request
from obliviate.errors import UserError


def _probe(query, answer, subject):
    return {"subject": subject, "query": query, "answer": answer}


def _target(root: Path, folder: str, name: str, corpus: bool) -> None:
    d = root / "Target" / folder
    d.mkdir(parents=True)
    sets = {"intro.json": [{"target": name, "intro": f"Please forget {name}."}],
            "forget_level1.json": [_probe(f"{name} was born in ___.", "Paris", name)],
            "forget_level2.json": [_probe(f"Where was {name} born?", "Paris", name)],
            "neighbor_level1.json": [_probe("The river begins in the ___.", "hills", name)],
            "neighbor_level2.json": [_probe("Where does the river begin?", "in the hills", name)]}
    if corpus:  # RWKU ships these for targets 1-10 only
        sets.update({"positive.json": [{"subject": name, "text": f"{name} is a writer."}],
                     "passage.json": [{"subject": name, "text": f"{name} was born in Paris."}],
                     "reject.json": [{"instruction": f"Where was {name} born?", "input": "", "subject": name,
                                      "output": "I'm not certain about that."}]})
    for file, records in sets.items():
        (d / file).write_text(json.dumps(records), encoding="utf-8")


@pytest.fixture
def rwku_dir(tmp_path) -> Path:
    root = tmp_path / "rwku"
    _target(root, "1_Ada_Example", "Ada Example", corpus=True)
    _target(root, "2_Bob_Sample", "Bob Sample", corpus=True)
    _target(root, "3_Cy_Other", "Cy Other", corpus=False)
    return root


def _request(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "request.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def _one_line_error(call) -> str:
    with pytest.raises(UserError) as error:
        call()
    message = str(error.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("extra", ["retain: retain.json", "forget: forget.json", "forgett: x",
                                   "neighbors: [{question: q, answer: a}]", "subject: Ada"])
def test_a_key_beside_rwku_is_refused_naming_file_and_key(tmp_path, rwku_dir, extra):
    path = _request(tmp_path, f"name: r\nrwku: {{data: {rwku_dir}, targets: 1}}\n{extra}\n")
    message = _one_line_error(lambda: load_request(path))
    key = extra.split(":")[0]
    assert str(path) in message and f"key(s) {key} " in message
    assert "rwku: builds forget, neighbors and passages itself" in message and "drop the key" in message


def test_name_and_description_beside_rwku_are_fine(tmp_path, rwku_dir):
    path = _request(tmp_path, f"name: mine\ndescription: one target\nrwku: {{data: {rwku_dir}, targets: 1}}\n")
    request = load_request(path)
    assert request.name == "mine" and len(request.forget) == 2 and request.passages == ["Ada Example is a writer."]
    several = _request(tmp_path, f"rwku: {{data: {rwku_dir}, targets: 1}}\nretain: a.json\nforgett: b\n")
    assert "key(s) retain, forgett " in _one_line_error(lambda: load_request(several))
    numbered = _request(tmp_path, f"name: 2024\nrwku: {{data: {rwku_dir}, targets: 1}}\n")
    assert "'name' must be a string, got 2024" in _one_line_error(lambda: load_request(numbered))


def test_default_corpus_missing_says_how_to_fix(tmp_path, rwku_dir):
    path = _request(tmp_path, f"rwku: {{data: {rwku_dir}, targets: 3}}\n")
    message = _one_line_error(lambda: load_request(path))
    assert str(path) in message and "RWKU target 3 (Cy Other) lacks positive.json" in message
    assert "rwku.passages: positive (the default)" in message and "shipped for targets 1-2" in message
    assert "set rwku.passages: none" in message
    fixed = _request(tmp_path, f"rwku: {{data: {rwku_dir}, targets: 3, passages: none}}\n")
    request = load_request(fixed)
    assert len(request.forget) == 2 and request.passages == []
    # the default stays positive where it is shipped: forget: passages relies on it
    assert load_request(_request(tmp_path, f"rwku: {{data: {rwku_dir}, targets: 1-2}}\n")).passages == [
        "Ada Example is a writer.", "Bob Sample is a writer."]


def test_corpus_or_refusals_missing_for_some_targets(rwku_dir):
    message = _one_line_error(lambda: rwku_data.target_request(rwku_dir, "1-3", forget="passages",
                                                               passages="passage"))
    assert "target 3 (Cy Other) lacks passage.json" in message and "choose among those targets" in message
    assert "shipped for targets 1-2" in message
    message = _one_line_error(lambda: rwku_data.target_request(rwku_dir, "3", forget="refusals", passages=None))
    assert "lacks reject.json" in message and "rwku.forget: refusals needs it" in message
    assert "rwku.forget: probes" in message


def test_reversed_range_is_named(rwku_dir):
    message = _one_line_error(lambda: rwku_data.resolve_targets(rwku_dir, "3-1"))
    assert "range '3-1' is reversed" in message and "1-3" in message
    assert [t.id for t in rwku_data.resolve_targets(rwku_dir, "1-3")] == [1, 2, 3]
    assert [t.id for t in rwku_data.resolve_targets(rwku_dir, "2-2")] == [2]
    message = _one_line_error(lambda: rwku_data.target_request(rwku_dir, "3-1", where="req.yaml [rwku]"))
    assert message.startswith("req.yaml [rwku]: ") and "is reversed" in message  # where it was written


def test_probe_checks_its_targets_before_the_model_loads(rwku_dir, capsys):
    from obliviate.cli import main

    assert main(["probe", "--model", "no-such-model-dir/", "--data", str(rwku_dir), "--targets", "3-1"]) == 2
    err = capsys.readouterr().err
    assert "--targets 3-1: " in err and "is reversed" in err and "no-such-model" not in err


def test_ranges_text():
    assert rwku_data._ranges([7, 1, 2, 3, 9, 10]) == "1-3, 7, 9-10"
