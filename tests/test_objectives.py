"""Every objective moves its quantity the right way; closed forms hold at hand-computed values."""

from __future__ import annotations

import contextlib
import copy
import math

import pytest
import torch
import torch.nn.functional as F

from obliviate.config import ObjectiveConfig, load_config
from obliviate.data.collate import LengthWindowSampler, SlotCollator, SlotDataset
from obliviate.data.refusals import REFUSALS, load_refusals
from obliviate.data.request import QAItem
from obliviate.errors import UserError
from obliviate.methods.registry import methods
from obliviate.objectives import OBJECTIVES, LossContext, batch_slots, needs_reference
from obliviate.objectives import common, rmu

FORGET = [QAItem(f"Who wrote the novel number {i}?", f"The author of novel {i} was born in a small town near the mountains.")
          for i in range(6)]
RETAIN = [QAItem(f"How many legs does animal {i} have?", f"A spider has eight legs and the river begins in the hills {i}.")
          for i in range(9)]


def make_batch(tokenizer, *, refusals: bool = False, size: int = 4) -> dict:
    slots = ("forget", "retain", "forget_refusal") if refusals else ("forget", "retain")
    dataset = SlotDataset(tokenizer, slots, forget=FORGET, retain=RETAIN, max_length=64, seed=0,
                          refusals=REFUSALS if refusals else None)
    return SlotCollator(tokenizer.pad_token_id)([dataset[i] for i in range(size)])


def make_ctx(reference_model=None, **overrides) -> LossContext:
    @contextlib.contextmanager
    def reference():
        with torch.no_grad():
            yield reference_model

    return LossContext(config=ObjectiveConfig(**overrides), reference=reference, seed=0)


def frozen(model):
    copied = copy.deepcopy(model).eval()
    copied.requires_grad_(False)
    return copied


def hand_logprobs(model, enc) -> torch.Tensor:
    """log pi(y | x) per sequence from the full logits: the obvious, slow way."""
    logits = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits[:, :-1]
    labels = enc["labels"][:, 1:]
    logp = torch.log_softmax(logits.float(), -1).gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return (logp * (labels != -100)).sum(-1), (labels != -100).sum(-1)


def train_steps(model, name: str, batch: dict, *, steps: int = 5, lr: float = 1e-2, reference=None, **cfg):
    """A few Adam steps on one batch; returns the logged terms before and after."""
    model.train()
    objective = OBJECTIVES[name]
    presets = {k.split(".", 1)[1]: v for k, v in methods()[name].presets.items() if k not in
               {f"objective.{key}" for key in cfg}}  # the method's presets under the test's own values
    config = ObjectiveConfig(**{**presets, **cfg})
    if objective.prepare is not None:
        objective.prepare(model, config)
    ref = reference or (frozen(model) if needs_reference(name, config) else None)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    history = []
    for _ in range(steps + 1):
        ctx = make_ctx(ref)
        ctx.config = config
        loss = objective.loss(model, batch, ctx)
        history.append({k: float(v) for k, v in {"loss": loss.detach(), **ctx.terms}.items()})
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return history[0], history[-1]


def test_registry_covers_every_baseline_method():
    assert set(methods()) - {"ulmr"} == set(OBJECTIVES)
    simnpo = load_config(None, ["method=simnpo"]).objective
    assert (simnpo.beta, simnpo.delta, simnpo.forget_weight, simnpo.retain_weight) == (4.5, 0.0, 0.125, 1.0)
    assert load_config(None, ["method=simnpo", "objective.beta=3.0"]).objective.beta == 3.0  # user value wins
    # also when the user's value equals the generic default (the preset must not override it)
    assert load_config(None, ["method=simnpo", "objective.beta=0.1"]).objective.beta == 0.1
    assert load_config(None, ["method=npo"]).objective.beta == 0.1
    assert needs_reference("graddiff", ObjectiveConfig(retain_loss="kl"))
    assert not needs_reference("graddiff", ObjectiveConfig())


def test_answer_logits_with_logit_mask_match_full_logits(tiny_model_and_tokenizer):
    model, tokenizer = tiny_model_and_tokenizer
    enc = make_batch(tokenizer)["forget"]
    logp, rows = common.answer_logprobs(model, enc)
    expected, lengths = hand_logprobs(model, enc)
    assert torch.allclose(common.sequence_logprob(logp, rows, 4), expected, atol=1e-5)
    assert torch.equal(common.answer_lengths(rows, 4), lengths)


