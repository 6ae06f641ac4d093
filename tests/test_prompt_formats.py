"""open-unlearning's tag prompts (``template_args`` with ``apply_chat_template: False``).

`_ou_instance` writes out, for one question with no in-context examples, what
open-unlearning's src/data/utils.py:preprocess_chat_instance does in that branch (lines 71-137):
the wrapped prompt is system_prompt_with_special_tokens + user_start_tag + question +
user_end_tag + asst_start_tag; chat_ids = tokenizer(prompt + answer, add_special_tokens=True);
prompt_ids = tokenizer(prompt, add_special_tokens=True); EOS appended unless chat_ids ends in it;
labels -100 over len(prompt_ids); predict_with_generate: input_ids = prompt_ids. Our training
batches, scores and generation prompts are compared with it on tokenizers that do and do not
add a BOS, both with a chat template that the tag format must not use.
"""

from __future__ import annotations

import copy

import pytest
import torch

from obliviate.config import load_config
from obliviate.data.collate import SlotDataset
from obliviate.data.request import QAItem
from obliviate.errors import UserError
from obliviate.evaluation import engine
from obliviate.evaluation.benchmarks.tofu import TOFU, check_tofu
from obliviate.evaluation.engine.formatters import chat_formatter
from obliviate.evaluation.engine.result_cache import ResultCache
from obliviate.evaluation.engine.runner import ModelRunner
from obliviate.evaluation.registry import build_options
from obliviate.prompt_formats import PRESETS
from obliviate.prompts import encode_qa, format_prompt

# configs/model/<name>.yaml of open-unlearning, as written there
OU_TEMPLATE_ARGS = {
    "Llama-2-7b-chat-hf": {"user_start_tag": "[INST] ", "user_end_tag": " [/INST]", "asst_start_tag": "",
                           "asst_end_tag": " "},
    "phi-1_5": {"user_start_tag": "Question: ", "user_end_tag": "\n", "asst_start_tag": "Answer: ",
                "asst_end_tag": "\n\n"},
}
CUSTOM = {"system_prompt_with_special_tokens": "<s>System: be brief.\n", "user_start_tag": "User: ",
          "user_end_tag": "\n", "asst_start_tag": "Assistant:", "asst_end_tag": "\n"}
LLAMA2_TEMPLATE = ("{{ bos_token }}{% for message in messages %}{% if message['role'] == 'user' %}[INST] "
                   "{{ message['content'] }} [/INST]{% else %} {{ message['content'] }} {{ eos_token }}{% endif %}"
                   "{% endfor %}")
PAIRS = [("Who wrote it?", "The author did."), ("Where is it?", "In the hills near the river."),
         ("Who wrote it?", " Nobody knows who wrote it.")]


def _ou_instance(tokenizer, args: dict, question: str, answer: str, max_length: int = 512,
                 predict_with_generate: bool = False) -> dict:
    """open-unlearning's preprocess_chat_instance, apply_chat_template False, no few-shot examples."""
    prompt = args.get("system_prompt_with_special_tokens") or ""
    prompt += args["user_start_tag"] + question + args["user_end_tag"] + args["asst_start_tag"]
    chat_ids = tokenizer(prompt + answer, add_special_tokens=True, max_length=max_length, truncation=True)["input_ids"]
    prompt_ids = tokenizer(prompt, add_special_tokens=True, max_length=max_length, truncation=True)["input_ids"]
    if chat_ids[-1] != tokenizer.eos_token_id:
        chat_ids += [tokenizer.eos_token_id]
    if predict_with_generate:
        return {"input_ids": prompt_ids, "labels": chat_ids}
    return {"input_ids": chat_ids, "labels": [-100] * len(prompt_ids) + chat_ids[len(prompt_ids):]}


def _format_of(args: dict) -> str:
    """The prompt_format that names ``args``: its preset, or the custom text around {question}."""
    for name, preset in OU_TEMPLATE_ARGS.items():
        if preset == args:
            return name
    return (args.get("system_prompt_with_special_tokens") or "") + args["user_start_tag"] + "{question}" + \
        args["user_end_tag"] + args["asst_start_tag"]


