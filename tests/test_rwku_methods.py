"""RWKU requests as methods meet them: a request file naming a target, `forget: refusals` refused
for the methods that would unlearn the refusals, RT towards each question's own refusal."""

from __future__ import annotations

from pathlib import Path

import pytest

from obliviate.errors import UserError
from rwku_layout import rwku_dir  # noqa: F401 -- the two-target RWKU directory fixture


def test_a_request_file_can_name_an_rwku_target(rwku_dir, tmp_path):
    from obliviate.data.request import load_request
    from obliviate.data.rwku import target_request

    spec = tmp_path / "target.yaml"
    spec.write_text(f"name: one-target\nrwku:\n  data: {rwku_dir}\n  targets: 1\n  passages: none\n")
    request = load_request(spec)
    direct = target_request(str(rwku_dir), 1, passages=None)
    assert request.name == "one-target" and request.forget == direct.forget and request.neighbors == direct.neighbors
    bad = tmp_path / "bad.yaml"
    bad.write_text("rwku:\n  targets: 1\n")
    with pytest.raises(UserError, match="'rwku' must be a mapping with data and targets"):
        load_request(bad)


def test_a_refusals_request_is_refused_for_methods_that_would_unlearn_the_refusals(rwku_dir, tmp_path,
                                                                                     monkeypatch, capsys):
    """rwku forget: refusals pairs the target's questions with reject.json's refusals. IDK-DPO
    took them as the rejected answers (preferring "I don't know" to "I'm not certain"), GA / NPO
    would push the model away from refusing; ULMR checked its generated texts for leaks of the
    refusal, rejecting texts that shared "about" or "that" and letting facts through."""
    import dataclasses

    from obliviate.config import load_config
    from obliviate.data.request import QAItem, load_request
    from obliviate.methods import pipeline
    from obliviate.prepare.checks import leak_checked_items, leaks_answer

    request = load_request({"rwku": {"data": str(rwku_dir), "targets": 1, "forget": "refusals"}})
    assert request.answers_are_refusals and not load_request({"rwku": {"data": str(rwku_dir), "targets": 1,
                                                                        "passages": "none"}}).answers_are_refusals

    class Loaded(Exception):
        pass

    def load_model(*args, **kwargs):
        raise Loaded

    monkeypatch.setattr(pipeline, "load_model", load_model)
    for method in ("idk_dpo", "ga", "npo", "sku"):
        config = load_config(None, [f"method={method}", f"output_dir={tmp_path / method}"])
        with pytest.raises(UserError, match=f"method '{method}' on a request whose answers are refusals.*"
                                            r"use finetune, rt, snap, ulmr on this request"):
            pipeline.run(config, request=request)
    for method in ("rt", "finetune", "ulmr", "snap"):  # they train towards the refusals or use the questions only
        config = load_config(None, [f"method={method}", f"output_dir={tmp_path / method}", "objective.retain_loss=none"])
        with pytest.raises(Loaded):
            pipeline.run(config, request=request)
    checked = leak_checked_items(request, "local", "ULMR")
    assert [item.answer for item in checked] == [""] * len(request.forget)
    assert "ULMR: the request's answers are refusals" in capsys.readouterr().out
    assert not leaks_answer("I'm not certain about that.", "Where was Ada born?", "")  # nothing to leak
    plain = QAItem("Where was Ada born?", "Ada was born in Paris.")
    assert leak_checked_items(dataclasses.replace(request, forget=[plain], answers_are_refusals=False), "local",
                              "ULMR") == [plain]


def test_rt_can_train_each_question_towards_its_own_refusal(rwku_dir, tiny_tokenizer, tmp_path):
    """objective.refusal_draw=own: RWKU's RT trains each reject.json question towards its own
    output; the pool draw paired them with refusals from a file. Refused on a request whose
    answers are facts (it would be plain fine-tuning on them)."""
    from obliviate.config import load_config
    from obliviate.data.collate import SlotDataset
    from obliviate.data.request import load_request
    from obliviate.methods import pipeline

    request = load_request({"rwku": {"data": str(rwku_dir), "targets": 1, "forget": "refusals"}})
    ds = SlotDataset(tiny_tokenizer, ("forget_refusal",), forget=request.forget, max_length=128, refusal_draw="own")
    for i, item in enumerate(request.forget):
        assert ds[i]["forget_refusal"] == ds.encode(item.question, item.answer)
    config = load_config(None, ["method=rt", f"output_dir={tmp_path / 'rt'}", "objective.refusal_draw=own",
                                "objective.retain_loss=none"])
    facts = load_request({"rwku": {"data": str(rwku_dir), "targets": 1, "passages": "none"}})
    with pytest.raises(UserError, match="objective.refusal_draw=own trains each question towards its own answer"):
        pipeline.run(config, request=facts)


def test_an_rwku_request_records_the_files_it_was_built_from(rwku_dir, tmp_path):
    """The manifest's input hashes and --resume's check had nothing of an RWKU run: its only
    source was the data folder (a folder is not hashed), and the request file was dropped."""
    from obliviate.data.request import load_request
    from obliviate.rundir import input_hashes

    spec = tmp_path / "target.yaml"
    spec.write_text(f"rwku:\n  data: {rwku_dir}\n  targets: 1\n  forget: refusals\n")
    request = load_request(spec)
    folder = rwku_dir / "Target" / "1_Ada_Example"
    assert request.sources == [str(spec), *(str(folder / f) for f in ("reject.json", "neighbor_level1.json",
                                                                       "neighbor_level2.json", "positive.json"))]
    assert set(input_hashes(request.sources)) == set(request.sources)
    probes = load_request({"rwku": {"data": str(rwku_dir), "targets": "1-2", "passages": "none"}})
    assert [Path(p).name for p in probes.sources] == ["forget_level1.json", "forget_level2.json",
                                                      "neighbor_level1.json", "neighbor_level2.json"] * 2
