"""Baselines and TOFU scoring as the references run them (issue #21, deliverables 1 and 7).

Each test fails on the behaviour it replaces: SimNPO's 0.125 on the retain term, RMU over every
non-pad token and whole MLPs, KL only over answer tokens, one refusal per question for good,
prompt and answer tokenised apart without a chat template, and answer + EOS as the only scoring.
The RMU tests are in test_rmu_reference.py.
"""

from __future__ import annotations

import contextlib
import copy
import gzip
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from obliviate.config import ObjectiveConfig, load_config
from obliviate.data.collate import SlotDataset
from obliviate.data.refusals import REFUSALS
from obliviate.data.request import QAItem
from obliviate.evaluation import engine
from obliviate.objectives import OBJECTIVES, LossContext, common
from obliviate.prompts import encode_qa, format_prompt

TOFU_DIR = Path(__file__).resolve().parents[2] / "shared/data/tofu"
OU_DIR = TOFU_DIR / "reference_eval_logs/open-unlearning-smollm2"

FORGET = [QAItem(f"Who wrote the novel number {i}?", f"The author of novel {i} was born in a small town.")
          for i in range(6)]
RETAIN = [QAItem(f"How many legs does animal {i} have?", f"A spider has eight legs and a river {i}.")
          for i in range(6)]


def _batch(tokenizer, slots=("forget", "retain"), size=4):
    from obliviate.data.collate import SlotCollator

    dataset = SlotDataset(tokenizer, slots, forget=FORGET, retain=RETAIN, max_length=64, seed=0, refusals=REFUSALS)
    return SlotCollator(tokenizer.pad_token_id)([dataset[i] for i in range(size)])


def _ctx(reference_model=None, **overrides) -> LossContext:
    @contextlib.contextmanager
    def reference():
        with torch.no_grad():
            yield reference_model

    config = ObjectiveConfig()
    for key, value in overrides.items():
        setattr(config, key, value)  # proposed knobs are not ObjectiveConfig fields yet
    return LossContext(config=config, reference=reference, seed=0)


def _frozen(model):
    copied = copy.deepcopy(model).eval()
    return copied.requires_grad_(False)


# -- 1. SimNPO: 0.125 on the forget term --------------------------------------------------------

def test_simnpo_preset_weights_the_forget_term():
    objective = load_config(None, ["method=simnpo"]).objective
    assert (objective.forget_weight, objective.retain_weight) == (0.125, 1.0)
    assert (objective.beta, objective.delta) == (4.5, 0.0)
    user = load_config(None, ["method=simnpo", "objective.forget_weight=0.1375", "objective.beta=2.5"]).objective
    assert (user.forget_weight, user.beta) == (0.1375, 2.5)  # the authors' final config, set by the user


def test_the_example_config_leaves_every_baselines_objective_presets_in_place():
    """docs/training.md runs each baseline as `--config examples/graddiff.yaml method=<name>`: the
    file's objective keys win over a method's presets, so it must not set the ones a baseline
    presets (it set forget_weight 1.0: SimNPO then trained with 8x the reference forget weight)."""
    from obliviate.methods.baselines import BASELINES

    example = Path(__file__).resolve().parents[1] / "examples/graddiff.yaml"
    for name in BASELINES:
        alone = load_config(None, [f"method={name}"]).objective
        assert load_config(example, [f"method={name}"]).objective == alone, name


def test_simnpo_loss_is_forget_weight_times_simnpo_plus_retain(tiny_model_and_tokenizer):
    model, tokenizer = tiny_model_and_tokenizer
    batch = _batch(tokenizer)
    objective = load_config(None, ["method=simnpo"]).objective
    ctx = LossContext(config=objective, seed=0)
    loss = OBJECTIVES["simnpo"].loss(model, batch, ctx)
    expected = 0.125 * ctx.terms["simnpo"] + 1.0 * ctx.terms["retain_nll"]
    assert torch.allclose(loss.detach(), expected, atol=1e-5)


# -- 3. KL over all positions ------------------------------------------------------------------

