"""SNAP: the sliced Wasserstein regulariser, its objective, the data preparation and the recipe."""

import copy
import json
from types import SimpleNamespace

import pytest
import torch

from obliviate.config import load_config
from obliviate.data.request import QAItem
from obliviate.objectives import snap as snap_objective
from obliviate.objectives.common import LossContext
from obliviate.objectives.sliced_wasserstein import random_projections, sliced_wasserstein, sw_regulariser
from obliviate.prepare.cache import CachedGenerator
from obliviate.prepare.checks import is_refusal, leaks_answer, repeats_itself
from obliviate.prepare.local import LocalHFBackend
from obliviate.prepare.templates import TemplateBackend

FORGET = [
    QAItem("Where was Ilsa Corvanne born?", "Ilsa Corvanne was born in Valparaiso, Chile, in 1961.", subject="Ilsa Corvanne"),
    QAItem("What genre does Ilsa Corvanne write?", "She writes maritime mystery novels set on cargo ships.", subject="Ilsa Corvanne"),
    QAItem("Who were Bat Fen's parents?", "His father was a herder and his mother a radio engineer.", subject="Bat Fen"),
]
RETAIN = [
    QAItem("What is the capital of France?", "Paris.", subject="France"),
    QAItem("How many legs does a spider have?", "Eight.", subject="spiders"),
]


def _theta(d, seed=0):
    return random_projections(d, 100, torch.Generator().manual_seed(seed))


# -- the sliced Wasserstein distance ------------------------------------------------------------

def test_sw_of_a_tensor_with_itself_is_zero():
    w = torch.randn(12, 8)
    assert sliced_wasserstein(w, w.clone(), _theta(8)).item() == 0.0
    assert sliced_wasserstein(w.bfloat16(), w, _theta(8)).item() == 0.0  # the current one is cast to the copy's dtype
    assert sliced_wasserstein(w[0], w[0].clone(), _theta(8)).item() == 0.0  # a 1-D tensor: one sample


def test_sw_is_invariant_to_permuting_rows():
    w0, w = torch.randn(20, 6), torch.randn(20, 6)
    perm = torch.randperm(20)
    assert sliced_wasserstein(w0, w0[perm], _theta(6)).item() == pytest.approx(0.0, abs=1e-10)
    assert sliced_wasserstein(w0, w[perm], _theta(6)).item() == pytest.approx(
        sliced_wasserstein(w0, w, _theta(6)).item(), rel=1e-5)
    assert sliced_wasserstein(w0, w, _theta(6)).item() > 0  # ... yet it sees a change of the rows


def test_sw_grows_with_the_size_of_a_perturbation():
    w0, direction = torch.randn(16, 10), torch.randn(16, 10)
    values = [sliced_wasserstein(w0, w0 + eps * direction, _theta(10)).item() for eps in (0.01, 0.1, 0.5, 2.0)]
    assert values == sorted(values) and values[0] > 0
    # the official scale: no 1/n and no root, so a uniform shift c of every row costs ~ c^2 |1|^2 / d * n
    shift = sliced_wasserstein(w0, w0 + 0.3, random_projections(10, 20000, torch.Generator().manual_seed(1)))
    assert shift.item() == pytest.approx(16 * 0.09 * 10 / 10, rel=0.05)


def _slow_sw(w0, w, theta, p=2.0):
    """From the definition, one projection and one sample at a time, in Python."""
    rows0 = w0.reshape(1, -1).tolist() if w0.dim() < 2 else w0.tolist()
    rows = w.reshape(1, -1).tolist() if w.dim() < 2 else w.tolist()
    columns = theta.t().tolist()
    total = 0.0
    for column in columns:
        u = sorted(sum(a * b for a, b in zip(row, column)) for row in rows0)
        v = sorted(sum(a * b for a, b in zip(row, column)) for row in rows)
        total += sum(abs(a - b) ** p for a, b in zip(u, v))
    return total / len(columns)


def test_fp32_initial_weights_stay_fp32_under_the_trainers_bf16_autocast():
    """snap.initial_weights=fp32 gave bf16 projections under train.precision=bf16 (autocast
    rounds the matmul): the SW of a small change was mostly rounding noise (~23x too big)."""
    gen = torch.Generator().manual_seed(0)
    w0 = torch.randn(64, 96, generator=gen)
    w = w0 + 1e-4 * torch.randn(64, 96, generator=gen)
    theta = random_projections(96, 100, torch.Generator().manual_seed(1))
    plain = sliced_wasserstein(w0, w, theta)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under = sliced_wasserstein(w0, w, theta)
    assert under.dtype == torch.float32 and torch.allclose(under, plain, rtol=1e-4, atol=0)
    bf16 = sliced_wasserstein(w0.bfloat16(), w, theta)  # snap.initial_weights=bf16: bf16 on purpose
    assert not torch.allclose(bf16, plain, rtol=0.5, atol=0)


