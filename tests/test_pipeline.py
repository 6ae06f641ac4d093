"""The one run pipeline and the method registry: a new method is one file plus one registration.

The throwaway method below is all a contributor writes: a recipe (train, then a weight
operation), a config section of its own and one `register_method` line. Nothing in the pipeline,
the CLI or the config module is edited for it.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass

import pytest
import torch

from obliviate.config import load_config, save_config
from obliviate.errors import UserError
from obliviate.methods import registry
from obliviate.weights import interpolate_

FORGET = [{"question": f"Who wrote the novel number {i}?", "answer": f"Novel {i} was written by Ana Bell."}
          for i in range(4)]
RETAIN = [{"question": f"How many legs has animal {i}?", "answer": "Eight legs, like a spider."} for i in range(4)]


# --- the throwaway method: one file's worth ------------------------------------------------------
@dataclass
class ShrinkConfig:
    keep: float = 0.5  # theta = keep * theta_ft + (1 - keep) * theta_0

    def checks(self):
        return [(0.0 <= self.keep <= 1.0, "keep", "a number in [0, 1]")]


def shrink_recipe(run) -> dict:
    """Fine-tune on the forget set, then pull the weights back towards the start."""
    base = copy.deepcopy(run.model)
    tuned = run.train(forget=run.request.forget, objective="finetune")
    run.stats["keep"] = run.config.shrink.keep
    return {"model": interpolate_(copy.deepcopy(tuned), base, run.config.shrink.keep),
            "model_tuned": tuned}


@pytest.fixture
def shrink_method():
    method = registry.register_method(registry.Method(
        "shrink", shrink_recipe, "fine-tune, then average with the start (a test method)",
        section=("shrink", ShrinkConfig), presets={"train.max_steps": 2}))
    yield method
    registry._METHODS.pop("shrink")
# --------------------------------------------------------------------------------------------------


@pytest.fixture
def request_file(tmp_path):
    path = tmp_path / "request.json"
    path.write_text(json.dumps({"forget": FORGET, "retain": RETAIN}))
    return path


def overrides(tiny_model_dir, request_file, out, *extra):
    return [f"model={tiny_model_dir}", f"request={request_file}", f"output_dir={out}", "train.batch_size=2",
            "train.save_steps=-1", "train.learning_rate=1e-2", *extra]


def test_a_new_method_plugs_in_through_the_registry(shrink_method, tiny_model_dir, request_file, tmp_path, capsys):
    from safetensors.torch import load_file

    from obliviate import api
    from obliviate.cli import main

    out = tmp_path / "run"
    config = load_config(None, overrides(tiny_model_dir, request_file, out, "method=shrink", "shrink.keep=0.25"))
    assert config.shrink.keep == 0.25 and config.train.max_steps == 2  # its section and its preset
    run_dir = api.unlearn(config)
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["method"] == "shrink" and manifest["device"] == "cpu"
    assert set(manifest["models"]) == {"model", "model_tuned"} and manifest["method_stats"] == {"keep": 0.25}
    assert manifest["request"] == {"name": "request", "forget": 4, "retain": 4, "sha256": manifest["request"]["sha256"]}
    assert str(request_file) in manifest["inputs"]
    base = load_file(tiny_model_dir / "model.safetensors")
    tuned = load_file(run_dir / "model_tuned" / "model.safetensors")
    shrunk = load_file(run_dir / "model" / "model.safetensors")
    name = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(tuned[name], base[name])
    torch.testing.assert_close(shrunk[name], 0.25 * tuned[name] + 0.75 * base[name])
    assert load_config(run_dir / "config.yaml").shrink.keep == 0.25  # the section round-trips
    with pytest.raises(UserError, match=r"config key 'shrink.keep' = 2.0 is invalid"):
        load_config(None, ["method=shrink", "shrink.keep=2"])
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main(["unlearn", "--help"])
    assert "shrink" in capsys.readouterr().out and "test method" in api.methods()["shrink"]


def test_presets_sit_under_the_users_values(shrink_method, tmp_path):
    assert load_config(None, ["method=shrink"]).train.max_steps == 2
    # an explicit value wins, also when it equals the generic default
    assert load_config(None, ["method=shrink", "train.max_steps=-1"]).train.max_steps == -1
    assert load_config(None, base={"method": "shrink", "train.max_steps": -1}).train.max_steps == -1
    assert load_config(None, ["method=graddiff"]).train.max_steps == -1
    # the user's epoch count: a preset step budget (max_steps > 0 wins) would have overridden it (SKU's 1000)
    for epochs in ("train.num_epochs=3", "train.num_train_epochs=3", ("train.num_epochs", 3)):
        config = load_config(None, ["method=shrink", epochs])
        assert (config.train.max_steps, config.train.num_epochs) == (-1, 3)
    assert load_config(None, ["method=shrink", "train.num_epochs=3", "train.max_steps=4"]).train.max_steps == 4
    # over a resolved config (api.unlearn(..., config=cfg, num_train_epochs=1), --config old/config.yaml)
    from obliviate.io import flatten_keys

    resolved = flatten_keys(load_config(None, ["method=shrink"]).to_dict())
    assert load_config(None, [("train.num_epochs", 1)], base=resolved).train.max_steps == -1
    assert load_config(None, [], base=resolved).train.max_steps == 2
    written = tmp_path / "mine.yaml"  # the user's own file sets the preset's value: it stays
    written.write_text("method: shrink\ntrain:\n  max_steps: 2\n")
    assert load_config(written, ["train.num_epochs=3"]).train.max_steps == 2


def test_resolved_config_keeps_every_section(tmp_path):
    config = load_config(None, ["method=graddiff", "device=cpu"])
    save_config(config, tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml") == config


@pytest.mark.parametrize("value, message", [
    ("tpu", "config key 'device' = 'tpu' is invalid; expected auto, cpu, cuda, cuda:N or mps"),
    ("cuda", "device 'cuda': this machine has no CUDA device; use device=auto or cpu"),
])
def test_a_device_that_is_not_here_is_one_clear_error(value, message, tiny_model_dir, request_file, tmp_path):
    from obliviate.methods.pipeline import run

    if value == "cuda" and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    out = tmp_path / "run"
    with pytest.raises(UserError, match=message.replace("(", r"\(")):
        run(load_config(None, overrides(tiny_model_dir, request_file, out, f"device={value}")))
    assert not out.exists()  # refused before anything was written


def test_unknown_method_lists_the_registered_ones():
    with pytest.raises(UserError, match=r"config key .method. = .nope. is invalid; expected one of (?=.*graddiff)(?=.*ulmr)"):
        load_config(None, ["method=nope"])


def test_resume_refuses_another_config_but_not_resume_safe_changes(tiny_model_dir, request_file, tmp_path):
    """The README's trap: `--resume` of an NPO run with the GradDiff config is refused, naming the
    first differing key and both values; save / log / device settings may change."""
    from obliviate.methods.pipeline import run

    out = tmp_path / "run"
    first = overrides(tiny_model_dir, request_file, out, "method=npo", "train.max_steps=1")
    run(load_config(None, first))
    with pytest.raises(UserError, match=r"--resume: config key 'method' = 'graddiff' differs from the run's 'npo' "
                                        r"\(.*config\.yaml\)"):
        run(load_config(None, [*first, "method=graddiff"]), resume=True)
    with pytest.raises(UserError, match=r"config key 'train.learning_rate' = 0.02 differs from the run's 0.01"):
        run(load_config(None, [*first, "train.learning_rate=2e-2"]), resume=True)
    saved = (out / "config.yaml").read_text()
    assert "method: npo" in saved  # the refusal wrote nothing
    with pytest.raises(UserError, match=r"holds a finished run \(manifest.json is written last\): nothing to resume"):
        run(load_config(None, first), resume=True)  # it would train past max_steps and rewrite the manifest
    (out / "manifest.json").unlink()  # as if killed before it finished
    run(load_config(None, [*first, "train.logging_steps=1", "device=cpu", "train.report_to=none"]), resume=True)
    assert load_config(out / "config.yaml").train.logging_steps == 1


def test_resume_refuses_a_changed_base_model_or_request(tiny_model_dir, request_file, tmp_path):
    """Same config, same paths, other contents: a retrained base model or an edited request file
    under the same name would mix two runs in one directory."""
    import torch
    from transformers import AutoModelForCausalLM

    from obliviate.methods.pipeline import run

    out = tmp_path / "run"
    first = overrides(tiny_model_dir, request_file, out, "method=npo", "train.max_steps=1")
    run(load_config(None, first))
    (out / "manifest.json").unlink()  # as if killed before it finished
    request_file.write_text(request_file.read_text().replace("?", " ?", 1))
    with pytest.raises(UserError, match=r"--resume: .*request.json changed since the run in"):
        run(load_config(None, first), resume=True)
    original = request_file.read_text().replace(" ?", "?", 1)
    request_file.write_text(original)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    with torch.no_grad():
        next(model.parameters()).add_(1.0)
    model.save_pretrained(tiny_model_dir)  # retrained under the same path
    with pytest.raises(UserError, match="--resume: the base model's weights differ"):
        run(load_config(None, first), resume=True)


def test_resume_refuses_another_request_in_memory_or_a_changed_refusals_file(tiny_model_dir, request_file,
                                                                              tmp_path):
    """A request given as a mapping has no file to hash: its items' sha256 is kept, so a resume
    with other items is refused (it trained half on each). The refusals file IDK-DPO / RT train
    towards is an input like the request's files."""
    from obliviate.methods import pipeline
    from obliviate.methods.pipeline import run

    items = [{"question": f"Who wrote book {i}?", "answer": f"Author {i} did."} for i in range(4)]
    out = tmp_path / "run"
    first = overrides(tiny_model_dir, request_file, out, "method=graddiff", "train.max_steps=1")
    run(load_config(None, first), request={"forget": items, "retain": items})
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["request"]["sha256"] == json.loads((out / "started_from.json").read_text())["request_sha256"]
    # an optional field a later version adds to the items (unset here) leaves the hash as it was
    assert pipeline._without_unset({"forget": [{"question": "q", "answer": "a", "new_field": None}]}) == \
        {"forget": [{"question": "q", "answer": "a"}]}
    (out / "manifest.json").unlink()  # as if killed before it finished
    other = [dict(item, answer="Nobody did.") for item in items]
    with pytest.raises(UserError, match="--resume: the request's items differ from those the run"):
        run(load_config(None, first), request={"forget": other, "retain": items}, resume=True)
    run(load_config(None, first), request={"forget": items, "retain": items}, resume=True)  # the same: accepted

    refusals = tmp_path / "refusals.txt"
    refusals.write_text("I cannot say.\nNo idea.\n")
    out = tmp_path / "rt"
    rt = overrides(tiny_model_dir, request_file, out, "method=rt", "train.max_steps=1", f"objective.refusals={refusals}")
    run(load_config(None, rt))
    assert str(refusals) in json.loads((out / "started_from.json").read_text())["inputs"]
    (out / "manifest.json").unlink()
    refusals.write_text("Something else.\n")
    with pytest.raises(UserError, match=r"--resume: .*refusals.txt changed since the run in"):
        run(load_config(None, rt), resume=True)


