"""train.packing: answer-token losses run a padded batch as one row of its real tokens
(positions restart per item). The same logits, targets and rows as the padded forward, no
padding computed; batches it cannot pack exactly run padded; training follows the same path."""

from __future__ import annotations

import copy
import json
from contextlib import nullcontext

import pytest
import torch
from test_training import FORGET, RETAIN, config, state

from obliviate.errors import UserError
from obliviate.objectives.common import PACKABLE_MODEL_TYPES, PACKING, answer_logits, check_packing
from obliviate.prompts import encode_qa, pad_batch
from obliviate.training import train

PAIRS = [("Who wrote it?", "A quiet author from the north wrote it in one winter."), ("Where?", "Here."),
         ("When was the bridge over the wide river finished?", "In spring.")]


def _batch(tokenizer, side: str = "right") -> dict:
    return pad_batch([encode_qa(tokenizer, q, a) for q, a in PAIRS], tokenizer.pad_token_id, side=side)


def _run(model, enc, packing: bool, all_tokens: bool = False):
    """answer_logits with PACKING on or off, and the token counts of every forward's input."""
    widths = []
    hook = model.register_forward_pre_hook(lambda m, a, kw: widths.append(kw["input_ids"].shape), with_kwargs=True)
    token = PACKING.set(packing)
    try:
        with torch.no_grad():
            return answer_logits(model, enc, all_tokens=all_tokens), widths
    finally:
        PACKING.reset(token)
        hook.remove()


@pytest.mark.parametrize("all_tokens", [False, True])
def test_packed_logits_equal_the_padded_ones(tiny_model_and_tokenizer, all_tokens):
    model, tokenizer = tiny_model_and_tokenizer
    model.eval()
    enc = _batch(tokenizer)
    assert (enc["attention_mask"] == 0).any(), "the batch must hold padding to mean anything"
    (padded, target, rows), padded_shapes = _run(model, enc, packing=False, all_tokens=all_tokens)
    (packed, packed_target, packed_rows), packed_shapes = _run(model, enc, packing=True, all_tokens=all_tokens)
    torch.testing.assert_close(packed, padded, rtol=1e-5, atol=1e-5)
    assert torch.equal(packed_target, target) and torch.equal(packed_rows, rows)
    assert padded_shapes == [enc["input_ids"].shape]
    assert packed_shapes == [torch.Size([1, int(enc["attention_mask"].sum())])]  # no pad token computed


def test_a_left_padded_batch_runs_padded(tiny_model_and_tokenizer):
    """Left padding puts the padded batch's positions after the pads: packing (positions from 0)
    would compute other logits, so such a batch is not packed."""
    model, tokenizer = tiny_model_and_tokenizer
    model.eval()
    enc = _batch(tokenizer, side="left")
    (padded, *_), _ = _run(model, enc, packing=False)
    (packed, *_), shapes = _run(model, enc, packing=True)
    assert shapes == [enc["input_ids"].shape] and torch.equal(packed, padded)


@pytest.mark.parametrize("method", ["npo", "graddiff"])
def test_training_with_packing_follows_the_padded_run(tmp_path, tiny_model_and_tokenizer, method):
    """Two steps of NPO (its reference pass packs too) and GradDiff (forget and retain): the
    losses and the weights agree with the padded run to float rounding, and differ from the start."""
    model, tokenizer = tiny_model_and_tokenizer
    before = state(model)
    runs = {}
    for packing in (False, True):
        cfg = config(max_steps=2, learning_rate=1e-3, batch_size=3, packing=packing, precision="fp32")
        cfg.method = method
        start, rows = copy.deepcopy(model), []  # rows of every forward's input (the reference's too)
        start.register_forward_pre_hook(lambda m, a, kw: rows.append(kw["input_ids"].shape[0]), with_kwargs=True)
        with pytest.warns(UserWarning, match="train.packing with attention 'sdpa'") if packing else nullcontext():
            trained = train(start, tokenizer, forget=FORGET, retain=RETAIN, config=cfg,
                            output_dir=tmp_path / str(packing))
        log = [json.loads(line) for line in (tmp_path / str(packing) / "train_log.jsonl").read_text().splitlines()]
        runs[packing] = (state(trained), [row["loss"] for row in log])
        assert rows and set(rows) == ({1} if packing else {3})  # packed: one row per forward
    (padded, padded_loss), (packed, packed_loss) = runs[False], runs[True]
    assert packed_loss == pytest.approx(padded_loss, rel=1e-4, abs=1e-5)
    for key in before:
        torch.testing.assert_close(packed[key], padded[key], rtol=1e-4, atol=1e-5)
    assert any(not torch.equal(packed[key], before[key]) for key in before)


