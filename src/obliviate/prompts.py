"""Prompts: how a (question, answer) pair becomes tokens, shared by the collator and the engine.

With a chat template the question is one user turn (optionally after a system prompt) and the
answer is the assistant's turn; without one, TOFU's plain `Question: ...\nAnswer: ` format. A
``prompt_format`` (prompt_formats.py) other than ``auto`` skips the template for open-unlearning's
tags around the question (``[INST] {question} [/INST]``), tokenised as text without a template:
"no chat template" below means either.

Which tokens are scored (the labels), `split_qa`:

* chat template, scoring "answer" (default, TOFU's definition): prompt and answer tokenised
  apart, labels = answer + EOS;
* no chat template (either scoring): prompt + answer tokenised as ONE text, as TOFU and
  open-unlearning do (`Answer: The` gives 'Answer', ':', ' The', not 'Answer', ':', ' ', 'The'),
  labels = the tokens after the prompt's own token count, + EOS. open-unlearning's rule for
  ``apply_chat_template: False`` (src/data/utils.py): chat_ids = tokenizer(prompt + answer,
  add_special_tokens=True) (99-104), prompt_ids = tokenizer(prompt, add_special_tokens=True)
  (106-111), EOS appended unless chat_ids ends in it (113-114), labels = -100 * len(prompt_ids) +
  chat_ids[len(prompt_ids):] (116-124), so the BOS the tokenizer adds (Llama's, not phi-1.5's) is
  context, the answer's tokens + EOS are labels, asst_end_tag is not; a generation continues
  prompt_ids (119-121: predict_with_generate), the prompt with that BOS;
* chat template, scoring "chat_turn" (open-unlearning's `preprocess_chat_instance`): the
  assistant turn as the template renders it, labels = every token after the generation prompt
  (for SmolLM2: answer + `<|im_end|>` + newline), + EOS when that does not end in EOS.

Templates that print a date (Llama 3.x: "Today Date: {{ date_string }}", the current day through
`strftime_now` when no `date_string` is given) would give a different prompt each day, so
training and evaluation on two days would not see the same text. As open-unlearning pins them
(configs/model/Llama-3.1-8B-Instruct.yaml, Llama-3.2-3B-Instruct.yaml: `date_string: 10 Apr
2025`, `system_prompt: You are a helpful assistant.`), such templates get `PINNED_DATE` and,
when no system prompt is given, `PINNED_SYSTEM_PROMPT` (`template_pins`). Other templates are
rendered as they are (SmolLM2's prints its own default system prompt).
"""

from __future__ import annotations

import torch

from obliviate.errors import UserError
from obliviate.prompt_formats import PromptFormat, check_system_prompt, placeholders, resolve_format

# Prompt format for tokenizers without a chat template (TOFU's phi-1.5 format).
PLAIN_PROMPT = "Question: {question}\nAnswer: "
#: Which tokens of a (question, answer) pair are scored: see the module docstring.
SCORINGS = ("answer", "chat_turn")
_SENTINEL = "OBLIVIATE-ANSWER-SENTINEL"
#: open-unlearning's pins for templates that print a date (Llama 3.x), see the module docstring.
PINNED_DATE = "10 Apr 2025"
PINNED_SYSTEM_PROMPT = "You are a helpful assistant."


def fills(template: str, fields: tuple[str, ...]) -> bool:
    """Whether ``template.format(**{name: ... for name in fields})`` fills it: every ``{name}``
    is one of `fields` (no positional ``{}``, no ``{name.attr}``) and a literal brace is doubled."""
    names = placeholders(template)
    return names is not None and names <= set(fields)


def fill_check(template: str, key: str, fields: tuple[str, ...]) -> tuple[bool, str, str]:
    """A config section's check (ok, key, expected) that `template` fills with `fields`."""
    names = " and ".join("{" + name + "}" for name in fields)
    return fills(template, fields), key, f"text whose placeholders are {names} (write a literal brace as {{{{ or }}}})"


def prints_date(tokenizer) -> bool:
    """Does the chat template print a date (`date_string` or `strftime_now`, Llama 3.x)?"""
    template = getattr(tokenizer, "chat_template", None)
    return isinstance(template, str) and ("strftime_now" in template or "date_string" in template)


def template_pins(tokenizer, system_prompt: str | None = None) -> tuple[dict, str | None]:
    """(extra variables for `apply_chat_template`, the system prompt to use): the pinned date and,
    when `system_prompt` is None, the pinned system prompt for a date-printing template; else
    ``({}, system_prompt)``."""
    if not prints_date(tokenizer):
        return {}, system_prompt
    return {"date_string": PINNED_DATE}, PINNED_SYSTEM_PROMPT if system_prompt is None else system_prompt


def render_chat(tokenizer, messages: list[dict], **options) -> str:
    """``tokenizer.apply_chat_template(messages, tokenize=False, **options)``. transformers renders
    a model's template in jinja's sandbox, which refuses unsafe access (``__class__``); that, a
    syntax error or the template's own raise_exception is told in one line naming the tokenizer."""
    from jinja2 import TemplateError

    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, **options)
    except TemplateError as error:
        cause = " ".join(str(error).split())[:160] or type(error).__name__
        name = getattr(tokenizer, "name_or_path", "") or "the tokenizer"
        raise UserError(f"{name}: its chat template failed to render ({type(error).__name__}: {cause}); fix or remove "
                        "its chat_template (chat_template.jinja or tokenizer_config.json)") from None