def test_kl_all_positions_is_open_unlearnings_batchmean(tiny_model_and_tokenizer):
    from conftest import build_tiny_model

    model, tokenizer = tiny_model_and_tokenizer
    reference = _frozen(build_tiny_model(tokenizer, seed=1))
    enc = _batch(tokenizer)["retain"]
    ctx = _ctx(reference, kl_positions="all")
    with torch.no_grad():
        logits = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits
        ref_logits = reference(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits
        log_q = F.log_softmax(logits, -1).view(-1, logits.shape[-1])
        log_p = F.log_softmax(ref_logits, -1).view(-1, logits.shape[-1])
        expected = F.kl_div(log_q, log_p, reduction="batchmean", log_target=True)
        value = common.retain_kl(model, enc, ctx)
        ours = common.retain_kl(model, enc, _ctx(reference))
    assert torch.allclose(value, expected, atol=1e-5)
    assert not torch.allclose(ours, expected, atol=1e-3)  # the default stays the answer-token mean
    assert torch.allclose(ours, common.kl_to_reference(model, enc, _ctx(reference)))
    loss = OBJECTIVES["kl"].loss(model, _batch(tokenizer), ctx)
    assert torch.isfinite(loss)


# -- 4. Refusals drawn afresh ----------------------------------------------------------------------

def _refusals_by_epoch(tokenizer, draw=None, seed=0):
    dataset = SlotDataset(tokenizer, ("forget_refusal",), forget=FORGET, max_length=64, seed=seed, refusals=REFUSALS)
    if draw is not None:
        dataset.refusal_draw = draw
    seen = []
    for epoch in range(3):
        dataset.set_epoch(epoch)
        seen.append([tokenizer.decode([t for t, lab in zip(dataset[i]["forget_refusal"]["input_ids"],
                                                             dataset[i]["forget_refusal"]["labels"]) if lab != -100])
                     for i in range(len(FORGET))])
    return seen


def test_refusal_is_drawn_afresh_each_epoch_and_reproducibly(tiny_tokenizer):
    seen = _refusals_by_epoch(tiny_tokenizer)
    assert seen[0] != seen[1] and seen[1] != seen[2]  # a new draw each epoch (old: the same every epoch)
    assert seen == _refusals_by_epoch(tiny_tokenizer)  # seeded by (seed, epoch, i): resume sees the same
    assert seen != _refusals_by_epoch(tiny_tokenizer, seed=1)
    once = _refusals_by_epoch(tiny_tokenizer, draw="once")
    assert once[0] == once[1] == once[2]  # the old behaviour, as an option


@pytest.mark.skipif(not (TOFU_DIR / "idontknow.jsonl").is_file(), reason="TOFU data not in ../shared")
def test_a_tofu_request_brings_tofus_100_refusals():
    from obliviate.data.refusals import load_refusals
    from obliviate.data.request import load_request

    request = load_request({"forget": str(TOFU_DIR / "forget01.json"), "retain": str(TOFU_DIR / "retain90.json")})
    assert Path(request.refusals) == (TOFU_DIR / "idontknow.jsonl").resolve()
    refusals = load_refusals(request.refusals)
    assert len(refusals) == len(set(refusals)) == 100 and set(refusals) != set(REFUSALS)


def test_tofu_refusals_are_found_beside_the_data_and_only_there(tmp_path):
    from obliviate.data.refusals import load_refusals, refusals_source
    from obliviate.data.request import load_request

    tofu, other = tmp_path / "tofu", tmp_path / "other"
    for folder in (tofu, other):
        folder.mkdir()
        (folder / "forget.json").write_text(json.dumps([{"question": "Who is X?", "answer": "X is Y."}]))
    (tofu / "idontknow.jsonl").write_text("I have no idea.\nThat is unknown to me.\n")
    found = load_request(str(tofu / "forget.json")).refusals
    assert found == str((tofu / "idontknow.jsonl").resolve())
    assert load_refusals(found) == ["I have no idea.", "That is unknown to me."]
    assert load_request(str(other / "forget.json")).refusals is None  # no sibling: the built-in list
    assert load_request({"forget": [{"question": "Who is X?", "answer": "X is Y."}]}).refusals is None
    assert load_request({"forget": str(other / "forget.json"), "retain": str(tofu / "forget.json")}).refusals == found
    assert refusals_source("mine.txt", found) == "mine.txt" and refusals_source(None, found) == found
    assert refusals_source(None, None) is None


# -- Chat templates that print a date (Llama 3.x) ---------------------------------------------

LLAMA3_LIKE = (  # Llama 3.x's date logic around the tiny tokenizer's ChatML tokens
    "{%- if not date_string is defined %}{%- if strftime_now is defined %}"
    "{%- set date_string = strftime_now('%d %b %Y') %}{%- else %}{%- set date_string = '26 Jul 2024' %}"
    "{%- endif %}{%- endif %}"
    "{%- if messages[0]['role'] == 'system' %}{%- set system = messages[0]['content'] %}"
    "{%- set messages = messages[1:] %}{%- else %}{%- set system = '' %}{%- endif %}"
    "<|im_start|>system\nToday Date: {{ date_string }}\n\n{{ system }}<|im_end|>\n"
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _on_day(monkeypatch, day: int):
    import datetime as dt

    from transformers.utils import chat_template_utils

    class Clock(dt.datetime):
        @classmethod
        def now(cls, tz=None):
            return dt.datetime(2026, 3, day, 12, 0)

    monkeypatch.setattr(chat_template_utils, "datetime", Clock)


def _everything_dated(tokenizer):
    from obliviate.fingerprints import tokenizer_fingerprint
    from obliviate.evaluation.engine.formatters import chat_formatter
    from obliviate.prompts import answer_suffix

    return (format_prompt(tokenizer, "Who is X?"), chat_formatter(tokenizer)("Who is X?"),
            encode_qa(tokenizer, "Who is X?", "X is Y.")["input_ids"],
            encode_qa(tokenizer, "Who is X?", "X is Y.", scoring="chat_turn")["input_ids"],
            answer_suffix(tokenizer, "chat_turn"), tokenizer_fingerprint(tokenizer))


def test_a_template_that_prints_the_date_gives_the_same_prompt_every_day(tiny_tokenizer, monkeypatch):
    from obliviate import prompts

    tiny_tokenizer.chat_template = LLAMA3_LIKE
    raw = []
    for day in (1, 2):
        _on_day(monkeypatch, day)
        raw.append(tiny_tokenizer.apply_chat_template([{"role": "user", "content": "Q"}], tokenize=False))
    assert raw[0] != raw[1]  # the clock really moved: unpinned, the prompt changes overnight
    _on_day(monkeypatch, 1)
    first = _everything_dated(tiny_tokenizer)
    _on_day(monkeypatch, 2)
    assert _everything_dated(tiny_tokenizer) == first
    assert f"Today Date: {prompts.PINNED_DATE}" in first[0] and prompts.PINNED_SYSTEM_PROMPT in first[0]
    assert "Be brief." in format_prompt(tiny_tokenizer, "Q", "Be brief.")  # a given system prompt wins
    monkeypatch.setattr(prompts, "PINNED_DATE", "11 Apr 2025")  # the pin is part of the cache key
    assert _everything_dated(tiny_tokenizer)[5] != first[5]


def test_templates_without_a_date_are_rendered_as_they_are(tiny_tokenizer):
    chat = [{"role": "user", "content": "Who is X?"}]
    assert format_prompt(tiny_tokenizer, "Who is X?") == tiny_tokenizer.apply_chat_template(
        chat, tokenize=False, add_generation_prompt=True)


# -- 5. Tokenisation without a chat template -----------------------------------------------------

@pytest.fixture(scope="module")
def plain_tokenizer():
    """A byte-level BPE without a chat template (phi-1.5-like) that knows 'Answer' and ' The'."""
    from conftest import byte_level_bpe
    from transformers import PreTrainedTokenizerFast

    corpus = ["Question: Who wrote it?\nAnswer: The author did.", "Question: Where is it?\nAnswer: In the hills.",
              "The river is near the hills. Nobody knows who wrote it."] * 20
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]  # conftest.build_tiny_model reads <|im_end|>
    bpe = byte_level_bpe(corpus, specials, 330)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>", pad_token="<|endoftext|>",
                                        bos_token="<|endoftext|>")
    assert tokenizer.chat_template is None
    return tokenizer


