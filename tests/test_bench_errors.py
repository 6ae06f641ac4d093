"""`obliviate bench` errors name what the user wrote: the row file and its key when a value came
from the file (`bench.yaml: protocol.data: ...`), the flag when it came from a flag (`--data ...`),
`common:` for a bad key there (not the first row). One line, exit 2, nothing written. No model is
loaded: every check here runs before the first stage."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from obliviate.bench import cli

SPLITS = ("forget01", "forget01_perturbed", "retain_perturbed")
ROWS = [{"name": "GA", "method": "ga"}, {"name": "NPO", "method": "npo"}]


@pytest.fixture
def bench(tmp_path):
    """(row file, output dir): a folder with the split files the checks look for, two rows."""
    (tmp_path / "tofu").mkdir()
    for split in SPLITS:
        (tmp_path / "tofu" / f"{split}.json").write_text("[]")
    path = tmp_path / "bench.yaml"
    write(path, {"protocol": {"model": "some-model", "data": "tofu"}, "common": {"train.max_steps": 2}, "rows": ROWS})
    return path, tmp_path / "out"


def write(path: Path, spec: dict) -> None:
    path.write_text(yaml.safe_dump(spec, sort_keys=False))


def refused(capsys, config: Path | None, out: Path, *flags) -> str:
    """The one error line of a refused bench; checks exit 2, no traceback, nothing written."""
    argv = (["--config", str(config)] if config else []) + ["--output_dir", str(out), *flags]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: ") and "Traceback" not in err
    assert not out.exists()
    return err.strip()[len("error: "):]


def change(path: Path, section: str, **values) -> None:
    spec = yaml.safe_load(path.read_text())
    spec[section].update(values)
    write(path, spec)


def test_a_missing_data_folder_names_the_file_and_key_it_came_from(bench, capsys):
    config, out = bench
    change(config, "protocol", data="/nope/tofu")
    assert refused(capsys, config, out).startswith(f"{config}: protocol.data: /nope/tofu: no such directory;")
    change(config, "protocol", data="elsewhere")  # relative: the folder it was looked for in is named
    message = refused(capsys, config, out)
    assert message.startswith(f"{config}: protocol.data: elsewhere (relative to {config.parent}): no such directory")
    assert "--data" in message  # how to fix: the flag overrides the file
    message = refused(capsys, config, out, "--data", "/nope2")  # the flag's value: the flag is named
    assert message.startswith("--data /nope2: no such directory;") and "protocol" not in message


def test_a_missing_split_names_the_file_key_or_the_flag(bench, capsys):
    config, out = bench
    folder = config.parent / "tofu"
    change(config, "protocol", retain_split="retain99")
    message = refused(capsys, config, out)
    assert message.startswith(f"{config}: protocol.retain_split: retain99: no retain99.json in {folder};")
    assert not message.startswith("--")
    message = refused(capsys, config, out, "--retain_split", "retain95")
    assert message.startswith(f"--retain_split retain95: no retain95.json in {folder};")
    (folder / "forget01_perturbed.json").unlink()
    change(config, "protocol", retain_split="retain_perturbed")
    assert refused(capsys, config, out).startswith(f"{config}: protocol.forget_split (default): forget01: "
                                                   f"no forget01_perturbed.json in {folder};")


def test_a_missing_given_model_names_where_it_was_given_before_anything_is_written(bench, capsys):
    config, out = bench
    change(config, "protocol", target="no-model")
    assert refused(capsys, config, out).startswith(
        f"{config}: protocol.target: no-model (relative to {config.parent}): no such model directory;")
    assert refused(capsys, config, out, "--target", "/no/oracle").startswith("--target /no/oracle: no such model")


def test_a_missing_base_model_is_refused_before_anything_is_written(bench, capsys):
    config, out = bench
    change(config, "protocol", model="./no-model")  # written as a path: read beside the row file
    assert refused(capsys, config, out).startswith(
        f"{config}: protocol.model: ./no-model (relative to {config.parent}): no such file or directory")
    assert refused(capsys, config, out, "--model", "/no/base").startswith("--model /no/base: no such file")
    (config.parent / "beside").mkdir()  # a folder beside the file is the model, not a hub id
    change(config, "protocol", model="beside")
    assert refused(capsys, config, out).startswith(
        f"{config}: protocol.model: beside (relative to {config.parent}): the directory has no config.json")
    # given both the target and the oracle, the base model is not used: nothing to check
    for name in ("t", "o"):
        (config.parent / name).mkdir()
        (config.parent / name / "model.safetensors").write_bytes(b"")
    change(config, "protocol", model="./no-model", target="t", oracle="o", data="/nope")
    assert refused(capsys, config, out).startswith(f"{config}: protocol.data: /nope: no such directory")


def test_a_home_path_in_the_row_file_is_expanded(bench, capsys, monkeypatch):
    config, out = bench
    monkeypatch.setenv("HOME", str(config.parent))
    change(config, "protocol", data="~/elsewhere", target="~/no-target")
    assert refused(capsys, config, out).startswith(
        f"{config}: protocol.data: ~/elsewhere: no such directory")  # not 'relative to' the file
    change(config, "protocol", data="~/tofu")
    assert refused(capsys, config, out).startswith(f"{config}: protocol.target: ~/no-target: no such model")


def test_a_bad_common_key_names_common_not_the_first_row(bench, capsys):
    config, out = bench
    change(config, "common", **{"train.max_step": 3})
    message = refused(capsys, config, out)
    assert message.startswith(f"{config}: common: config key 'train.max_step' is not known")
    assert "row '" not in message
    spec = yaml.safe_load(config.read_text())
    spec["common"] = {"train.max_steps": 2}
    spec["rows"][1]["overrides"] = {"train.max_step": 3}  # a bad key in a row still names that row
    write(config, spec)
    assert refused(capsys, config, out).startswith(f"{config}: row 'NPO': config key 'train.max_step'")
    spec["rows"][1] = {"name": "NPO", "method": "nope"}  # a bad method is the row's, even with a common:
    write(config, spec)
    assert refused(capsys, config, out).startswith(f"{config}: row 'NPO': config key 'method' = 'nope'")


def test_the_packaged_rows_name_themselves_and_the_flag(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # no ../shared/data/tofu from here
    message = refused(capsys, None, tmp_path / "out")
    assert re.match(rf"packaged default rows: protocol\.data: \.\./shared/data/tofu \(relative to {tmp_path}\): "
                    r"no such directory; .*--data", message)


@pytest.mark.parametrize("key, value", [("max_new_tokens", 0), ("ds_size", -1), ("eval_batch_size", 0)])
def test_protocol_integers_below_their_least_value_are_refused(bench, capsys, key, value):
    """The flags were range-checked, the file's keys only type-checked (max_new_tokens: 0 ran)."""
    config, out = bench
    change(config, "protocol", **{key: value})
    assert refused(capsys, config, out) == f"{config}: protocol.{key} = {value} is invalid; expected an integer >= " \
                                           f"{0 if key == 'ds_size' else 1}"