@pytest.mark.parametrize("method, fix", [("kl", "add a 'retain' set to the request, or use a method without one"),
                                         ("snap", "add a 'retain' set to the request, or use a method without one"),
                                         ("graddiff", "add a 'retain' set or set objective.retain_loss=none")])
def test_a_request_without_retain_items_is_refused_before_the_model_loads(method, fix, tmp_path, monkeypatch):
    """KL / SKU / RMU / SNAP have a retain term of their own: the advice to set
    objective.retain_loss=none did not work for them, and SNAP told it only after generating its
    data (leaving it behind). Now the fix that works, before the model loads."""
    from obliviate.methods import pipeline

    monkeypatch.setattr(pipeline, "load_model", lambda *a, **k: pytest.fail("the model was loaded"))
    config = load_config(None, [f"method={method}", f"output_dir={tmp_path / 'run'}", "generation.backend=template"])
    with pytest.raises(UserError, match=f"method '{method}' needs retain items but the request has none.*{fix}"):
        pipeline.run(config, request={"forget": [{"question": "Who is A?", "answer": "A writer."}]})
    assert not (tmp_path / "run").exists()


def test_snaps_hard_positives_may_come_from_the_neighbours_alone(tmp_path, monkeypatch):
    """SNAP makes its hard positives from retain + neighbours (an RWKU request has neighbours and no
    retain set): the early check must not refuse it (a review caught the regression)."""
    from obliviate.methods import pipeline

    class Loaded(Exception):
        pass

    def load_model(*args, **kwargs):
        raise Loaded

    monkeypatch.setattr(pipeline, "load_model", load_model)
    request = {"forget": [{"question": "Who is A?", "answer": "A writer."}],
               "neighbors": [{"question": "Who is B?", "answer": "B, a poet."}]}
    config = load_config(None, ["method=snap", f"output_dir={tmp_path / 'run'}", "generation.backend=template"])
    with pytest.raises(Loaded):  # past every check, to the model load
        pipeline.run(config, request=request)
    config = load_config(None, ["method=snap", f"output_dir={tmp_path / 'run'}", "snap.use_neighbors=false"])
    with pytest.raises(UserError, match="method 'snap' needs retain items"):
        pipeline.run(config, request=request)


