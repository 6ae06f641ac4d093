"""File-system faults end in one line naming the path and the cause, exit 2, no traceback; a
--resume removes the temporary directory of a save that was killed before its rename."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import pytest

import obliviate.methods.pipeline as pipeline
from obliviate.cli import main


def unlearn_args(model_dir, tmp_path: Path, out) -> list[str]:
    items = [{"question": f"Who wrote book {i}?", "answer": f"Author {i} did."} for i in range(4)]
    request = tmp_path / "request.json"
    request.write_text(json.dumps({"forget": items, "retain": items}))
    return ["unlearn", f"model={model_dir}", f"request={request}", f"output_dir={out}", "method=graddiff",
            "train.max_steps=1", "train.batch_size=2", "train.save_steps=-1"]


def one_line_exit_2(capsys, code) -> str:
    err = capsys.readouterr().err  # progress bars share stderr: the error is the one "error:" line
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(errors) == 1 and "Traceback" not in err, err[-2000:]
    return errors[0]


@pytest.mark.parametrize("where", ["file", "under_file"])
def test_an_output_dir_that_is_a_file_is_one_line(tmp_path, tiny_model_dir, capsys, where):
    blocker = tmp_path / "blocker"
    blocker.write_text("x")
    out = blocker if where == "file" else blocker / "run"
    err = one_line_exit_2(capsys, main(unlearn_args(tiny_model_dir, tmp_path, out)))
    assert str(blocker) in err and ("not a directory" in err or "is a file" in err)


def test_disk_full_while_saving_is_one_line(tmp_path, tiny_model_dir, capsys, monkeypatch):
    def full(model, tokenizer, out_dir):
        raise OSError(errno.ENOSPC, "No space left on device", str(out_dir))

    monkeypatch.setattr(pipeline, "save_model", full)
    out = tmp_path / "out"
    err = one_line_exit_2(capsys, main(unlearn_args(tiny_model_dir, tmp_path, out)))
    assert "no space left on device" in err and str(out / "model") in err


def test_disk_full_inside_torch_save_says_no_space(tmp_path, tiny_model_dir, capsys, monkeypatch):
    def full(model, tokenizer, out_dir):  # what torch.save says when the disk fills mid-write
        raise RuntimeError("[enforce fail at inline_container.cc:783] . unexpected pos 40913152 vs 40913040")

    monkeypatch.setattr(pipeline, "save_model", full)
    err = one_line_exit_2(capsys, main(unlearn_args(tiny_model_dir, tmp_path, tmp_path / "out")))
    assert "no space left on device" in err


def test_resume_removes_a_killed_saves_temporary_directory(tmp_path, tiny_model_dir, capsys):
    out = tmp_path / "out"
    args = unlearn_args(tiny_model_dir, tmp_path, out)
    assert main(args) == 0
    stale = out / ".model.k3x_9q2a"  # what save_model's mkdtemp leaves when killed mid-save
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"\0" * 1024)
    (out / "manifest.json").unlink()  # killed mid-save: the manifest is written after the saves
    assert main([*args, "--resume"]) == 0
    assert not stale.exists() and (out / "model" / "model.safetensors").is_file()


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_atomic_writes_get_the_mode_a_plain_write_would(tmp_path, umask, mode):
    """mkstemp alone makes 0600 files: results the group could not read. The umask applies; a
    replaced file keeps its own mode."""
    import os

    from obliviate.io import atomic_write_json

    old = os.umask(umask)
    try:
        path = atomic_write_json(tmp_path / "new.json", {"a": 1})
        plain = tmp_path / "plain.json"
        plain.write_text("{}")
        assert os.stat(path).st_mode & 0o777 == mode == os.stat(plain).st_mode & 0o777
        os.chmod(path, 0o640)
        atomic_write_json(path, {"a": 2})
        assert os.stat(path).st_mode & 0o777 == 0o640 and json.loads(path.read_text()) == {"a": 2}
    finally:
        os.umask(old)
