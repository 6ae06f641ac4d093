"""Greedy decoding with continuous batching over per-row cache slots.

Up to ``rows`` prompts decode together; a prompt that stops (stop token, stop string or
``max_new_tokens``) frees its row for the next prompt at once, so every step runs a full
batch until the work runs out. Each prompt enters with the keys/values the scoring pass
left for it (prompt + the reference tokens greedy decoding is known to reproduce).
"""

from __future__ import annotations

from typing import Any

import torch
from transformers.cache_utils import Cache, DynamicLayer

from obliviate.evaluation.engine.rows import DecodingRows
from obliviate.evaluation.engine.runner import ModelRunner
from obliviate.evaluation.engine.trie import Prompt


class SlotLayer(DynamicLayer):
    """One layer's keys/values in fixed per-row slots: row b keeps its entries in slots
    ``[0, length[b])``, and :meth:`update` writes each row's new entry at its own next slot.

    Attention does not depend on the order of cached entries (positions are applied to keys
    before caching), so rows of any length share one buffer with no padding and no copying;
    the decoder passes a 4-D mask over ``[0, width)``."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, state: dict):
        super().__init__()
        self.buffer_keys, self.buffer_values, self.state = keys, values, state
        self.dtype, self.device = keys.dtype, keys.device
        self.is_initialized = True
        self.keys, self.values = keys[:, :, :0], values[:, :, :0]

    def update(self, key_states, value_states, *args, **kwargs):
        rows, slots, width = self.state["rows"], self.state["slots"], self.state["width"]
        self.buffer_keys[rows, :, slots] = key_states[:, :, 0].to(self.buffer_keys.dtype)
        self.buffer_values[rows, :, slots] = value_states[:, :, 0].to(self.buffer_values.dtype)
        self.keys, self.values = self.buffer_keys[:, :, :width], self.buffer_values[:, :, :width]
        return self.keys, self.values


class SlotDecoder(DecodingRows):
    """Greedy decoding of up to ``rows`` prompts at a time (see the module docstring)."""

    def __init__(self, runner: ModelRunner, rows: int, capacity: int,
                 template: list[tuple[torch.Tensor, torch.Tensor]], max_new_tokens: int):
        super().__init__(rows, capacity, max_new_tokens)
        self.runner = runner
        self.state: dict[str, Any] = {"rows": None, "slots": None, "width": 0}
        self.layers = [
            SlotLayer(k.new_zeros((rows, k.shape[0], capacity, k.shape[-1])),
                      v.new_zeros((rows, v.shape[0], capacity, v.shape[-1])), self.state)
            for k, v in template
        ]
        self.cache = Cache(layers=self.layers)
        self.length = torch.zeros(rows, dtype=torch.long)  # used slots per row
        self.position = torch.zeros(rows, dtype=torch.long)  # position id of the next input token
        self.next_token = torch.zeros(rows, dtype=torch.long)
        self.stop = torch.tensor(sorted(set(runner.stop_ids)) or [-1])

    def admit(self, b: int, prompt: Prompt) -> None:
        n = self.take_row(b, prompt)
        for layer, (keys, values) in zip(self.layers, prompt.kv):
            layer.buffer_keys[b, :, :n] = keys
            layer.buffer_values[b, :, :n] = values
        self.length[b] = n
        self.position[b] = len(prompt.ids) + prompt.feed
        self.next_token[b] = prompt.forced[prompt.feed]
        prompt.kv = None

    def step(self) -> list[tuple[Prompt, list[int]]]:
        """One decoding step of every occupied row; returns the prompts that finished."""
        if not all(p is not None for p in self.prompts):  # no more work to fill them: shrink
            self._keep([b for b, p in enumerate(self.prompts) if p is not None])
        device = self.runner.device
        width = int(self.length.max()) + 1
        self.state.update(rows=torch.arange(len(self.prompts), device=device), slots=self.length.to(device),
                          width=width)
        mask = torch.arange(width)[None, :] <= self.length[:, None]
        hidden = self.runner.forward(self.next_token[:, None], mask[:, None, None, :], self.position[:, None],
                                     self.cache)
        self.runner.tokens["generated"] += len(self.prompts)
        tokens = self.runner.logits(hidden[:, -1]).argmax(-1).cpu()
        self.length += 1
        self.position += 1
        self.next_token = tokens
        finished = []
        for b, (token, stop) in enumerate(zip(tokens.tolist(), torch.isin(tokens, self.stop).tolist())):
            if (done := self.append(b, token, stop, self.runner.stop_strings)) is not None:
                finished.append(done)
        return finished

    def _keep(self, rows: list[int]) -> None:
        """Keep only the busy ``rows``: busy rows past ``len(rows)`` move into the free rows in
        front (one row's cache copied each) and the buffers become their first ``len(rows)``
        rows, a view, so a shrink costs the rows moved, not a copy of the whole cache."""
        n = len(rows)
        holes = [b for b in range(n) if self.prompts[b] is None]
        order = list(range(n))
        for hole, source in zip(holes, [b for b in rows if b >= n]):
            order[hole] = source
            used = int(self.length[source])
            for layer in self.layers:
                layer.buffer_keys[hole, :, :used] = layer.buffer_keys[source, :, :used]
                layer.buffer_values[hole, :, :used] = layer.buffer_values[source, :, :used]
        for layer in self.layers:
            layer.buffer_keys, layer.buffer_values = layer.buffer_keys[:n], layer.buffer_values[:n]
        index = torch.tensor(order, dtype=torch.long)
        self.prompts = [self.prompts[b] for b in order]
        self.outputs = [self.outputs[b] for b in order]
        self.length, self.position, self.next_token = self.length[index], self.position[index], self.next_token[index]
