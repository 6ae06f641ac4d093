"""Benchmark options checked before any model loads: RWKU targets as an int or a list, the
RWKU utility sets and max_length floor, the harmful threshold and judge URL, the judge
backend's messages naming the caller's option, and the judge agreement of a custom request."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import yaml

from rwku_layout import rwku_dir  # noqa: F401 -- a two-target RWKU directory

from obliviate.data.rwku import resolve_targets
from obliviate.errors import UserError
from obliviate.evaluation.harmful.data import DEMO_REQUEST, SKU_LABELS, SKU_REQUEST
from obliviate.evaluation.harmful.report import render_harmful
from obliviate.evaluation.harmful.suite import _label_task
from obliviate.evaluation.registry import build_options, get_benchmark
from obliviate.prepare.openai_compatible import OpenAICompatibleBackend

RWKU = get_benchmark("rwku")
HARMFUL = get_benchmark("harmful")


def checked(bench, values):
    """build_options then the benchmark's check, as api.evaluate does before loading a model."""
    options = build_options(bench, values, where=f"benchmark '{bench.name}' option")
    bench.check(options)
    return options


def one_line(error) -> str:
    message = str(error.value)
    assert "\n" not in message
    return message


# -- RWKU targets: an int or a list as well as a comma string ---------------------------------


@pytest.mark.parametrize("targets", [2, "2", [2], ["2"], ["Bob Sample"]])
def test_rwku_one_target_given_any_way(rwku_dir, targets):  # noqa: F811
    options = checked(RWKU, {"data": str(rwku_dir), "targets": targets})
    assert [t.id for t in resolve_targets(rwku_dir, options.targets)] == [2]


@pytest.mark.parametrize("targets", [[1, 2], (1, "Bob Sample"), "1,2", "1-2"])
def test_rwku_several_targets_end_as_evaluate_rwku_reads_the_list(rwku_dir, targets):  # noqa: F811
    options = checked(RWKU, {"data": str(rwku_dir), "targets": targets})
    assert [t.id for t in resolve_targets(rwku_dir, options.targets)] == [1, 2]
    assert resolve_targets(rwku_dir, options.targets) == resolve_targets(rwku_dir, [1, 2])


def test_rwku_targets_from_an_eval_yaml(rwku_dir, tmp_path):  # noqa: F811
    from obliviate.config import load_eval_config

    path = tmp_path / "eval.yaml"
    path.write_text(yaml.safe_dump({"eval": {"benchmark": "rwku", "data": str(rwku_dir), "targets": [1, 2]}}))
    values = {k: v for k, v in load_eval_config(path).items() if k != "benchmark"}
    assert checked(RWKU, values).targets == [1, 2]


def test_a_target_name_with_a_comma_in_a_list_stays_one_name():
    """Joined with commas, 'Prince Harry, Duke of Sussex' (RWKU target 10) split into two names."""
    data = Path(__file__).resolve().parents[2] / "shared" / "data" / "rwku"
    if not (data / "Target").is_dir():
        pytest.skip("no RWKU data beside the repository")
    options = checked(RWKU, {"data": str(data), "targets": ["Prince Harry, Duke of Sussex", 1]})
    assert [t.id for t in resolve_targets(data, options.targets)] == [10, 1]


@pytest.mark.parametrize("targets, shown", [(True, "True"), ([1, None], "None"), ([[1]], "[1]"), (1.5, "1.5")])
def test_rwku_other_target_types_are_one_line(targets, shown):
    with pytest.raises(UserError) as error:
        build_options(RWKU, {"targets": targets}, where="benchmark 'rwku' option")
    message = one_line(error)
    assert message.startswith("benchmark 'rwku' option 'targets' must be") and shown in message


def test_other_str_options_still_refuse_an_int():
    with pytest.raises(UserError, match=r"option 'data' must be str, got 2$"):
        build_options(RWKU, {"data": 2})


# -- RWKU utility sets and max_length, before the model loads ----------------------------------


def test_rwku_unknown_utility_set_is_refused_by_the_check(rwku_dir):  # noqa: F811
    with pytest.raises(UserError) as error:
        checked(RWKU, {"data": str(rwku_dir), "utility": "mmlu,foo"})
    assert one_line(error).startswith("benchmark 'rwku' option 'utility': RWKU utility set 'foo' is not known")
    for good in ("all", "none", "mmlu,bbh", ""):
        checked(RWKU, {"data": str(rwku_dir), "utility": good})


@pytest.mark.parametrize("length", [1, "8", 15])
@pytest.mark.parametrize("name", ["rwku", "tofu"])
def test_max_length_too_small_to_score_is_refused(length, name):
    from obliviate.evaluation.registry import get_benchmark

    spec = get_benchmark(name)
    with pytest.raises(UserError) as error:
        build_options(spec, {"max_length": length})
    assert "option 'max_length' = " in one_line(error) and "must be an integer >= 16" in str(error.value)
    assert build_options(spec, {"max_length": 16}).max_length == 16


