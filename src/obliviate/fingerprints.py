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


#: config entries that do not change what the model computes (where it was loaded from, which
#: transformers wrote it, the class (hashed apart), the weights' dtype (the weights' hash holds it),
#: output switches)
VOLATILE_CONFIG = ("_name_or_path", "transformers_version", "architectures", "dtype", "torch_dtype", "use_cache",
                   "return_dict", "output_attentions", "output_hidden_states")


def config_text(config) -> str:
    """A model's or generation config as sorted JSON without VOLATILE_CONFIG ("" for None)."""
    if config is None or not hasattr(config, "to_dict"):
        return ""
    entries = {k: v for k, v in config.to_dict().items() if k not in VOLATILE_CONFIG}
    return json.dumps(_plain(entries), sort_keys=True)


def _plain(value):
    """`value` as JSON can hold it, the same for equal values: mapping keys as text (a config may
    key by tuple or mix int and str keys), sets sorted, other objects by their text."""
    if isinstance(value, dict):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    if isinstance(value, (set, frozenset)):
        return sorted(str(_plain(item)) for item in value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def model_fingerprint(model) -> str:
    """sha256 over the model's class name, its config and generation config (what the forward
    pass and stopping read besides the weights: rms_norm_eps, rope parameters, eos ids, ...) and
    every parameter and buffer: changes whenever any of them changes."""
    digest = hashlib.sha256()
    digest.update(type(model).__name__.encode())
    for config in (getattr(model, "config", None), getattr(model, "generation_config", None)):
        digest.update(config_text(config).encode() + b"\0")
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