def test_answer_nll_is_hfs_mean_token_loss_and_kl_the_mean_over_answer_tokens(tiny_model_and_tokenizer):
    from conftest import build_tiny_model

    model, tokenizer = tiny_model_and_tokenizer
    enc = make_batch(tokenizer)["forget"]
    with torch.no_grad():
        hf = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], labels=enc["labels"]).loss
        assert torch.allclose(common.answer_nll(model, enc), hf, rtol=1e-5)
        reference = frozen(build_tiny_model(tokenizer, seed=1))
        kl = common.kl_to_reference(model, enc, make_ctx(reference))
        inputs = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
        log_q = model(**inputs).logits[:, :-1].log_softmax(-1)
        log_p = reference(**inputs).logits[:, :-1].log_softmax(-1)
        per_position = (log_p.exp() * (log_p - log_q)).sum(-1)  # KL(ref || model) at each position
        answer = enc["labels"][:, 1:] != -100
        assert torch.allclose(kl, per_position[answer].mean(), rtol=1e-4)
    # |y| of a row with no answer token (here the last) is 1, so a per-sequence mean stays finite
    assert common.answer_lengths(torch.tensor([0, 0, 1]), 3).tolist() == [2, 1, 1]
    logp, _ = common.answer_logprobs(model.to(torch.bfloat16), enc)
    assert logp.dtype == torch.float32  # a bf16 model's log-probs are computed in fp32


def test_ga_raises_forget_nll(tiny_model_and_tokenizer):
    model, tokenizer = tiny_model_and_tokenizer
    before, after = train_steps(model, "ga", make_batch(tokenizer))
    assert after["forget_nll"] > before["forget_nll"] + 1.0


def test_graddiff_raises_forget_nll_and_keeps_retain(tiny_model_and_tokenizer):
    model, tokenizer = tiny_model_and_tokenizer
    before, after = train_steps(model, "graddiff", make_batch(tokenizer), lr=3e-3)
    assert after["forget_nll"] > before["forget_nll"] + 0.5
    assert after["retain_nll"] < before["retain_nll"] + 0.1


def test_kl_term_is_zero_at_start_and_forget_nll_rises(tiny_model_and_tokenizer):
    model, tokenizer = tiny_model_and_tokenizer
    batch = make_batch(tokenizer)
    ctx = make_ctx(frozen(model))
    assert abs(float(common.kl_to_reference(model, batch["retain"], ctx).detach())) < 1e-6
    before, after = train_steps(model, "kl", batch, lr=3e-3)
    assert before["retain_kl"] < 1e-6
    assert after["forget_nll"] > before["forget_nll"] + 0.5
    assert after["retain_kl"] > 0


def test_npo_equals_its_formula(tiny_model_and_tokenizer):
    from conftest import build_tiny_model

    model, tokenizer = tiny_model_and_tokenizer
    reference = frozen(build_tiny_model(tokenizer, seed=1))  # a different model: the ratio is not 0
    batch = make_batch(tokenizer)
    beta = 0.1
    ctx = make_ctx(reference, beta=beta, retain_loss="none")
    loss = OBJECTIVES["npo"].loss(model, batch, ctx)
    with torch.no_grad():
        ratio = hand_logprobs(model, batch["forget"])[0] - hand_logprobs(reference, batch["forget"])[0]
    expected = -(2 / beta) * F.logsigmoid(-beta * ratio).mean()
    assert torch.allclose(loss, expected, atol=1e-4)
    at_start = OBJECTIVES["npo"].loss(model, batch, make_ctx(frozen(model), beta=beta, retain_loss="none"))
    assert math.isclose(float(at_start.detach()), 2 / beta * math.log(2), rel_tol=1e-5)


def test_simnpo_equals_its_formula(tiny_model_and_tokenizer):
    model, tokenizer = tiny_model_and_tokenizer
    batch = make_batch(tokenizer)
    beta, delta = 4.5, 0.3
    loss = OBJECTIVES["simnpo"].loss(model, batch, make_ctx(beta=beta, delta=delta, retain_loss="none"))
    with torch.no_grad():
        logp, lengths = hand_logprobs(model, batch["forget"])
    expected = -(2 / beta) * F.logsigmoid(-(beta / lengths) * logp - delta).mean()
    assert torch.allclose(loss, expected, atol=1e-5)


