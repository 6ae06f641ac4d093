"""Raw-text forget items (data/passages.py), as RWKU's GA / NPO baselines train on them: every
token labelled, no chat template, cut at max_length; the request option that builds them
(``rwku: {forget: passages}``); GA and NPO on passages raising the passage NLL on a tiny model."""

from __future__ import annotations

import json

import pytest
import torch

from obliviate.config import RunConfig
from obliviate.data import rwku as rwku_data
from obliviate.data.collate import SlotCollator, SlotDataset, encode_items
from obliviate.data.passages import PassageItem, encode_passage, passage_items
from obliviate.data.request import QAItem, load_request
from obliviate.errors import UserError
from obliviate.objectives.common import answer_nll
from obliviate.training import train

TEXT = "The river begins in the hills and flows to the ocean. The city was founded by traders."
PASSAGES = [TEXT, "She studied physics at the university and became a famous scientist.",
            "He published his first book when he was twenty years old. Her parents were a teacher and a doctor.",
            "The museum opens at nine in the morning and closes at five."]


def _write_target(root, with_corpus: bool = True):
    folder = root / "Target" / "1_Ada_Example"
    folder.mkdir(parents=True)
    probe = {"subject": "Ada Example", "query": "Where was Ada Example born?", "answer": "Paris"}
    for name in ("forget_level1", "forget_level2", "neighbor_level1", "neighbor_level2"):
        (folder / f"{name}.json").write_text(json.dumps([probe]), encoding="utf-8")
    (folder / "intro.json").write_text(json.dumps([{"target": "Ada Example", "intro": "Please forget Ada."}]))
    if with_corpus:
        (folder / "positive.json").write_text(json.dumps([{"text": t, "subject": "Ada Example"} for t in PASSAGES]
                                                         + [{"text": "  "}]))
        (folder / "passage.json").write_text(json.dumps([{"text": "Ada Example (born 1950) is a writer."}]))
    return root


def test_a_passage_is_its_own_tokens_every_one_labelled(tiny_tokenizer):
    enc = encode_passage(tiny_tokenizer, TEXT, max_length=512)
    plain = tiny_tokenizer(TEXT, add_special_tokens=False)["input_ids"]
    assert enc["input_ids"] == plain == enc["labels"] and enc["attention_mask"] == [1] * len(plain)
    special = set(tiny_tokenizer.all_special_ids)
    assert not special & set(enc["input_ids"])  # no template, no BOS / EOS
    assert tiny_tokenizer.decode(enc["input_ids"]) == TEXT


def test_a_long_passage_is_cut_at_max_length(tiny_tokenizer):
    long = " ".join([TEXT] * 20)
    full = tiny_tokenizer(long, add_special_tokens=False)["input_ids"]
    enc = encode_passage(tiny_tokenizer, long, max_length=16)
    assert len(full) > 16 and enc["input_ids"] == full[:16] == enc["labels"]
    with pytest.raises(UserError, match="needs at least 2"):
        encode_passage(tiny_tokenizer, "a", max_length=16)


def test_the_collator_mixes_passages_and_qa_items_each_encoded_its_own_way(tiny_tokenizer):
    qa = QAItem("Where does the river begin?", "In the hills.")
    encs = encode_items(tiny_tokenizer, [PassageItem(answer=TEXT), qa], max_length=64)
    assert encs[0] == encode_passage(tiny_tokenizer, TEXT, max_length=64)
    assert -100 in encs[1]["labels"]  # the QA item's prompt is not labelled, through the chat template
    assert tiny_tokenizer.convert_tokens_to_ids("<|im_start|>") in encs[1]["input_ids"]
    dataset = SlotDataset(tiny_tokenizer, ("forget",), forget=passage_items(PASSAGES), max_length=64)
    batch = SlotCollator(tiny_tokenizer.pad_token_id)([dataset[0], dataset[2]])["forget"]
    labelled = (batch["labels"] != -100).sum(dim=1).tolist()
    assert labelled == batch["attention_mask"].sum(dim=1).tolist()  # every real token, no padding


