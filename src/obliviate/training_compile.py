"""`train.torch_compile`: each decoder layer compiled apart ("regional compilation").

The decoder layers share their code, so `torch.compile` builds one layer's graph and every layer
reuses it: the first steps pay about one layer's compile instead of the whole model's (50 s of
warm-up instead of 232 s on the default model's shape on a CPU, docs/speed-training.md), and a
step dispatches a few fused kernels per layer instead of dozens of operators, which is what bounds
a small model's step on a GPU. The embeddings, final norm, head and the loss run uncompiled (a few
operators beside the layers'). The compiled forward is an attribute of each layer instance for the
time of training and is removed after it, so state dicts, checkpoints and the returned model are
the plain ones.

Why not `TrainingArguments.torch_compile`: it compiles the whole model (with transformers 5.23 on
torch 2.6, the floors, that fails inside the mask code), and accelerate's regional variant (1.7+,
which also compiles the embeddings, norm and head) moved the embeddings differently from the
uncompiled run there (about half the update in many rows, 2 SGD steps); the layers alone train as
uncompiled on both version sets (tests/test_torch_compile.py).
"""

from __future__ import annotations

import contextlib

import torch

from obliviate.errors import UserError
from obliviate.objectives.common import find_decoder_layers, unwrap

#: torch.compile's backend (tests use "eager": dynamo's capture without code generation)
BACKEND = "inductor"
#: Compiled variants dynamo keeps per function. Its default (8) is reached by the variants one run
#: needs: gradients on and off (the reference pass of a LoRA model is the same layers under
#: no_grad), trainable and frozen layers (RMU), each shape; past it the layers run uncompiled.
RECOMPILE_LIMIT = 64
_MISSING = object()


@contextlib.contextmanager
def compiled_decoder_layers(model, enabled: bool = True):
    """Inside: each decoder layer of ``model`` (under DDP / PEFT wrappers) runs a compiled forward;
    afterwards each layer has the forward it had (a hook's, e.g. accelerate's device map, is kept)."""
    if not enabled:
        yield
        return
    layers = find_decoder_layers(model)
    if layers is None:
        raise UserError(f"train.torch_compile: cannot find the decoder layers of {type(unwrap(model)).__name__}; "
                        "set train.torch_compile=false")
    own = [layer.__dict__.get("forward", _MISSING) for layer in layers]
    limit = "recompile_limit" if hasattr(torch._dynamo.config, "recompile_limit") else "cache_size_limit"  # torch < 2.7
    with torch._dynamo.config.patch({limit: max(RECOMPILE_LIMIT, getattr(torch._dynamo.config, limit))}):
        for layer in layers:
            layer.forward = torch.compile(layer.forward, backend=BACKEND)  # shadows the class's (or a hook's)
        try:
            yield
        finally:
            for layer, forward in zip(layers, own):
                if forward is _MISSING:
                    del layer.forward
                else:
                    layer.forward = forward
