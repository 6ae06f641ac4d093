"""The README's quick tour, run as written: every line of its first ``bash`` block and its
``python`` block, in a scratch folder laid out like a fresh clone (``src/``, ``examples/`` and
``../shared`` where this checkout has it). Needs the real default model, hence `integration`."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


def tour_blocks(readme: str) -> tuple[list[str], str]:
    """(bash commands, python source) of the section '## A quick tour': continuation lines
    joined, comments and blank lines dropped, the venv activation left to the test."""
    section = readme.split("## A quick tour", 1)[1].split("\n## ", 1)[0]
    bash = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    python = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    commands, pending = [], ""
    for raw in bash.splitlines():
        if raw.lstrip().startswith("#"):
            continue
        line = pending + raw.split(" #", 1)[0].strip()
        if line.endswith("\\"):
            pending = line[:-1].rstrip() + " "
            continue
        pending = ""
        if line and line != ". .venv/bin/activate":
            commands.append(line)
    return commands, python


def test_tour_parser_joins_continuations_and_drops_comments():
    readme = ("## A quick tour\n```bash\n. .venv/bin/activate\nobliviate a \\\n    --b 1   # note\n"
              "# only a comment\nobliviate c\n```\n```python\nprint(1)\n```\n## Next\n```bash\nnot me\n```\n")
    commands, python = tour_blocks(readme)
    assert commands == ["obliviate a --b 1", "obliviate c"]
    assert python == "print(1)\n"


@pytest.fixture
def fresh_clone(tmp_path):
    """A folder that looks like a fresh clone: the shipped files, no runs/, ../shared beside it."""
    clone = tmp_path / "obliviate"
    clone.mkdir()
    for name in ("src", "examples"):
        (clone / name).symlink_to(REPO / name)
    if SHARED.is_dir():
        (tmp_path / "shared").symlink_to(SHARED)
    return clone


@pytest.mark.integration
def test_readme_quick_tour_runs_as_written(fresh_clone):
    if not (SHARED / "data" / "tofu").is_dir():
        pytest.skip("the quick tour evaluates on ../shared/data/tofu, absent here")
    commands, python = tour_blocks((REPO / "README.md").read_text())
    assert len(commands) >= 5 and "ob.unlearn(" in python and "ob.evaluate(" in python
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    for command in commands:
        done = subprocess.run(shlex.split(command), cwd=fresh_clone, env=env, capture_output=True, text=True)
        assert done.returncode == 0, f"README line failed: {command}\n{done.stderr[-2000:]}"
    done = subprocess.run([sys.executable, "-c", python], cwd=fresh_clone, env=env, capture_output=True, text=True)
    assert done.returncode == 0, f"README python block failed:\n{done.stderr[-2000:]}"
    assert (fresh_clone / "runs" / "tour-npo" / "eval-tofu" / "tofu_summary.json").is_file()
    summary = json.loads((fresh_clone / "runs" / "tour-npo" / "eval-request" / "request_summary.json").read_text())
    assert summary["sets"] == ["forget", "retain"] and summary["forget_drop"] is not None  # against the base model
    assert "model_utility" not in done.stderr and done.stdout.strip(), "the python block prints its summary"