def test_objectives_that_need_questions_refuse_passages(tiny_tokenizer):
    with pytest.raises(UserError, match="forget_refusal slot needs questions"):
        SlotDataset(tiny_tokenizer, ("forget_refusal",), forget=passage_items(PASSAGES), max_length=64,
                    refusals=["I don't know."])


def test_rwku_request_forget_passages(tmp_path):
    root = _write_target(tmp_path / "rwku")
    request = rwku_data.target_request(root, "1", forget="passages")
    assert [item.answer for item in request.forget] == PASSAGES and request.passages[:4] == PASSAGES
    assert all(isinstance(i, PassageItem) and i.question == "" and i.subject == "Ada Example" for i in request.forget)
    assert not request.warnings and len(request.neighbors) == 2
    wiki = rwku_data.target_request(root, "1", forget="passages", passages="passage")
    assert [i.answer for i in wiki.forget] == ["Ada Example (born 1950) is a writer."]
    generated = rwku_data.target_request(root, "1", forget="passages", passages=["Ada wrote twelve books."])
    assert [i.answer for i in generated.forget] == ["Ada wrote twelve books."]
    with pytest.raises(UserError, match="needs a corpus"):
        rwku_data.target_request(root, "1", forget="passages", passages=None)
    file = tmp_path / "request.yaml"
    file.write_text("rwku: {data: rwku, targets: 1, forget: passages, passages: positive}\n")
    assert [i.answer for i in load_request(file).forget] == PASSAGES


def _passage_nll(model, tokenizer) -> float:
    dataset = SlotDataset(tokenizer, ("forget",), forget=passage_items(PASSAGES), max_length=64)
    batch = SlotCollator(tokenizer.pad_token_id)([dataset[i] for i in range(len(dataset))])["forget"]
    with torch.no_grad():
        return float(answer_nll(model, batch))