def test_simnpo_equals_its_formula_where_the_sigmoid_is_not_saturated(tiny_model_and_tokenizer):
    """At beta = 4.5 the random model's NLL (~6 per token) puts log sigma at ~-1e-12, so the test
    above cannot tell 2/beta from 1/beta, the mean from the sum or -delta from +delta: here the
    argument of log sigma is near 0."""
    model, tokenizer = tiny_model_and_tokenizer
    batch = make_batch(tokenizer)
    with torch.no_grad():
        logp, lengths = hand_logprobs(model, batch["forget"])
    beta = 0.3
    delta = float(-(beta / lengths * logp).mean())  # centres the argument of log sigma on 0
    ctx = make_ctx(beta=beta, delta=delta, retain_loss="none")
    loss = OBJECTIVES["simnpo"].loss(model, batch, ctx)
    expected = -(2 / beta) * F.logsigmoid(-(beta / lengths) * logp - delta).mean()
    assert 0.5 < float(expected) < 10  # not saturated
    assert torch.allclose(loss.detach(), expected, rtol=1e-5)
    assert torch.allclose(ctx.terms["simnpo"], expected, rtol=1e-5)


@pytest.mark.parametrize("retain_loss", ["nll", "kl"])
@pytest.mark.parametrize("name", ["ga", "graddiff", "kl", "npo", "simnpo", "idk_dpo", "rt", "finetune"])
def test_loss_is_the_weighted_sum_of_its_logged_terms(tiny_model_and_tokenizer, name, retain_loss):
    """Each objective's sign and weights, with a reference that differs from the model (so the KL
    terms and log-ratios are not 0) and weights other than 1 (so gamma and alpha cannot trade places)."""
    from conftest import build_tiny_model

    model, tokenizer = tiny_model_and_tokenizer
    batch = make_batch(tokenizer, refusals=True)
    reference = frozen(build_tiny_model(tokenizer, seed=1))
    ctx = make_ctx(reference, forget_weight=0.7, retain_weight=1.3, retain_loss=retain_loss, beta=0.1)
    loss = OBJECTIVES[name].loss(model, batch, ctx)
    t = ctx.terms
    retain = 1.3 * t[f"retain_{retain_loss}"] if OBJECTIVES[name].retain == "term" else 0.0
    expected = {"ga": -0.7 * t.get("forget_nll", 0.0), "graddiff": -0.7 * t.get("forget_nll", 0.0) + retain,
                "kl": -0.7 * t.get("forget_nll", 0.0) + 1.3 * t.get("retain_kl", 0.0),
                "npo": 0.7 * t.get("npo", 0.0) + retain, "simnpo": 0.7 * t.get("simnpo", 0.0) + retain,
                "idk_dpo": 0.7 * t.get("dpo", 0.0) + retain, "rt": 0.7 * t.get("refusal_nll", 0.0) + retain,
                "finetune": t.get("train_nll", 0.0)}[name]
    assert torch.allclose(loss.detach(), torch.as_tensor(expected), rtol=1e-5)
    if OBJECTIVES[name].retain == "term":
        assert float(t[f"retain_{retain_loss}"]) > 0.01  # the retain term is really there
    if name == "kl":
        assert float(t["retain_kl"]) > 0.01


def test_simnpo_lowers_forget_likelihood(tiny_model_and_tokenizer):
    model, tokenizer = tiny_model_and_tokenizer
    # beta small enough that the random model's NLL (~6) does not saturate the sigmoid
    before, after = train_steps(model, "simnpo", make_batch(tokenizer), beta=0.5, retain_loss="none")
    assert after["forget_nll"] > before["forget_nll"] + 0.5
    assert after["simnpo"] < before["simnpo"]


def test_idk_dpo_at_start_is_two_over_beta_log_two_and_prefers_refusals(tiny_model_and_tokenizer):
    model, tokenizer = tiny_model_and_tokenizer
    batch = make_batch(tokenizer, refusals=True)
    beta = 0.1
    ctx = make_ctx(frozen(model), beta=beta, retain_loss="none")
    loss = OBJECTIVES["idk_dpo"].loss(model, batch, ctx)
    assert math.isclose(float(loss.detach()), -(2 / beta) * math.log(1 / 2), rel_tol=1e-5)  # -(2/b) log sigma(0)
    before, after = train_steps(model, "idk_dpo", batch, lr=3e-3, retain_loss="none")
    assert after["refusal_nll"] < before["refusal_nll"]
    assert after["forget_nll"] > before["forget_nll"]
    assert after["dpo"] < before["dpo"]


