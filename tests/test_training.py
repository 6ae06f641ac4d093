"""The Trainer path: resume after SIGKILL, NaN stop, LoRA, bf16 autocast, several processes."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from obliviate.config import RunConfig, load_config
from obliviate.data.request import QAItem
from obliviate.objectives import OBJECTIVES, Objective
from obliviate.objectives.common import answer_nll
from obliviate.errors import UserError
from obliviate.hardware import bf16_is_fast
from obliviate import training
from obliviate.training import NonFiniteLossError, build_training_args, train
from obliviate.training_checkpoints import last_complete_checkpoint

ROOT = Path(__file__).resolve().parents[1]
FORGET = [QAItem(f"Who wrote the novel number {i}?", f"The author of novel {i} was born in a small town.")
          for i in range(6)]
RETAIN = [QAItem(f"How many legs does animal {i} have?", f"A spider has eight legs, number {i}.") for i in range(8)]

# Runs the pipeline (methods.pipeline.run) with the overrides given; "slow" sleeps in every step so a test can kill it mid-run.
SCRIPT = textwrap.dedent("""
    import sys, time
    from obliviate.config import load_config
    from obliviate.methods.pipeline import run
    mode, overrides = sys.argv[1], sys.argv[2:]
    if mode == "slow":
        import obliviate.training as training
        compute_loss = training.UnlearnTrainer.compute_loss
        def slow(self, *args, **kwargs):
            time.sleep(0.4)
            return compute_loss(self, *args, **kwargs)
        training.UnlearnTrainer.compute_loss = slow
    run(load_config(None, overrides), resume=(mode == "resume"))
