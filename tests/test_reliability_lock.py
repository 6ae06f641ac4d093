"""One run per output directory: a second run is refused while the first holds the lock, a dead
run's lock is recovered, and a run directory is only created once the inputs and the model load."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from obliviate.config import load_config
from obliviate.errors import UserError
from obliviate.methods.pipeline import run
from obliviate.rundir import LOCK, lock_run_dir

ROOT = Path(__file__).resolve().parents[1]
HOLD = "import sys, time; from obliviate.rundir import lock_run_dir; lock_run_dir(sys.argv[1]); " \
       "print('locked', flush=True); time.sleep(60)"


def overrides(model_dir, out_dir, request=None) -> list[str]:
    items = [{"question": f"Who wrote book {i}?", "answer": f"Author {i} did."} for i in range(4)]
    request = request or out_dir.parent / "request.json"
    if not Path(request).exists():
        Path(request).write_text(json.dumps({"forget": items, "retain": items}))
    return [f"model={model_dir}", f"request={request}", f"output_dir={out_dir}", "method=graddiff",
            "train.max_steps=1", "train.batch_size=2", "train.save_steps=-1"]


def hold_lock(out_dir: Path) -> subprocess.Popen:
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(out_dir)], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    assert holder.stdout.readline().strip() == "locked"
    return holder


def test_a_second_run_is_refused_naming_the_holder(tmp_path, tiny_model_dir):
    out = tmp_path / "out"
    holder = hold_lock(out)
    try:
        with pytest.raises(UserError) as caught:
            run(load_config(None, overrides(tiny_model_dir, out)))
        message = str(caught.value)
        assert "\n" not in message and "in use by another run" in message
        assert f"pid {holder.pid}" in message and "started" in message and os.uname().nodename in message
        assert not (out / "config.yaml").exists() and not (out / "model").exists()
    finally:
        holder.kill()
        holder.wait()


def test_the_lock_of_a_killed_run_is_recovered(tmp_path, tiny_model_dir):
    out = tmp_path / "out"
    holder = hold_lock(out)
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert (out / LOCK).exists()  # left behind by kill -9, naming a dead pid
    run(load_config(None, overrides(tiny_model_dir, out)))
    assert (out / "model" / "model.safetensors").is_file() and not (out / LOCK).exists()


def test_a_lock_released_by_one_run_can_be_taken_again(tmp_path):
    first = lock_run_dir(tmp_path / "out")
    with pytest.raises(UserError, match="in use by another run"):
        # flock locks belong to the open file, so a second open in this process is refused too
        lock_run_dir(tmp_path / "out")
    first.release()
    lock_run_dir(tmp_path / "out").release()


def test_no_run_directory_before_the_model_has_loaded(tmp_path, tiny_model_dir):
    out = tmp_path / "never"
    args = overrides(tiny_model_dir, out)
    with pytest.raises(UserError, match="could not be loaded|no such file"):
        run(load_config(None, [*args, f"model={tmp_path / 'missing-model'}"]))
    assert not out.exists()


def test_a_failed_run_is_tidied_while_it_still_holds_the_lock(tmp_path, monkeypatch):
    """The tidy after a failed fresh run removes its files under the lock, so a run starting there
    meanwhile cannot lose the config it just wrote; the folder itself is removed after the
    release only if still empty (a run that took the lock meanwhile keeps it)."""
    from obliviate.rundir import CONFIG, RunLock, discard_unstarted_run

    real_release = RunLock.release
    seen = {}

    def release(lock):
        seen.setdefault("at_release", sorted(p.name for p in lock.path.parent.iterdir()))
        real_release(lock)
        if "other" in seen:
            (lock.path.parent / CONFIG).write_text("another run's config")  # it started right after

    monkeypatch.setattr(RunLock, "release", release)
    for name in ("run", "other"):
        out = tmp_path / name
        seen.clear()
        if name == "other":
            seen["other"] = True
        lock = lock_run_dir(out)
        (out / CONFIG).write_text("this run's config")
        discard_unstarted_run(out, lock, created=True)
        assert seen["at_release"] == [LOCK]  # config.yaml was removed before the lock was let go
    assert not (tmp_path / "run").exists()
    assert (tmp_path / "other" / CONFIG).read_text() == "another run's config"


def test_a_run_in_progress_is_named_before_the_already_holds_a_run_advice(tmp_path):
    """A second run into the folder of a live one was told "already holds a run; pass --resume",
    which the lock then refused: the live holder is named first."""
    from obliviate.rundir import check_run_dir

    out = tmp_path / "run"
    holder = hold_lock(out)
    try:
        (out / "checkpoints").mkdir()
        for resume in (False, True):
            with pytest.raises(UserError, match=rf"output_dir '.*run' is in use by another run \(pid {holder.pid}"):
                check_run_dir(out, resume=resume, probe_lock=True)
    finally:
        holder.kill()
        holder.wait()
    with pytest.raises(UserError, match="already holds a run; pass --resume"):
        check_run_dir(out)
    check_run_dir(out, resume=True)