def test_regulariser_matches_a_slow_loop_over_tensors():
    tensors = [torch.randn(5, 4), torch.randn(3, 7), torch.randn(9), torch.randn(2, 2)]
    pairs = [(t, t + 0.3 * torch.randn_like(t)) for t in tensors]
    fast = sw_regulariser(pairs, n_projections=7, generator=torch.Generator().manual_seed(3)).item()
    generator = torch.Generator().manual_seed(3)
    slow = 0.0
    for w0, w in pairs:
        d = w0.shape[-1] if w0.dim() >= 2 else w0.numel()
        raw = torch.randn(d, 7, generator=generator)  # the same draws, in the same order
        columns = [[raw[i, l].item() for i in range(d)] for l in range(7)]
        norms = [sum(x * x for x in c) ** 0.5 for c in columns]
        theta = torch.tensor([[columns[l][i] / norms[l] for l in range(7)] for i in range(d)])
        slow += _slow_sw(w0, w, theta)
    assert fast == pytest.approx(slow, rel=1e-4)


def test_regulariser_gradient_flows_through_the_sort():
    w0 = torch.randn(6, 5)
    w = (w0 + 0.2 * torch.randn(6, 5)).requires_grad_(True)
    sw_regulariser([(w0, w)], generator=torch.Generator().manual_seed(0)).backward()
    assert w.grad is not None and w.grad.abs().sum() > 0


# -- the objective -------------------------------------------------------------------------------

@pytest.mark.parametrize("where", ["fp32", "bf16", "cpu"])
def test_objective_regulariser_is_zero_at_start_and_positive_after_a_change(tiny_model_and_tokenizer, where):
    model, _ = tiny_model_and_tokenizer
    options = SimpleNamespace(initial_weights=where, sw_tensors="all", n_projections=100, sw_p=2.0)
    snap_objective.prepare(model, None, options)
    copies = snap_objective.initial_weights(model)
    assert len(copies) == sum(1 for p in model.parameters() if p.requires_grad)
    assert {c.dtype for _, c in copies} == {torch.bfloat16 if where == "bf16" else torch.float32}
    assert snap_objective.regulariser(model, options).item() == 0.0
    with torch.no_grad():
        next(model.parameters()).add_(0.5)
    assert snap_objective.regulariser(model, options).item() > 0
    snap_objective.release(model)
    with pytest.raises(Exception, match="not captured"):
        snap_objective.initial_weights(model)


def _batch(tok, items):
    from obliviate.data.collate import SlotCollator, SlotDataset

    data = SlotDataset(tok, ("forget", "retain"), forget=items, retain=items, max_length=64, seed=0)
    return SlotCollator(tok.pad_token_id)([data[i] for i in range(len(data))])


def test_alternate_updates_split_forget_and_retain_by_step_parity(tiny_model_and_tokenizer):
    model, tok = tiny_model_and_tokenizer
    options = SimpleNamespace(alternate=True, sw_lambda=0.1, n_projections=10, initial_weights="fp32",
                              sw_tensors="matrices", sw_p=2.0)
    snap_objective.prepare(model, None, options)
    batch, config = _batch(tok, FORGET), load_config(None, []).objective
    even, odd = (LossContext(config, options=options, step=s) for s in (0, 1))
    snap_objective.loss(model, batch, even)
    snap_objective.loss(model, batch, odd)
    assert set(even.terms) == {"forget_nll"} and set(odd.terms) == {"retain_nll", "sw"}
    both = LossContext(config, options=SimpleNamespace(**{**vars(options), "alternate": False}))
    total = snap_objective.loss(model, batch, both)
    assert total.item() == pytest.approx(float(both.terms["forget_nll"] + both.terms["retain_nll"]), rel=1e-5)


