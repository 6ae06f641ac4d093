"""train.packing and train.shared_forward give every objective's loss and gradients of one step
to float rounding, on generated items: very different lengths, items cut at max_length, a
single item, one-token answers, empty and unicode text, with and without a chat template."""

from __future__ import annotations

import contextlib
import copy

import pytest
import torch

from obliviate.config import ObjectiveConfig
from obliviate.data.collate import SlotCollator, SlotDataset
from obliviate.data.request import QAItem
from obliviate.errors import UserError
from obliviate.methods.sku import SkuConfig
from obliviate.methods.snap import SnapConfig
from obliviate.objectives import batch_slots, get_objective, shared_slots
from obliviate.objectives.common import PACKING, SHARED, LossContext, shared_answer_logits

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, assume, given, settings, strategies as st  # noqa: E402

OPTIONS = {"sku": SkuConfig(), "snap": SnapConfig()}
TEXT = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=30) | st.sampled_from(
    ["", " ", "a", "é", "日本語", "\n", "Here.", "A spider has eight legs. " * 5])
ITEMS = st.lists(st.builds(QAItem, TEXT, TEXT), min_size=1, max_size=4)


def one_step(model, tokenizer, name, forget, retain, *, packing, shared, max_length):
    """(loss, gradients) of one step of objective `name`, as UnlearnTrainer.compute_loss runs it."""
    spec, ocfg = get_objective(name), ObjectiveConfig()
    slots, options = batch_slots(name, ocfg), OPTIONS.get(spec.section)
    data = SlotDataset(tokenizer, slots, forget=forget, retain=retain if "retain" in slots else [],
                       max_length=max_length, refusals=["I don't know.", "No idea, sorry."])
    batch = SlotCollator(tokenizer.pad_token_id)([data[i] for i in range(len(data))])
    model, ref = copy.deepcopy(model).train(), copy.deepcopy(model).eval().requires_grad_(False)
    if spec.prepare is not None:
        spec.prepare(model, ocfg, options)
    reference = contextlib.contextmanager(lambda: (yield ref))
    ctx = LossContext(config=ocfg, reference=lambda: _no_grad(reference), options=options)
    tokens = PACKING.set(packing), SHARED.set(None)
    try:
        if shared and shared_slots(name, ocfg):
            SHARED.set((model, shared_answer_logits(model, [batch[s] for s in shared_slots(name, ocfg)])))
        loss = spec.loss(model, batch, ctx)
        assert not (SHARED.get() and SHARED.get()[1])
    finally:
        PACKING.reset(tokens[0])
        SHARED.reset(tokens[1])
    loss.backward()
    return loss.detach(), {n: p.grad for n, p in model.named_parameters() if p.grad is not None}


@contextlib.contextmanager
def _no_grad(reference):
    with torch.no_grad(), reference() as ref:
        yield ref


@settings(max_examples=30, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(name=st.sampled_from(["ga", "graddiff", "kl", "npo", "simnpo", "idk_dpo", "rt", "rmu", "sku", "snap"]),
       forget=ITEMS, retain=ITEMS, max_length=st.sampled_from([12, 24, 64]), chat=st.booleans(),
       mode=st.sampled_from([(True, False), (False, True), (True, True)]))
def test_packing_and_shared_forward_keep_each_objectives_step(tiny_model_and_tokenizer, name, forget, retain,
                                                             max_length, chat, mode):
    model, tokenizer = tiny_model_and_tokenizer
    tokenizer = copy.deepcopy(tokenizer)
    if not chat:
        tokenizer.chat_template = None
    try:
        loss, grads = one_step(model, tokenizer, name, forget, retain, packing=False, shared=False,
                               max_length=max_length)
    except UserError:  # a question that fills max_length
        assume(False)
    other_loss, other_grads = one_step(model, tokenizer, name, forget, retain, packing=mode[0], shared=mode[1],
                                       max_length=max_length)
    torch.testing.assert_close(other_loss, loss, rtol=1e-5, atol=1e-5)
    assert other_grads.keys() == grads.keys()
    for key, grad in grads.items():
        torch.testing.assert_close(other_grads[key], grad, rtol=1e-3, atol=1e-3 * float(grad.abs().max()) + 1e-6)