def test_rt_on_a_tofu_folder_trains_on_tofus_own_refusals(tiny_model_dir, tmp_path, slot_datasets):
    """A request read from a folder holding TOFU's idontknow.jsonl: RT's refusals come from it
    (the reference's default), unless objective.refusals names another file."""
    from obliviate.methods.pipeline import run

    folder = tmp_path / "tofu"
    folder.mkdir()
    (folder / "forget01.json").write_text(json.dumps(FORGET))
    (folder / "idontknow.jsonl").write_text("Zebra refusal one.\nZebra refusal two.\n")
    out = tmp_path / "run"
    run(load_config(None, overrides(tiny_model_dir, folder / "forget01.json", out, "method=rt",
                                    "train.max_steps=1", "objective.retain_loss=none")))
    manifest = json.loads((out / "manifest.json").read_text())
    assert str(folder / "idontknow.jsonl") in manifest["inputs"]
    refusals = {text for dataset in slot_datasets for text in getattr(dataset, "refusals", None) or []}
    assert refusals == {"Zebra refusal one.", "Zebra refusal two."}


def test_main_first_makes_the_others_wait_on_a_marker_and_fail_with_process_0(tmp_path, monkeypatch, capsys):
    """Under a launch, process 0 prepares the data and the others wait on a marker file (a wait
    inside a collective would time out during a long generation); if process 0 failed, they fail
    at once instead of generating everything again."""
    from types import SimpleNamespace

    import accelerate.utils

    from obliviate.methods.pipeline import PREPARED, Run

    monkeypatch.setattr(accelerate.utils, "broadcast_object_list", lambda objects: ["token"])
    marker = tmp_path / f"{PREPARED}-token"

    def run_as(main: bool) -> Run:
        state = SimpleNamespace(num_processes=2, is_main_process=main)
        return Run(None, None, None, None, tmp_path, torch.device("cpu"), state=state)

    (tmp_path / f"{PREPARED}-old").write_text("done")  # an earlier launch's
    with pytest.raises(ZeroDivisionError), run_as(True).main_first():
        1 / 0
    assert marker.read_text() == "failed" and not (tmp_path / f"{PREPARED}-old").exists()
    ran = []
    with pytest.raises(UserError, match="process 0 failed while preparing the method's data"):
        with run_as(False).main_first():
            ran.append("other")
    assert not ran  # it did not generate again
    with run_as(True).main_first():
        ran.append("main")
    assert marker.read_text() == "done"
    with run_as(False).main_first():
        ran.append("other")
        print("[obliviate] warning: said by process 0 already")
    assert ran == ["main", "other"] and "said by process 0" not in capsys.readouterr().out
