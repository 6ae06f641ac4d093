"""benchmarks/same_outputs.py: counts identical generations of two runs (gpu_figures.sh compares
the captured static decoder with the plain one on a GPU with it)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("same_outputs", ROOT / "benchmarks" / "same_outputs.py")
same_outputs = importlib.util.module_from_spec(spec)
spec.loader.exec_module(same_outputs)


def write(path: Path, texts) -> str:
    path.write_text(json.dumps(texts))
    return str(path)


def test_identical_and_differing_outputs_are_counted(tmp_path, capsys):
    a = write(tmp_path / "a.json", ["one two", "three four", "five"])
    b = write(tmp_path / "b.json", ["one two", "three fork", "five"])
    assert same_outputs.main([a, a]) == 0
    assert "identical outputs: 3 of 3" in capsys.readouterr().out
    assert same_outputs.main([a, b]) == 1
    out = capsys.readouterr().out
    assert "identical outputs: 2 of 3" in out and "differs after 8 characters: 'ur' vs 'rk'" in out


def test_first_n_compares_a_shorter_run_and_lengths_are_checked(tmp_path, capsys):
    long = write(tmp_path / "long.json", ["x", "y", "z", "w"])
    short = write(tmp_path / "short.json", ["x", "y"])
    assert same_outputs.main(["--first", "2", long, short]) == 0
    assert "identical outputs: 2 of 2" in capsys.readouterr().out
    assert same_outputs.main([long, short]) == 2
    assert same_outputs.main(["--first", "3", long, short]) == 2
    assert "needs that many in each" in capsys.readouterr().err
    assert same_outputs.main([long, str(tmp_path / "missing.json")]) == 2
