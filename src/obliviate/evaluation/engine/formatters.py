"""Prompt formatters: how a question becomes the text the model continues.

A formatter is any callable ``question -> prompt text``. The engine tokenises that text
without adding special tokens, and puts the tokenizer's BOS in front only when the tokenizer
has no chat template (or the call's ``prompt_format`` is a tag format) and adds a BOS itself
(:func:`obliviate.prompts.prompt_token_ids`, as
:func:`obliviate.prompts.encode_qa` does); a formatter that wants a
BOS anyway writes ``tokenizer.bos_token`` into its text. Results are cached under the prompt
text itself, so two formatters never share a cached result unless they produce the same
prompt.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from obliviate.prompt_formats import PromptFormat, check_system_prompt, resolve_format
from obliviate.prompts import PLAIN_PROMPT, format_prompt

PromptFormatter = Callable[[str], str]


def chat_formatter(tokenizer, system_prompt: str | None = None, suffix: str = "",
                   prompt_format: str | PromptFormat = "auto") -> PromptFormatter:
    """The default: :func:`obliviate.prompts.format_prompt` (the chat template with a
    generation prompt, or TOFU's plain format without a template, or a tag format's text), then
    ``suffix`` (RWKU appends ``"Answer:"`` after the template). A template that prints a date
    (Llama 3.x) is rendered with open-unlearning's pinned date and system prompt, so the prompt,
    and with it the cached result's key, does not change from one day to the next."""
    prompt_format = resolve_format(prompt_format)  # a bad format, or one beside a system prompt: refused now
    check_system_prompt(prompt_format, system_prompt)

    def format_chat(question: str) -> str:
        return format_prompt(tokenizer, question, system_prompt, prompt_format) + suffix

    return format_chat


def plain_formatter(template: str = PLAIN_PROMPT) -> PromptFormatter:
    """``template.format(question=question)``; no chat template (base models, completions)."""
    if "{question}" not in template:
        raise ValueError(f"a plain prompt template needs a {{question}} field, got {template!r}")

    def format_plain(question: str) -> str:
        return template.format(question=question)

    return format_plain


def few_shot_formatter(
    examples: Sequence[tuple[str, str]],
    template: str = PLAIN_PROMPT,
    *,
    header: str = "",
    separator: str = "\n\n",
    tokenizer=None,
    system_prompt: str | None = None,
) -> PromptFormatter:
    """``header`` + the solved ``examples`` (each ``template`` filled in, then its answer) +
    the question in ``template``, joined by ``separator``. With ``tokenizer`` the whole text
    is one user turn of the chat template (as in-prompt examples of chat models are)."""
    if "{question}" not in template:
        raise ValueError(f"a few-shot template needs a {{question}} field, got {template!r}")
    shots = [template.format(question=q) + a for q, a in examples]

    def format_few_shot(question: str) -> str:
        text = header + separator.join([*shots, template.format(question=question)])
        return format_prompt(tokenizer, text, system_prompt) if tokenizer is not None else text

    return format_few_shot
