"""RWKU over one target (single-target) or several (batch-target): probes, MIA, utility.

Each target is scored on its own folder; the summary averages the per-target values over the
targets, as the paper averages over targets 1-100. "All" (forget FB + QA + AA, neighbor
FB + QA) pools every probe of a target, then averages over targets: RWKU's code does not
compute it, and this pooling is the reading of BENCHMARKS.md section 3.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from obliviate.data import rwku as rwku_data
from obliviate.evaluation.engine import model_fingerprint, resolve_precision
from obliviate.evaluation.engine.result_cache import result_cache_for
from obliviate.evaluation.progress import ProgressLog, StageTimer, logger
from obliviate.evaluation.results import build_envelope, write_outputs
from obliviate.evaluation.rwku.mia import mia_aggregates, mia_scores
from obliviate.evaluation.rwku.prompts import icu
from obliviate.evaluation.rwku.probes import score_probe_sets
from obliviate.evaluation.rwku.utility import HEADLINE, UTILITY_SETS, score_utility
from obliviate.errors import UserError

FORMAT = "obliviate.rwku_eval/1"
FORGET_SETS = ("forget_fb", "forget_qa", "forget_aa")
NEIGHBOR_SETS = ("neighbor_fb", "neighbor_qa")


def parse_sets(spec: str | Sequence[str] | None, known: Sequence[str], what: str) -> list[str]:
    """A comma string or list of set names, checked against ``known``; "all" = every one,
    "none" / "" / None = no set."""
    parts = [p.strip() for p in (spec.split(",") if isinstance(spec, str) else spec or [])]
    parts = [p for p in parts if p and p.lower() != "none"]
    if parts == ["all"]:
        return list(known)
    unknown = [p for p in parts if p not in known]
    if unknown:
        raise UserError(f"RWKU {what} '{unknown[0]}' is not known; use all, none or some of {', '.join(known)}")
    return parts


def _pooled(tasks: dict, names: Sequence[str]) -> float:
    values = [item["rougeL_recall"] for name in names for item in tasks[name]["items"]]
    return float(np.mean(values)) if values else float("nan")


def score_target(model, tokenizer, data, target, *, ds_size, utility, use_prompt, engine, mia_batch,
                 max_length, timer, utility_size=None) -> dict[str, dict]:
    """The task records of one target, keyed by set name; utility sets are cut at
    ``utility_size`` (default: ``ds_size``)."""
    cut = (lambda rows: rows[:ds_size]) if ds_size else (lambda rows: rows)
    utility_cut = (lambda rows: rows[:utility_size]) if utility_size else cut
    with timer("probes"):
        probes = {name: cut(rwku_data.load_set(data, target, name)) for name in FORGET_SETS + NEIGHBOR_SETS}
        tasks = score_probe_sets(model, tokenizer, probes, use_prompt=use_prompt, **engine)
    with timer("mia"):
        for name in ("forget_mia", "retain_mia"):
            texts = [icu(r["text"], r, use_prompt) for r in cut(rwku_data.load_set(data, target, name))]
            items = mia_scores(model, tokenizer, texts, batch_size=mia_batch, max_length=max_length,
                               precision=engine["precision"])
            tasks[name] = {"n": len(items), "aggregates": mia_aggregates(items), "items": items}
    for name in utility:
        records = rwku_data.load_set(data, target, name, required=False)
        if records is None:
            logger.info("RWKU %s: no %s set in %s; skipped", target.folder, name, data)
            continue
        with timer(f"utility {name}"):
            tasks[name] = score_utility(model, tokenizer, name, utility_cut(records), use_prompt=use_prompt, **engine)
    return tasks


def target_summary(tasks: dict) -> dict[str, float]:
    """The table's values of one target (ROUGE / accuracies as fractions, LOSS x100)."""
    row = {name: tasks[name]["aggregates"]["rougeL_recall"] for name in FORGET_SETS + NEIGHBOR_SETS}
    row["forget_all"], row["neighbor_all"] = _pooled(tasks, FORGET_SETS), _pooled(tasks, NEIGHBOR_SETS)
    for name, label in (("forget_mia", "fm"), ("retain_mia", "rm")):
        for key, value in tasks[name]["aggregates"].items():
            row[f"mia_{label}_{key}"] = value
    for name in UTILITY_SETS:
        if name in tasks:
            row[name] = tasks[name]["aggregates"][HEADLINE[name]]
    return row


