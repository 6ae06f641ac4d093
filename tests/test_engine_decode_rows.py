"""``decode_batch_size``: how many prompts decode together, apart from the scoring groups
(``batch_size``); by default sized by :func:`settings.decode_rows` (CPU: a key/value memory
budget, up to 256 rows, at fp32). At fp32 the outputs and the scores do not depend on it."""

from __future__ import annotations

import pytest
import torch

from obliviate.errors import UserError
from obliviate.evaluation import engine
from obliviate.evaluation.engine import settings, slot_decoder

QUESTIONS = [f"Question {i}: what happened in the year {1900 + 7 * i}?" for i in range(12)]
PAIRS = [(q, "It was a quiet year.") for q in QUESTIONS[:4]]
CPU, CUDA = torch.device("cpu"), torch.device("cuda")
GiB = 2**30


def _run(model, tokenizer, monkeypatch, precision="fp32", **options):
    """(scores, generations, most rows busy in one decoding step)."""
    rows = []
    original = slot_decoder.SlotDecoder.step

    def step(self):
        rows.append(sum(p is not None for p in self.prompts))
        return original(self)

    monkeypatch.setattr(slot_decoder.SlotDecoder, "step", step)
    stats, texts = engine.score_and_generate(model, tokenizer, PAIRS, QUESTIONS, max_new_tokens=10, batch_size=3,
                                             precision=precision, decode="plain", **options)
    return [s.sum_nll for s in stats], texts, max(rows)


def test_decode_batch_size_sets_the_rows_and_keeps_the_outputs(tiny_model_and_tokenizer, monkeypatch):
    model, tokenizer = tiny_model_and_tokenizer
    scores, texts, rows = _run(model, tokenizer, monkeypatch, decode_batch_size=3)
    assert rows == 3
    wide_scores, wide_texts, wide_rows = _run(model, tokenizer, monkeypatch, decode_batch_size=8)
    assert wide_rows == 8  # groups of 3 are scored until 8 prompts decode together
    assert wide_texts == texts and wide_scores == scores
    auto_scores, auto_texts, auto_rows = _run(model, tokenizer, monkeypatch)
    assert auto_rows == len(QUESTIONS)  # on a CPU, by default, every prompt fits the budget at once
    assert auto_texts == texts and auto_scores == scores
    assert len(set(texts)) > 2
    assert _run(model, tokenizer, monkeypatch, precision="bf16")[2] == 3  # bf16: batch_size, as before


