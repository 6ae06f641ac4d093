"""SKU (METHODS.md B): the stage-1 losses, the negation, and a run end to end on the tiny model."""

from __future__ import annotations

import contextlib
import copy
import json

import pytest
import torch
import torch.nn.functional as F

from obliviate.config import ObjectiveConfig, load_config
from obliviate.data.collate import SlotCollator, SlotDataset
from obliviate.data.request import QAItem
from obliviate.methods.sku import SkuConfig, negate
from obliviate.objectives import OBJECTIVES, LossContext, batch_slots
from obliviate.objectives import sku
from obliviate.weights import task_vector

# answers of different lengths: per-sample normalisation and padding both matter
FORGET = [QAItem(f"Where does person {i} live?", f"Person {i} lives at {i} River Road" + ", by the old mill" * i)
          for i in range(6)]
RETAIN = [QAItem(f"How many legs does a spider {i} have?", "A spider has eight legs" + " and two eyes" * i)
          for i in range(4)]


def make_batch(tokenizer, *, k: int = 3, size: int = 2) -> tuple[SlotDataset, dict]:
    slots = batch_slots("sku", ObjectiveConfig())
    dataset = SlotDataset(tokenizer, slots, forget=FORGET, retain=RETAIN, max_length=256, seed=0, other_answers=k)
    return dataset, SlotCollator(tokenizer.pad_token_id)([dataset[i] for i in range(size)])


def make_ctx(reference_model, **options) -> LossContext:
    @contextlib.contextmanager
    def reference():
        with torch.no_grad():
            yield reference_model

    return LossContext(config=ObjectiveConfig(), reference=reference, options=SkuConfig(**options))


def frozen(model):
    copied = copy.deepcopy(model).eval()
    copied.requires_grad_(False)
    return copied


def test_lambda_one_gives_two_theta0_minus_theta_h(tiny_model_and_tokenizer):
    base, _ = tiny_model_and_tokenizer
    harmful = copy.deepcopy(base)
    with torch.no_grad():
        for p in harmful.parameters():
            p.add_(0.1 * torch.randn_like(p))
    vector = task_vector(harmful, base)
    negated = negate(copy.deepcopy(base), vector, 1.0)
    for (name, theta), theta_0, theta_h in zip(negated.named_parameters(), base.parameters(), harmful.parameters()):
        torch.testing.assert_close(theta, 2 * theta_0 - theta_h, rtol=0, atol=1e-6, msg=name)
    half = negate(copy.deepcopy(base), vector, 0.5)
    torch.testing.assert_close(half.lm_head.weight, base.lm_head.weight - 0.5 * vector["lm_head.weight"])


def test_random_answers_are_drawn_without_replacement_and_never_from_the_same_prompt(tiny_tokenizer):
    """The reference draws K = 5 answers with random.sample (no repeats); a PKU-SafeRLHF prompt
    with two unsafe answers gives two items of one question, and its sibling is its own answer,
    not a random one. Drawn with replacement from every other item, "How do I pick a lock?" got
    [2, 2, 2, 2, 1]: one answer four times and its own second answer."""
    items = [QAItem("How do I pick a lock?", "Use a tension wrench."), QAItem("How do I pick a lock?", "Bump key."),
             *(QAItem(f"Question {n}?", f"Answer {n}.") for n in range(6))]
    for seed in range(20):
        ds = SlotDataset(tiny_tokenizer, ("forget_other_answers",), forget=items, max_length=64, seed=seed,
                         other_answers=5)
        for i in range(len(items)):
            rows = [tiny_tokenizer.decode(row["input_ids"]) for row in ds[i]["forget_other_answers"]]
            answers = [next(item.answer for item in items if item.answer in row) for row in rows]
            assert len(set(answers)) == 5, answers
            assert not {"Use a tension wrench.", "Bump key."} & set(answers) if i < 2 else items[i].answer not in answers


def test_random_disassociation_pairs_every_prompt_with_k_answers_of_the_pool(tiny_model_and_tokenizer):
    model, tokenizer = tiny_model_and_tokenizer
    assert OBJECTIVES["sku"].slots == ("forget", "forget_other_answers") and OBJECTIVES["sku"].section == "sku"
    dataset, batch = make_batch(tokenizer, k=3, size=2)
    others = batch["forget_other_answers"]
    assert others["input_ids"].shape[0] == 2 * 3  # B * K rows, item-major
    for i in range(2):
        prompt = tokenizer.decode(dataset.forget[i]["input_ids"][:6])
        for row in others["input_ids"][3 * i:3 * i + 3]:
            text = tokenizer.decode(row)
            assert text.startswith(prompt) and FORGET[i].answer not in text
            assert any(item.answer in text for item in FORGET)
    # L_RD is the mean over the B*K mismatched pairs of the per-sample answer NLL
    expected = []
    for row in range(6):
        enc = {key: value[row:row + 1] for key, value in others.items()}
        logits = model(input_ids=enc["input_ids"]).logits[0, :-1]
        labels = enc["labels"][0, 1:]
        mask = labels != -100
        expected.append(F.cross_entropy(logits[mask], labels[mask]))
    torch.testing.assert_close(sku.per_sample_nll(model, others), torch.stack(expected).mean())


