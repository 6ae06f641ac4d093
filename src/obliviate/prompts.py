"""Prompts: how a (question, answer) pair becomes tokens, shared by the collator and the engine.

With a chat template the question is one user turn (optionally after a system prompt) and the
answer is the assistant's turn; without one, TOFU's plain `Question: ...\nAnswer: ` format.
"""

from __future__ import annotations

import torch

# Prompt format for tokenizers without a chat template (TOFU's phi-1.5 format).
PLAIN_PROMPT = "Question: {question}\nAnswer: "

def format_prompt(tokenizer, question: str, system_prompt: str | None = None) -> str:
    """The text the model sees before its answer: the chat template with a generation prompt,
    or TOFU's plain `Question: ...\\nAnswer: ` when the tokenizer has no template."""
    if tokenizer.chat_template is None:
        return PLAIN_PROMPT.format(question=question)
    messages = [{"role": "user", "content": question}]
    if system_prompt is not None:
        messages.insert(0, {"role": "system", "content": system_prompt})
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def encode_qa(
    tokenizer, question: str, answer: str, *, max_length: int = 512, system_prompt: str | None = None
) -> dict[str, list[int]]:
    """Token ids of prompt + answer + EOS, with labels -100 on the prompt (answer-only loss).

    As in TOFU and open-unlearning the EOS after the answer is a label, so the answer NLL
    includes ending the turn. Labels are set by the answer span, never by pad id (SmolLM2's
    pad token is its end-of-turn token). Over-long pairs are cut from the answer's end.
    """
    prompt_ids = tokenizer(format_prompt(tokenizer, question, system_prompt), add_special_tokens=False)[
        "input_ids"
    ]
    if tokenizer.chat_template is None and tokenizer.bos_token_id is not None:
        prompt_ids = [tokenizer.bos_token_id] + prompt_ids
    answer_ids = tokenizer(answer, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    input_ids = (prompt_ids + answer_ids)[:max_length]
    labels = ([-100] * len(prompt_ids) + answer_ids)[:max_length]
    return {"input_ids": input_ids, "attention_mask": [1] * len(input_ids), "labels": labels}


def pad_batch(features: list[dict[str, list[int]]], pad_token_id: int, side: str = "right") -> dict:
    """Pad encoded examples to one tensor batch (labels padded with -100)."""
    width = max(len(f["input_ids"]) for f in features)
    batch = {}
    for key, fill in (("input_ids", pad_token_id), ("attention_mask", 0), ("labels", -100)):
        if key not in features[0]:
            continue
        rows = []
        for f in features:
            gap = [fill] * (width - len(f[key]))
            rows.append(f[key] + gap if side == "right" else gap + f[key])
        batch[key] = torch.tensor(rows, dtype=torch.long)
    return batch