def test_default_rows_follow_the_memory_budget(tiny_model_and_tokenizer, monkeypatch):
    """The decoder is built with the rows decode_rows gives for one row's real key/value bytes."""
    model, tokenizer = tiny_model_and_tokenizer
    seen = {}
    original = settings.decode_rows

    def spy(device, batch_size, requested, row_bytes, *, precision, processes):
        seen["row_bytes"] = row_bytes
        return original(device, batch_size, requested, row_bytes, precision=precision, processes=processes)

    monkeypatch.setattr("obliviate.evaluation.engine.scheduler.decode_rows", spy)
    _run(model, tokenizer, monkeypatch)
    config = model.config
    per_token = 2 * config.num_hidden_layers * config.num_key_value_heads * (
        config.hidden_size // config.num_attention_heads) * 4  # keys + values, fp32
    assert seen["row_bytes"] % per_token == 0 and seen["row_bytes"] // per_token > 10  # capacity: prompt + 10
    monkeypatch.setattr(settings, "AUTO_DECODE_MEMORY", 5 * seen["row_bytes"])
    assert _run(model, tokenizer, monkeypatch)[2] == 5  # the budget, not the 12 prompts, sets the rows


@pytest.mark.parametrize("device, batch_size, requested, row_bytes, ram, rows", [
    (CPU, 64, None, 14 * 2**20, 24 * GiB, 256),  # the default model's TOFU rows: 256 x 14 MiB < 4 GiB
    (CPU, 16, None, 32 * 2**20, 24 * GiB, 128),  # 4 GiB / 32 MiB
    (CPU, 64, None, 64 * 2**20, 24 * GiB, 64),  # 4 GiB / 64 MiB
    (CPU, 64, None, 32 * 2**20, 4 * GiB, 64),  # a quarter of 4 GiB RAM holds 32 rows: batch_size still
    (CPU, 16, None, 32 * 2**20, 4 * GiB, 32),
    (CPU, 64, None, 14 * 2**20, None, 256),  # RAM unknown: the 4 GiB budget alone
    (CPU, 64, 48, 14 * 2**20, 24 * GiB, 48),  # asked for: as asked
    (CUDA, 64, None, 14 * 2**20, 24 * GiB, 64),  # off the CPU: batch_size
    (CUDA, 64, 128, 14 * 2**20, 24 * GiB, 128),
])
def test_decode_rows(monkeypatch, device, batch_size, requested, row_bytes, ram, rows):
    monkeypatch.setattr(settings, "physical_memory", lambda: ram)
    assert settings.decode_rows(device, batch_size, requested, row_bytes, precision="fp32") == rows


def test_bf16_keeps_batch_size_unless_asked(monkeypatch):
    """Under bf16 the rows change the rounding (and so can change a greedy output): the default
    stays batch_size there."""
    monkeypatch.setattr(settings, "physical_memory", lambda: 24 * GiB)
    assert settings.decode_rows(CPU, 64, None, 14 * 2**20, precision="bf16") == 64
    assert settings.decode_rows(CPU, 64, 128, 14 * 2**20, precision="bf16") == 128
    assert settings.decode_rows(CPU, 64, None, 14 * 2**20, precision="fp32") == 256


def test_the_processes_of_a_launch_share_the_budget(monkeypatch):
    monkeypatch.setattr(settings, "physical_memory", lambda: 24 * GiB)
    assert settings.decode_rows(CPU, 16, None, 32 * 2**20, precision="fp32", processes=2) == 64  # 2 GiB each
    assert settings.decode_rows(CPU, 16, None, 32 * 2**20, precision="fp32", processes=16) == 16  # never under batch_size


@pytest.mark.parametrize("bad", [0, -2, 1.5])
def test_decode_batch_size_is_checked(tiny_model_and_tokenizer, bad):
    model, tokenizer = tiny_model_and_tokenizer
    with pytest.raises(UserError, match="decode_batch_size must be a positive integer"):
        engine.greedy_generate(model, tokenizer, ["Hi"], max_new_tokens=2, decode_batch_size=bad)


def test_physical_memory_honours_cgroup_limits(tmp_path, monkeypatch):
    """The lowest limit of this process's cgroup and those above it (v2 memory.max, v1
    memory.limit_in_bytes), not only the hierarchy root's: a Slurm job or systemd unit sits below it."""
    from obliviate import hardware

    machine = hardware.os.sysconf("SC_PAGE_SIZE") * hardware.os.sysconf("SC_PHYS_PAGES")
    v2, v1 = tmp_path / "v2", tmp_path / "v1"
    monkeypatch.setattr(hardware, "CGROUP_ROOTS", {"": (str(v2), "memory.max"),
                                                   "memory": (str(v1), "memory.limit_in_bytes")})
    monkeypatch.setattr(hardware, "PROC_CGROUP", str(tmp_path / "cgroup"))
    assert hardware.physical_memory() == machine  # no cgroup files at all
    (tmp_path / "cgroup").write_text("0::/slurm/job_7/step_0\n4:memory:/docker/abc\n")
    (v2 / "slurm" / "job_7" / "step_0").mkdir(parents=True)
    (v2 / "slurm" / "job_7" / "step_0" / "memory.max").write_text("max\n")
    assert hardware.physical_memory() == machine  # its own cgroup: no limit
    (v2 / "slurm" / "job_7" / "memory.max").write_text(f"{3 * GiB}\n")
    assert hardware.physical_memory() == min(machine, 3 * GiB)  # the job's limit, one level up
    (v1 / "docker" / "abc").mkdir(parents=True)
    (v1 / "docker" / "abc" / "memory.limit_in_bytes").write_text(f"{GiB}\n")
    assert hardware.physical_memory() == GiB  # the lowest of all


def test_under_bf16_the_cache_keeps_results_apart_per_batch_shape(tiny_model_and_tokenizer, tmp_path):
    """bf16 rounding depends on the rows decoded and scored together, so a result computed at one
    batch size is not served to a run at another; at fp32 on a CPU (where they change no result)
    one entry serves every batch size."""
    from obliviate.evaluation.engine.result_cache import ResultCache

    model, tokenizer = tiny_model_and_tokenizer
    cache = ResultCache(tmp_path, "ns")

    def run(precision, **rows):
        before = cache.calls
        engine.score_and_generate(model, tokenizer, PAIRS[:2], QUESTIONS[:2], max_new_tokens=4, precision=precision,
                                  decode="plain", cache=cache, **rows)
        return cache.calls - before  # results computed (not served)

    assert run("bf16", batch_size=2) == 4
    assert run("bf16", batch_size=2) == 0  # the same shapes: served
    assert run("bf16", batch_size=2, decode_batch_size=4) == 2  # other decoding rows: generations again
    assert run("bf16", batch_size=3, decode_batch_size=4) == 2  # another scoring batch: scores again
    assert run("fp32", batch_size=2) == 4
    assert run("fp32", batch_size=3, decode_batch_size=4) == 0
