"""Which decoding row holds which prompt: the bookkeeping both decoders share.

A decoder has ``n`` rows; a row is free (``None``) or holds one prompt and the tokens output
for it so far (its forced prefix first). :class:`DecodingRows` admits a prompt into a free
row, checks that it fits the cache capacity, tells when a row's output is finished and
releases the row.
"""

from __future__ import annotations

from obliviate.evaluation.engine.trie import Prompt


class DecodingRows:
    """Base of :class:`~.slot_decoder.SlotDecoder` and :class:`~.static_decoder.StaticSlotDecoder`:
    ``prompts[b]`` and ``outputs[b]`` of each row ``b``."""

    def __init__(self, rows: int, capacity: int, max_new_tokens: int):
        self.capacity, self.max_new_tokens = capacity, max_new_tokens
        self.prompts: list[Prompt | None] = [None] * rows
        self.outputs: list[list[int]] = [[] for _ in range(rows)]

    def free_rows(self) -> list[int]:
        return [b for b, p in enumerate(self.prompts) if p is None]

    def busy(self) -> bool:
        return any(p is not None for p in self.prompts)

    def take_row(self, b: int, prompt: Prompt) -> int:
        """Row ``b`` now holds ``prompt`` (output: its forced prefix); returns its cached tokens."""
        n = prompt.kv[0][0].shape[1]
        if n + self.max_new_tokens - len(prompt.forced) > self.capacity:
            raise RuntimeError(f"{n} cached tokens do not fit the decoding capacity {self.capacity}")
        self.prompts[b], self.outputs[b] = prompt, list(prompt.forced)
        return n

    def append(self, b: int, token: int, stop: bool, stop_strings) -> tuple[Prompt, list[int]] | None:
        """Add ``token`` to row ``b``'s output; when the output is finished (a stop token, the
        length limit, a stop string) release the row and return (prompt, output)."""
        output = self.outputs[b]
        output.append(token)
        if stop or len(output) >= self.max_new_tokens or stop_strings.found_in(output):
            done = (self.prompts[b], output)
            self.prompts[b], self.outputs[b] = None, []
            return done
        return None
