"""When a greedy generation ends: stop tokens (EOS, end of turn) and stop strings."""

from __future__ import annotations

from collections.abc import Sequence

from obliviate.errors import UserError

#: End-of-turn markers of common chat templates; one that the tokenizer's template uses
#: stops generation like EOS does.
END_OF_TURN_TOKENS = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "</s>")


def stop_token_ids(model, tokenizer, template: bool = True) -> list[int]:
    """Token ids that end a generation: the tokenizer's EOS, the model's generation-config EOS
    ids, and the chat template's end-of-turn marker (e.g. ``<|im_end|>``) when it has one and
    ``template`` (prompts go through it; a tag format's generation stops where open-unlearning's
    ``model.generate`` does, at the EOS ids: src/evals/metrics/utils.py:294-309)."""
    ids: list[int] = []

    def add(value):
        for v in value if isinstance(value, (list, tuple)) else [value]:
            if v is not None and int(v) not in ids:
                ids.append(int(v))

    add(tokenizer.eos_token_id)
    add(getattr(getattr(model, "generation_config", None), "eos_token_id", None))
    template = tokenizer.chat_template if template and isinstance(tokenizer.chat_template, str) else ""
    vocab = tokenizer.get_vocab()
    for token in END_OF_TURN_TOKENS:
        if token in template and token in vocab:
            add(vocab[token])
    return ids


class StopStrings:
    """Stop strings of a generation (e.g. ``"\\n"``): decoding stops once the new text
    contains one, and the returned text is cut before the first one.

    The check decodes only the last tokens (a window long enough to hold the longest stop
    string even at one byte per token), so it costs the same at every step. Stopping early
    never changes the result: the text is cut at the first stop string either way.
    """

    def __init__(self, tokenizer, strings: Sequence[str] = ()):
        strings = (strings,) if isinstance(strings, str) else tuple(strings)
        if any(not isinstance(s, str) or not s for s in strings):
            raise UserError(f"stop strings must be non-empty strings, got {list(strings)!r}")
        self.tokenizer = tokenizer
        self.strings = strings
        self.window = 4 * max((len(s) for s in strings), default=0) + 2  # up to 4 UTF-8 bytes a character

    def __bool__(self) -> bool:
        return bool(self.strings)

    def found_in(self, tokens: Sequence[int]) -> bool:
        """Whether the text of the last tokens contains a stop string."""
        if not self.strings:
            return False
        tail = self.tokenizer.decode(list(tokens[-self.window:]), skip_special_tokens=True)
        return any(s in tail for s in self.strings)

    def found_anywhere(self, tokens: Sequence[int]) -> bool:
        """Whether the whole text of ``tokens`` contains a stop string."""
        text = self.tokenizer.decode(list(tokens), skip_special_tokens=True) if self.strings else ""
        return any(s in text for s in self.strings)

    def cut(self, text: str) -> str:
        """``text`` up to (not including) its first stop string."""
        ends = [text.find(s) for s in self.strings]
        ends = [e for e in ends if e >= 0]
        return text[: min(ends)] if ends else text
