"""Prompt formats: the tokenizer's chat template, or open-unlearning's tags around the question.

open-unlearning gives every model config a ``template_args`` block (configs/model/*.yaml) that
``preprocess_chat_instance`` (src/data/utils.py) reads. With ``apply_chat_template: True`` the
chat template renders the turn (obliviate's ``auto``, with the Llama 3.x pins of
`prompts.template_pins`). With ``apply_chat_template: False`` the prompt of one question with no
in-context examples is plain text (utils.py:72-98)::

    [system_prompt_with_special_tokens] + user_start_tag + question + user_end_tag + asst_start_tag

and ``asst_end_tag`` only closes in-context examples (utils.py:82-89), which TOFU's evaluation
and the unlearning datasets do not use: it is never part of a scored, trained or generated pair.
So a tag format is one text around ``{question}``: ``"[INST] {question} [/INST]"`` for
Llama-2-7b-chat-hf (its asst_start_tag is "", its asst_end_tag " " unused). How such a prompt and
its answer become tokens and labels is `prompts.split_qa`'s rule for text without a template.

`PRESETS` are the configs that set ``apply_chat_template: False``; any other text that holds
``{question}`` (a literal brace written ``{{`` or ``}}``) is a custom format.
"""

from __future__ import annotations

import functools
import string
from dataclasses import dataclass

from obliviate.errors import UserError

AUTO = "auto"
# user_start_tag "Question: ", user_end_tag "\n", asst_start_tag "Answer: " (asst_end_tag "\n\n" unused)
_QUESTION_ANSWER = "Question: {question}\nAnswer: "
#: open-unlearning's model configs without a chat template (configs/model/<name>.yaml), as text around {question}.
PRESETS: dict[str, str] = {
    "Llama-2-7b-chat-hf": "[INST] {question} [/INST]",  # "[INST] ", " [/INST]", ""
    "phi-1_5": _QUESTION_ANSWER,
    "Llama-2-7b-hf": _QUESTION_ANSWER,
    "Llama-2-13b-hf": _QUESTION_ANSWER,
}
EXPECTED = (f"auto (the chat template; TOFU's 'Question: ...' without one), a preset ({', '.join(PRESETS)}) or "
            "text around {question}, e.g. '[INST] {question} [/INST]' (a literal brace written {{ or }})")


@dataclass(frozen=True)
class PromptFormat:
    """``name``: auto, a preset or "custom"; ``tags``: the text around ``{question}``, or None for
    the tokenizer's chat template (TOFU's plain `Question: ...\\nAnswer: ` where it has none)."""

    name: str = AUTO
    tags: str | None = None

    def uses_template(self, tokenizer) -> bool:
        """Whether prompts go through ``tokenizer.apply_chat_template``."""
        return self.tags is None and getattr(tokenizer, "chat_template", None) is not None

    def fill(self, question: str) -> str:
        return self.tags.format(question=question)

    @property
    def label(self) -> str:
        """How results and messages name it: auto, the preset's name, or a custom format's text."""
        return self.tags if self.name == "custom" else self.name


def placeholders(template: str) -> set[str] | None:
    """The field names of a ``str.format`` template (``""`` for a positional ``{}``,
    ``"name.attr"`` as written); None where it does not parse (a single { or })."""
    try:
        return {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
    except ValueError:
        return None


def _tags_ok(text: str) -> bool:
    """Text whose only placeholder is ``{question}`` (at least once)."""
    return placeholders(text) == {"question"}


@functools.lru_cache(maxsize=64)
def _resolve(value: str) -> PromptFormat | None:
    if value == AUTO:
        return PromptFormat()
    preset = {name.lower(): name for name in PRESETS}.get(value.strip().lower())
    if preset is not None:
        return PromptFormat(preset, PRESETS[preset])
    return PromptFormat("custom", value) if _tags_ok(value) else None


def resolve_format(value: str | PromptFormat | None = AUTO, key: str = "prompt_format") -> PromptFormat:
    """The :class:`PromptFormat` a ``prompt_format`` value names (None: auto); a one-line
    UserError naming ``key`` for anything else."""
    if isinstance(value, PromptFormat):
        return value
    found = _resolve(value) if isinstance(value, str) else PromptFormat() if value is None else None
    if found is None:
        raise UserError(f"{key} = {value!r} is not known; expected {EXPECTED}")
    return found


def format_check(value, key: str = "prompt_format") -> tuple[bool, str, str]:
    """A config check (ok, key, expected) that ``value`` names a prompt format."""
    return isinstance(value, str) and _resolve(value) is not None, key, EXPECTED


def check_system_prompt(fmt: PromptFormat, system_prompt: str | None, key: str = "system_prompt") -> None:
    """A tag format writes its whole prompt: a system prompt goes into its text (open-unlearning's
    ``system_prompt_with_special_tokens`` is a prefix of the tags), not beside it."""
    if fmt.tags is not None and system_prompt is not None:
        raise UserError(f"{key} belongs to the chat template; prompt_format {fmt.label!r} writes the whole prompt: "
                        "put the system text into the format, before {question}")
