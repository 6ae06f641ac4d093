"""Greedy decoding with fixed shapes: one decoding step that a CUDA graph can capture.

The plain decoder (:mod:`.slot_decoder`) changes its shapes every step (cache width, rows
still busy) and prepares each step's inputs on the host: on a GPU, a step of a small model
then costs the same at batch 1 and 256 (Python and kernel launches, not the GPU). Here every
tensor a step touches has a fixed shape and lives on the model's device: ``rows`` cache rows
of ``capacity`` slots, the next input token, position and used length per row, and a 0/1
``active`` flag. One step (mask from the lengths, decoder, output layer, argmax, lengths and
positions advanced for active rows) reads and writes only those tensors, so on CUDA it is
captured once as a CUDA graph (:class:`torch.cuda.CUDAGraph`) and each step is one replay;
elsewhere (CPU) the same step runs as ordinary calls, which the tests compare with the plain
decoder. The host reads back one token per row per step for the stop rules.

An idle row keeps computing (its output is ignored); its length does not advance, so its
writes stay in one slot. Greedy outputs equal the plain decoder's up to floating-point
rounding (attention over the full ``capacity`` with masked slots, all rows every step).
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from transformers.cache_utils import Cache, DynamicLayer

from obliviate.evaluation.engine.rows import DecodingRows
from obliviate.evaluation.engine.runner import ModelRunner
from obliviate.evaluation.engine.trie import Prompt

log = logging.getLogger(__name__)

#: Uncaptured steps run before a CUDA graph is captured (lazy initialisation, cuBLAS workspaces).
WARMUP_STEPS = 2


class StaticSlotLayer(DynamicLayer):
    """One layer's keys/values in fixed buffers of ``capacity`` slots per row; :meth:`update`
    writes each row's new entry in place at its slot ``state["slots"][row]`` and returns the
    whole buffers (the 4-D mask hides unused slots)."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, state: dict):
        super().__init__()
        self.keys, self.values, self.state = keys, values, state
        self.dtype, self.device = keys.dtype, keys.device
        self.is_initialized = True

    def update(self, key_states, value_states, *args, **kwargs):
        rows, slots = self.state["rows"], self.state["slots"]
        self.keys[rows, :, slots] = key_states[:, :, 0].to(self.keys.dtype)
        self.values[rows, :, slots] = value_states[:, :, 0].to(self.values.dtype)
        return self.keys, self.values


class StaticSlotDecoder(DecodingRows):
    """Greedy decoding of up to ``rows`` prompts at a time with one fixed-shape step; same
    interface as :class:`~obliviate.evaluation.engine.slot_decoder.SlotDecoder`."""

    def __init__(self, runner: ModelRunner, rows: int, capacity: int,
                 template: list[tuple[torch.Tensor, torch.Tensor]], max_new_tokens: int):
        super().__init__(rows, capacity, max_new_tokens)
        self.runner = runner
        device = runner.device
        self.slots = torch.zeros(rows, dtype=torch.long, device=device)  # used slots = next write
        self.state: dict[str, Any] = {"rows": torch.arange(rows, device=device), "slots": self.slots}
        self.layers = [
            StaticSlotLayer(k.new_zeros((rows, k.shape[0], capacity, k.shape[-1])),
                            v.new_zeros((rows, v.shape[0], capacity, v.shape[-1])), self.state)
            for k, v in template
        ]
        self.cache = Cache(layers=self.layers)
        self.columns = torch.arange(capacity, device=device)[None, :]
        self.next_token = torch.zeros((rows, 1), dtype=torch.long, device=device)
        self.position = torch.zeros((rows, 1), dtype=torch.long, device=device)
        self.active = torch.zeros(rows, dtype=torch.long, device=device)
        self.out = torch.zeros(rows, dtype=torch.long, device=device)
        self.stop = set(runner.stop_ids)
        self.run_step = self._step_tensors
        if device.type == "cuda":
            self.run_step = self._capture()

    # -- the fixed-shape step -------------------------------------------------------------------

    def _step_tensors(self) -> None:
        """Decoder + output layer + argmax for every row; advances the active rows."""
        mask = self.columns <= self.slots[:, None]
        hidden = self.runner.forward(self.next_token, mask[:, None, None, :], self.position, self.cache)
        self.out.copy_(self.runner.logits(hidden[:, -1]).argmax(-1))
        self.next_token.copy_(self.out[:, None])
        self.slots.add_(self.active)
        self.position.add_(self.active[:, None])

    def _capture(self):
        """The step as one CUDA graph (before any row is admitted: every row is idle, so the
        warm-up steps change nothing that admission does not overwrite). Falls back to
        uncaptured steps, with a warning, where the model cannot be captured."""
        runner = self.runner
        runner.autocast_cache = False
        try:
            stream = torch.cuda.Stream(device=runner.device)
            stream.wait_stream(torch.cuda.current_stream(runner.device))
            with torch.cuda.stream(stream):
                for _ in range(WARMUP_STEPS):
                    self._step_tensors()
            torch.cuda.current_stream(runner.device).wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                self._step_tensors()
            return graph.replay
        except Exception as error:  # noqa: BLE001 -- any capture failure leaves the eager step
            log.warning("decode=static: CUDA graph capture failed (%s: %s); decoding with uncaptured "
                        "fixed-shape steps", type(error).__name__, error)
            return self._step_tensors
        finally:
            runner.autocast_cache = True

    # -- rows -----------------------------------------------------------------------------------

    def admit(self, b: int, prompt: Prompt) -> None:
        n = self.take_row(b, prompt)
        for layer, (keys, values) in zip(self.layers, prompt.kv):
            layer.keys[b, :, :n] = keys
            layer.values[b, :, :n] = values
        self.slots[b] = n
        self.position[b, 0] = len(prompt.ids) + prompt.feed
        self.next_token[b, 0] = prompt.forced[prompt.feed]
        self.active[b] = 1
        prompt.kv = None

    def step(self) -> list[tuple[Prompt, list[int]]]:
        """One decoding step of every row; returns the prompts that finished."""
        self.run_step()
        busy = sum(p is not None for p in self.prompts)
        self.runner.tokens["generated"] += busy
        tokens = self.out.tolist()
        finished = []
        for b, prompt in enumerate(self.prompts):
            if prompt is None:
                continue
            if (done := self.append(b, tokens[b], tokens[b] in self.stop, self.runner.stop_strings)) is not None:
                finished.append(done)
                self.active[b] = 0
        return finished