def _pieces(tokenizer, ids):
    return [tokenizer.decode([i]) for i in ids]


def test_plain_prompt_and_answer_are_tokenised_as_one_text(plain_tokenizer):
    tok = plain_tokenizer
    question, answer = "Who wrote it?", "The author did."
    old = tok("Question: Who wrote it?\nAnswer: ", add_special_tokens=False)["input_ids"] + \
        tok(answer, add_special_tokens=False)["input_ids"]
    apart = _pieces(tok, old)
    assert apart[apart.index("Answer"):][:4] == ["Answer", ":", " ", "The"]  # tokenised apart (the old way)
    enc = encode_qa(tok, question, answer)
    pieces = _pieces(tok, enc["input_ids"])
    at = pieces.index("Answer")
    assert pieces[at:at + 3] == ["Answer", ":", " The"]
    prompt_count = len(tok(format_prompt(tok, question), add_special_tokens=False)["input_ids"])  # no BOS: phi's
    assert enc["labels"][:prompt_count] == [-100] * prompt_count
    assert enc["labels"][prompt_count:] == enc["input_ids"][prompt_count:]
    assert enc["input_ids"][-1] == tok.eos_token_id


def _with_bos_processor(tokenizer):
    """The same tokenizer, made to put its BOS in front of every text as Llama's does."""
    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast

    bpe = copy.deepcopy(tokenizer.backend_tokenizer)
    bos = tokenizer.bos_token_id
    bpe.post_processor = processors.TemplateProcessing(single="<|endoftext|> $A", pair="<|endoftext|> $A $B",
                                                       special_tokens=[("<|endoftext|>", bos)])
    return PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>", pad_token="<|endoftext|>",
                                   bos_token="<|endoftext|>")