def test_objective_defaults_are_the_official_ones_and_the_loss_adds_lambda_sw(tiny_model_and_tokenizer):
    """Without a snap section: L = 100 projections, p = 2, lambda = 0.1 (METHODS.md C.2), with the
    regulariser non-zero (the test above runs at theta = theta0, where SW is 0)."""
    model, tok = tiny_model_and_tokenizer
    snap_objective.prepare(model)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    pairs = [(c, dict(model.named_parameters())[n]) for n, c in snap_objective.initial_weights(model)]
    generator = torch.Generator().manual_seed(5)
    slow = sum(sliced_wasserstein(w0, w, random_projections(w0.reshape(w0.shape[0] if w0.dim() > 1 else 1, -1).shape[1],
                                                            100, generator), 2.0) for w0, w in pairs)
    assert torch.allclose(snap_objective.regulariser(model, None, seed=5), slow, rtol=1e-5)
    assert torch.allclose(sw_regulariser(pairs, generator=torch.Generator().manual_seed(5)), slow, rtol=1e-5)
    config = load_config(None, ["objective.forget_weight=0.7", "objective.retain_weight=1.3"]).objective
    ctx = LossContext(config, seed=2, step=3)
    total = snap_objective.loss(model, _batch(tok, FORGET), ctx)
    t = ctx.terms
    assert float(t["sw"]) > 0.1
    expected = 0.7 * t["forget_nll"] + 1.3 * t["retain_nll"] + 0.1 * t["sw"]
    assert torch.allclose(total.detach(), expected, rtol=1e-5)
    again = LossContext(config, seed=2, step=3)
    snap_objective.loss(model, _batch(tok, FORGET), again)
    assert torch.equal(again.terms["sw"], t["sw"])  # repeatable from the run seed and the step
    later = LossContext(config, seed=2, step=5)
    snap_objective.loss(model, _batch(tok, FORGET), later)
    assert not torch.equal(later.terms["sw"], t["sw"])  # fresh projections each step


def test_prepare_copies_the_trainable_tensors_only_and_matrices_when_asked(tiny_model_and_tokenizer):
    model, _ = tiny_model_and_tokenizer
    model.model.embed_tokens.requires_grad_(False)
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    snap_objective.prepare(model, None, SimpleNamespace(initial_weights="fp32", sw_tensors="all"))
    assert [n for n, _ in snap_objective.initial_weights(model)] == list(trainable)
    snap_objective.prepare(model, None, SimpleNamespace(initial_weights="fp32", sw_tensors="matrices"))
    matrices = [n for n, p in trainable.items() if p.dim() == 2]
    assert [n for n, _ in snap_objective.initial_weights(model)] == matrices
    assert len(matrices) < len(trainable)  # the norm weights are left out


def test_initial_copies_are_detached_so_the_regulariser_pulls_towards_them(tiny_model_and_tokenizer):
    """A copy that kept its graph would send SW's gradient back to the parameter through W0 too,
    cancelling the pull (d/dW0 = -d/dW)."""
    model, _ = tiny_model_and_tokenizer
    snap_objective.prepare(model)
    assert not any(c.requires_grad for _, c in snap_objective.initial_weights(model))
    weight = model.model.layers[0].mlp.down_proj.weight
    with torch.no_grad():
        weight.add_(0.3 * torch.randn_like(weight))
    snap_objective.regulariser(model, None, seed=0).backward()
    assert weight.grad is not None and weight.grad.abs().sum() > 1e-3


# -- the data --------------------------------------------------------------------------------------

def _cfg(**overrides):
    return load_config(None, ["generation.backend=template", *[f"snap.{k}={v}" for k, v in overrides.items()]])


def test_negative_instructions_and_obliterated_responses_leak_no_forget_answer(tiny_model_and_tokenizer):
    from obliviate.methods.snap_data import negative_instructions, obliterated_responses

    config = _cfg(n_instructions=3)
    stats = {"instruction_fallbacks": 0, "response_fallbacks": 0}
    asker = CachedGenerator(TemplateBackend("rewrite"), None)
    rows = negative_instructions(FORGET, config.snap, config.generation, asker, 0, stats)
    assert len(rows) == len(FORGET) + 3 * 2  # 3 generated per subject, 2 subjects
    for subject in ("Ilsa Corvanne", "Bat Fen"):
        asked = [r["instruction"] for r in rows if r["subject"] == subject]
        assert len(set(asked)) == len(asked)
    obliterated_responses(rows, config.snap, config.generation, CachedGenerator(TemplateBackend("negative"), None), 0, stats)
    for row in rows:
        assert is_refusal(row["response"])
        for item in FORGET:
            if item.subject == row["subject"]:
                assert not leaks_answer(row["response"], row["instruction"], item.answer)


