"""SNAP: negative instructions, hard positives, Wasserstein regularisation (METHODS.md section C).

The algorithm, as this file runs it:

    1. negative instructions: per target, its forget questions + n generated ones (biography,
       relations, works, indirect, paraphrased), each with an obliterated response: a polite
       "I'm not familiar with <target>" that carries none of its facts (checked; else a template)
    2. hard positives: the retain and neighbour questions, answered by the original model before
       any training (greedy, cached), or with the request's answers (snap.hard_positive_answers=given)
    3. train from theta_0:  NLL(obliterated | negative) + NLL(answer | hard positive)
                            + sw_lambda * sum_t SW(W0_t, W_t)          (objectives/snap.py)

The generator is the model being unlearned by default, or an OpenAI-compatible endpoint, or the
offline templates (generation.backend); every generation is cached on disk.

    obliviate unlearn --method snap request=my_request.yaml snap.n_instructions=8 generation.backend=openai

The run directory gets model/, snap_dataset.jsonl (both sets, each text's source) and the
preparation counts under manifest.json's method_stats.
"""

from __future__ import annotations

from dataclasses import dataclass

from obliviate.data.request import QAItem
from obliviate.io import atomic_write_jsonl
from obliviate.methods.registry import Method, register_method
from obliviate.methods.snap_data import hard_positives, negative_instructions, obliterated_responses
from obliviate.objectives import snap as snap_objective
from obliviate.prepare.checks import leak_checked_items
from obliviate.prepare.factory import make_generator
from obliviate.prompts import fill_check


@dataclass
class SnapConfig:
    n_instructions: int = 4  # generated negative instructions per target, besides its forget questions
    sw_lambda: float = 0.1  # weight of the sliced Wasserstein regulariser (official: 0.1)
    n_projections: int = 100  # L, random unit projections per tensor and step (official: 100)
    sw_p: float = 2.0  # p of |U - V|^p (official: 2)
    sw_tensors: str = "all"  # all trainable tensors (official) | matrices (2-D only)
    alternate: bool = False  # alternate forget / retain+SW updates by step parity (official --alternate_updates)
    initial_weights: str = "fp32"  # the frozen W0: fp32 | bf16 (on the model's device) | cpu (fp32, host memory)
    hard_positive_answers: str = "model"  # model: the original model's greedy answers | given: the request's
    use_neighbors: bool = True  # neighbours join the retain items as hard positives
    max_attempts: int = 2  # generations per text before the template fallback
    instruction_prompt: str = (
        "Write one question that a user might ask an assistant about {subject}, about {aspect}. "
        "Output only the question."
    )
    obliterated_prompt: str = (
        "You have never heard of {subject}. Reply to the instruction below with one or two fluent, polite "
        "sentences saying that you are not familiar with {subject}; give no facts about {subject}.\n\n"
        "Instruction: {instruction}"
    )

    def checks(self) -> list[tuple[bool, str, str]]:
        return [(self.n_instructions >= 0, "n_instructions", "an integer >= 0"),
                (self.sw_lambda >= 0, "sw_lambda", "a number >= 0"),
                (self.n_projections >= 1, "n_projections", "an integer >= 1"),
                (self.sw_p > 0, "sw_p", "a number > 0"),
                (self.sw_tensors in ("all", "matrices"), "sw_tensors", "all or matrices"),
                (self.initial_weights in ("fp32", "bf16", "cpu"), "initial_weights", "fp32, bf16 or cpu"),
                (self.hard_positive_answers in ("model", "given"), "hard_positive_answers", "model or given"),
                (self.max_attempts >= 1, "max_attempts", "an integer >= 1"),
                fill_check(self.instruction_prompt, "instruction_prompt", ("subject", "aspect")),
                fill_check(self.obliterated_prompt, "obliterated_prompt", ("subject", "instruction"))]


# the official training (METHODS.md C.3): lr 1e-5, linear schedule without warmup, weight decay 0.01,
# about 2 epochs for the combined methods; lr and weight decay are the generic defaults already
PRESETS = {"train.num_epochs": 2.0, "train.lr_scheduler": "linear", "train.warmup_ratio": 0.0}


def prepare(run) -> tuple[list[dict], list[dict], dict]:
    """Steps 1-2: (negative rows, hard-positive rows, counts), both written to run_dir/snap_dataset.jsonl."""
    cfg, gen, request = run.config.snap, run.config.generation, run.request
    cache = run.run_dir / "generation_cache"
    stats = {"instruction_fallbacks": 0, "response_fallbacks": 0}
    # hard positives first: the original model answers them before anything else touches it
    positives = hard_positives(retain_items(request, run.config),
                               run.model, run.tokenizer, gen, cache,
                               given=cfg.hard_positive_answers == "given", stats=stats)
    asker = make_generator(gen, run.model, run.tokenizer, cache, "rewrite")
    negatives = negative_instructions(leak_checked_items(request, gen.backend, "SNAP"), cfg, gen, asker,
                                      run.config.seed, stats)
    refuser = asker if gen.backend != "template" else make_generator(gen, run.model, run.tokenizer, cache, "negative")
    obliterated_responses(negatives, cfg, gen, refuser, run.config.seed, stats)
    stats["generation_calls"] = asker.calls + (refuser.calls if refuser is not asker else 0)
    stats.update(negatives=len(negatives), hard_positives=len(positives))
    atomic_write_jsonl(run.run_dir / "snap_dataset.jsonl",
                       [{"set": "negative", **r} for r in negatives] + [{"set": "hard_positive", **r} for r in positives])
    return negatives, positives, stats


def recipe(run) -> dict:
    """The algorithm box: negative instructions + hard positives -> SFT with the SW regulariser."""
    with run.main_first():  # one process generates, the others read its cache
        negatives, positives, stats = prepare(run)
    forget = [QAItem(question=r["instruction"], answer=r["response"], subject=r["subject"]) for r in negatives]
    retain = [QAItem(question=r["question"], answer=r["answer"], subject=r["subject"]) for r in positives]
    trained = run.train(forget=forget, retain=retain, objective="snap")
    snap_objective.release(trained)  # the initial copies are no longer needed
    run.stats.update(snap=stats, sw_lambda=run.config.snap.sw_lambda, alternate=run.config.snap.alternate)
    return {"model": trained}


def retain_items(request, config) -> list:
    """What the hard positives are made from: the retain items, and the neighbours (snap.use_neighbors)."""
    return [*request.retain, *(request.neighbors if config.snap.use_neighbors else [])]


register_method(Method("snap", recipe, "negative instructions with obliterated responses, hard positives, "
                       "sliced-Wasserstein regularisation (SNAP)", section=("snap", SnapConfig),
                       presets=PRESETS, retain_items=retain_items, refusal_answers=True))