def format_prompt(tokenizer, question: str, system_prompt: str | None = None,
                  prompt_format: str | PromptFormat = "auto") -> str:
    """The text the model sees before its answer: the chat template with a generation prompt
    (date and system prompt pinned where the template prints a date, `template_pins`), or
    TOFU's plain `Question: ...\\nAnswer: ` when the tokenizer has no template; a tag format's
    text around the question (prompt_formats.py), which refuses a system prompt."""
    fmt = resolve_format(prompt_format)
    if not fmt.uses_template(tokenizer):
        check_system_prompt(fmt, system_prompt)
        return PLAIN_PROMPT.format(question=question) if fmt.tags is None else fmt.fill(question)
    pins, system_prompt = template_pins(tokenizer, system_prompt)
    messages = [{"role": "user", "content": question}]
    if system_prompt is not None:
        messages.insert(0, {"role": "system", "content": system_prompt})
    return render_chat(tokenizer, messages, add_generation_prompt=True, **pins)


def assistant_turn_end(tokenizer) -> str:
    """The text a chat template prints after the assistant's content (SmolLM2: `<|im_end|>\n`)."""
    pins, system_prompt = template_pins(tokenizer)
    chat = [{"role": "user", "content": "Q"}]
    if system_prompt is not None:
        chat.insert(0, {"role": "system", "content": system_prompt})
    prompt = render_chat(tokenizer, chat, add_generation_prompt=True, **pins)
    full = render_chat(tokenizer, chat + [{"role": "assistant", "content": _SENTINEL}], **pins)
    if not full.startswith(prompt + _SENTINEL):
        raise UserError("scoring 'chat_turn': this chat template does not render the assistant turn as "
                        "generation prompt + answer + end of turn; use the default scoring 'answer'")
    return full[len(prompt) + len(_SENTINEL):]


def answer_suffix(tokenizer, scoring: str = "answer", prompt_format: str | PromptFormat = "auto") -> str | None:
    """None: the answer is tokenised alone; else the text after the answer in one joint text
    (nothing without a chat template: open-unlearning appends no asst_end_tag to the answer)."""
    if scoring not in SCORINGS:
        raise UserError(f"scoring '{scoring}' is not known; use one of {', '.join(SCORINGS)}")
    if not resolve_format(prompt_format).uses_template(tokenizer):
        return ""
    return None if scoring == "answer" else assistant_turn_end(tokenizer)


def adds_bos(tokenizer) -> bool:
    """Whether the tokenizer itself puts its BOS in front of a text (``add_special_tokens=True``):
    Llama's do; GPT-2's and phi-1.5's (CodeGen) have a BOS token but never add it.
    A BOS that "Q" itself tokenises to (an unknown-word token that is the BOS) is not one added.
    """
    bos = tokenizer.bos_token_id
    if bos is None:
        return False
    ids = list(tokenizer("Q", add_special_tokens=True)["input_ids"])
    plain = list(tokenizer("Q", add_special_tokens=False)["input_ids"])
    return ids[:1] == [bos] and ids[1:1 + len(plain)] == plain


def prompt_token_ids(tokenizer, texts: list[str], prompt_format: str | PromptFormat = "auto") -> list[list[int]]:
    """Token ids of prompt texts: no special tokens, except, when there is no chat template (or a
    tag format skips it), the BOS that the tokenizer itself adds (`adds_bos`): TOFU and
    open-unlearning tokenise the plain format and the tags with ``add_special_tokens=True``, so
    phi-1.5's prompt has no BOS and Llama-2's has one."""
    ids = [list(x) for x in tokenizer(list(texts), add_special_tokens=False)["input_ids"]] if texts else []
    if not resolve_format(prompt_format).uses_template(tokenizer) and adds_bos(tokenizer):
        ids = [[tokenizer.bos_token_id] + x for x in ids]
    return ids


def split_joint(prompt_ids: list[int], full_ids: list[int], eos_id: int) -> tuple[list[int], list[int]]:
    """(context, labels) of one jointly tokenised text: the boundary at the prompt's own token
    count; EOS appended to the labels unless they end with it (open-unlearning's rule)."""
    n = len(prompt_ids)
    labels = list(full_ids[n:])
    if not labels or labels[-1] != eos_id:
        labels.append(eos_id)
    return list(full_ids[:n]), labels


def split_qa(tokenizer, prompt: str, answer: str, scoring: str = "answer",
             prompt_format: str | PromptFormat = "auto") -> tuple[list[int], list[int]]:
    """(context ids, label ids) of prompt text + answer; the model reads context + labels."""
    suffix = answer_suffix(tokenizer, scoring, prompt_format)
    if suffix is None:
        prompt_ids = prompt_token_ids(tokenizer, [prompt], prompt_format)[0]
        return prompt_ids, tokenizer(answer, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    # one call for both texts: the BOS check (adds_bos) and the tokenizer run once per pair, not twice
    prompt_ids, full_ids = prompt_token_ids(tokenizer, [prompt, prompt + answer + suffix], prompt_format)
    return split_joint(prompt_ids, full_ids, tokenizer.eos_token_id)


def encode_qa(
    tokenizer, question: str, answer: str, *, max_length: int = 512, system_prompt: str | None = None,
    scoring: str = "answer", prompt_format: str | PromptFormat = "auto",
) -> dict[str, list[int]]:
    """Token ids of prompt + answer + EOS, with labels -100 on the prompt (answer-only loss).

    As in TOFU and open-unlearning the EOS after the answer is a label, so the answer NLL
    includes ending the turn. Labels are set by the answer span (`split_qa`), never by pad id
    (SmolLM2's pad token is its end-of-turn token). Over-long pairs are cut from the answer's end
    (open-unlearning truncates to max_length and then appends EOS: one token longer, EOS kept).
    """
    prompt = format_prompt(tokenizer, question, system_prompt, prompt_format)
    context, answer_ids = split_qa(tokenizer, prompt, answer, scoring, prompt_format)
    input_ids = (context + answer_ids)[:max_length]
    labels = ([-100] * len(context) + answer_ids)[:max_length]
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