def test_loss_is_the_weighted_sum_and_pd_is_zero_at_theta0(tiny_model_and_tokenizer):
    model, tokenizer = tiny_model_and_tokenizer
    _, batch = make_batch(tokenizer)
    ctx = make_ctx(frozen(model), e1=0.5, e2=2.0, e3=3.0)
    loss = OBJECTIVES["sku"].loss(model, batch, ctx)
    gd, rd, pd = (ctx.terms[k] for k in ("sku_gd", "sku_rd", "sku_pd"))
    torch.testing.assert_close(loss.detach(), 0.5 * gd + 2.0 * rd + 3.0 * pd)
    assert abs(float(pd)) < 1e-6 and gd > 0 and rd > 0


@pytest.mark.parametrize("legacy", [False, True])
def test_pd_is_never_positive_and_falls_as_training_moves_away(tiny_model_and_tokenizer, legacy):
    model, tokenizer = tiny_model_and_tokenizer
    _, batch = make_batch(tokenizer)
    reference = frozen(model)
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    history = []
    for _ in range(6):  # PD alone: every step moves further from theta_0 on the normal data
        ctx = make_ctx(reference, e1=0.0, e2=0.0, e3=1.0, legacy_quirks=legacy)
        loss = OBJECTIVES["sku"].loss(model, batch, ctx)
        history.append(float(ctx.terms["sku_pd"]))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert all(value <= 1e-6 for value in history)
    assert all(later < earlier for earlier, later in zip(history, history[1:])), history


def with_extra_padding(enc: dict, pad_id: int, extra: int = 5) -> dict:
    pad = {"input_ids": pad_id, "attention_mask": 0, "labels": -100}
    return {key: torch.cat([value, torch.full((value.shape[0], extra), pad[key])], dim=1) for key, value in enc.items()}


def test_pd_is_masked_to_real_tokens_unless_legacy(tiny_model_and_tokenizer):
    model, tokenizer = tiny_model_and_tokenizer
    _, batch = make_batch(tokenizer, size=3)
    reference = frozen(model)
    with torch.no_grad():
        reference.lm_head.weight.add_(0.05 * torch.randn_like(reference.lm_head.weight))
    padded = with_extra_padding(batch["retain"], tokenizer.pad_token_id)
    ctx = make_ctx(reference)
    pd = sku.preservation_divergence(model, batch["retain"], ctx)
    assert pd < 0
    torch.testing.assert_close(sku.preservation_divergence(model, padded, ctx), pd)
    legacy = sku.preservation_divergence(model, batch["retain"], ctx, legacy=True)
    assert not torch.allclose(sku.preservation_divergence(model, padded, ctx, legacy=True), legacy)


def reference_code_loss(model, reference, batch, e1, e2, e3):
    """The reference code's stage-1 loss (utils.py get_answer_loss, get_rand_ans_loss), quirks
    included, written out the slow way: a weight of 1 on every real position from start_loc on
    (GD: the position before the first answer token; RD: 2, len(BatchEncoding)), normalised over
    those positions, then the last weight dropped ([:-1]) against the shifted token losses, so a
    sample's NLL is divided by one more than the tokens it scores; PD = sum P log(P/Q) over all
    B x T positions."""
    def answer_loss(enc, starts):
        logits = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits
        labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)  # DataCollatorForLanguageModeling
        losses = []
        for b in range(enc["input_ids"].shape[0]):
            position_loss = F.cross_entropy(logits[b, :-1], labels[b, 1:], reduction="none")
            weight = torch.zeros(enc["input_ids"].shape[1])
            weight[starts[b]:] = 1
            weight[enc["attention_mask"][b] == 0] = 0  # position_weight[one_inp == pad] = 0
            losses.append((weight / weight.sum())[:-1] @ position_loss)
        return torch.stack(losses).mean()

    forget, others, normal = batch["forget"], batch["forget_other_answers"], batch["retain"]
    gd = answer_loss(forget, [int((row != -100).nonzero()[0]) - 1 for row in forget["labels"]])
    rd = answer_loss(others, [2] * others["input_ids"].shape[0])  # start_loc = len(BatchEncoding) = 2
    q = F.softmax(model(input_ids=normal["input_ids"], attention_mask=normal["attention_mask"]).logits, -1)
    with torch.no_grad():
        p = F.softmax(reference(input_ids=normal["input_ids"], attention_mask=normal["attention_mask"]).logits, -1)
    pd = -(p * torch.log((p + 1e-12) / q)).sum(-1).mean()  # utils.py line 212, as written
    return {"sku_gd": gd, "sku_rd": rd, "sku_pd": pd, "loss": e1 * gd + e2 * rd + e3 * pd}


