"""Evaluation over several processes: `accelerate launch` with 2 CPU processes (gloo) gives the
numbers of one process, each process computing a share of the work and process 0 writing."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from test_tofu_eval import tofu_dir  # noqa: F401 -- the tiny TOFU directory fixture

from obliviate.evaluation import tofu
from obliviate.evaluation.distributed import data_parallel

ROOT = Path(__file__).resolve().parents[1]
OPTIONS = dict(forget_split="forget01", cache=False, precision="fp32", max_new_tokens=8, batch_size=2)

SCRIPT = """
import json, sys
from pathlib import Path
from transformers import AutoModelForCausalLM, AutoTokenizer
from obliviate.evaluation import tofu
from obliviate.evaluation.distributed import data_parallel

model_dir, data, out = sys.argv[1:4]
options = json.loads(sys.argv[4])
model = AutoModelForCausalLM.from_pretrained(model_dir)
tokenizer = AutoTokenizer.from_pretrained(model_dir)
ran = {"positions": 0}  # what this process's model computed, whatever the result records
model.get_decoder().register_forward_pre_hook(lambda module, args, kwargs: ran.update(
    positions=ran["positions"] + (kwargs.get("input_ids") if kwargs.get("input_ids") is not None else args[0]).numel()),
    with_kwargs=True)
with data_parallel() as state:
    model.to(state.device)
    result = tofu.evaluate_tofu(model, tokenizer, data=data, out_dir=out if state.is_main_process else None,
                                **options)
    Path(out, f"ran_{state.process_index}.json").write_text(json.dumps(ran))
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _comparable(result: dict) -> dict:
    """What must not depend on the number of processes (timings and counters may)."""
    return json.loads(json.dumps({"summary": result["summary"], "tasks": result["tasks"]}, default=str))


@pytest.mark.multiprocess
def test_two_processes_give_the_numbers_of_one(tmp_path, tiny_model_dir, tofu_dir):  # noqa: F811
    from transformers import AutoModelForCausalLM, AutoTokenizer

    script = tmp_path / "eval_dp.py"
    script.write_text(SCRIPT)
    out = tmp_path / "dp"
    out.mkdir()
    accelerate = Path(sys.executable).parent / "accelerate"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [str(accelerate), "launch", "--config_file", str(ROOT / "examples" / "accelerate_multi_gpu.yaml"),
         "--num_processes", "2", "--main_process_port", str(_free_port()), str(script),
         str(tiny_model_dir), str(tofu_dir), str(out), json.dumps(OPTIONS)],
        env=env, capture_output=True, text=True, timeout=180,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    single = tofu.evaluate_tofu(model, tokenizer, data=tofu_dir, **OPTIONS)
    written = json.loads((out / "tofu_eval.json").read_text())  # process 0's file
    assert _comparable(written) == _comparable(single)
    # the file counts the launch's model work (it counted process 0's share only), each process
    # having run a share of it, not all of it
    for name, total in single["model_tokens"].items():
        if name != "prompt tokens":  # the prefix shared by all prompts runs in every process
            assert written["model_tokens"][name] == total, name
    ran = [json.loads((out / f"ran_{rank}.json").read_text())["positions"] for rank in (0, 1)]
    alone = {"positions": 0}
    model.get_decoder().register_forward_pre_hook(lambda module, args, kwargs: alone.update(
        positions=alone["positions"] + (kwargs.get("input_ids") if kwargs.get("input_ids") is not None
                                        else args[0]).numel()), with_kwargs=True)
    tofu.evaluate_tofu(model, tokenizer, data=tofu_dir, **OPTIONS)
    assert all(0 < share < alone["positions"] for share in ran), (ran, alone)


def test_one_process_is_unchanged(tiny_model_and_tokenizer, tofu_dir):  # noqa: F811
    """data_parallel() in a single process (no launcher) computes everything itself."""
    model, tokenizer = tiny_model_and_tokenizer
    plain = tofu.evaluate_tofu(model, tokenizer, data=tofu_dir, **OPTIONS)
    with data_parallel() as state:
        assert state.num_processes == 1
        inside = tofu.evaluate_tofu(model, tokenizer, data=tofu_dir, **OPTIONS)
    assert _comparable(inside) == _comparable(plain)


@pytest.mark.multiprocess
def test_obliviate_eval_under_accelerate_launch(tmp_path, tiny_model_dir, tofu_dir):  # noqa: F811
    """`accelerate launch -m obliviate eval` shares the work and writes what one process writes,
    once, in the folder asked for; the report is printed once."""
    import obliviate.api as ob

    out = tmp_path / "launched"
    accelerate = Path(sys.executable).parent / "accelerate"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [str(accelerate), "launch", "--config_file", str(ROOT / "examples" / "accelerate_multi_gpu.yaml"),
         "--num_processes", "2", "--main_process_port", str(_free_port()), "-m", "obliviate", "eval",
         "--model", str(tiny_model_dir), "--data", str(tofu_dir), "--forget_split", "forget01", "--no_cache",
         "--precision", "fp32", "--max_new_tokens", "8", "--batch_size", "2", "--output_dir", str(out)],
        env=env, capture_output=True, text=True, timeout=180, cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("[obliviate] results:") == 1, done.stdout
    single = ob.evaluate(str(tiny_model_dir), output_dir=tmp_path / "single", data=str(tofu_dir),
                         forget_split="forget01", cache=False, precision="fp32", max_new_tokens=8, batch_size=2,
                         progress=False)
    written = json.loads((out / "tofu_eval.json").read_text())
    assert _comparable(written) == _comparable(single.envelope)
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in (tmp_path / "single").iterdir())
    # the work of the launch, as one process counts it (answer and generated tokens; every
    # process runs the shared prompt prefix)
    for name in ("answer tokens", "generated tokens"):
        assert written["model_tokens"][name] == single.envelope["model_tokens"][name], name
