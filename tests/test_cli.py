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


# --- one option style: HF names, hidden kebab aliases, --help, --version, python -m obliviate -----

def one_line_error(capsys, code) -> str:
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    return err


def exit_code(argv) -> int:
    try:
        return main(argv)
    except SystemExit as stop:  # argparse: --help, --version and usage errors
        return stop.code


def test_python_m_obliviate_and_version():
    from obliviate import __version__

    result = subprocess.run([sys.executable, "-m", "obliviate", "--version"], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == f"obliviate {__version__}"


@pytest.mark.parametrize("command", [["demo"], ["data", "validate"], ["model", "info"], ["unlearn"], ["finetune"],
                                     ["eval"], ["eval", "--benchmark", "rwku"], ["eval", "--benchmark", "harmful"],
                                     ["probe"]])
def test_every_help_shows_defaults_and_two_examples(command, capsys):
    assert exit_code([*command, "--help"]) == 0
    out = capsys.readouterr().out
    examples = out.split("examples:\n", 1)[1].splitlines()
    assert sum(line.startswith("  obliviate ") for line in examples) >= 2, out
    if command not in (["data", "validate"], ["model", "info"]):
        assert "(default: " in out or "(config default: " in out


def test_help_lists_every_registered_method_and_benchmark(capsys):
    from obliviate.evaluation.registry import benchmarks
    from obliviate.methods.registry import methods

    assert exit_code(["unlearn", "--help"]) == 0
    out = capsys.readouterr().out
    assert all(f"  {name} " in out for name in methods()) and "{" + ",".join(methods()) + "}" in out
    assert exit_code(["eval", "--help"]) == 0
    out = capsys.readouterr().out
    assert "{" + ",".join(benchmarks()) + "}" in out and all(f"  {name} " in out for name in benchmarks())


@pytest.fixture
def captured_config(monkeypatch):
    """Run `obliviate unlearn` up to the config it would run with."""
    from obliviate import api

    seen = {}

    def fake_unlearn(config, resume=False):
        seen["config"], seen["resume"] = config, resume
        return api.UnlearnResult(run_dir=Path(config.output_dir), model_dir=Path(config.output_dir) / "model",
                                 manifest={})

    monkeypatch.setattr(api, "unlearn", fake_unlearn)
    return seen


def test_hf_flags_set_the_config_keys(captured_config, tmp_path):
    yaml_file = tmp_path / "run.yaml"
    yaml_file.write_text("method: npo\ntrain:\n  learning_rate: 1.0e-3\n  num_train_epochs: 7\n")
    assert main(["unlearn", "--config", str(yaml_file), "--learning_rate", "2e-5", "--per_device_train_batch_size",
                 "3", "--gradient_accumulation_steps", "5", "--output_dir", str(tmp_path / "o"), "--use_peft",
                 "--lora_r", "4", "--lora_alpha", "9", "--seed", "7", "--report_to", "none", "--max_steps", "11",
                 "train.weight_decay=0.5", "--resume"]) == 0
    config = captured_config["config"]
    train = config.train
    assert (config.method, train.learning_rate, train.num_epochs, train.batch_size) == ("npo", 2e-5, 7.0, 3)
    assert (train.gradient_accumulation_steps, train.lora.enabled, train.lora.r, train.lora.alpha) == (5, True, 4, 9)
    assert (config.seed, train.max_steps, train.weight_decay, config.output_dir) == (7, 11, 0.5, str(tmp_path / "o"))
    assert captured_config["resume"] is True
    assert main(["unlearn", "--torch_compile", "--packing", "--shared_forward"]) == 0
    train = captured_config["config"].train
    assert (train.torch_compile, train.packing, train.shared_forward) == (True, True, True)
    assert main(["unlearn", "--method", "rt", "--num-train-epochs", "2", "--use_peft", "false"]) == 0  # kebab alias
    config = captured_config["config"]
    assert (config.method, config.train.num_epochs, config.train.lora.enabled) == ("rt", 2.0, False)
    assert main(["unlearn", "--use_peft", "train.lora.r=8", "--packing", "train.weight_decay=0.2"]) == 0
    train = captured_config["config"].train  # a bool flag does not swallow the override after it; overrides
    # may stand between flags
    assert (train.lora.enabled, train.lora.r, train.packing, train.weight_decay) == (True, 8, True, 0.2)
    assert main(["finetune", "--num_train_epochs", "3"]) == 0
    assert captured_config["config"].method == "finetune" and captured_config["config"].train.num_epochs == 3.0


def test_report_to_flag_takes_a_comma_list_as_the_key_does(captured_config):
    # argparse choices refused what docs/configuration.md and train.report_to=tensorboard,wandb take
    assert main(["unlearn", "--report_to", "tensorboard,wandb"]) == 0
    assert captured_config["config"].train.report_to == "tensorboard,wandb"
    assert main(["unlearn", "--report_to", "wandb"]) == 0 and captured_config["config"].train.report_to == "wandb"


@pytest.mark.parametrize("argv, message", [
    (["unlearn", "--learning_rate", "fast"], "argument --learning_rate: invalid float value: 'fast'"),
    (["unlearn", "--per_device_train_batch_size", "2.5"], "argument --per_device_train_batch_size: invalid int"),
    (["unlearn", "--use_peft", "maybe"], "argument --use_peft: expected true or false, got 'maybe'"),
    (["unlearn", "--report_to", "mlflow"], "config key 'train.report_to' = 'mlflow' is invalid; expected none, "
                                           "tensorboard, wandb (or a comma list of them)"),
    (["unlearn", "--report_to", "tensorboard,mlflow"], "config key 'train.report_to' = 'tensorboard,mlflow' is"),
    (["unlearn", "--method", "forget-it"], "argument --method: invalid choice: 'forget-it'"),
    (["unlearn", "--lerning_rate", "1"], "obliviate unlearn: unrecognized arguments: --lerning_rate (did you mean "
                                         "--learning_rate?); see 'obliviate unlearn --help'"),
    (["finetune", "--method", "npo"], "unrecognized arguments: --method"),
    (["finetune", "method=npo"], "'method=npo': finetune always trains plain fine-tuning"),
    (["eval", "--model", "m", "--forget_splitt", "forget05"], "unrecognized arguments: --forget_splitt"),
    (["eval", "--model", "m", "--benchmark", "snap"], "argument --benchmark: invalid choice: 'snap'"),
    (["unlearn", "--learning_rate", "-1"], "config key 'train.learning_rate' = -1.0 is invalid"),
    (["unlearn", "--learning_rate", "1e-4", "train.learning_rate=2e-4"],
     "'train.learning_rate=2e-4' and the flag for 'train.learning_rate'"),
    (["unlearn", "train.num_train_epochs=2", "train.lr=1"], "config key 'train.lr' is not known"),
    (["unlearn", "train.num_train_epochs=2", "train.num_epochs=3"],
     "overrides 'train.num_train_epochs' and 'train.num_epochs' name the same setting; keep one"),
    (["unlearn", "--per_device_train_batch_size", "1", "train.per_device_train_batch_size=3"],
     "'train.per_device_train_batch_size=3' and the flag for 'train.batch_size' (= 1) set the same config key"),
    (["unlearn", "--output_dir", ""], "config key 'output_dir' = '' is invalid"),
    (["eval", "--model", "m", "--output_dir", " "], "output_dir is empty"),
    (["model", "info"], "model info: which model?"),
    (["probe", "--model", "m", "--ds_size", "0"], "--ds_size 0: expected an integer >= 1"),  # a traceback after scoring
    (["probe", "--model", "m", "--top", "-1"], "--top -1: expected an integer >= 1"),  # printed all rows but one
    (["probe", "--model", "m", "--output", "."], "--output .: is a folder"),
    (["eval", "--forget_split", "forget05"], "eval: no model to evaluate"),
    (["eval", "--config", "no-such-eval.yaml", "--model", "m"], "no-such-eval.yaml: no such config file"),
    (["eval", "--model", "m", "--extras", "sometimes"], "argument --extras: expected true or false"),
    ([], "obliviate: the following arguments are required"),
])
def test_bad_flags_are_one_line(argv, message, capsys, captured_config):
    err = one_line_error(capsys, exit_code(argv))
    assert message in err


def test_model_info_takes_an_option_too(tiny_model_dir, capsys):
    import json

    assert main(["model", "info", "--model", str(tiny_model_dir)]) == 0
    by_option = json.loads(capsys.readouterr().out)
    assert main(["model", "info", str(tiny_model_dir)]) == 0
    assert json.loads(capsys.readouterr().out) == by_option


@pytest.fixture
def captured_eval(monkeypatch):
    from obliviate import api

    seen = {}

    def fake_evaluate(model, **kwargs):
        seen.update(kwargs, model=model)
        raise SystemExit(0)

    monkeypatch.setattr(api, "evaluate", fake_evaluate)
    return seen


def test_eval_underscore_options_keep_their_kebab_spelling(captured_eval):
    assert exit_code(["eval", "--model", "m", "--forget_split", "forget05", "--ds_size", "3", "--no_extras",
                      "--output_dir", "o"]) == 0
    new = dict(captured_eval)
    captured_eval.clear()
    assert exit_code(["eval", "--model", "m", "--forget-split", "forget05", "--ds-size", "3", "--no-extras",
                      "--output-dir", "o"]) == 0
    assert captured_eval == new and new["forget_split"] == "forget05" and new["extras"] is False
    assert new["output_dir"] == "o" and new["ds_size"] == "3"


def test_eval_config_file_picks_the_benchmark_and_its_options(captured_eval, tmp_path):
    config = tmp_path / "eval.yaml"
    config.write_text("eval:\n  benchmark: rwku\n  model: some/model\n  targets: 1-3\n")
    assert exit_code(["eval", "--config", str(config), "--use_prompt"]) == 0  # an rwku option: parsed as rwku
    assert captured_eval["model"] == "some/model" and captured_eval["config"] == str(config)
    assert captured_eval["use_prompt"] is True


@pytest.mark.parametrize("body, flags, message", [
    ("ds_size: 0", [], "{config}: benchmark 'tofu' option 'ds_size' = 0 must be a positive integer"),
    ("forget_splt: forget05", [], "{config}: benchmark 'tofu' option 'forget_splt' is not known"),
    ("data: /no/tofu", [], "{config}: /no/tofu: no such TOFU directory"),
    ("ds_size: 0", ["--ds_size", "-2"], "error: benchmark 'tofu' option 'ds_size' = -2"),  # the flag's value
    ("forget_split: forget01", ["--data", "/no/tofu"], "error: /no/tofu: no such TOFU directory"),  # not the file's
    ("benchmark: harmful\n  threshold: 2", [], "{config}: benchmark 'harmful' option 'threshold' = 2.0"),
])
def test_a_bad_option_in_an_eval_config_names_the_file(body, flags, message, tmp_path, capsys):
    """Its refusal names the file (the merged file and flag options were checked nameless); a
    flag's bad value is the flag's, whatever the file holds."""
    config = tmp_path / "eval.yaml"
    config.write_text(f"eval:\n  {body}\n")
    err = one_line_error(capsys, exit_code(["eval", "--model", "some/model", "--config", str(config), *flags]))
    assert message.format(config=config) in err


@pytest.mark.skipif(not SHARED_TOFU.is_dir(), reason="../shared/data/tofu is absent")
def test_an_evaluation_run_twice_keeps_both_results(tiny_model_dir, tmp_path, capsys):
    """A run's model is evaluated inside its run directory; a second evaluation gets a new folder."""
    import json
    import shutil

    run_dir = tmp_path / "runs" / "x"
    shutil.copytree(tiny_model_dir, run_dir / "model")
    (run_dir / "manifest.json").write_text("{}")
    argv = ["eval", "--model", str(run_dir / "model"), "--data", str(SHARED_TOFU), "--ds_size", "2",
            "--max_new_tokens", "2", "--no_extras", "--device", "cpu", "--precision", "fp32"]
    assert main(argv) == 0
    assert main([*argv[:-2], "--precision", "fp32", "--batch_size", "1"]) == 0
    first, second = run_dir / "eval-tofu", run_dir / "eval-tofu-2"
    assert f"results: {second}" in capsys.readouterr().out
    assert json.loads((first / "tofu_eval.json").read_text())["config"]["batch_size"] == 32
    assert json.loads((second / "tofu_eval.json").read_text())["config"]["batch_size"] == 1


def test_unlearn_help_lists_each_methods_presets(capsys):
    from obliviate.methods.registry import methods

    with pytest.raises(SystemExit):
        main(["unlearn", "--help"])
    out = capsys.readouterr().out
    presets = out.split("presets (", 1)[1].split("examples:", 1)[0]
    for name, method in methods().items():
        for key in method.presets:
            assert any(line.split()[:1] == [name] and f"{key}=" in line for line in presets.splitlines()), (name, key)
    assert "train.learning_rate=0.0002" in presets and "objective.beta=4.5" in presets
    assert "train.lora.enabled=true" in presets and "True" not in out  # as one types it (YAML, key=value)