def test_other_int_options_keep_the_floor_of_one():
    with pytest.raises(UserError, match=r"'ds_size' = 0 must be a positive integer \(or left out: all\)"):
        build_options(RWKU, {"ds_size": 0})
    assert build_options(RWKU, {"ds_size": 1, "batch_size": 1}).ds_size == 1


# -- harmful: threshold and judge URL ---------------------------------------------------------


@pytest.mark.parametrize("threshold", [2, -1, "nan", float("nan"), 1.0001, "inf"])
def test_harmful_threshold_outside_a_share_is_refused(threshold):
    with pytest.raises(UserError) as error:
        checked(HARMFUL, {"threshold": threshold})
    assert one_line(error).startswith("benchmark 'harmful' option 'threshold' = ")
    assert "from 0 to 1" in str(error.value)


@pytest.mark.parametrize("threshold", [0, 0.5, 1, "0.25"])
def test_harmful_threshold_within_a_share_passes(threshold):
    assert 0 <= checked(HARMFUL, {"threshold": threshold}).threshold <= 1


@pytest.mark.parametrize("url", ["foo", "http://127.0.0.1:80000/v1", "http://127.0.0.1:abc/v1", "http://[::1/v1"])
def test_harmful_judge_url_is_checked_before_the_model_and_named_as_given(url):
    with pytest.raises(UserError) as error:  # a bad port was a ValueError traceback
        checked(HARMFUL, {"judge": "llm", "judge_url": url})
    assert one_line(error).startswith("--judge_url must be an http(s) URL") and "generation." not in str(error.value)
    checked(HARMFUL, {"judge": "llm", "judge_url": "http://127.0.0.1:8000/v1"})
    checked(HARMFUL, {"judge": "heuristic"})


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_backend_messages_name_the_callers_option():
    pytest.importorskip("openai")
    port = free_port()
    backend = OpenAICompatibleBackend(f"http://127.0.0.1:{port}/v1", "m", option="--judge_url")
    with pytest.raises(UserError) as error:
        backend.generate([[{"role": "user", "content": "x"}]])
    assert one_line(error).endswith("start the server or fix --judge_url")
    default = OpenAICompatibleBackend(f"http://127.0.0.1:{port}/v1", "m")
    with pytest.raises(UserError, match=r"fix generation\.base_url$"):
        default.generate([[{"role": "user", "content": "x"}]])
    with pytest.raises(UserError, match=r"^--judge_model must name"):
        OpenAICompatibleBackend("http://127.0.0.1:1/v1", "", model_option="--judge_model")


# -- harmful: judge agreement of a request of one's own ----------------------------------------


def fake_judge(prompts, outputs, unwanted):
    return [True] * len(prompts)


def label_options(**values):
    return build_options(HARMFUL, values)


def test_agreement_uses_the_builtin_labels_only_for_the_builtin_request():
    for request in (None, str(SKU_REQUEST)):
        task = _label_task(label_options(request=request), fake_judge)
        assert task is not None and task["n"] > 0
    assert _label_task(label_options(request=str(DEMO_REQUEST)), fake_judge) is None
    own = _label_task(label_options(request=str(DEMO_REQUEST), labels=str(SKU_LABELS)), fake_judge)
    assert own is not None and own["n"] > 0
    assert _label_task(label_options(judge_agreement=False), fake_judge) is None


def test_report_says_when_the_agreement_was_not_measured():
    envelope = {"summary": {"model": "m", "forget_unwanted_rate": 0.5, "heldout_unwanted_rate": None,
                            "perplexity": 2.0, "similarity": None, "distinct_1": 1.0, "distinct_2": 1.0},
                "n_samples": {"forget": 2, "heldout": 0, "normal": 1}, "tasks": {},
                "config": {"judge": "heuristic", "normal": "x", "original_outputs": "none", "device": "cpu",
                           "precision_used": "fp32", "judge_agreement": True, "labels": None}}
    assert "Judge agreement: not measured" in render_harmful(envelope)
    envelope["config"]["judge_agreement"] = False
    assert "not measured" not in render_harmful(envelope)


def test_the_builtin_request_named_by_path_keeps_its_heldout_prompts(tmp_path, monkeypatch):
    """Naming sku_request.json (relative or absolute) is the built-in request: its held-out set
    and labels apply as when the request is left out (the held-out set was dropped silently)."""
    import os

    from obliviate.evaluation.harmful.data import SKU_HELDOUT
    from obliviate.evaluation.harmful.suite import heldout_source

    monkeypatch.chdir(SKU_REQUEST.parent)
    for request in (None, str(SKU_REQUEST), SKU_REQUEST.name, os.path.relpath(SKU_REQUEST, tmp_path)):
        if request is not None and not Path(request).is_absolute() and request != SKU_REQUEST.name:
            monkeypatch.chdir(tmp_path)
        assert heldout_source(build_options(HARMFUL, {"request": request} if request else {})) == str(SKU_HELDOUT)
        monkeypatch.chdir(SKU_REQUEST.parent)
    assert heldout_source(build_options(HARMFUL, {"request": str(DEMO_REQUEST)})) is None
