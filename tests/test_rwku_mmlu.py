"""RWKU's MMLU reads, for each letter, the next-token log-probability of encode(" " + letter)[-1]
right after the prompt (eval_mmlu.py, inference.py). Where " A" is two tokens (the tiny byte-level
vocabulary; sentencepiece's "▁", "A"), scoring " A" read the space token's probability, the same
for all four letters, and every prediction was A."""

from __future__ import annotations

import torch

from obliviate.evaluation.rwku.utility import LETTERS, mmlu_option, mmlu_prompt, score_choices

SAMPLES = [{"question": f"What is {i} + {i}?", "choices": [str(2 * i + d) for d in (1, 0, 2, 3)], "answer": 1,
            "task": "elementary_mathematics",
            "examples": [{"question": "1 + 1 = ?", "choices": ["2", "3", "4", "5"], "answer": 0}]} for i in range(6)]


def test_mmlu_reads_rwkus_candidate_token_after_the_prompt(tiny_model_and_tokenizer):
    model, tokenizer = tiny_model_and_tokenizer
    ids = [tokenizer.encode(" " + c, add_special_tokens=False) for c in LETTERS]
    assert all(len(x) == 2 for x in ids)  # the case that went wrong: " A" is two tokens here
    expected = []
    for sample in SAMPLES:
        prompt = mmlu_prompt(tokenizer, sample)
        for c, x in zip(LETTERS, ids):
            option = mmlu_option(tokenizer, prompt, c)
            assert tokenizer(option, add_special_tokens=False)["input_ids"][0] == x[-1]
        context = tokenizer(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            logits = model(input_ids=context).logits[0, -1]
        expected.append(int(torch.argmax(logits[[x[-1] for x in ids]])))  # RWKU's prediction
    result = score_choices(model, tokenizer, SAMPLES, "mmlu", precision="fp32")
    assert [item["prediction"] for item in result["items"]] == expected
    assert len(set(expected)) > 1  # not all A: the test can tell the two readings apart


def test_rwku_prompts_are_the_user_turn_alone_as_rwkus_scripts_render_them(tiny_tokenizer, monkeypatch):
    """RWKU's eval_*.py call apply_chat_template with the user turn only; the TOFU-side pins (a
    system prompt and open-unlearning's date) reached every RWKU probe and utility prompt of a
    date-printing template. A template printing today's date gets the pinned date (stable prompts)."""
    from obliviate import prompts
    from obliviate.evaluation.rwku.prompts import chat_prompt
    from test_reference_alignment import LLAMA3_LIKE, _on_day

    llama31 = ("{%- if not date_string is defined %}{%- set date_string = '26 Jul 2024' %}{%- endif %}"
               "{%- if messages[0]" + LLAMA3_LIKE.split("{%- if messages[0]", 1)[1])
    tiny_tokenizer.chat_template = llama31  # Llama 3.1: its own default date, no clock
    text = chat_prompt(tiny_tokenizer, "Q", "Answer:")
    assert text == tiny_tokenizer.apply_chat_template([{"role": "user", "content": "Q"}], tokenize=False,
                                                      add_generation_prompt=True) + "Answer:"
    assert "26 Jul 2024" in text and prompts.PINNED_SYSTEM_PROMPT not in text
    tiny_tokenizer.chat_template = LLAMA3_LIKE  # Llama 3.2: today's date unless pinned
    days = []
    for day in (1, 2):
        _on_day(monkeypatch, day)
        days.append(chat_prompt(tiny_tokenizer, "Q"))
    assert days[0] == days[1] and prompts.PINNED_DATE in days[0] and prompts.PINNED_SYSTEM_PROMPT not in days[0]