def _tiny(kind: str):
    """A tiny random causal LM of each packable type (and of two that are not)."""
    import transformers as T

    small = dict(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)
    gqa = dict(small, num_key_value_heads=2)
    build = {
        "llama": lambda: T.LlamaForCausalLM(T.LlamaConfig(**gqa)),
        "mistral": lambda: T.MistralForCausalLM(T.MistralConfig(**gqa)),
        "qwen2": lambda: T.Qwen2ForCausalLM(T.Qwen2Config(**gqa)),
        "qwen3": lambda: T.Qwen3ForCausalLM(T.Qwen3Config(**gqa, head_dim=8)),
        "gemma": lambda: T.GemmaForCausalLM(T.GemmaConfig(**gqa, head_dim=8)),
        "gemma2": lambda: T.Gemma2ForCausalLM(T.Gemma2Config(**gqa, head_dim=8)),
        "gemma3_text": lambda: T.Gemma3ForCausalLM(T.Gemma3TextConfig(**gqa, head_dim=8, sliding_window=4)),
        "phi": lambda: T.PhiForCausalLM(T.PhiConfig(**small)),
        "phi3": lambda: T.Phi3ForCausalLM(T.Phi3Config(**gqa, pad_token_id=0)),
        "gpt2": lambda: T.GPT2LMHeadModel(T.GPT2Config(vocab_size=64, n_embd=32, n_layer=2, n_head=4)),
        "gpt_neox": lambda: T.GPTNeoXForCausalLM(T.GPTNeoXConfig(**small)),
        "olmo2": lambda: T.Olmo2ForCausalLM(T.Olmo2Config(**gqa)),
        "smollm3": lambda: T.SmolLM3ForCausalLM(T.SmolLM3Config(**gqa, pad_token_id=0)),
        "opt": lambda: T.OPTForCausalLM(T.OPTConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2,
                                                     num_attention_heads=4, ffn_dim=64, word_embed_proj_dim=32,
                                                     pad_token_id=0)),
        "mamba": lambda: T.MambaForCausalLM(T.MambaConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2,
                                                         state_size=4)),
    }
    torch.manual_seed(0)
    return build[kind]().eval()


def _random_batch() -> dict:
    ids = torch.randint(3, 64, (3, 9))
    mask = torch.tensor([[1] * 9, [1] * 5 + [0] * 4, [1] * 7 + [0] * 2])
    labels = ids.masked_fill(mask == 0, -100)
    labels[:, :3] = -100  # a 3-token prompt
    return {"input_ids": ids.masked_fill(mask == 0, 0), "attention_mask": mask, "labels": labels}


@pytest.mark.parametrize("kind", sorted(PACKABLE_MODEL_TYPES))
def test_every_packable_model_type_keeps_its_items_apart(kind):
    model, enc = _tiny(kind), _random_batch()
    assert model.config.model_type == kind
    check_packing(model)
    (padded, *_), _ = _run(model, enc, packing=False)
    (packed, *_), shapes = _run(model, enc, packing=True)
    assert shapes == [torch.Size([1, 21])]
    torch.testing.assert_close(packed, padded, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["opt", "mamba"])
def test_a_model_whose_packed_items_would_mix_is_refused(kind):
    """OPT takes its positions from attention_mask, Mamba carries its state from item to item: packed,
    their logits differ from the padded ones, so train.packing refuses them."""
    model, enc = _tiny(kind), _random_batch()
    (padded, *_), _ = _run(model, enc, packing=False)
    (packed, *_), _ = _run(model, enc, packing=True)
    assert (packed - padded).abs().max() > 1e-3  # why they are refused
    with pytest.raises(UserError, match=f"train.packing: model type '{kind}' is not one whose packed items"):
        check_packing(model)
