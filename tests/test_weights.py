"""Weight operations: ULMR averaging and SKU task vectors, exact at the end points."""

import copy

import torch

from obliviate.weights import apply_task_vector_, interpolate_, task_vector


def perturbed_copy(model, seed=1):
    other = copy.deepcopy(model)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(torch.randn(p.shape, generator=generator) * 0.1)
    return other


def states_equal(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return all(torch.equal(sa[k], sb[k]) for k in sa)


def test_alpha_zero_gives_base_and_one_gives_finetuned_exactly(tiny_model_and_tokenizer):
    base, _ = tiny_model_and_tokenizer
    finetuned = perturbed_copy(base)
    assert states_equal(interpolate_(copy.deepcopy(finetuned), base, 0.0), base)
    assert states_equal(interpolate_(copy.deepcopy(finetuned), base, 1.0), finetuned)


def test_half_is_the_elementwise_mean_and_tied_weights_stay_tied(tiny_model_and_tokenizer):
    base, _ = tiny_model_and_tokenizer
    base.config.tie_word_embeddings = True
    base.tie_weights()
    finetuned = perturbed_copy(base)
    averaged = interpolate_(copy.deepcopy(finetuned), base, 0.5)
    for name, tensor in averaged.state_dict().items():
        if tensor.is_floating_point():
            expected = 0.5 * finetuned.state_dict()[name] + 0.5 * base.state_dict()[name]
            torch.testing.assert_close(tensor, expected)
    assert averaged.lm_head.weight.data_ptr() == averaged.model.embed_tokens.weight.data_ptr()


def test_negated_task_vector_is_two_base_minus_finetuned(tiny_model_and_tokenizer):
    base, _ = tiny_model_and_tokenizer
    harmful = perturbed_copy(base, seed=3)
    negated = apply_task_vector_(copy.deepcopy(base), task_vector(harmful, base), scale=-1.0)
    for name, tensor in negated.state_dict().items():
        if tensor.is_floating_point():
            torch.testing.assert_close(tensor, 2 * base.state_dict()[name] - harmful.state_dict()[name])


def test_weight_operations_work_across_devices(tiny_model_and_tokenizer):
    """The fine-tuned model on one device, the base on another (meta stands in for a GPU here):
    averaging and task vectors bring each base tensor to the target's device instead of failing."""
    base, _ = tiny_model_and_tokenizer
    on_meta = copy.deepcopy(base).to("meta")
    averaged = interpolate_(on_meta, base, 0.5)
    assert {p.device.type for p in averaged.parameters()} == {"meta"}
    vector = task_vector(copy.deepcopy(base).to("meta"), base)
    assert {t.device.type for t in vector.values()} == {"meta"}
    negated = apply_task_vector_(copy.deepcopy(base).to("meta"), task_vector(perturbed_copy(base), base), scale=-1.0)
    assert {p.device.type for p in negated.parameters()} == {"meta"}


def test_bf16_weights_are_mixed_in_fp32_and_task_vectors_are_fp32(tiny_model_and_tokenizer):
    """alpha != 0.5 (at 0.5 the two weights can trade places unseen); bf16 tensors are mixed in
    fp32 and rounded once, and tau is fp32 (a bf16 difference would lose the small updates)."""
    base, _ = tiny_model_and_tokenizer
    base = base.to(torch.bfloat16)
    finetuned = perturbed_copy(base)
    averaged = interpolate_(copy.deepcopy(finetuned), base, 0.3)
    for name, tensor in averaged.state_dict().items():
        if tensor.is_floating_point():
            expected = (0.3 * finetuned.state_dict()[name].float() + 0.7 * base.state_dict()[name].float())
            assert torch.equal(tensor, expected.to(torch.bfloat16)), name
    vector = task_vector(finetuned, base)
    assert {t.dtype for t in vector.values()} == {torch.float32}