def average_rows(rows: dict[str, dict]) -> dict[str, float]:
    """Per key, the mean over the targets that have it (utility sets may exist for some only)."""
    keys = dict.fromkeys(k for row in rows.values() for k in row)
    return {k: float(np.nanmean([row[k] for row in rows.values() if k in row])) for k in keys}


def evaluate_rwku(
    model,
    tokenizer,
    *,
    data: str | Path = rwku_data.HUB_NAME,
    targets: str | Sequence[str | int] = "1",
    ds_size: int | None = None,
    utility: str | Sequence[str] | None = "all",
    utility_size: int | None = None,
    use_prompt: bool = False,
    batch_size: int = 32,
    max_length: int = 2048,
    precision: str = "auto",
    decode: str = "auto",
    decode_batch_size: int | None = None,
    cache: bool | str | Path = True,
    out_dir: str | Path | None = None,
    model_name: str | None = None,
) -> dict:
    """Evaluate ``model`` on RWKU ``targets`` of ``data``; return (and write to ``out_dir``)
    the result envelope: ``rwku_eval.json``, ``rwku_summary.json``, ``rwku_report.md``.

    ``ds_size``: the first N records of every set (probes, MIA, utility) per target.
    ``utility_size``: the first N records of each utility set instead (BBH and fluency decode
    256 tokens per item, so a full probe set with a few utility items is the cheap setting).
    ``utility``: which of mmlu, bbh, truthfulqa, triviaqa, fluency ("all", "none" or a comma
    list); a set absent from ``data`` is skipped with a log line. ``use_prompt``: RWKU's ICU
    prefix before every prompt and MIA text (probes, MIA, utility sets, as RWKU's eval_*.py).
    ``decode``, ``decode_batch_size``: the greedy decoding path and the prompts decoded together
    (engine.score_and_generate).
    """
    from obliviate.evaluation.rwku.report import render_rwku

    for key, size in (("ds_size", ds_size), ("utility_size", utility_size)):
        if size is not None and size < 1:
            raise UserError(f"RWKU {key} must be a positive integer or None, got {size}")
    timer = StageTimer()
    with timer("load data"):
        chosen = rwku_data.resolve_targets(data, targets)
        sets = parse_sets(utility, UTILITY_SETS, "utility set")
    with timer("fingerprint"):
        fingerprint = model_fingerprint(model)  # recorded in the config, cache or not
        settings = {"precision": resolve_precision(model, precision), "max_length": max_length}
        result_cache = result_cache_for(model, tokenizer, cache, settings, fingerprint)
    progress = ProgressLog("RWKU", unit="prompts", started=timer.started)
    engine = {"batch_size": batch_size, "max_length": max_length, "precision": precision,
              "cache": result_cache, "progress": progress, "decode": decode,
              "decode_batch_size": decode_batch_size}
    tasks, rows = {}, {}
    for target in chosen:
        logger.info("RWKU target %d %s", target.id, target.name)
        target_tasks = score_target(model, tokenizer, data, target, ds_size=ds_size, utility=sets,
                                    use_prompt=use_prompt, engine=engine, mia_batch=min(batch_size, 8),
                                    max_length=max_length, timer=timer, utility_size=utility_size)
        rows[target.folder] = target_summary(target_tasks)
        tasks.update({f"{target.folder}/{name}": task for name, task in target_tasks.items()})
    name = model_name or getattr(getattr(model, "config", None), "_name_or_path", "model")
    summary = {"model": name, "targets": [t.name for t in chosen], **average_rows(rows), "per_target": rows}
    config = {"model": name, "model_fingerprint": fingerprint, "data": str(data),
              "targets": [t.folder for t in chosen], "ds_size": ds_size, "utility": sets,
              "utility_size": utility_size,
              "use_prompt": use_prompt, "batch_size": batch_size, "max_length": max_length, "precision": precision,
              "decode": decode, "decode_batch_size": decode_batch_size, "cache": str(result_cache.path) if result_cache is not None else None,
              "decoding": "greedy, 30 new tokens, stop at EOS / end of turn / newline",
              "rouge": "rwku (pltrdy rouge 1.0.1 semantics)"}
    result = build_envelope(benchmark="rwku", format=FORMAT, model=model, precision=precision, config=config,
                            n_samples={key: task["n"] for key, task in tasks.items()}, timings=timer.finish(),
                            summary=summary, tasks=tasks,
                            extra={"cache_hits": result_cache.hits if result_cache is not None else 0})
    if out_dir is not None:
        write_outputs(out_dir, {"rwku_eval.json": result, "rwku_summary.json": summary,
                                "rwku_report.md": render_rwku(result)})
    return result