def test_rt_lowers_refusal_nll(tiny_model_and_tokenizer):
    model, tokenizer = tiny_model_and_tokenizer
    before, after = train_steps(model, "rt", make_batch(tokenizer, refusals=True), lr=3e-3)
    assert after["refusal_nll"] < before["refusal_nll"] - 0.5


def test_finetune_lowers_nll(tiny_model_and_tokenizer):
    model, tokenizer = tiny_model_and_tokenizer
    before, after = train_steps(model, "finetune", make_batch(tokenizer), lr=3e-3)
    assert after["train_nll"] < before["train_nll"] - 0.5


def test_rmu_steers_forget_activations_and_trains_only_chosen_mlps(tiny_model_and_tokenizer):
    model, tokenizer = tiny_model_and_tokenizer
    start = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = {"rmu_layer": 1, "rmu_train_layers": [1], "rmu_steering_coeff": 2.0, "rmu_alpha": 10.0}
    before, after = train_steps(model, "rmu", make_batch(tokenizer), steps=20, lr=2e-2, **cfg)
    assert after["forget_mse"] < 0.5 * before["forget_mse"]
    assert before["retain_mse"] < 1e-10
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, start[k])}
    assert changed == {"model.layers.1.mlp.down_proj.weight"}  # WMDP trains down_proj only
    assert rmu.chosen_layers(model, ObjectiveConfig())[0] == 0  # default: 40% depth of 2 layers
    with pytest.raises(UserError, match="rmu_layer"):
        rmu.chosen_layers(model, ObjectiveConfig(rmu_layer=5))


def test_refusals_files(tmp_path):
    assert len(REFUSALS) >= 30 and load_refusals() == REFUSALS
    (tmp_path / "r.txt").write_text("No idea.\n\nNot sure.\n")
    (tmp_path / "r.jsonl").write_text('"I can\'t say."\n{"text": "Unknown to me."}\nplain text line\n')
    assert load_refusals(tmp_path / "r.txt") == ["No idea.", "Not sure."]
    assert load_refusals(tmp_path / "r.jsonl") == ["I can't say.", "Unknown to me.", "plain text line"]
    with pytest.raises(UserError, match="no such refusals file"):
        load_refusals(tmp_path / "missing.txt")


def test_tofu_refusals_load():
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "shared" / "data" / "tofu" / "idontknow.jsonl"
    if not path.is_file():
        pytest.skip("shared TOFU data not present")
    assert len(load_refusals(path)) == 100


def test_retain_pairs_walk_the_retain_set_by_epoch(tiny_tokenizer):
    dataset = SlotDataset(tiny_tokenizer, ("forget", "retain"), forget=FORGET, retain=RETAIN, max_length=64, seed=3)
    epoch0 = [dataset.retain_index(i) for i in range(len(FORGET))]
    dataset.set_epoch(1)
    epoch1 = [dataset.retain_index(i) for i in range(len(FORGET))]
    assert len(set(epoch0 + epoch1)) == len(RETAIN)  # 12 pairs cover all 9 retain items
    again = SlotDataset(tiny_tokenizer, ("forget", "retain"), forget=FORGET, retain=RETAIN, max_length=64, seed=3)
    assert [again.retain_index(i) for i in range(len(FORGET))] == epoch0
    batch = SlotCollator(tiny_tokenizer.pad_token_id)([dataset[i] for i in range(3)])
    assert set(batch) == {"forget", "retain"}
    assert batch["forget"]["input_ids"].shape[1] == max(len(dataset.forget[i]["input_ids"]) for i in range(3))


