"""Fingerprints of a model's weights and a tokenizer: what a cached result depends on (the
evaluation's result cache, a local generator's outputs, a run's manifest)."""

from __future__ import annotations

import hashlib
import json

import torch

from obliviate.prompts import template_pins


def update_with_weights(digest, model) -> None:
    """Feed every parameter and buffer of `model` (state dict in sorted key order: name, dtype,
    shape, bytes) into the hashlib object `digest`. ~0.4 s per 500 MB of weights on a CPU."""
    for name, tensor in sorted(model.state_dict().items()):
        tensor = tensor.detach()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        flat = tensor.contiguous().reshape(-1)
        if flat.numel() == 0:
            continue
        data = flat.cpu().view(torch.uint8) if flat.element_size() > 1 or flat.dtype != torch.bool else flat.cpu()
        digest.update(memoryview(data.numpy()))


def model_fingerprint(model) -> str:
    """sha256 over the model's class name and every parameter and buffer: changes whenever any
    weight changes."""
    digest = hashlib.sha256()
    digest.update(type(model).__name__.encode())
    update_with_weights(digest, model)
    return digest.hexdigest()


def tokenizer_fingerprint(tokenizer) -> str:
    """sha256 of what decides tokenisation and prompts: the tokenizer definition (vocab,
    merges, normaliser), special tokens, the chat template and what it is rendered with (the
    date and system prompt pinned for date-printing templates, `obliviate.prompts.template_pins`)."""
    digest = hashlib.sha256()
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        digest.update(backend.to_str().encode())
    else:
        digest.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
    extra = {
        "class": type(tokenizer).__name__,
        "template": tokenizer.chat_template,
        "template_pins": template_pins(tokenizer),  # the pinned date and system prompt (prompts.py)
        "eos": tokenizer.eos_token,
        "bos": tokenizer.bos_token,
        "pad": tokenizer.pad_token,
        "special": getattr(tokenizer, "all_special_tokens", []),
    }
    digest.update(json.dumps(extra, sort_keys=True, default=str).encode())
    return digest.hexdigest()