def test_plain_prompt_has_a_bos_only_where_the_tokenizer_adds_one(plain_tokenizer):
    """TOFU (data_module.py) and open-unlearning (preprocess_chat_instance) tokenise the plain
    format with add_special_tokens=True: phi-1.5's tokenizer has a BOS token but adds none,
    Llama's adds it. Scores, training and generation see the reference's prompt tokens."""
    from conftest import build_tiny_model

    question, answer = "Who wrote it?", "The author did."
    for tok in (plain_tokenizer, _with_bos_processor(plain_tokenizer)):
        text = format_prompt(tok, question)
        expected = tok(text + answer, add_special_tokens=True)["input_ids"]
        assert (expected[0] == tok.bos_token_id) == (tok is not plain_tokenizer)
        enc = encode_qa(tok, question, answer)
        assert enc["input_ids"] == expected + [tok.eos_token_id]
        prompt_count = len(tok(text, add_special_tokens=True)["input_ids"])
        assert enc["labels"] == [-100] * prompt_count + enc["input_ids"][prompt_count:]
        model = build_tiny_model(tok)
        ((sum_nll, n),) = engine.answer_losses(model, tok, [(question, answer)], precision="fp32")
        ids = torch.tensor([enc["input_ids"]])
        labels = torch.tensor(enc["labels"][1:])
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), -1)
        keep = labels != -100
        assert n == int(keep.sum())
        assert abs(sum_nll + float(logp[keep].gather(-1, labels[keep][:, None]).sum())) < 1e-3


def test_engine_scores_plain_pairs_as_encode_qa(plain_tokenizer):
    from conftest import build_tiny_model

    tok = plain_tokenizer
    model = build_tiny_model(tok)
    pairs = [("Who wrote it?", "The author did."), ("Who wrote it?", "Nobody knows."),
             ("Where is it?", "In the hills near the river.")]
    got = engine.answer_losses(model, tok, pairs, precision="fp32")
    for (question, answer), (sum_nll, n) in zip(pairs, got):
        enc = encode_qa(tok, question, answer)
        ids = torch.tensor([enc["input_ids"]])
        labels = torch.tensor(enc["labels"][1:])
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), -1)
        keep = labels != -100
        expected = -logp[keep].gather(-1, labels[keep][:, None]).sum()
        assert n == int(keep.sum())
        assert abs(sum_nll - float(expected)) < 1e-3
    # a greedy generation still continues the prompt's own tokens
    assert engine.greedy_generate(model, tok, ["Who wrote it?"], max_new_tokens=4, precision="fp32")


# -- 6. open-unlearning's scoring: the chat turn as rendered ---------------------------------------