@pytest.mark.parametrize("method", ["ga", "npo"])
def test_ga_and_npo_on_passages_raise_the_passage_nll(tiny_model_and_tokenizer, tmp_path, method):
    model, tokenizer = tiny_model_and_tokenizer
    before = _passage_nll(model, tokenizer)
    config = RunConfig(method=method, seed=1)
    config.train.batch_size, config.train.learning_rate, config.train.max_steps = 2, 3e-3, 6
    config.train.max_length, config.train.save_steps, config.train.precision = 64, -1, "fp32"
    config.objective.retain_loss = "none"
    model = train(model, tokenizer, forget=passage_items(PASSAGES), retain=[], config=config, output_dir=tmp_path)
    after = _passage_nll(model, tokenizer)
    assert after > before + 0.5, (before, after)
    log = [json.loads(line) for line in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    tokens = sum(len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in PASSAGES)
    assert sum(row["tokens"] for row in log) == 3 * tokens  # 6 steps of 2 = 3 epochs of the 4 passages


def test_a_refused_run_leaves_no_run_directory(tmp_path, tiny_model_dir):
    """RT needs questions: given passages it is refused after the model loads, and the run
    directory it had started (config.yaml) is removed, so the same output_dir works next time."""
    from obliviate.config import load_config
    from obliviate.methods import pipeline

    root = _write_target(tmp_path / "rwku")
    out = tmp_path / "run"
    config = load_config(None, [f"model={tiny_model_dir}", f"output_dir={out}", "method=rt", "train.max_steps=1",
                                "train.batch_size=2", "train.precision=fp32", "train.save_steps=-1",
                                "objective.retain_loss=none"])
    request = {"rwku": {"data": str(root), "targets": "1", "forget": "passages"}}
    with pytest.raises(UserError, match="slot needs questions"):
        pipeline.run(config, request=request)
    assert not out.exists()
    kept = tmp_path / "kept"
    kept.mkdir()
    (kept / "notes.txt").write_text("mine")  # a directory the user filled is never removed
    config.output_dir = str(kept)
    with pytest.raises(UserError, match="slot needs questions"):
        pipeline.run(config, request=request)
    assert sorted(p.name for p in kept.iterdir()) == ["config.yaml", "notes.txt", "request.json", "started_from.json"]


def test_a_plain_request_trains_on_raw_text(tmp_path, tiny_model_dir):
    """forget records holding only a 'text' are raw passages in any request: GA trains on the
    text itself (its NLL rises), and a record with neither text nor question is refused in one line."""
    from obliviate.config import load_config
    from obliviate.methods import pipeline
    from obliviate.models import load_model

    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": t, "subject": "Ada"}) + "\n" for t in PASSAGES), encoding="utf-8")
    request = load_request({"forget": str(corpus), "retain": [{"question": "Q?", "answer": "A."}]})
    assert [type(i).__name__ for i in request.forget] == ["PassageItem"] * len(PASSAGES)
    assert [(i.answer, i.subject) for i in request.forget] == [(t, "Ada") for t in PASSAGES]
    assert type(request.retain[0]).__name__ == "QAItem"
    with pytest.raises(UserError, match=r"\[forget\]: record 1 has no 'question' field .*or only a 'text'"):
        load_request({"forget": [{"body": "x"}]})
    with pytest.raises(UserError, match=r"record 2 field 'text' is ''"):
        load_request({"forget": [{"text": "a b c"}, {"text": ""}]})

    out = tmp_path / "ga"
    config = load_config(None, [f"model={tiny_model_dir}", f"output_dir={out}", "method=ga", "train.max_steps=4",
                                "train.batch_size=2", "train.precision=fp32", "train.save_steps=-1",
                                "train.learning_rate=1e-3", "objective.retain_loss=none"])
    model, tokenizer = load_model(str(tiny_model_dir))
    before = [answer_nll_of(model, tokenizer, t) for t in PASSAGES]
    pipeline.run(config, request={"forget": str(corpus)})
    after_model, _ = load_model(str(out / "model"))
    after = [answer_nll_of(after_model, tokenizer, t) for t in PASSAGES]
    assert sum(after) > sum(before)


def answer_nll_of(model, tokenizer, text: str) -> float:
    enc = encode_passage(tokenizer, text, max_length=64)
    batch = {k: torch.tensor([v]) for k, v in enc.items()}
    with torch.no_grad():
        return float(answer_nll(model, batch).sum())


def test_retain_records_must_be_questions():
    """The retain slot encodes question + answer: a raw text there is refused, not trained with an empty question."""
    with pytest.raises(UserError, match=r"\[retain\]: record 1 has no 'question' field"):
        load_request({"forget": [{"text": "a b c"}], "retain": [{"text": "d e f"}]})


def test_a_run_that_crashes_before_its_first_log_line_leaves_no_run_directory(tmp_path, tiny_model_dir,
                                                                               monkeypatch):
    """A crash (not only a refusal) before anything worth keeping was written removes the
    directory with its empty checkpoints/ and train log, so a corrected rerun is not refused
    ("already holds a run") nor its resume ("config differs"); after a log line it is kept."""
    from obliviate.config import load_config
    from obliviate.methods import pipeline

    out = tmp_path / "run"
    config = load_config(None, [f"model={tiny_model_dir}", f"output_dir={out}", "method=ga", "train.max_steps=2",
                                "train.batch_size=2", "train.precision=fp32", "train.save_steps=-1",
                                "train.logging_steps=1"])
    request = {"forget": [{"question": f"Q{i}?", "answer": f"A{i}."} for i in range(4)]}
    real_train = pipeline.train

    def crash_at_start(*args, output_dir, **kwargs):
        (output_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
        (output_dir / "train_log.jsonl").touch()
        raise ZeroDivisionError("planted")

    monkeypatch.setattr(pipeline, "train", crash_at_start)
    with pytest.raises(ZeroDivisionError):
        pipeline.run(config, request=request)
    assert not out.exists()

    def crash_after_a_step(*args, output_dir, **kwargs):
        (output_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
        (output_dir / "train_log.jsonl").write_text('{"step": 1}\n')
        raise ZeroDivisionError("planted")

    monkeypatch.setattr(pipeline, "train", crash_after_a_step)
    with pytest.raises(ZeroDivisionError):
        pipeline.run(config, request=request)
    assert (out / "train_log.jsonl").is_file()  # something to look at: kept
    monkeypatch.setattr(pipeline, "train", real_train)


def test_a_crash_after_preparing_data_keeps_the_data_but_not_what_blocks_the_rerun(tmp_path, tiny_model_dir,
                                                                                 monkeypatch):
    """ULMR / SNAP write their generation cache before training: a crash then keeps the folder
    (the generations cost minutes) but not its empty checkpoints/ and train log, so the corrected
    rerun is accepted; an empty folder the user made is left in place, empty."""
    from obliviate.config import load_config
    from obliviate.methods import pipeline
    from obliviate.rundir import check_run_dir

    request = {"forget": [{"question": f"Q{i}?", "answer": f"A{i}."} for i in range(4)]}

    def crash(*args, output_dir, **kwargs):
        (output_dir / "generation_cache").mkdir()
        (output_dir / "generation_cache" / "x.json").write_text("{}")
        (output_dir / "checkpoints").mkdir()
        (output_dir / "train_log.jsonl").touch()
        raise RuntimeError("CUDA out of memory (planted)")

    monkeypatch.setattr(pipeline, "train", crash)
    for out, made in ((tmp_path / "run", False), (tmp_path / "mine", True)):
        if made:
            out.mkdir()
        config = load_config(None, [f"model={tiny_model_dir}", f"output_dir={out}", "method=ga", "train.max_steps=1",
                                    "train.precision=fp32", "train.save_steps=-1"])
        with pytest.raises(RuntimeError):
            pipeline.run(config, request=request)
        assert sorted(p.name for p in out.iterdir()) == ["config.yaml", "generation_cache", "request.json",
                                                        "started_from.json"]  # request.json: config.yaml names it
        check_run_dir(out)  # a fresh rerun is accepted (it raised "already holds a run")
    monkeypatch.setattr(pipeline, "train", lambda *args, output_dir, **kwargs: 1 / 0)
    empty = tmp_path / "empty"
    empty.mkdir()
    config.output_dir = str(empty)
    with pytest.raises(ZeroDivisionError):
        pipeline.run(config, request=request)
    assert empty.is_dir() and not any(empty.iterdir())  # the user's folder: left, as it was


def test_resume_refuses_a_generation_model_retrained_since_the_run_started(tmp_path, tiny_model_dir, monkeypatch):
    """generation.model (a local model ULMR / SNAP prepare data with) is an input like the base
    weights: resuming after it changed would train on data from two different generators."""
    import shutil

    from obliviate.config import load_config
    from obliviate.methods import pipeline

    generator = tmp_path / "generator"
    shutil.copytree(tiny_model_dir, generator)
    out = tmp_path / "run"
    config = load_config(None, [f"model={tiny_model_dir}", f"output_dir={out}", "method=ga", "train.max_steps=1",
                                "train.precision=fp32", f"generation.model={generator}"])
    request = {"forget": [{"question": f"Q{i}?", "answer": f"A{i}."} for i in range(4)]}

    def interrupted(*args, output_dir, **kwargs):
        (output_dir / "checkpoints" / "checkpoint-1").mkdir(parents=True, exist_ok=True)
        raise RuntimeError("killed (planted)")

    monkeypatch.setattr(pipeline, "train", interrupted)
    with pytest.raises(RuntimeError, match="planted"):
        pipeline.run(config, request=request)
    with pytest.raises(RuntimeError, match="planted"):  # unchanged: the resume goes on (and is interrupted again)
        pipeline.run(config, request=request, resume=True)
    weights = generator / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-4] + b"\0\0\0\0")  # "retrained" under the same path
    with pytest.raises(UserError, match=r"--resume: .*model\.safetensors changed since the run"):
        pipeline.run(config, request=request, resume=True)
