"""`make demo`: ULMR on the default model and the built-in request, offline, scored before/after.

1. load SmolLM2-135M-Instruct and the built-in request (2 invented authors to forget, 4 to keep)
2. the model has never seen these invented people, so the demo first teaches it all 30 facts
   (a short fine-tune) and says so: unlearning needs something learned
3. score forget and retain answers (greedy generation, ROUGE-L recall as TOFU)
4. ULMR: each forget question rewritten twice and a negative response for every instruction
   (offline template generator: the 135M model cannot follow those prompts); SFT on them;
   average the weights with the taught model (alpha 0.4)
5. score again and print the table and a few answers before and after

Everything lands in runs/demo/; a rerun reuses the taught model and the cached generations.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from obliviate.config import load_config
from obliviate.data.request import load_request
from obliviate.io import atomic_write_json, atomic_write_text

# Teaching: a fine-tuning learning rate for 10 epochs makes the 135M model recite all 30 facts
# (ROUGE-L recall 1.0); 6 epochs left them fragile (0.85) and unlearning then broke them more.
TEACH = {"method": "finetune", "train.learning_rate": 1e-4, "train.num_epochs": 10, "train.batch_size": 8,
         "train.warmup_ratio": 0.0, "train.weight_decay": 0.0, "train.save_steps": -1}
# ULMR: the paper's recipe with the default n = 2 rewrites, full SFT at lr 1e-4 for 5 epochs, and
# alpha = 0.4 (docs/results.md has the sweep: 0.5 forgets more but keeps only 67% of retain).
# The generator is the template backend: SmolLM2-135M, taught or not, does not follow the
# rewrite / refusal prompts (a local-generator run of this demo gave 6 of 20 usable rewrites and
# 0 of 30 usable negative responses, all replaced by the same templates after 12 minutes of
# generation). For real runs point generation.backend=openai (or generation.model=<a larger local
# model>) at a capable LLM.
ULMR = {"method": "ulmr", "train.learning_rate": 1e-4, "train.num_epochs": 5, "train.batch_size": 8,
        "train.weight_decay": 0.0, "train.save_steps": -1, "ulmr.alpha": 0.4, "generation.backend": "template"}
EXAMPLES = 3


def _score(model, tokenizer, request) -> dict:
    from obliviate.evaluation.tofu import evaluate_items

    return {
        "forget": evaluate_items(model, tokenizer, request.forget, task_kind="forget", max_new_tokens=48),
        "retain": evaluate_items(model, tokenizer, request.retain, task_kind="retain", max_new_tokens=48),
    }


def _rouge(scores: dict, split: str) -> float:
    return scores[split]["aggregates"]["rougeL"]


def _say(text: str) -> None:
    print(text, flush=True)


def run_demo(model: str | None = None, output_dir: str = "runs/demo", alphas: tuple[float, ...] = ()) -> dict:
    """The demo; `alphas` also scores ULMR at those averaging weights (ulmr.alpha_sweep)."""
    from obliviate.api import unlearn
    from obliviate.hardware import resolve_device
    from obliviate.models import load_model, save_model
    from obliviate.rundir import config_agrees
    from obliviate.training import train

    started = time.time()
    out = Path(output_dir)
    request = load_request()
    model_name = model or "smollm2-135m-instruct"
    _say(f"== obliviate demo: forget {len(request.forget)} facts about 2 invented authors, keep "
         f"{len(request.retain)} about 4 others ({model_name}) ==")
    device = resolve_device("auto")  # every step on the best device here (CUDA, else MPS, else CPU)
    base, tokenizer = load_model(model_name, device=device)

    taught_dir = out / "taught" / "model"
    taught_settings = {**TEACH, "model": model_name}
    settings_file = out / "taught" / "teach_settings.json"
    if taught_dir.is_dir() and settings_file.is_file() and json.loads(settings_file.read_text()) == taught_settings:
        _say(f"[1/4] reusing the taught model in {taught_dir}")
        taught, tokenizer = load_model(str(taught_dir), device=device)
        before = None
    else:
        shutil.rmtree(out / "taught", ignore_errors=True)  # taught with other settings, or interrupted
        shutil.rmtree(out / "ulmr", ignore_errors=True)  # it unlearned the old taught model
        before = _score(base, tokenizer, request)
        _say(f"[1/4] the base model does not know these invented authors (forget ROUGE-L "
             f"{_rouge(before, 'forget'):.3f}, retain {_rouge(before, 'retain'):.3f}): teaching it all "
             f"{len(request.forget) + len(request.retain)} facts first (fine-tune, {TEACH['train.num_epochs']} epochs)")
        config = load_config(None, base={**TEACH, "output_dir": str(out / "taught")})
        taught = train(base, tokenizer, forget=request.forget + request.retain, retain=[], config=config,
                       output_dir=out / "taught", objective="finetune")
        save_model(taught, tokenizer, taught_dir)
        atomic_write_json(settings_file, taught_settings)
        taught, tokenizer = load_model(str(taught_dir), device=device)

    _say("[2/4] scoring the taught model (greedy answers, ROUGE-L recall against the true answers)")
    taught_scores = _score(taught, tokenizer, request)
    _say(f"      forget {_rouge(taught_scores, 'forget'):.3f}   retain {_rouge(taught_scores, 'retain'):.3f}")

    _say("[3/4] ULMR: rewrite each forget question twice, write negative responses, fine-tune on them, "
         f"average with the taught weights (alpha {ULMR['ulmr.alpha']}); generator: offline templates, "
         "since a 135M model cannot follow the rewrite/refusal prompts (see docs/methods.md)")
    ulmr_config = load_config(None, base={**ULMR, "model": str(taught_dir), "output_dir": str(out / "ulmr"),
                                          "ulmr.alpha_sweep": [a for a in alphas if a != ULMR["ulmr.alpha"]]})
    if not config_agrees(out / "ulmr", ulmr_config.to_dict()):
        shutil.rmtree(out / "ulmr")  # an earlier demo's run with other settings
    if (out / "ulmr" / "manifest.json").is_file():
        run_dir = out / "ulmr"  # finished by an earlier demo on this taught model
        _say(f"      reusing the finished ULMR run in {run_dir}")
    else:
        run_dir = unlearn(ulmr_config, resume=(out / "ulmr" / "config.yaml").exists()).run_dir
    unlearned, tokenizer = load_model(str(run_dir / "model"), device=device)

    _say("[4/4] scoring the unlearned model")
    after = _score(unlearned, tokenizer, request)
    swept = {}
    for alpha in ulmr_config.ulmr.alpha_sweep:
        _say(f"      scoring ULMR at alpha {alpha:g} (sweep)")
        swept[alpha] = _score(load_model(str(run_dir / f"model_alpha{alpha:g}"), device=device)[0], tokenizer, request)
    summary = _summary(before, taught_scores, after, run_dir, time.time() - started, swept)
    report = _report(summary, taught_scores, after)
    atomic_write_json(out / "demo_summary.json", summary)
    atomic_write_text(out / "demo_report.md", report)
    _say("")
    _say(report)
    _say(f"results: {out / 'demo_report.md'} and {out / 'demo_summary.json'}; unlearned model: {run_dir / 'model'}")
    return summary


def _summary(before, taught, after, run_dir: Path, wall_s: float, swept: dict | None = None) -> dict:
    rows = {"taught": taught, "ulmr": after} if before is None else {"base": before, "taught": taught, "ulmr": after}
    rows.update({f"ulmr alpha {alpha:g}": scores for alpha, scores in sorted((swept or {}).items())})
    table = {name: {split: _rouge(scores, split) for split in ("forget", "retain")} for name, scores in rows.items()}
    forget_drop = 1 - table["ulmr"]["forget"] / max(table["taught"]["forget"], 1e-9)
    retain_kept = table["ulmr"]["retain"] / max(table["taught"]["retain"], 1e-9)
    manifest = json.loads((run_dir / "manifest.json").read_text()) if (run_dir / "manifest.json").exists() else {}
    return {
        "rougeL_recall": table,
        "forget_drop": forget_drop,
        "retain_kept": retain_kept,
        "goal_met": forget_drop >= 0.5 and retain_kept >= 0.8,
        "alpha": ULMR["ulmr.alpha"],
        "wall_time_s": wall_s,
        "ulmr_preparation": manifest.get("method_stats", {}).get("ulmr"),
        "command": "make demo",
    }


def _report(summary: dict, taught: dict, after: dict) -> str:
    table = summary["rougeL_recall"]
    lines = ["| model | forget ROUGE-L recall (lower = forgotten) | retain ROUGE-L recall (higher = kept) |",
             "|---|---|---|"]
    for name, row in table.items():
        label = f"ulmr (alpha {summary['alpha']:g})" if name == "ulmr" else name
        lines.append(f"| {label} | {row['forget']:.3f} | {row['retain']:.3f} |")
    lines += ["", f"forget drop: {summary['forget_drop']:.0%} (goal >= 50%), retain kept: "
                  f"{summary['retain_kept']:.0%} (goal >= 80%); wall time {summary['wall_time_s'] / 60:.1f} min", ""]
    for split in ("forget", "retain"):
        for before_item, after_item in list(zip(taught[split]["items"], after[split]["items"]))[:EXAMPLES]:
            lines += [f"**{split}** Q: {before_item['question']}",
                      f"- true answer: {before_item['answer']}",
                      f"- before: {before_item['generated']}",
                      f"- after:  {after_item['generated']}", ""]
    return "\n".join(lines)
