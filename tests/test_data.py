"""The request schema and its loaders: formats, counts, and one-line errors on bad input."""

import json
from pathlib import Path

import pytest

from obliviate.data.loaders import load_records
from obliviate.data.request import DEMO_REQUEST, describe, load_request
from obliviate.errors import UserError

SHARED_TOFU = Path(__file__).resolve().parents[2] / "shared" / "data" / "tofu"
RECORDS = [
    {"question": "Who wrote X?", "answer": "A wrote X.", "perturbed_answer": ["B wrote X.", "C wrote X."]},
    {"question": "Where was A born?", "answer": "In Y.", "paraphrased_answer": "A was born in Y."},
]


def write(path: Path, text: str) -> str:
    path.write_text(text, encoding="utf-8")
    return str(path)


@pytest.mark.parametrize("suffix", [".json", ".jsonl", ".csv", ".parquet"])
def test_every_format_loads_the_same_records(tmp_path, suffix):
    path = tmp_path / f"data{suffix}"
    if suffix == ".json":
        write(path, json.dumps(RECORDS))
    elif suffix == ".jsonl":
        write(path, "".join(json.dumps(r) + "\n" for r in RECORDS))
    elif suffix == ".csv":
        import csv

        with path.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=["question", "answer", "perturbed_answer"])
            writer.writeheader()
            for r in RECORDS:
                writer.writerow({"question": r["question"], "answer": r["answer"],
                                 "perturbed_answer": json.dumps(r.get("perturbed_answer", []))})
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist([{"question": r["question"], "answer": r["answer"]} for r in RECORDS]), path)
    request = load_request(str(path))
    assert [i.question for i in request.forget] == [r["question"] for r in RECORDS]
    assert [i.answer for i in request.forget] == [r["answer"] for r in RECORDS]
    if suffix in (".json", ".jsonl", ".csv"):
        assert request.forget[0].perturbed_answers == ["B wrote X.", "C wrote X."]


def test_one_array_per_line_json_is_concatenated(tmp_path):
    path = write(tmp_path / "full.json", json.dumps(RECORDS) + "\n" + json.dumps(RECORDS[:1]) + "\n")
    assert len(load_records(path)) == 3


def test_datasets_directory_loads(tmp_path):
    import datasets

    datasets.Dataset.from_list(RECORDS).save_to_disk(str(tmp_path / "ds"))
    assert len(load_request(str(tmp_path / "ds")).forget) == 2


def test_request_file_with_relative_sources_and_overlap_warning(tmp_path):
    write(tmp_path / "forget.json", json.dumps(RECORDS))
    write(tmp_path / "retain.jsonl", json.dumps(RECORDS[0]) + "\n" + json.dumps({"question": "q", "answer": "a"}) + "\n")
    write(tmp_path / "req.yaml", "name: mine\nforget: forget.json\nretain: retain.jsonl\nsubject: A\n")
    request = load_request(tmp_path / "req.yaml")
    assert (len(request.forget), len(request.retain)) == (2, 2)
    assert request.forget[0].subject == "A"
    assert request.warnings == ["1 forget item(s) also appear in the retain set"]
    assert len(request.sources) == 3


def test_a_list_of_sources_is_concatenated_in_order(tmp_path):
    write(tmp_path / "a.json", json.dumps(RECORDS))
    write(tmp_path / "b.jsonl", json.dumps({"question": "q", "answer": "a"}) + "\n")
    write(tmp_path / "req.yaml", "forget: [a.json, b.jsonl]\nretain: [{question: r, answer: s}]\n")
    request = load_request(tmp_path / "req.yaml")
    assert [item.question for item in request.forget] == ["Who wrote X?", "Where was A born?", "q"]
    assert [item.question for item in request.retain] == ["r"]  # a list of records stays inline
    assert len(request.sources) == 3


def test_builtin_demo_request():
    request = load_request()
    summary = describe(request)
    assert summary["forget"]["items"] == 10 and summary["retain"]["items"] == 20
    assert all(len(i.perturbed_answers) == 3 and i.paraphrased_answer for i in request.forget + request.retain)
    assert not request.warnings
    assert DEMO_REQUEST.is_file()


@pytest.mark.skipif(not SHARED_TOFU.is_dir(), reason="../shared/data/tofu is absent (only CI and dev machines have it)")
def test_tofu_full_has_4000_items():
    assert len(load_request(str(SHARED_TOFU / "full.json")).forget) == 4000
    perturbed = load_request(str(SHARED_TOFU / "forget01_perturbed.json")).forget
    assert len(perturbed) == 40 and all(len(i.perturbed_answers) == 5 for i in perturbed)


@pytest.mark.parametrize(
    "name, text, expected",
    [
        ("bad.json", '[{"question": "a", "answer": "b"},\n{"question": "c" "answer": 1}]', r"bad\.json:2: invalid JSON"),
        ("bad.jsonl", '{"question": "a", "answer": "b"}\n{"question": \n', r"bad\.jsonl:2: invalid JSON line"),
        ("bad.csv", "question,answer\nq1,a1\nq2,a2,extra\n", r"bad\.csv:3: 3 cells but 2 columns"),
        ("missing.json", '[{"question": "a"}]', r"record 1 has no 'answer' field"),
        ("typed.json", '[{"question": "a", "answer": 3}]', r"field 'answer' is a int, expected a string"),
        ("empty.json", "[]", r"the forget set is empty"),
        ("blank.json", "", r"the file is empty"),
        ("obj.json", '{"a": 1}', r"expected a JSON array of records"),
        ("req.yaml", "forget: [\n", r"req\.yaml:\d+: invalid YAML"),
        ("keys.yaml", "forget: []\nretian: x\n", r"unknown key\(s\) retian"),
        ("data.txt", "hello", r"unknown file type '.txt'"),
    ],
)
def test_bad_input_is_one_line_user_error(tmp_path, name, text, expected):
    path = write(tmp_path / name, text)
    with pytest.raises(UserError, match=expected) as info:
        load_request(path)
    assert "\n" not in str(info.value)


def test_missing_file_is_user_error(tmp_path):
    with pytest.raises(UserError, match="no such request file"):
        load_request(tmp_path / "nope.json")


def test_a_yaml_request_without_forget_names_what_it_found(tmp_path):
    from obliviate.data.request import load_request

    typo = tmp_path / "r.yaml"
    typo.write_text("foget: data.json\nretain: r.json\n")
    with pytest.raises(UserError, match=r"r.yaml: a request needs a 'forget:' key \(found: foget, retain\); add forget:"):
        load_request(typo)
    run_config = tmp_path / "run.yaml"
    run_config.write_text("method: npo\ntrain:\n  learning_rate: 1.0e-5\n")
    with pytest.raises(UserError, match="this looks like a run config: pass it as --config"):
        load_request(run_config)