""")


def npo_overrides(model_dir, request, out_dir) -> list[str]:
    """8 steps of NPO + retain NLL on the tiny model, a checkpoint every 2 steps."""
    return [f"model={model_dir}", f"request={request}", f"output_dir={out_dir}", "method=npo", "seed=7",
            "train.max_steps=8", "train.batch_size=2", "train.save_steps=2", "train.save_total_limit=10",
            "train.learning_rate=1e-3"]


def config(**train) -> RunConfig:
    cfg = RunConfig(method="graddiff", seed=3)
    cfg.train.batch_size = 2
    cfg.train.learning_rate = 1e-3
    for key, value in train.items():
        setattr(cfg.train, key, value)
    return cfg


def state(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def env() -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT / "src"), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
            "OMP_NUM_THREADS": "1"}


@pytest.fixture
def script_args(tmp_path, tiny_model_dir):
    request = tmp_path / "request.json"
    request.write_text(json.dumps({
        "forget": [{"question": i.question, "answer": i.answer} for i in FORGET],
        "retain": [{"question": i.question, "answer": i.answer} for i in RETAIN],
    }))
    script = tmp_path / "run_tiny.py"
    script.write_text(SCRIPT)
    return script, str(tiny_model_dir), str(request)


def load_weights(model_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(model_dir / "model.safetensors")


def test_sigkill_then_resume_matches_an_uninterrupted_run(tmp_path, script_args):
    from obliviate.methods.pipeline import run

    script, model_dir, request = script_args
    broken = tmp_path / "broken"
    victim = subprocess.Popen([sys.executable, script, "slow", *npo_overrides(model_dir, request, broken)], env=env(),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (broken / "checkpoints" / "checkpoint-2" / "trainer_state.json").exists():
        assert victim.poll() is None and time.time() < deadline, "the slow run ended before its first checkpoint"
        time.sleep(0.02)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert not (broken / "model").exists(), "killed too late: the run had finished"
    kept = last_complete_checkpoint(broken / "checkpoints")
    assert kept is not None and int(kept.name.split("-")[1]) < 8

    run(load_config(None, npo_overrides(model_dir, request, broken)), resume=True)
    whole = run(load_config(None, npo_overrides(model_dir, request, tmp_path / "whole")))

    expected, got = load_weights(whole / "model"), load_weights(broken / "model")
    assert expected.keys() == got.keys()
    assert all(torch.equal(expected[k], got[k]) for k in expected)
    rows = {name: [json.loads(line) for line in (tmp_path / name / "train_log.jsonl").read_text().splitlines()]
            for name in ("broken", "whole")}
    assert [r["step"] for r in rows["broken"]] == list(range(1, 9))
    assert [r["learning_rate"] for r in rows["broken"]] == [r["learning_rate"] for r in rows["whole"]]
    manifest = json.loads((broken / "manifest.json").read_text())
    assert manifest["seed"] == 7 and manifest["base_model"]["weights_sha256"]
    assert set(manifest["inputs"]) == {request}


def test_nan_loss_stops_with_a_clear_error_and_keeps_the_last_good_checkpoint(
    tmp_path, tiny_model_and_tokenizer, monkeypatch
):
    def explodes_at_step_2(model, batch, ctx):
        nll = answer_nll(model, batch["forget"])
        ctx.log("forget_nll", nll)
        return nll * float("nan") if ctx.step >= 2 else nll

    monkeypatch.setitem(OBJECTIVES, "explodes", Objective(explodes_at_step_2, retain="none"))
    model, tokenizer = tiny_model_and_tokenizer
    with pytest.raises(NonFiniteLossError) as caught:
        train(model, tokenizer, forget=FORGET, retain=[], config=config(max_steps=5, save_steps=1),
              output_dir=tmp_path, objective="explodes")
    message = str(caught.value)
    assert isinstance(caught.value, UserError) and "\n" not in message
    assert "step 3" in message and "nan" in message and "checkpoint-2" in message
    checkpoints = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert checkpoints == ["checkpoint-1", "checkpoint-2"]
    assert last_complete_checkpoint(tmp_path / "checkpoints").name == "checkpoint-2"
    saved = load_weights(tmp_path / "checkpoints" / "checkpoint-2")
    assert all(torch.isfinite(t).all() for t in saved.values())
    assert len((tmp_path / "train_log.jsonl").read_text().splitlines()) == 2


def test_resuming_from_the_final_checkpoint_trains_no_step_past_the_end(tmp_path, tiny_model_and_tokenizer,
                                                                       monkeypatch):
    """A kill after the last checkpoint and before the model save: --resume trained step 5 of a
    4-step run (3-step epochs: transformers skips 1 batch of epoch 1 and trains the next), giving
    other weights under a constant schedule and a step 5 in the log."""
    import copy

    model, tokenizer = tiny_model_and_tokenizer
    cfg = config(max_steps=4, save_steps=4, learning_rate=1e-3, lr_scheduler="constant", precision="fp32")
    start = copy.deepcopy(model)
    done = state(train(model, tokenizer, forget=FORGET, retain=RETAIN, config=cfg, output_dir=tmp_path))
    assert (tmp_path / "checkpoints" / "checkpoint-4").is_dir()  # 6 items, batch 2: 3 steps an epoch
    ended = []

    class Recorded(training.TrainLog):  # the callbacks still see the run end (tensorboard closes its writer)
        def on_train_end(self, args, state, control, **kwargs):
            ended.append(state.global_step)

    monkeypatch.setattr(training, "TrainLog", Recorded)
    resumed = state(train(start, tokenizer, forget=FORGET, retain=RETAIN, config=cfg, output_dir=tmp_path,
                          resume=True))
    assert all(torch.equal(done[k], resumed[k]) for k in done) and ended == [4]
    assert [json.loads(line)["step"] for line in (tmp_path / "train_log.jsonl").read_text().splitlines()] == [1, 2, 3, 4]


@pytest.mark.parametrize("torn", ["trainer_state.json", "model.safetensors", "optimizer.pt"])
def test_a_torn_last_checkpoint_is_dropped_and_the_one_before_resumed(tmp_path, tiny_model_and_tokenizer, torn):
    """transformers writes trainer_state.json last but not atomically: a kill during that write (or
    a truncated weights file) left a checkpoint that --resume took and crashed on with a
    JSONDecodeError / SafetensorError traceback (a torn optimizer.pt: PytorchStreamReader's)."""
    import copy

    model, tokenizer = tiny_model_and_tokenizer
    cfg = config(max_steps=4, save_steps=2, learning_rate=1e-3, precision="fp32")
    start = copy.deepcopy(model)
    done = state(train(model, tokenizer, forget=FORGET, retain=RETAIN, config=cfg, output_dir=tmp_path))
    path = tmp_path / "checkpoints" / "checkpoint-4" / torn
    path.write_bytes(path.read_bytes()[:20])
    assert last_complete_checkpoint(tmp_path / "checkpoints").name == "checkpoint-2"
    (tmp_path / "train_log.jsonl").write_text("".join((tmp_path / "train_log.jsonl").read_text().splitlines(True)[:2]))
    resumed = state(train(start, tokenizer, forget=FORGET, retain=RETAIN, config=cfg, output_dir=tmp_path,
                          resume=True))
    assert all(torch.allclose(done[k], resumed[k], atol=1e-6) for k in done)


UNPICKLED = []


class _RunsCode:
    def __reduce__(self):
        return UNPICKLED.append, ("ran",)


def test_a_checkpoint_state_that_is_not_tensors_is_one_line_and_never_unpickled(tmp_path, tiny_model_and_tokenizer):
    """An rng_state.pth holding an object that runs code: transformers' weights_only load refused it,
    but as an UnpicklingError traceback whose text suggests weights_only=False."""
    model, tokenizer = tiny_model_and_tokenizer
    cfg = config(max_steps=2, save_steps=1, precision="fp32")
    train(model, tokenizer, forget=FORGET, retain=RETAIN, config=cfg, output_dir=tmp_path)
    torch.save({"x": _RunsCode()}, tmp_path / "checkpoints" / "checkpoint-2" / "rng_state.pth")
    with pytest.raises(UserError, match=r"^--resume: a state file in .*checkpoint-2 holds objects other than tensors"):
        train(model, tokenizer, forget=FORGET, retain=RETAIN, config=cfg, output_dir=tmp_path, resume=True)
    assert UNPICKLED == []


def test_logged_learning_rate_is_the_one_each_update_used(tmp_path, tiny_model_and_tokenizer):
    """The scheduler steps before on_step_end: get_last_lr() there was the next step's rate
    (5e-6 then 0.0 logged for updates made at 1e-5 and 5e-6)."""
    from torch.optim.optimizer import register_optimizer_step_pre_hook

    used = []
    hook = register_optimizer_step_pre_hook(lambda optimizer, *_: used.append(optimizer.param_groups[0]["lr"]))
    try:
        model, tokenizer = tiny_model_and_tokenizer
        train(model, tokenizer, forget=FORGET, retain=RETAIN, output_dir=tmp_path,
              config=config(max_steps=2, learning_rate=1e-5, lr_scheduler="linear", warmup_ratio=0.0))
    finally:
        hook.remove()
    logged = [json.loads(line)["learning_rate"] for line in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    assert used == pytest.approx([1e-5, 5e-6])
    assert logged == used


def test_lora_trains_adapters_only_and_saves_a_merged_model(tmp_path, tiny_model_and_tokenizer, monkeypatch):
    import copy

    from transformers import AutoModelForCausalLM

    import obliviate.objectives.npo as npo
    from obliviate.objectives.common import answer_logprobs, sequence_logprob
    from obliviate.models import save_model

    model, tokenizer = tiny_model_and_tokenizer
    before = state(model)
    base = copy.deepcopy(model).eval()
    seen = []  # (reference log-probs the loss used, the starting model's) for every step

    def recording(ctx, enc):
        value = original(ctx, enc)
        with torch.no_grad():
            logp, rows = answer_logprobs(base, enc)
            seen.append((value.detach().clone(), sequence_logprob(logp, rows, enc["input_ids"].shape[0])))
        return value

    original = npo.reference_sequence_logprob
    monkeypatch.setattr(npo, "reference_sequence_logprob", recording)
    cfg = config(max_steps=3, learning_rate=1e-2)
    cfg.method = "npo"  # its reference is the base model with the adapter disabled
    cfg.train.lora.enabled = True
    cfg.train.lora.r = 4
    cfg.train.lora.target_modules = ["q_proj", "v_proj"]
    trained = train(model, tokenizer, forget=FORGET, retain=RETAIN, config=cfg, output_dir=tmp_path)
    assert type(trained).__name__ == "LlamaForCausalLM"
    after = state(trained)
    assert after.keys() == before.keys()  # merged: no lora_A / lora_B left
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == {k for k in before if k.endswith(("q_proj.weight", "v_proj.weight"))}
    first = json.loads((tmp_path / "train_log.jsonl").read_text().splitlines()[0])
    assert abs(first["npo"] - 2 / 0.1 * torch.log(torch.tensor(2.0)).item()) < 1e-3  # policy == reference
    # after the adapter has moved, the reference must still be the starting model (adapter disabled)
    assert len(seen) == 3
    for used, starting in seen[1:]:
        torch.testing.assert_close(used, starting, rtol=1e-5, atol=1e-5)

    save_model(trained, tokenizer, tmp_path / "model")
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "model")
    assert all(torch.equal(loaded.state_dict()[k], after[k]) for k in after)


def test_bf16_autocast_keeps_fp32_weights_and_updates_land(tmp_path, tiny_model_and_tokenizer):
    model, tokenizer = tiny_model_and_tokenizer
    before = state(model)
    seen = []
    model.model.layers[0].self_attn.q_proj.register_forward_hook(lambda m, a, out: seen.append(out.dtype))
    cfg = config(max_steps=1, learning_rate=1e-5, precision="bf16", batch_size=4)
    with pytest.warns(UserWarning, match="bf16") if not bf16_is_fast() else contextlib.nullcontext():
        trained = train(model, tokenizer, forget=FORGET, retain=RETAIN, config=cfg, output_dir=tmp_path)
    assert torch.bfloat16 in seen  # the matmuls ran in bf16
    after = state(trained)
    assert all(t.dtype == torch.float32 for t in after.values())
    total = sum(t.numel() for t in before.values())
    changed = sum(int((before[k] != after[k]).sum()) for k in before)
    assert changed / total > 0.9, f"only {changed / total:.1%} of the weights changed"
    # the same update rounded into bf16 weights would mostly vanish: why the master weights stay fp32
    in_bf16 = sum(int((before[k].bfloat16() != after[k].bfloat16()).sum()) for k in before)
    assert in_bf16 / total < 0.5


def test_max_grad_norm_clips_and_zero_never_clips(tmp_path, tiny_model_and_tokenizer):
    """train.max_grad_norm reaches the Trainer: with plain SGD one update is lr * g, so a clipped
    update is g scaled to the norm and an unclipped one g itself (SKU's reference never clips;
    the Trainer's default 1.0 clipped every SKU step at norms 1.3-2.6)."""
    from obliviate.methods.sku import PRESETS

    model, tokenizer = tiny_model_and_tokenizer
    before = state(model)
    deltas = {}
    for norm in (0.0, 1e-3):
        model.load_state_dict(before)
        cfg = config(max_steps=1, learning_rate=1.0, optim="sgd", precision="fp32", max_grad_norm=norm,
                     weight_decay=0.0)
        after = state(train(model, tokenizer, forget=FORGET, retain=RETAIN, config=cfg, output_dir=tmp_path / str(norm)))
        deltas[norm] = torch.cat([(after[k] - before[k]).flatten() for k in before]).norm().item()
    assert deltas[1e-3] == pytest.approx(1e-3, rel=1e-3) and deltas[0.0] > 10 * deltas[1e-3]
    assert PRESETS["train.max_grad_norm"] == 0 and load_config(None, ["method=sku"]).train.max_grad_norm == 0
    assert load_config(None, ["method=npo"]).train.max_grad_norm == 1.0  # TrainingArguments' default elsewhere
    for bad in ("-1", ".nan", ".inf"):
        with pytest.raises(UserError, match=r"config key 'train.max_grad_norm'.*expected a (number >= 0|finite number)"):
            load_config(None, [f"train.max_grad_norm={bad}"])


def test_training_args_follow_the_config(tmp_path):
    cfg = config(save_steps=0, precision="fp32", gradient_accumulation_steps=2, warmup_ratio=0.1)
    args = build_training_args(cfg.train, tmp_path, seed=5)
    assert (args.bf16, args.save_strategy.value, args.remove_unused_columns) == (False, "epoch", False)
    assert args.report_to in ([], "none", ["none"]) and args.seed == args.data_seed == 5
    auto = build_training_args(config(precision="auto").train, tmp_path, seed=5)
    assert auto.bf16 == bf16_is_fast()
    with pytest.raises(UserError, match="warmup_ratio"):
        build_training_args(config(warmup_ratio=1.5).train, tmp_path, seed=5)


def test_baselines_run_writes_a_complete_run_directory(tmp_path, script_args):
    from transformers import AutoModelForCausalLM

    from obliviate.methods.pipeline import run

    _, model_dir, request = script_args
    out = tmp_path / "run"
    cfg = load_config(None, [f"model={model_dir}", f"request={request}", f"output_dir={out}", "method=simnpo",
                             "train.max_steps=2", "train.batch_size=2"])
    assert run(cfg) == out
    assert {p.name for p in out.iterdir()} >= {"config.yaml", "manifest.json", "model", "train_log.jsonl"}
    saved = load_config(out / "config.yaml")
    # SimNPO's preset, resolved: 0.125 on the forget term, retain weight 1 (open-unlearning's TOFU config)
    assert (saved.objective.beta, saved.objective.forget_weight, saved.objective.retain_weight) == (4.5, 0.125, 1.0)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["versions"]["torch"] and manifest["versions"]["obliviate"]
    assert manifest["peak_memory_mb"] > 0 and manifest["wall_time_s"] > 0
    AutoModelForCausalLM.from_pretrained(out / "model")
    with pytest.raises(UserError, match="already holds a run"):
        run(cfg)


@pytest.mark.multiprocess
def test_accelerate_launch_two_processes(tmp_path, script_args):
    """`accelerate launch` with the example config: 2 CPU processes train together over gloo."""
    script, model_dir, request = script_args
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    accelerate = Path(sys.executable).parent / "accelerate"
    out = tmp_path / "ddp"
    done = subprocess.run(
        [str(accelerate), "launch", "--config_file", str(ROOT / "examples" / "accelerate_multi_gpu.yaml"),
         "--num_processes", "2", "--main_process_port", str(port), str(script), "plain",
         *npo_overrides(model_dir, request, out)],
        env=env(), capture_output=True, text=True, timeout=90,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 9))
    assert rows[1]["epoch"] == 1.0  # 6 forget items over 2 processes x batch 2: 2 steps an epoch (1 process: 3)
    assert (out / "model" / "model.safetensors").is_file() and (out / "manifest.json").is_file()


def test_a_kill_while_the_log_is_cut_back_at_resume_keeps_it(tmp_path, monkeypatch):
    """On resume TrainLog rewrites train_log.jsonl with the steps up to the checkpoint: a plain
    write_text truncated it first, so a kill during that write lost the whole history."""
    import io
    import types

    from obliviate.training_callbacks import TrainLog

    log = tmp_path / "train_log.jsonl"
    log.write_text("".join(json.dumps({"step": step}) + "\n" for step in (1, 2, 3)))
    real_open = io.open

    class Killed(BaseException):
        pass

    def dying_open(file, mode="r", *args, **kwargs):
        handle = real_open(file, mode, *args, **kwargs)
        if "w" in mode:
            handle.close()
            raise Killed  # the process dies once the file is open for writing
        return handle

    monkeypatch.setattr(io, "open", dying_open)
    with pytest.raises(Killed):
        TrainLog(types.SimpleNamespace(is_world_process_zero=lambda: True), log, resume_step=2)
    monkeypatch.setattr(io, "open", real_open)
    assert [json.loads(line)["step"] for line in log.read_text().splitlines()] == [1, 2, 3]
    assert [p.name for p in tmp_path.iterdir()] == ["train_log.jsonl"]
