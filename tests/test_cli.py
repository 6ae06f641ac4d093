"""The command line: counts on real files, exit 2 with one line and no traceback on bad input."""

import subprocess
import sys
from pathlib import Path

import pytest

from obliviate.cli import main

SHARED_TOFU = Path(__file__).resolve().parents[2] / "shared" / "data" / "tofu"


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "obliviate.cli", *args], capture_output=True, text=True, timeout=120)


def test_validate_builtin_request(capsys):
    from obliviate.data.request import DEMO_REQUEST

    assert main(["data", "validate", str(DEMO_REQUEST)]) == 0
    assert "ok: forget 10, retain 20" in capsys.readouterr().out


@pytest.mark.skipif(not SHARED_TOFU.is_dir(), reason="../shared/data/tofu is absent")
def test_validate_tofu_full(capsys):
    assert main(["data", "validate", str(SHARED_TOFU / "full.json")]) == 0
    assert "ok: forget 4000" in capsys.readouterr().out


def test_malformed_file_exits_2_with_one_line(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('[{"question": "a", "answer": "b"},\n{"question": "c" "answer": 1}]')
    result = run_cli("data", "validate", str(bad))
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "Traceback" not in result.stderr
    assert f"{bad}:2: invalid JSON" in result.stderr


def test_bad_config_key_exits_2_and_writes_nothing(tmp_path):
    out = tmp_path / "run"
    result = run_cli("unlearn", f"output_dir={out}", "train.learnin_rate=1")
    assert result.returncode == 2 and "config key 'train.learnin_rate' is not known" in result.stderr
    assert "Traceback" not in result.stderr and not out.exists()


def test_unknown_model_exits_2(tmp_path):
    result = run_cli("model", "info", str(tmp_path / "nothing-here"))
    assert result.returncode == 2 and "no such file or directory" in result.stderr


def test_demo_end_to_end_on_a_tiny_model(tiny_model_dir, tmp_path, capsys):
    """`obliviate demo` teaches, runs ULMR, scores, sweeps alpha and writes its report; a rerun
    reuses the taught model; a bad --alphas is one line and exit 2."""
    import json

    out = tmp_path / "demo"
    assert main(["demo", "--model", str(tiny_model_dir), "--output-dir", str(out), "--alphas", "0,0.4"]) == 0
    summary = json.loads((out / "demo_summary.json").read_text())
    table = summary["rougeL_recall"]
    assert set(table) == {"base", "taught", "ulmr", "ulmr alpha 0"}  # 0.4 is the main alpha, not repeated
    assert table["ulmr alpha 0"] == table["taught"]  # alpha 0 is the taught model, exactly
    assert summary["forget_drop"] == pytest.approx(1 - table["ulmr"]["forget"] / table["taught"]["forget"])
    assert (out / "ulmr" / "ulmr_dataset.jsonl").is_file() and "ulmr (alpha 0.4)" in (out / "demo_report.md").read_text()
    capsys.readouterr()
    assert main(["demo", "--model", str(tiny_model_dir), "--output-dir", str(out)]) == 0
    assert "reusing the taught model" in capsys.readouterr().out
    assert main(["demo", "--alphas", "half"]) == 2
    assert "--alphas 'half'" in capsys.readouterr().err
    assert main(["demo", "--alphas", "0.3,2"]) == 2  # out of range: refused before any teaching
    assert "--alphas '0.3,2'" in capsys.readouterr().err


@pytest.mark.skipif(not SHARED_TOFU.is_dir(), reason="../shared/data/tofu is absent")
def test_eval_dispatches_through_the_registry_and_records_its_device(tiny_model_dir, tmp_path, capsys):
    import json

    out = tmp_path / "eval"
    assert main(["eval", "--benchmark", "tofu", "--model", str(tiny_model_dir), "--data", str(SHARED_TOFU),
                 "--ds-size", "2", "--max-new-tokens", "4", "--no-extras", "--device", "cpu",
                 "--precision", "fp32", "--output-dir", str(out)]) == 0
    saved = json.loads((out / "tofu_eval.json").read_text())
    assert saved["config"]["device"] == "cpu" and saved["config"]["precision_used"] == "fp32"
    assert saved["n_samples"]["forget"] == 2 and "Model Utility" in capsys.readouterr().out
    result = run_cli("eval", "--model", str(tiny_model_dir), "--device", "cuda:7", "--ds-size", "x")
    assert result.returncode == 2 and result.stderr.strip().count("\n") == 0 and "Traceback" not in result.stderr
