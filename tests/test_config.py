"""Run configuration: YAML + key=value overrides, validated with the dotted key in the message."""

import re

import pytest
import yaml

from obliviate.config import load_config, save_config
from obliviate.errors import UserError


def test_defaults_file_and_overrides_compose(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("method: npo\ntrain:\n  learning_rate: 2.0e-5\n  lora:\n    enabled: true\n")
    config = load_config(path, ["train.batch_size=8", "train.lora.target_modules=q_proj,v_proj", "ulmr.alpha_sweep=[0.3, 0.7]"])
    assert config.method == "npo" and config.train.learning_rate == 2e-5 and config.train.batch_size == 8
    assert config.train.lora.enabled and config.train.lora.target_modules == ["q_proj", "v_proj"]
    assert config.ulmr.alpha_sweep == [0.3, 0.7]
    assert config.train.weight_decay == 0.01  # untouched default


def test_resolved_config_round_trips(tmp_path):
    config = load_config(None, ["method=ulmr", "ulmr.alpha=0.3"])
    save_config(config, tmp_path / "config.yaml")
    again = load_config(tmp_path / "config.yaml")
    assert again == config
    assert yaml.safe_load((tmp_path / "config.yaml").read_text())["ulmr"]["alpha"] == 0.3


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.lr=1", "config key 'train.lr' is not known"),
        ("train.batch_size=abc", "config key 'train.batch_size': expected int"),
        ("method=nope", "config key 'method' = 'nope' is invalid"),
        ("ulmr.alpha=1.5", "config key 'ulmr.alpha' = 1.5 is invalid"),
        ("train.learning_rate=-1", "config key 'train.learning_rate' = -1.0 is invalid"),
        ("noequals", "expected key=value"),
        ("train=3", "config key 'train': expected a mapping"),
        # each of these was a traceback after the run directory was made (a user review)
        ("train.lr_scheduler=foo", "config key 'train.lr_scheduler' = 'foo' is invalid; expected one of linear"),
        ("train.lr_scheduler=cosine_with_min_lr", "config key 'train.lr_scheduler' = 'cosine_with_min_lr' is invalid"),
        ("train.lr_scheduler=reduce_lr_on_plateau", "config key 'train.lr_scheduler' = 'reduce_lr_on_plateau' is"),
        ("train.logging_steps=0", "config key 'train.logging_steps' = 0 is invalid"),
        ("objective.beta=0", "config key 'objective.beta' = 0.0 is invalid"),
        ("objective.beta=-1", "config key 'objective.beta' = -1.0 is invalid"),
        ("objective.rmu_layer=-2", "config key 'objective.rmu_layer' = -2 is invalid"),  # trained as -1 silently
        ("train.lora.dropout=1.5", "config key 'train.lora.dropout' = 1.5 is invalid"),
        ("output_dir=", "config key 'output_dir' = '' is invalid"),
        ("ulmr.negative_prompt=Say {foo} {question}", "config key 'ulmr.negative_prompt' = 'Say {foo} {question}' is"),
        ('ulmr.rewrite_prompt=Reply as JSON {"q": {question}}', "config key 'ulmr.rewrite_prompt'"),
        ("ulmr.rewrite_prompt=Rewrite {question", "config key 'ulmr.rewrite_prompt'"),
        ("snap.instruction_prompt=Ask about {question}", "config key 'snap.instruction_prompt'"),
        ("snap.obliterated_prompt=Reply to {0}", "config key 'snap.obliterated_prompt'"),
        # 0 or fewer attempts silently skipped the generation (the fallback template only)
        ("snap.max_attempts=0", "config key 'snap.max_attempts' = 0 is invalid; expected an integer >= 1"),
        ("ulmr.max_attempts=0", "config key 'ulmr.max_attempts' = 0 is invalid; expected an integer >= 1"),
        ("ulmr.max_attempts=-1", "config key 'ulmr.max_attempts' = -1 is invalid"),
        ("train.num_train_epochs=1 train.num_epochs=2", "overrides 'train.num_train_epochs' and 'train.num_epochs' name "
                                                       "the same setting"),
    ],
)
def test_bad_values_name_the_key(override, message):
    with pytest.raises(UserError, match=re.escape(message)):
        load_config(None, override.split(" ") if " train." in override else [override])


def test_prompt_templates_with_their_own_fields_and_doubled_braces_are_accepted():
    config = load_config(None, ['ulmr.rewrite_prompt=As JSON {{"q": "{question}"}} about {subject}',
                                "snap.obliterated_prompt={instruction} / {subject}"])
    assert config.sections["ulmr"].rewrite_prompt.format(question="Q", subject="S") == 'As JSON {"q": "Q"} about S'


