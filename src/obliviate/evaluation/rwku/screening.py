"""Knowledge screening: which RWKU targets does a model know before any unlearning?

Unlearning a target the model never knew measures nothing (SmolLM2-135M answers 0-15% of
FB / QA probes of the targets we tried), so a benchmark on a small model first picks the
best-known targets. Score of a target = pooled mean ROUGE-L recall (RWKU semantics) of its
forget FB + QA probes, the same generations :mod:`.probes` scores; targets are ranked by it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from obliviate.data import rwku as rwku_data
from obliviate.evaluation.engine import resolve_precision
from obliviate.evaluation.engine.result_cache import result_cache_for
from obliviate.evaluation.rwku.probes import score_probe_sets

SCREEN_SETS = ("forget_fb", "forget_qa")


def screen_targets(
    model,
    tokenizer,
    *,
    data: str | Path = rwku_data.HUB_NAME,
    targets: str | Sequence[str | int] = "1-200",
    ds_size: int | None = None,
    batch_size: int = 32,
    max_length: int = 2048,
    precision: str = "auto",
    cache: bool | str | Path = True,
    progress: Callable[[int, int], None] | None = None,
) -> list[dict]:
    """Rank ``targets`` by how much ``model`` knows them, best known first.

    Each row: ``{"rank", "id", "name", "folder", "forget_fb", "forget_qa", "known", "n"}`` with
    ``known = mean over the target's FB + QA probes of ROUGE-L recall`` (fractions; ``n`` probes
    scored, the first ``ds_size`` of each set). ``progress(done, total)`` is called after each
    target; without it a tqdm bar is shown on a terminal.
    """
    chosen = rwku_data.resolve_targets(data, targets)
    settings = {"precision": resolve_precision(model, precision), "max_length": max_length}
    engine = {"batch_size": batch_size, "max_length": max_length, "precision": precision,
              "cache": result_cache_for(model, tokenizer, cache, settings)}
    bar = None
    if progress is None:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(chosen), desc="screening RWKU targets", unit="target", disable=None)
    rows = []
    for done, target in enumerate(chosen, start=1):
        sets = {name: rwku_data.load_set(data, target, name)[:ds_size] for name in SCREEN_SETS}
        tasks = score_probe_sets(model, tokenizer, sets, **engine)
        pooled = [item["rougeL_recall"] for name in SCREEN_SETS for item in tasks[name]["items"]]
        rows.append({"id": target.id, "name": target.name, "folder": target.folder,
                     **{name: tasks[name]["aggregates"]["rougeL_recall"] for name in SCREEN_SETS},
                     "known": float(np.mean(pooled)) if pooled else 0.0, "n": len(pooled)})
        if bar is not None:
            bar.update(1)
        else:
            progress(done, len(chosen))
    if bar is not None:
        bar.close()
    rows.sort(key=lambda row: (-row["known"], row["id"]))
    return [{"rank": rank, **row} for rank, row in enumerate(rows, start=1)]