def test_each_slot_labels_its_answer_and_k_defaults_to_five(tiny_tokenizer):
    """The labelled tokens of every slot are its answer (not the question), and with fewer other
    forget items than K every item still gets K rows, all of them other items' answers."""
    def answer_text(enc):
        return tiny_tokenizer.decode([t for t, label in zip(enc["input_ids"], enc["labels"]) if label != -100])

    forget = FORGET[:3]
    slots = ("forget", "retain", "forget_refusal", "forget_other_answers")
    dataset = SlotDataset(tiny_tokenizer, slots, forget=forget, retain=RETAIN, max_length=64, refusals=REFUSALS)
    assert dataset.other_answers == 5  # SKU's K
    for i in range(3):
        item = dataset[i]
        assert forget[i].answer in answer_text(item["forget"])
        retain = RETAIN[dataset.retain_index(i)]
        assert retain.answer in answer_text(item["retain"]) and retain.question not in answer_text(item["retain"])
        assert any(r in answer_text(item["forget_refusal"]) for r in REFUSALS)
        others = [answer_text(row) for row in item["forget_other_answers"]]
        assert len(others) == 5
        assert all(any(forget[j].answer in text for j in range(3) if j != i) for text in others)
    for draw in ("once", "own"):
        drawn = SlotDataset(tiny_tokenizer, ("forget_refusal",), forget=forget, max_length=64, refusals=REFUSALS,
                            refusal_draw=draw)
        text = answer_text(drawn[0]["forget_refusal"])
        assert (forget[0].answer in text) if draw == "own" else any(r in text for r in REFUSALS)
        assert forget[0].question not in text


def test_length_window_sampler_is_a_seeded_permutation_with_aligned_batches():
    lengths = [5, 50, 7, 48, 9, 46, 11, 44, 13, 42, 15]
    sampler = LengthWindowSampler(lengths, batch_size=2, seed=0, window=2)
    order = list(sampler)
    assert sorted(order) == list(range(len(lengths)))
    assert order == list(LengthWindowSampler(lengths, batch_size=2, seed=0, window=2))
    sampler.set_epoch(1)
    assert list(sampler) != order
    batches = [order[k:k + 2] for k in range(0, 10, 2)]
    waste = sum(2 * max(lengths[i] for i in b) - sum(lengths[i] for i in b) for b in batches)
    assert waste < 0.5 * sum(lengths)


def test_prompt_too_long_for_max_length_is_refused(tiny_tokenizer):
    with pytest.raises(UserError, match="max_length"):
        SlotDataset(tiny_tokenizer, ("forget",), forget=[QAItem("word " * 40, "answer")], max_length=16)


def test_objectives_declare_their_batch_slots_and_the_collator_builds_them(tiny_tokenizer):
    """Slots come from the objective (and the retain setting), not from special cases in the Trainer."""
    assert batch_slots("graddiff", ObjectiveConfig()) == ("forget", "retain")
    assert batch_slots("graddiff", ObjectiveConfig(retain_loss="none")) == ("forget",)
    assert batch_slots("ga", ObjectiveConfig()) == ("forget",)
    assert batch_slots("idk_dpo", ObjectiveConfig()) == ("forget", "forget_refusal", "retain")
    assert batch_slots("rt", ObjectiveConfig(retain_loss="none")) == ("forget_refusal",)
    slots = ("forget", "forget_other_answers")
    dataset = SlotDataset(tiny_tokenizer, slots, forget=FORGET, max_length=64, seed=1, other_answers=3)
    batch = SlotCollator(tiny_tokenizer.pad_token_id)([dataset[i] for i in range(2)])
    assert batch["forget"]["input_ids"].shape[0] == 2 and batch["forget_other_answers"]["input_ids"].shape[0] == 6
    # row k of item i: question i with the answer of another forget item, item-major
    for i in range(2):
        prompt = tiny_tokenizer.decode(dataset.forget[i]["input_ids"][:5])
        for row in dataset[i]["forget_other_answers"]:
            text = tiny_tokenizer.decode(row["input_ids"])
            assert text.startswith(prompt) and FORGET[i].answer not in text
            assert any(item.answer in text for item in FORGET)
    again = SlotDataset(tiny_tokenizer, slots, forget=FORGET, max_length=64, seed=1, other_answers=3)
    assert again[1] == dataset[1]  # seeded by (seed, epoch, i): a resumed run draws the same answers
    dataset.set_epoch(1)
    assert [dataset[i] for i in range(6)] != [again[i] for i in range(6)]  # drawn afresh each epoch
    with pytest.raises(UserError, match="retain"):
        SlotDataset(tiny_tokenizer, ("forget", "retain"), forget=FORGET, max_length=64)