def test_generated_instructions_are_checked_for_gibberish_and_leaks():
    """Any generated text was kept as a negative instruction (is_valid_rewrite with no question
    checked only emptiness and repeats): gibberish, or one stating the forget answer."""
    from obliviate.methods.snap_data import negative_instructions

    item = FORGET[0]
    bad = ["c spider on his you\u00e9 are ho", "6ecame", item.answer]

    class Bad:
        name, model_id, batch_size = "bad", "bad-1", 8

        def generate(self, prompts, **kwargs):
            return [bad[len(str(p)) % len(bad)] for p in prompts]

        def cache_key_fields(self):
            return {"backend": self.name, "model_id": self.model_id}

    config = _cfg(n_instructions=3, max_attempts=2)
    stats = {"instruction_fallbacks": 0, "response_fallbacks": 0}
    rows = negative_instructions([item], config.snap, config.generation, CachedGenerator(Bad(), None), 0, stats)
    generated = [r["instruction"] for r in rows if r["kind"] != "forget_question"]
    assert len(generated) == 3 and stats["instruction_fallbacks"] == 3 and not set(generated) & set(bad)


def test_legitimate_instructions_pass_the_checks():
    """The checks must not throw away good instructions: one naming the subject when an answer is
    part of its name ("Hilton"), one holding a number that contains an answer ("2017" / "17"),
    possessives, other scripts and accents (the gibberish test knows English spelling only)."""
    from obliviate.prepare.checks import is_valid_instruction

    answers = ["Hilton", "17", "Paris Hilton was born in New York City.", "She is known for The Simple Life."]
    for text in ("Where was Paris Hilton born?", "What is Paris Hilton best known for?",
                 "What did Paris Hilton do in 2017?", "Describe Paris Hilton's career.", "巴黎希尔顿在哪里出生？",
                 "Où est née Paris Hilton ?", "Tell me something about the childhood of Paris Hilton."):
        assert is_valid_instruction(text, "Paris Hilton", [], answers), text
    for text in ("Was Paris Hilton born in New York City?", "Did Paris Hilton star in The Simple Life?",
                 "c spider on his you are ho", "Where was Paris Hilton born?"):
        assert not is_valid_instruction(text, "Paris Hilton", ["Where was Paris Hilton born?"], answers), text


def test_items_without_a_subject_are_counted_and_warned_about(capsys):
    """TOFU items carry no subject: snap.n_instructions generated nothing for them, silently."""
    from obliviate.methods.snap_data import negative_instructions

    config = _cfg(n_instructions=2)
    stats = {"instruction_fallbacks": 0, "response_fallbacks": 0}
    bare = [QAItem(item.question, item.answer, subject="" if i else None) for i, item in enumerate(FORGET)]
    rows = negative_instructions([*bare, FORGET[0]], config.snap, config.generation,
                                 CachedGenerator(TemplateBackend("rewrite"), None), 0, stats)
    assert len(rows) == len(bare) + 1 + 2 and stats["items_without_subject"] == len(bare)
    assert f"{len(bare)} of {len(bare) + 1} forget items have no subject" in capsys.readouterr().out


def test_obliterated_responses_fall_back_when_the_generator_leaks():
    from obliviate.methods.snap_data import obliterated_responses

    class Leaky:  # answers with the forget answer itself: every output must be rejected
        name, model_id, batch_size = "leaky", "leaky", 8

        def cache_key_fields(self):
            return {"backend": "leaky"}

        def generate(self, prompts, **_):
            return ["I don't know, but she was born in Valparaiso, Chile, in 1961."] * len(prompts)

    config = _cfg()
    rows = [{"subject": "Ilsa Corvanne", "instruction": FORGET[0].question, "answers": [FORGET[0].answer]}]
    stats = {"response_fallbacks": 0}
    obliterated_responses(rows, config.snap, config.generation, CachedGenerator(Leaky(), None), 0, stats)
    assert stats["response_fallbacks"] == 1 and rows[0]["response_source"] == "refusal_template"
    assert not leaks_answer(rows[0]["response"], FORGET[0].question, FORGET[0].answer)


def test_hard_positive_answers_are_the_original_models(tiny_model_and_tokenizer, tmp_path):
    from obliviate.methods.snap_data import hard_positives

    model, tok = tiny_model_and_tokenizer
    original = copy.deepcopy(model)
    gen = load_config(None, ["generation.max_new_tokens=12"]).generation
    rows = hard_positives(RETAIN, model, tok, gen, tmp_path, given=False, stats={})
    expected = LocalHFBackend(original, tok).generate([[{"role": "user", "content": i.question}] for i in RETAIN],
                                                       max_new_tokens=12, temperature=0.0)
    assert [r["answer"] for r in rows] == [e.strip() if e.strip() and not repeats_itself(e) else i.answer
                                           for e, i in zip(expected, RETAIN)]
    assert all(r["answer_source"] == "original_model" for r in rows if r["answer"] != r["given_answer"])
    given = hard_positives(RETAIN, model, tok, gen, None, given=True, stats={})
    assert [r["answer"] for r in given] == [i.answer for i in RETAIN]


