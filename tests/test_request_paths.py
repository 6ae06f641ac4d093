"""Where a request's sources are read from: a relative path in a request file is relative to the
request file and nowhere else (never the working directory), a missing one is refused in one line
naming the request file, the key and the folder; a request with no file (a mapping, a plain data
file with --retain) is relative to the working directory; hub dataset ids still reach the hub;
`sources` holds the paths actually read."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from obliviate.cli import main
from obliviate.data.request import load_request
from obliviate.errors import UserError


def _records(question: str) -> str:
    return json.dumps([{"question": question, "answer": "An answer."}])


@pytest.fixture
def layout(tmp_path, monkeypatch):
    """(request folder, working directory): the working directory holds data/forget.json, a decoy."""
    cwd, requests = tmp_path / "cwd", tmp_path / "requests"
    (cwd / "data").mkdir(parents=True)
    requests.mkdir()
    (cwd / "data" / "forget.json").write_text(_records("DECOY FROM THE WORKING DIRECTORY"))
    monkeypatch.chdir(cwd)
    return requests, cwd


def test_a_path_missing_beside_the_request_is_not_read_from_the_working_directory(layout, capsys):
    requests, _ = layout
    (requests / "req.yaml").write_text("forget: data/forget.json\n")
    with pytest.raises(UserError) as error:
        load_request(requests / "req.yaml")
    message = str(error.value)
    assert message.startswith(f"{requests / 'req.yaml'} [forget]: data/forget.json: no such file "
                              f"(relative to {requests})")
    assert "working directory is not read" in message and "\n" not in message
    assert main(["data", "validate", str(requests / "req.yaml")]) == 2  # the CLI: one line, no traceback
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1 and "[forget]: data/forget.json: no such file" in captured.err
    assert "Traceback" not in captured.err and "ok:" not in captured.out


@pytest.mark.parametrize("key", ["forget", "retain", "neighbors", "passages"])
def test_a_missing_file_names_the_request_file_and_the_key(layout, key):
    requests, _ = layout
    (requests / "q.json").write_text(_records("Q?"))
    body = "forget: q.json\n" if key != "forget" else ""
    (requests / "req.yaml").write_text(body + f"{key}: nothere.json\n")
    with pytest.raises(UserError, match=rf"req\.yaml \[{key}\]: nothere\.json: no such file \(relative to "
                                        rf".*requests\); paths in a request file are relative to its folder"):
        load_request(requests / "req.yaml")


def test_a_missing_file_in_a_list_of_sources_names_its_place(layout):
    requests, _ = layout
    (requests / "a.json").write_text(_records("A?"))
    (requests / "req.yaml").write_text("forget: [a.json, data/forget.json]\n")
    with pytest.raises(UserError, match=r"req\.yaml \[forget\] source 1: data/forget\.json: no such file"):
        load_request(requests / "req.yaml")


def test_sources_are_the_files_read_beside_the_request_whatever_the_working_directory(layout, tmp_path,
                                                                                       monkeypatch):
    requests, cwd = layout
    (requests / "data").mkdir()
    (requests / "data" / "forget.json").write_text(_records("The right one?"))
    (requests / "req.yaml").write_text("forget: data/forget.json\n")
    seen = []
    for where in (cwd, tmp_path):
        monkeypatch.chdir(where)
        request = load_request(requests / "req.yaml")
        assert [i.question for i in request.forget] == ["The right one?"]
        seen.append(request.sources)
    assert seen[0] == seen[1] == [str(requests / "req.yaml"), str(requests / "data" / "forget.json")]
    monkeypatch.chdir(requests.parent)  # the request named relative to the working directory
    request = load_request("requests/req.yaml")
    assert request.sources == ["requests/req.yaml", str(Path("requests/data/forget.json"))]
    assert all(Path(s).is_file() for s in request.sources)


def test_a_request_without_a_file_is_relative_to_the_working_directory(layout):
    _, cwd = layout
    request = load_request({"forget": "data/forget.json"})  # a mapping: no request file, no other folder
    assert request.forget[0].question == "DECOY FROM THE WORKING DIRECTORY"
    assert request.sources == [str(cwd / "data" / "forget.json")]
    with pytest.raises(UserError, match=r"^request \[retain\]: nothere\.json: no such file"):
        load_request({"forget": "data/forget.json", "retain": "nothere.json"})


def test_a_plain_data_file_and_its_retain_are_relative_to_the_working_directory(layout):
    _, cwd = layout
    (cwd / "retain.json").write_text(_records("Retain from the working directory?"))
    (cwd / "data" / "retain.json").write_text(_records("Retain beside the forget file?"))
    request = load_request("data/forget.json", retain="retain.json")  # as typed on the command line
    assert [i.question for i in request.retain] == ["Retain from the working directory?"]
    assert request.sources == [str(Path("data/forget.json")), "retain.json"]
    request = load_request("data/forget.json", retain="data/retain.json")
    assert [i.question for i in request.retain] == ["Retain beside the forget file?"]


def test_a_retain_set_beside_a_request_is_refused_not_ignored(layout):
    """load_request(request_file, retain=...) kept the request's own retain set and dropped the
    given one without a word; a request holds its retain set, so both is a one-line error."""
    requests, cwd = layout
    (cwd / "retain.json").write_text(_records("Retain from the working directory?"))
    (cwd / "req.json").write_text(json.dumps({"forget": "data/forget.json"}))
    for request in (cwd / "req.json", {"forget": "data/forget.json"}, {"rwku": {"targets": 1}}):
        with pytest.raises(UserError, match=r"retain= adds a retain set to a plain data file only"):
            load_request(request, retain="retain.json")


def test_hub_dataset_ids_still_reach_the_hub(layout, monkeypatch):
    requests, cwd = layout
    asked = []

    def hub(name, config, split):
        asked.append((name, config, split))
        return [{"question": f"From {name}?", "answer": "Yes."}]

    monkeypatch.setattr("obliviate.data.loaders._read_hub_dataset", hub)
    (requests / "req.yaml").write_text("forget: someone/some-set\nretain: {dataset: someone/other, split: x}\n")
    request = load_request(requests / "req.yaml")
    assert asked == [("someone/some-set", None, None), ("someone/other", None, "x")]
    assert request.sources == [str(requests / "req.yaml")]  # a hub id is not a file read
    assert load_request("someone/plain").forget[0].question == "From someone/plain?"  # a hub id as the source
    (cwd / "someone" / "some-set").mkdir(parents=True)  # a folder of that name in the working directory:
    with pytest.raises(UserError, match=r"someone/some-set: no such file \(relative to .*working directory is not"):
        load_request(requests / "req.yaml")  # not silently read in place of the hub dataset or a local copy


def test_an_rwku_data_folder_is_relative_to_the_request_file(layout):
    requests, cwd = layout
    (cwd / "rwku").mkdir()
    (requests / "req.yaml").write_text("rwku: {data: rwku, targets: 1}\n")
    with pytest.raises(UserError, match=r"req\.yaml \[rwku\.data\]: rwku: no such directory \(relative to "
                                        r".*requests\); the one in the working directory is not read"):
        load_request(requests / "req.yaml")
    (requests / "req.yaml").write_text("rwku: {data: ../data-rwku, targets: 1}\n")
    with pytest.raises(UserError, match=r"\[rwku\.data\]: \.\./data-rwku: no such directory"):
        load_request(requests / "req.yaml")


def test_a_missing_folder_under_a_folder_beside_the_request_is_a_path_not_a_hub_id(layout, monkeypatch):
    """`forget: data/forget_set` beside a data/ folder is a path with a typo, not the hub dataset
    data/forget_set: it was sent to the hub (half a minute offline) and reported as unreachable."""
    requests, _ = layout
    monkeypatch.setattr("obliviate.data.loaders._read_hub_dataset", lambda *a: pytest.fail("asked the hub"))
    (requests / "data").mkdir()
    (requests / "req.yaml").write_text("forget: data/forget_set\n")
    with pytest.raises(UserError, match=r"req.yaml \[forget\]: data/forget_set: no such file \(relative to "):
        load_request(requests / "req.yaml")


def test_a_request_names_its_refusals_beside_it_and_says_its_answers_are_refusals(layout):
    requests, _ = layout
    (requests / "idk.txt").write_text("I don't know.\n")
    (requests / "req.yaml").write_text("forget: [{question: \"Q?\", answer: I would rather not say.}]\nrefusals: idk.txt\n"
                                       "answers_are_refusals: true\n")
    request = load_request(requests / "req.yaml")
    assert request.refusals == str(requests / "idk.txt") and request.answers_are_refusals
    for bad, message in (("refusals: [a]", "'refusals' must be a file name"),
                         ("answers_are_refusals: maybe", "'answers_are_refusals' must be true or false"),
                         ("refusals: nothere.txt", r"\[refusals\]: nothere.txt: no such file")):
        (requests / "req.yaml").write_text(f"forget: [{{question: \"Q?\", answer: A.}}]\n{bad}\n")
        with pytest.raises(UserError, match=message):
            load_request(requests / "req.yaml")