def test_a_row_sets_a_common_key_in_its_other_spelling(bench, tmp_path):
    """common: train.num_train_epochs, a row: train.num_epochs (the same setting): the row wins,
    as over any common key (the overrides' both-spellings check refused it); both spellings in
    one section are still refused, naming the section."""
    from obliviate.bench.rows import load_spec, row_config
    from obliviate.errors import UserError

    config, _ = bench
    spec = yaml.safe_load(config.read_text())
    spec["common"] = {"train.num_train_epochs": 2}
    spec["rows"][1]["overrides"] = {"train.num_epochs": 5}
    write(config, spec)
    loaded = load_spec(config)
    where = dict(model="m", request="r.json", output_dir=str(tmp_path / "o"))
    assert row_config(loaded, loaded.rows[1], **where).train.num_epochs == 5.0
    assert row_config(loaded, loaded.rows[0], **where).train.num_epochs == 2.0
    spec["common"] = {"train.num_train_epochs": 2, "train.num_epochs": 3}
    write(config, spec)
    loaded = load_spec(config)
    with pytest.raises(UserError, match=re.escape(f"{config}: common: 'train.num_train_epochs' and 'train.num_epochs' "
                                                  "name the same setting")):
        row_config(loaded, loaded.rows[0], **where)


@pytest.mark.parametrize("key", ["model", "request", "output_dir", "method"])
def test_a_key_the_bench_sets_is_refused_in_overrides(bench, capsys, key):
    """A row's `overrides: {model: ...}` was silently replaced by the bench's own value."""
    config, out = bench
    spec = yaml.safe_load(config.read_text())
    spec["rows"][1]["overrides"] = {key: "mine"}
    write(config, spec)
    assert refused(capsys, config, out).startswith(f"{config}: row 'NPO': '{key}' is the bench's to set")
    spec["rows"][1].pop("overrides")
    spec["common"][key] = "mine"
    write(config, spec)
    assert refused(capsys, config, out).startswith(f"{config}: common: '{key}' is the bench's to set")