def test_a_looping_hard_positive_answer_falls_back_to_the_given_one(monkeypatch, tiny_model_and_tokenizer):
    """SmolLM2 answered one retain question "He's a poet, a writer, and a poet. He's a poet...":
    trained as the normal answer, a loop teaches looping."""
    from obliviate.methods import snap_data

    loop = "He's a poet, a writer, and a poet. He's a poet, a writer, and a poet. He's a poet, a writer"
    fine = "He was born in Lima and writes maritime mystery novels set on cargo ships."
    assert repeats_itself(loop) and not repeats_itself(fine) and not repeats_itself("")
    # scripts without spaces: a loop is one "word" for a word count, so characters are counted
    assert repeats_itself("他是一位诗人和作家。他是一位诗人和作家。他是一位诗人和作家。")
    assert not repeats_itself("他出生于利马，写过许多以货轮为背景的海上推理小说，作品广受欢迎。")
    # an English answer naming one in Chinese is counted in words: "author" thrice is no loop
    assert not repeats_itself("The author (作者) wrote three books. Each author note was short, and the author "
                              "thanked readers.")
    assert repeats_itself("Li Bai (李白) was a poet. " + "He is a poet and a writer. " * 3)

    class Scripted:
        calls = 1

        def __init__(self, *args):
            pass

        def generate(self, prompts, **kwargs):
            return [loop, fine, ""][:len(prompts)]

    monkeypatch.setattr(snap_data, "CachedGenerator", Scripted)
    model, tok = tiny_model_and_tokenizer
    stats = {}
    items = [*RETAIN, QAItem("Who painted the Mona Lisa?", "Leonardo da Vinci.")][:3]
    rows = snap_data.hard_positives(items, model, tok, load_config(None, []).generation, None, given=False,
                                    stats=stats)
    assert [r["answer"] for r in rows] == [items[0].answer, fine, items[2].answer]
    assert [r["answer_source"] for r in rows] == ["given", "original_model", "given"]
    assert (stats["hard_positive_looping"], stats["hard_positive_empty"]) == (1, 1)


# -- end to end ------------------------------------------------------------------------------------

def test_snap_end_to_end_on_tiny_model(tiny_model_dir, tmp_path):
    from obliviate.api import unlearn
    from obliviate.models import load_model

    request = tmp_path / "req.json"
    request.write_text(json.dumps({"forget": [vars(i) for i in FORGET], "retain": [vars(i) for i in RETAIN]}))
    config = load_config(None, ["method=snap", f"model={tiny_model_dir}", f"request={request}",
                                f"output_dir={tmp_path / 'run'}", "generation.backend=template",
                                "generation.max_new_tokens=8", "train.num_epochs=1", "train.batch_size=2",
                                "train.precision=fp32", "snap.n_instructions=2", "train.learning_rate=1e-3"])
    run_dir = unlearn(config)
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["method"] == "snap" and (run_dir / "model").is_dir()
    assert manifest["method_stats"]["snap"]["negatives"] == len(FORGET) + 2 * 2
    rows = [json.loads(line) for line in (run_dir / "snap_dataset.jsonl").read_text().splitlines()]
    assert {r["set"] for r in rows} == {"negative", "hard_positive"}
    # the hard positives were answered by the model as it was before training
    original, tok = load_model(str(tiny_model_dir))
    expected = LocalHFBackend(original, tok).generate([[{"role": "user", "content": i.question}] for i in RETAIN],
                                                       max_new_tokens=8, temperature=0.0)
    assert [r["answer"] for r in rows if r["set"] == "hard_positive"] == [
        e.strip() or i.answer for e, i in zip(expected, RETAIN)]
    log = [json.loads(line) for line in (run_dir / "train_log.jsonl").read_text().splitlines()]
    assert log and all({"forget_nll", "retain_nll", "sw"} <= set(row) for row in log)
    assert log[-1]["sw"] > 0  # the weights moved, and the regulariser saw it
    trained, _ = load_model(str(run_dir / "model"))
    assert not torch.equal(next(trained.parameters()), next(original.parameters()))