def test_legacy_quirks_reproduce_the_reference_code_loss(tiny_model_and_tokenizer):
    model, tokenizer = tiny_model_and_tokenizer
    _, batch = make_batch(tokenizer, k=2, size=3)
    reference = frozen(model)
    with torch.no_grad():
        reference.lm_head.weight.add_(0.05 * torch.randn_like(reference.lm_head.weight))  # PD != 0
    ctx = make_ctx(reference, legacy_quirks=True)
    ours = OBJECTIVES["sku"].loss(model, batch, ctx)
    theirs = reference_code_loss(model, reference, batch, 2.5, 2.5, 1.0)
    torch.testing.assert_close(ours, theirs.pop("loss"), rtol=1e-4, atol=1e-5)
    for name, value in theirs.items():
        torch.testing.assert_close(ctx.terms[name], value.detach(), rtol=1e-4, atol=1e-7, msg=name)
    intended = OBJECTIVES["sku"].loss(model, batch, make_ctx(reference))
    assert not torch.allclose(ours, intended)  # the quirks change the loss


def test_sku_runs_end_to_end_on_the_built_in_request(tiny_model_dir, tmp_path):
    from safetensors.torch import load_file

    from obliviate import api

    from pathlib import Path

    request = Path(__file__).resolve().parents[1] / "src" / "obliviate" / "data" / "demo" / "sku_request.json"
    out = tmp_path / "run"
    config = load_config(None, [f"model={tiny_model_dir}", f"request={request}", f"output_dir={out}",
                                "method=sku", "train.max_steps=2", "train.save_steps=-1",
                                "train.learning_rate=1e-2", "sku.lambda_sweep=[0.5]"])
    assert config.train.lora.enabled and config.train.lora.r == 32 and config.train.batch_size == 2  # presets
    run_dir = api.unlearn(config)
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["method"] == "sku" and manifest["lora"] is True
    assert set(manifest["models"]) == {"model", "model_lambda0.5"}
    stats = manifest["method_stats"]
    assert stats["lam"] == 1.0 and stats["lambda_sweep"] == [0.5] and stats["task_vector_norm"] > 0
    base = load_file(tiny_model_dir / "model.safetensors")
    negated = load_file(run_dir / "model" / "model.safetensors")
    half = load_file(run_dir / "model_lambda0.5" / "model.safetensors")
    q = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(negated[q], base[q])
    torch.testing.assert_close(half[q], (negated[q] + base[q]) / 2, rtol=0, atol=1e-6)
    k = "model.layers.0.self_attn.k_proj.weight"  # outside the LoRA: tau = 0 there
    assert torch.equal(negated[k], base[k])
    log = [json.loads(line) for line in (run_dir / "train_log.jsonl").read_text().splitlines()]
    assert any("sku_pd" in str(entry) for entry in log)


def test_the_built_in_sku_request_loads_and_its_held_out_prompts_are_new():
    from pathlib import Path

    from obliviate.data.request import load_request

    demo = Path(__file__).resolve().parents[1] / "src" / "obliviate" / "data" / "demo"
    request, heldout = load_request(demo / "sku_request.json"), load_request(demo / "sku_heldout.json")
    assert len(request.forget) >= 20 and len(request.retain) >= 20 and len(heldout.forget) >= 20
    trained = {item.question for item in request.forget + request.retain}
    assert not trained & {item.question for item in heldout.forget + heldout.retain}


def test_the_callers_model_ends_holding_the_negated_weights(tiny_model_and_tokenizer, tmp_path):
    """api.unlearn trains a loaded model in place: after SKU it held theta_h (the model that
    learned the unwanted behaviour), not theta = theta_0 - lambda * tau that model/ holds."""
    from pathlib import Path

    from safetensors.torch import load_file

    from obliviate import api

    model, tokenizer = tiny_model_and_tokenizer
    request = Path(__file__).resolve().parents[1] / "src" / "obliviate" / "data" / "demo" / "sku_request.json"
    result = api.unlearn(model, tokenizer, request, method="sku", output_dir=tmp_path / "run", max_steps=2,
                         learning_rate=1e-2, device="cpu", **{"train.save_steps": -1})
    saved = load_file(result.model_dir / "model.safetensors")
    state = model.state_dict()
    assert saved and all(torch.equal(state[name], tensor) for name, tensor in saved.items())


def test_full_finetune_is_recorded_as_no_lora(tiny_model_dir, tmp_path):
    """The LoRA presets stay in config.yaml, but sku.full_finetune trains every weight: the
    manifest said "lora": true."""
    from pathlib import Path

    from obliviate import api

    request = Path(__file__).resolve().parents[1] / "src" / "obliviate" / "data" / "demo" / "sku_request.json"
    config = load_config(None, [f"model={tiny_model_dir}", f"request={request}", f"output_dir={tmp_path / 'run'}",
                                "method=sku", "train.max_steps=1", "train.save_steps=-1", "sku.full_finetune=true",
                                "train.learning_rate=1e-3"])
    manifest = json.loads((api.unlearn(config) / "manifest.json").read_text())
    assert manifest["lora"] is False and manifest["method_stats"]["full_finetune"] is True
