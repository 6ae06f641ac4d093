"""Declared version floors: a one-line refusal below them, and CI's lowest pins equal to them."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

from obliviate import versions
from obliviate.errors import UserError

ROOT = Path(__file__).resolve().parents[1]

REQUIRES = ["transformers>=5.23,<6", "tqdm>=4.66", 'openai>=2.0; extra == "openai"']


@pytest.fixture
def fake_env(monkeypatch):
    """obliviate requires REQUIRES; installed versions come from the returned dict."""
    installed = {"transformers": "5.24.0", "tqdm": "4.70.1"}

    def version(name):
        if name not in installed:
            raise versions.metadata.PackageNotFoundError(name)
        return installed[name]

    monkeypatch.setattr(versions.metadata, "requires", lambda dist: list(REQUIRES))
    monkeypatch.setattr(versions.metadata, "version", version)
    return installed


def test_installed_environment_meets_the_floors():
    assert versions.declared_requirements(), "obliviate is installed (pip install -e .), so its metadata lists requirements"
    versions.check_versions()


def test_accepts_versions_inside_the_range_and_ignores_extras(fake_env):
    fake_env["transformers"] = "5.23.0"
    versions.check_versions()  # openai is an extra: not installed, not asked for
    assert [r.name for r in versions.declared_requirements()] == ["transformers", "tqdm"]


def test_older_than_floor_is_one_line_with_the_fix(fake_env):
    fake_env["transformers"] = "5.17.0"
    with pytest.raises(UserError) as info:
        versions.check_versions()
    assert str(info.value) == (
        "transformers 5.17 is older than obliviate needs (>=5.23,<6): pip install 'transformers>=5.23,<6'"
    )


def test_above_ceiling_and_missing(fake_env):
    fake_env["transformers"] = "6.1.0"
    with pytest.raises(UserError, match=r"^transformers 6\.1 is outside the versions obliviate supports \(>=5\.23,<6\)"):
        versions.check_versions()
    fake_env["transformers"] = "5.24.0"
    del fake_env["tqdm"]
    with pytest.raises(UserError, match=r"^tqdm is not installed but obliviate needs it: pip install 'tqdm>=4\.66'$"):
        versions.check_versions()


def test_local_version_label_is_kept_and_compared(fake_env):
    fake_env["tqdm"] = "4.60.0+cpu"
    with pytest.raises(UserError, match=r"^tqdm 4\.60\+cpu is older"):
        versions.check_versions()


def _floors() -> dict[str, str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    lines = project["dependencies"] + [line for extra in ("openai",) for line in project["optional-dependencies"][extra]]
    floors = {}
    for line in lines:
        requirement = Requirement(line)
        floor = [s.version for s in requirement.specifier if s.operator == ">="]
        assert floor, f"pyproject.toml: {line!r} declares no floor (>=)"
        floors[requirement.name.lower()] = Version(floor[0])
    return floors


def test_ci_lowest_pins_are_the_declared_floors():
    pins = {}
    for line in (ROOT / ".ci" / "lowest.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, version = re.fullmatch(r"([A-Za-z0-9_.-]+)==(\S+)", line).groups()
            pins[name.lower()] = Version(version)
    assert pins == _floors()


OLD_TRANSFORMERS = """
import importlib.metadata as m, sys
real = m.version
m.version = lambda name: "5.17.0" if name == "transformers" else real(name)
import transformers.cache_utils as cache_utils
del cache_utils.DynamicLayer  # what transformers 5.17 lacks: importing the engine would fail
from obliviate.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.parametrize("argv", [["unlearn", "--help"], ["data", "validate", "x.json"], ["eval", "--model", "m"]])
def test_the_cli_reports_an_old_library_in_one_line_before_importing_it(argv):
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", OLD_TRANSFORMERS, *argv], capture_output=True, text=True,
                          env={"PYTHONPATH": str(ROOT / "src"), "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"},
                          timeout=120)
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.startswith("error: transformers 5.17 is older than obliviate needs (>=5.23"), done.stderr[-2000:]
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