@pytest.fixture(scope="module")
def _base_tokenizer():
    """A byte-level BPE (bos <s>, eos <|endoftext|>) with a Llama-2-like chat template; no BOS added."""
    from conftest import byte_level_bpe

    corpus = ["[INST] Who wrote it? [/INST] The author did.", "Question: Where is it?\nAnswer: In the hills.",
              "User: Who wrote it?\nAssistant: Nobody knows who wrote it. The river is near the hills."] * 20
    specials = ["<|endoftext|>", "<s>", "<|im_start|>", "<|im_end|>"]  # conftest.build_tiny_model reads the last
    return byte_level_bpe(corpus, specials, 360)


def _tokenizer(bpe, adds_bos: bool):
    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast

    bpe = copy.deepcopy(bpe)
    if adds_bos:  # as Llama's tokenizer: <s> in front of every text tokenised with special tokens
        bpe.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A $B",
                                                           special_tokens=[("<s>", bpe.token_to_id("<s>"))])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<s>", eos_token="<|endoftext|>",
                                        pad_token="<|endoftext|>")
    tokenizer.chat_template = LLAMA2_TEMPLATE
    return tokenizer


@pytest.fixture(params=[False, True], ids=["no-bos", "bos"])
def tokenizer(request, _base_tokenizer):
    return _tokenizer(_base_tokenizer, request.param)


FORMATS = [OU_TEMPLATE_ARGS["Llama-2-7b-chat-hf"], OU_TEMPLATE_ARGS["phi-1_5"], CUSTOM]


def test_presets_are_open_unlearnings_tags():
    for name, args in OU_TEMPLATE_ARGS.items():
        assert PRESETS[name] == args["user_start_tag"] + "{question}" + args["user_end_tag"] + args["asst_start_tag"]
    assert PRESETS["Llama-2-7b-hf"] == PRESETS["Llama-2-13b-hf"] == PRESETS["phi-1_5"]


@pytest.mark.parametrize("args", FORMATS, ids=["llama2-chat", "phi", "custom"])
def test_training_batches_are_open_unlearnings_ids_and_labels(tokenizer, args):
    fmt = _format_of(args)
    items = [QAItem(q, a) for q, a in PAIRS]
    dataset = SlotDataset(tokenizer, ("forget",), forget=items, max_length=512, prompt_format=fmt)
    adds_bos = tokenizer("Q")["input_ids"][0] == tokenizer.bos_token_id
    for (question, answer), enc in zip(PAIRS, dataset.forget):
        expected = _ou_instance(tokenizer, args, question, answer)
        assert enc["input_ids"] == expected["input_ids"]
        assert enc["labels"] == expected["labels"]
        bos_count = enc["input_ids"][:2].count(tokenizer.bos_token_id)  # the tokenizer's, then the text's <s>
        assert bos_count == int(adds_bos) + int(fmt.startswith("<s>"))


def test_phi_tags_tokenise_prompt_and_answer_as_one_text(tokenizer):
    """'Answer: The' is one text ('Answer', ':', ' The'), not the prompt's ' ' then 'The'; the
    labels start after the prompt's own token count, which holds that ' ': so ' The' is context,
    as in open-unlearning (utils.py:116-124) and TOFU, and EOS is the last label, not asst_end_tag."""
    enc = encode_qa(tokenizer, "Who wrote it?", "The author did.", prompt_format="phi-1_5")
    pieces = [tokenizer.decode([i]) for i in enc["input_ids"]]
    at = pieces.index("Answer")
    assert pieces[at:at + 3] == ["Answer", ":", " The"]
    labelled = [tokenizer.decode([i]) for i, label in zip(enc["input_ids"], enc["labels"]) if label != -100]
    assert labelled[0] == " author" and labelled[-1] == "<|endoftext|>" and "\n\n" not in labelled