def test_chat_turn_scoring_labels_the_rendered_assistant_turn(tiny_model_and_tokenizer):
    model, tok = tiny_model_and_tokenizer
    question, answer = "Who wrote it?", "The author did."
    chat = [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    rendered = tok.apply_chat_template(chat, tokenize=False)
    full = tok(rendered, add_special_tokens=False)["input_ids"]
    prompt = tok(format_prompt(tok, question), add_special_tokens=False)["input_ids"]
    labels = full[len(prompt):] + ([tok.eos_token_id] if full[-1] != tok.eos_token_id else [])
    enc = encode_qa(tok, question, answer, scoring="chat_turn")
    assert enc["input_ids"] == prompt + labels
    assert enc["labels"] == [-100] * len(prompt) + labels
    default = encode_qa(tok, question, answer)
    assert len(enc["labels"]) > len(default["labels"])  # more than answer + EOS
    (sum_nll, n), = engine.answer_losses(model, tok, [(question, answer)], precision="fp32", scoring="chat_turn")
    (sum_default, n_default), = engine.answer_losses(model, tok, [(question, answer)], precision="fp32")
    assert n == len(labels) and n_default == len(default["labels"]) - len(prompt)
    assert sum_nll != sum_default


def _ou_values(name):
    with gzip.open(OU_DIR / "TOFU_EVAL.json.gz", "rt") as handle:
        return json.load(handle)[name]["value_by_index"]


@pytest.mark.integration
@pytest.mark.skipif(not (OU_DIR / "TOFU_EVAL.json.gz").is_file(), reason=f"no open-unlearning logs at {OU_DIR}")
def test_chat_turn_scoring_reproduces_open_unlearning_per_item():
    """open-unlearning's TOFU eval of the default model (its README: fp32, system prompt
    "You are a helpful assistant.", the chat template's assistant turn scored), per item.

    Probability and truth ratio agree to 1e-4 (seen: 4e-5 and 1.1e-5 at most); the average
    losses to 2e-4 (seen: 1.3e-4 at most, ~1e-4 relative, the same with eager attention and an
    unbatched forward: the two transformers versions' arithmetic, 4.45.1 there)."""
    from obliviate.evaluation import tofu
    from obliviate.models import load_model

    model, tokenizer = load_model("smollm2-135m-instruct", device="cpu")
    model = model.float()
    items = tofu.load_items(TOFU_DIR, "forget01_perturbed")
    result = tofu.evaluate_items(model, tokenizer, items, task_kind="forget", generate=False, precision="fp32",
                                 system_prompt="You are a helpful assistant.", scoring="chat_turn")
    prob, para, pert = (_ou_values(f"forget_Q_A{k}_Prob") for k in ("", "_PARA", "_PERT"))
    ratio = _ou_values("forget_truth_ratio")
    assert len(result["items"]) == len(prob) == 40
    for row in result["items"]:
        i = str(row["index"])
        assert row["prob"] == pytest.approx(prob[i]["prob"], abs=1e-4)
        assert row["truth_ratio"] == pytest.approx(ratio[i]["score"], abs=1e-4)
        assert row["avg_nll"] == pytest.approx(prob[i]["avg_loss"], abs=2e-4)
        assert row["avg_nll_base"] == pytest.approx(para[i]["avg_loss"], abs=2e-4)
        assert row["avg_nll_perturbed"] == pytest.approx(pert[i]["avg_loss"], abs=2e-4)
    default = tofu.evaluate_items(model, tokenizer, items[:3], task_kind="forget", generate=False,
                                  precision="fp32", system_prompt="You are a helpful assistant.")
    assert all(abs(row["avg_nll"] - prob[str(row["index"])]["avg_loss"]) > 1e-3 for row in default["items"])


def test_generation_backends_render_the_pinned_date(tiny_model_and_tokenizer, monkeypatch):
    """The local generator (ULMR rewrites, SNAP instructions, RWKU corpora) sees the same prompt
    on every day, so its generation cache stays valid overnight."""
    from obliviate import prompts
    from obliviate.prepare.local import LocalHFBackend

    model, tokenizer = tiny_model_and_tokenizer
    tokenizer.chat_template = LLAMA3_LIKE
    backend = LocalHFBackend(model, tokenizer, batch_size=2)
    chats = [[{"role": "user", "content": "Rewrite: who is X?"}]]
    _on_day(monkeypatch, 1)
    first = backend._encode(chats)
    _on_day(monkeypatch, 2)
    assert backend._encode(chats) == first
    assert prompts.PINNED_DATE in tokenizer.decode(first[0])
