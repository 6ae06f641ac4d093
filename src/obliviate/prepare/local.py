"""Generate with a local ``transformers`` causal LM: the model being unlearned, or another one.

This is the paper's default generator (ULMR prepares its data with the model it unlearns). It
runs batched generation with the tokenizer's chat template on whatever device the model sits
on, so a model placed on a GPU generates there.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from obliviate.errors import UserError
from obliviate.fingerprints import model_fingerprint, tokenizer_fingerprint
from obliviate.hardware import autocast_context, model_device
from obliviate.prepare.backend import Messages, chat_messages, check_sampling
from obliviate.prompts import render_chat, template_pins

__all__ = ["LocalHFBackend"]


class LocalHFBackend:
    """Generate with a local ``transformers`` causal LM and its tokenizer's chat template.

    Prompts are rendered with ``tokenizer.apply_chat_template(messages,
    add_generation_prompt=True, tokenize=False)`` and tokenized without adding special tokens
    again (the template already holds them). Batches are formed after sorting by prompt length
    and left-padded by hand with the pad token (the eos token when the tokenizer has none), so
    the tokenizer is never modified. ``temperature == 0`` decodes greedily; otherwise the
    backend samples with ``torch.manual_seed(seed)`` inside a forked RNG, so the caller's global
    RNG state is untouched. Sampled outputs depend on the seed and on how prompts fall into
    batches; greedy outputs depend on neither (up to floating point).

    The model is put in eval mode while generating and restored afterwards. ``model_id``
    defaults to ``model.config._name_or_path``; pass it when the model was built in memory.
    """

    name = "local-hf"

    def __init__(self, model: Any, tokenizer: Any, batch_size: int = 16, model_id: str | None = None):
        if batch_size < 1:
            raise UserError(f"generation batch_size must be >= 1, got {batch_size}")
        if getattr(tokenizer, "chat_template", None) is None:
            raise UserError(
                "the tokenizer has no chat template: use an instruct/chat model, or set "
                "tokenizer.chat_template before generating"
            )
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        config = getattr(model, "config", None)
        self.model_id = model_id or str(
            getattr(config, "_name_or_path", "") or getattr(config, "model_type", "") or "local"
        )

    def cache_key_fields(self) -> dict[str, Any]:
        """What the outputs depend on: the weights and tokenizer themselves (not only the name: a
        checkpoint retrained at the same path must not be served the old outputs). Not the device
        or precision: a run resumed on another device (allowed) is served the outputs it trained on.
        Hashes the weights at each call (~0.4 s per 500 MB on a CPU)."""
        return {"backend": self.name, "model_id": self.model_id, "weights": model_fingerprint(self.model),
                "tokenizer": tokenizer_fingerprint(self.tokenizer)}

    # -- helpers --------------------------------------------------------------------------

    def _pad_id(self) -> int:
        tok = self.tokenizer
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        if pad is None:
            raise UserError("the tokenizer has neither a pad token nor an eos token: set tokenizer.pad_token")
        return int(pad)

    def _eos_ids(self) -> list[int]:
        ids: list[int] = []
        gen_eos = getattr(getattr(self.model, "generation_config", None), "eos_token_id", None)
        for value in (gen_eos, self.tokenizer.eos_token_id):
            if value is None:
                continue
            for v in value if isinstance(value, (list, tuple)) else [value]:
                if int(v) not in ids:
                    ids.append(int(v))
        return ids

    def _encode(self, prompts: Sequence[Messages]) -> list[list[int]]:
        encoded = []
        for messages in prompts:
            text = render_chat(  # a date-printing template renders the pinned date
                self.tokenizer, chat_messages(messages), add_generation_prompt=True, **template_pins(self.tokenizer)[0]
            )
            ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
            encoded.append(list(ids))
        return encoded

    def _generation_config(self, max_new_tokens: int, temperature: float, top_p: float) -> Any:
        import copy

        from transformers import GenerationConfig

        base = getattr(self.model, "generation_config", None)
        config = copy.deepcopy(base) if base is not None else GenerationConfig()
        config.max_new_tokens = max_new_tokens
        config.max_length = None
        config.min_new_tokens = None
        config.num_return_sequences = 1
        config.num_beams = 1
        config.pad_token_id = self._pad_id()
        eos = self._eos_ids()
        config.eos_token_id = eos if eos else None
        if temperature == 0:
            config.do_sample = False
            config.temperature = None
            config.top_p = None
            config.top_k = None
            config.min_p = None
        else:
            config.do_sample = True
            config.temperature = float(temperature)
            config.top_p = float(top_p)
            config.top_k = None
        return config

    # -- generation -----------------------------------------------------------------------

    def generate(
        self,
        prompts: Sequence[Messages],
        *,
        max_new_tokens: int = 256,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int = 0,
    ) -> list[str]:
        check_sampling(max_new_tokens, temperature, top_p, seed)
        if not prompts:
            return []
        encoded = self._encode(prompts)
        order = sorted(range(len(encoded)), key=lambda i: (-len(encoded[i]), i))
        pad_id = self._pad_id()
        gen_config = self._generation_config(max_new_tokens, temperature, top_p)
        device = model_device(self.model)  # generate where the model is: CPU, a GPU, MPS
        results: list[str | None] = [None] * len(encoded)

        was_training = bool(getattr(self.model, "training", False))
        fork_devices = [device] if device.type == "cuda" else []
        self.model.eval()
        try:
            with torch.random.fork_rng(devices=fork_devices), torch.inference_mode():
                if temperature > 0:
                    torch.manual_seed(seed)
                for start in range(0, len(order), self.batch_size):
                    batch = order[start : start + self.batch_size]
                    width = max(len(encoded[i]) for i in batch)
                    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
                    attention = torch.zeros((len(batch), width), dtype=torch.long)
                    for row, i in enumerate(batch):
                        ids = encoded[i]
                        if ids:
                            input_ids[row, width - len(ids) :] = torch.tensor(ids, dtype=torch.long)
                            attention[row, width - len(ids) :] = 1
                    with autocast_context(device):
                        output = self.model.generate(
                            input_ids=input_ids.to(device),
                            attention_mask=attention.to(device),
                            generation_config=gen_config,
                        )
                    new_tokens = output[:, width:].tolist()
                    for row, i in enumerate(batch):
                        results[i] = self.tokenizer.decode(new_tokens[row], skip_special_tokens=True).strip()
        finally:
            if was_training:
                self.model.train()
        return [r if r is not None else "" for r in results]