@pytest.mark.parametrize("args", FORMATS, ids=["llama2-chat", "phi", "custom"])
def test_engine_scores_and_prompts_are_open_unlearnings(tokenizer, args):
    from conftest import build_tiny_model

    fmt = _format_of(args)
    model = build_tiny_model(tokenizer)
    got = engine.answer_losses(model, tokenizer, PAIRS, precision="fp32", prompt_format=fmt)
    for (question, answer), (sum_nll, n) in zip(PAIRS, got):
        ref = _ou_instance(tokenizer, args, question, answer)
        labels = torch.tensor(ref["labels"][1:])
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=torch.tensor([ref["input_ids"]])).logits[0, :-1].float(), -1)
        keep = labels != -100
        assert n == int(keep.sum())
        assert sum_nll == pytest.approx(-float(logp[keep].gather(-1, labels[keep][:, None]).sum()), abs=1e-3)
    # generation continues open-unlearning's predict_with_generate input_ids (the BOS included)
    runner = ModelRunner(model, tokenizer, precision="fp32", formatter=chat_formatter(tokenizer, prompt_format=fmt),
                         max_length=512, batch_size=4, max_tokens=512, prompt_format=fmt)
    for question, answer in PAIRS:
        ref = _ou_instance(tokenizer, args, question, answer, predict_with_generate=True)
        assert runner.prompt_ids([runner.formatter(question)])[0] == ref["input_ids"]
    question = PAIRS[0][0]
    ref = _ou_instance(tokenizer, args, question, "", predict_with_generate=True)["input_ids"]
    with torch.no_grad():
        out = model.generate(torch.tensor([ref]), max_new_tokens=6, do_sample=False,
                             pad_token_id=tokenizer.eos_token_id)
    expected = tokenizer.decode(out[0, len(ref):], skip_special_tokens=True).strip()
    assert engine.greedy_generate(model, tokenizer, [question], max_new_tokens=6, precision="fp32",
                                  prompt_format=fmt) == [expected]
    _, texts = engine.score_and_generate(model, tokenizer, PAIRS[:1], [question], references=[PAIRS[0][1]],
                                         max_new_tokens=6, precision="fp32", prompt_format=fmt)
    assert texts == [expected]  # TOFU's path: the reference scored alongside gives the forced prefix


def test_cached_results_are_kept_apart_per_format(_base_tokenizer, tmp_path):
    """A tag text equal to the chat template's rendering is tokenised otherwise (the tokenizer's
    BOS in front, prompt and answer one text): neither scores nor generations may be served from
    the template's cache entries."""
    from conftest import build_tiny_model

    tok = _tokenizer(_base_tokenizer, adds_bos=True)
    model = build_tiny_model(tok)
    same_text = "<s>[INST] {question} [/INST]"
    assert format_prompt(tok, "Q", prompt_format=same_text) == format_prompt(tok, "Q")
    pairs, questions = PAIRS[:1], [PAIRS[0][0]]
    cache = ResultCache(tmp_path, "ns")
    template = engine.score_and_generate(model, tok, pairs, questions, max_new_tokens=4, precision="fp32",
                                         cache=cache)
    tags = engine.score_and_generate(model, tok, pairs, questions, max_new_tokens=4, precision="fp32", cache=cache,
                                     prompt_format=same_text)
    fresh = engine.score_and_generate(model, tok, pairs, questions, max_new_tokens=4, precision="fp32",
                                      prompt_format=same_text)
    assert cache.hits == 0
    assert tags[0][0].sum_nll == pytest.approx(fresh[0][0].sum_nll, abs=1e-5) != template[0][0].sum_nll


def test_bad_values_are_one_line_naming_the_key():
    with pytest.raises(UserError, match=r"^config key 'prompt_format' = 'llama2' is invalid; expected auto") as err:
        load_config(None, ["prompt_format=llama2"])
    assert "\n" not in str(err.value)
    assert load_config(None, ["prompt_format=phi-1_5"]).prompt_format == "phi-1_5"
    options = build_options(TOFU, {"prompt_format": "Question {q}"}, where="benchmark 'tofu' option")
    with pytest.raises(UserError, match=r"^benchmark 'tofu' option 'prompt_format' = 'Question \{q\}' is not known"):
        check_tofu(options)
    options = build_options(TOFU, {"prompt_format": "Llama-2-7b-chat-hf", "system_prompt": "Be brief."})
    with pytest.raises(UserError, match=r"^benchmark 'tofu' option 'system_prompt' belongs to the chat template"):
        check_tofu(options)
    check_tofu(build_options(TOFU, {"prompt_format": "[INST] {question} [/INST]"}))


def test_auto_is_unchanged(tiny_tokenizer):
    """The default: the chat template where there is one (every existing model's prompt)."""
    question, answer = PAIRS[0]
    assert encode_qa(tiny_tokenizer, question, answer, prompt_format="auto") == encode_qa(tiny_tokenizer, question,
                                                                                          answer)
    assert format_prompt(tiny_tokenizer, question).startswith("<|im_start|>user\n")