def test_bad_yaml_names_file_and_line(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("method: npo\ntrain: [\n")
    with pytest.raises(UserError, match=r"run\.yaml:\d+: invalid YAML"):
        load_config(path)
    path.write_text("method: npo\ntrain:\n  learning_rate: 1.0e-5\n  max_steps: 3\n  learning_rate: 1.0e-3\n")
    with pytest.raises(UserError, match=r"run\.yaml:5: invalid YAML \(key 'learning_rate' appears twice"):
        load_config(path)  # PyYAML would keep the last one silently
    from obliviate.io import parse_yaml

    assert parse_yaml('1: int\n"1": text\n', "f") == {1: "int", "1": "text"}  # two keys, not one twice
    path.write_text("? [a, b]\n: 1\nmethod: npo\n")  # a complex key is not a duplicate
    with pytest.raises(UserError, match=r"run\.yaml:1: invalid YAML \(found unhashable key\)"):
        load_config(path)


def test_hf_names_are_aliases_inside_train(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("train:\n  num_train_epochs: 2\n  per_device_train_batch_size: 6\n")
    config = load_config(path, ["train.per_device_train_batch_size=7"])
    assert config.train.num_epochs == 2.0 and config.train.batch_size == 7
    save_config(config, tmp_path / "saved.yaml")  # saved under our names
    saved = yaml.safe_load((tmp_path / "saved.yaml").read_text())["train"]
    assert saved["num_epochs"] == 2.0 and "num_train_epochs" not in saved
    path.write_text("train:\n  num_train_epochs: 2\n  num_epochs: 3\n")
    with pytest.raises(UserError, match="'train.num_train_epochs' and 'train.num_epochs' name the same setting"):
        load_config(path)


def test_report_to_is_a_config_key_passed_to_training_arguments(monkeypatch):
    from transformers.integrations import integration_utils

    from obliviate.training import build_training_args

    assert load_config(None, ["train.report_to=tensorboard,wandb"]).train.report_to == "tensorboard,wandb"
    with pytest.raises(UserError, match="config key 'train.report_to' = 'mlflow' is invalid"):
        load_config(None, ["train.report_to=mlflow"])
    monkeypatch.delenv("OBLIVIATE_REPORT_TO", raising=False)
    assert build_training_args(load_config(None).train, "out", 1, device="cpu").report_to in ([], "none", ["none"])
    monkeypatch.setattr(integration_utils, "is_tensorboard_available", lambda: False)
    with pytest.raises(UserError, match="tensorboard is not installed; pip install tensorboard"):
        build_training_args(load_config(None, ["train.report_to=tensorboard"]).train, "out", 1, device="cpu")
    monkeypatch.setattr(integration_utils, "is_tensorboard_available", lambda: True)
    args = build_training_args(load_config(None, ["train.report_to=tensorboard"]).train, "out", 1, device="cpu")
    assert args.report_to == ["tensorboard"]


def test_eval_config_reads_an_eval_section_or_a_flat_mapping(tmp_path):
    from obliviate.config import load_eval_config

    path = tmp_path / "eval.yaml"
    path.write_text("model: m\neval:\n  benchmark: tofu\n  forget-split: forget05\n")
    assert load_eval_config(path) == {"benchmark": "tofu", "forget_split": "forget05"}
    path.write_text("benchmark: rwku\ntargets: 1-3\n")
    assert load_eval_config(path) == {"benchmark": "rwku", "targets": "1-3"}
    path.write_text("eval: [1, 2]\n")
    with pytest.raises(UserError, match="'eval' must be a mapping"):
        load_eval_config(path)


def test_pairs_set_keys_and_sections_merge_into_the_file(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("method: ulmr\nulmr:\n  n_rewrites: 3\n")
    config = load_config(path, [("ulmr", {"alpha": 0.25}), ("train.num_train_epochs", 2)])
    assert config.ulmr.alpha == 0.25 and config.ulmr.n_rewrites == 3 and config.train.num_epochs == 2.0


def test_the_documented_config_block_holds_every_key_with_its_default():
    """docs/configuration.md's YAML block is the reference users read: every RunConfig key (each
    registered method's section too) with the default the code has; prompts are abridged there."""
    import re
    from pathlib import Path

    import yaml

    from obliviate.config import RunConfig
    from obliviate.io import flatten_keys

    text = (Path(__file__).resolve().parents[1] / "docs" / "configuration.md").read_text()
    block = next(b for b in re.findall(r"```yaml\n(.*?)```", text, re.S) if b.startswith("model:"))
    documented = flatten_keys(yaml.safe_load(block))
    actual = flatten_keys(yaml.safe_load(yaml.safe_dump(RunConfig().to_dict())))
    assert sorted(documented) == sorted(actual)
    for key, value in actual.items():
        if not key.endswith("_prompt"):
            assert documented[key] == value, key


def test_an_unknown_key_with_control_characters_stays_one_line():
    """Found by the reader fuzz: a YAML key holding a newline broke the one-line error."""
    with pytest.raises(UserError) as error:
        load_config(None, base={"tra\nin": 1})
    assert "\n" not in str(error.value) and "config key 'tra\\nin' is not known" in str(error.value)


@pytest.mark.parametrize("override, message", [
    ("generation.base_url=http://alice:hunter2@127.0.0.1:8000/v1", "generation.base_url holds a credential"),
    ("generation.api_key_env=sk-hunter2", "generation.api_key_env must name an environment variable"),
])
def test_an_api_key_in_the_generation_settings_is_refused_before_config_yaml(override, message):
    """Both are saved in config.yaml: a key there (a URL's password, the key given as its
    variable's name) was written into the run directory and printed in messages."""
    with pytest.raises(UserError, match=message) as info:
        load_config(None, [override])
    assert "hunter2" not in str(info.value)