def test_tag_generation_stops_where_model_generate_does(tiny_model_and_tokenizer):
    """open-unlearning generates with ``model.generate`` (src/evals/metrics/utils.py:294-299):
    it stops at the generation config's EOS ids, not at the chat template's end-of-turn token."""
    model, tok = tiny_model_and_tokenizer
    model.generation_config.eos_token_id = tok.eos_token_id
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    runners = {fmt: ModelRunner(model, tok, precision="fp32", formatter=str, max_length=64, batch_size=1,
                                max_tokens=64, prompt_format=fmt) for fmt in ("auto", "phi-1_5")}
    assert im_end in runners["auto"].stop_ids
    assert runners["phi-1_5"].stop_ids == [tok.eos_token_id]


def test_a_run_trains_on_the_formats_batches(tiny_model_and_tokenizer, tmp_path, slot_datasets):
    """The run config's prompt_format reaches the training batches (api.unlearn keyword too)."""
    from obliviate import api

    model, tok = tiny_model_and_tokenizer
    request = {"forget": [{"question": q, "answer": a} for q, a in PAIRS[:2]]}
    api.unlearn(model, tok, request, method="ga", output_dir=str(tmp_path / "run"), prompt_format="phi-1_5",
                **{"train.max_steps": 1, "train.batch_size": 2, "train.save_steps": -1})
    assert slot_datasets and slot_datasets[0].forget[0] == encode_qa(tok, *PAIRS[0], max_length=256, prompt_format="phi-1_5")
    saved = (tmp_path / "run" / "config.yaml").read_text()
    assert "prompt_format: phi-1_5" in saved


def test_evaluating_a_runs_model_with_another_format_warns(tmp_path, capsys):
    from obliviate.api import _warn_other_prompt_format

    (tmp_path / "model").mkdir()
    (tmp_path / "config.yaml").write_text("method: ga\nprompt_format: Llama-2-7b-chat-hf\n")
    _warn_other_prompt_format(str(tmp_path / "model"), build_options(TOFU, {}))
    assert "trained with prompt_format 'Llama-2-7b-chat-hf', evaluated with 'auto'" in capsys.readouterr().out
    _warn_other_prompt_format(tmp_path / "model", build_options(TOFU, {"prompt_format": "Llama-2-7b-chat-hf"}))
    assert capsys.readouterr().out == ""


def test_a_bos_that_the_text_itself_gives_is_not_one_the_tokenizer_adds():
    """adds_bos read the first id of tokenizer("Q"): where "Q" is an unknown word and the unknown
    token is the BOS, it said the tokenizer adds a BOS, and every plain prompt got one in front."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    from obliviate.prompts import adds_bos, prompt_token_ids

    def word_level(adds: bool):
        vocab = {"<s>": 0, "</s>": 1, "Question:": 2, "hi": 3}
        inner = Tokenizer(models.WordLevel(vocab, unk_token="<s>"))
        inner.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
        if adds:
            inner.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 0)])
        return PreTrainedTokenizerFast(tokenizer_object=inner, bos_token="<s>", eos_token="</s>", unk_token="<s>")

    assert not adds_bos(word_level(False)) and prompt_token_ids(word_level(False), ["Question: hi"]) == [[2, 3]]
    assert adds_bos(word_level(True)) and prompt_token_ids(word_level(True), ["Question: hi"]) == [[0, 2, 3]]


def test_the_same_format_written_otherwise_does_not_warn(tmp_path, capsys):
    """A preset named in another case, or by its own text, is the format the run trained with."""
    from obliviate.api import _warn_other_prompt_format

    (tmp_path / "model").mkdir()
    (tmp_path / "config.yaml").write_text("method: ga\nprompt_format: phi-1_5\n")
    for same in ("PHI-1_5", "Question: {question}\nAnswer: ", "Llama-2-7b-hf"):
        _warn_other_prompt_format(tmp_path / "model", build_options(TOFU, {"prompt_format": same}))
    assert capsys.readouterr().out == ""
    _warn_other_prompt_format(tmp_path / "model", build_options(TOFU, {"prompt_format": "Llama-2-7b-chat-hf"}))
    assert "trained with prompt_format 'phi-1_5'" in capsys.readouterr().out
