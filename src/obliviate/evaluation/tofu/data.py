"""TOFU's evaluation sets: the four tasks, their splits, and reading a split."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from obliviate.data.loaders import load_records
from obliviate.data.request import QAItem, items_from_records
from obliviate.errors import UserError
from obliviate.io import written_as_path

TASK_KINDS = ("forget", "retain", "options")


@dataclass(frozen=True)
class TofuTask:
    name: str
    split: str  # may contain {forget}
    kind: str  # forget | retain | options
    title: str


TASKS = (
    TofuTask("forget", "{forget}_perturbed", "forget", "Forget"),
    TofuTask("retain", "retain_perturbed", "retain", "Retain"),
    TofuTask("real_authors", "real_authors_perturbed", "options", "Real Authors"),
    TofuTask("world_facts", "world_facts_perturbed", "options", "World Facts"),
)
UTILITY_TASKS = ("retain", "real_authors", "world_facts")


def load_split(data: str | Path, split: str) -> list[dict]:
    """Records of one TOFU split: ``<data>/<split>.json`` (or .jsonl / .parquet) for a local
    directory, else ``datasets.load_dataset(data, split, split="train")``."""
    path = Path(data).expanduser()
    if path.is_dir():
        for suffix in (".json", ".jsonl", ".parquet"):
            if (path / f"{split}{suffix}").is_file():
                return load_records(str(path / f"{split}{suffix}"))
        raise UserError(f"{path / (split + '.json')}: TOFU split '{split}' not found in {path}; "
                        "give a directory holding the TOFU files (e.g. ../shared/data/tofu)")
    if written_as_path(data):
        raise UserError(f"{data}: no such TOFU directory; check the path")
    return load_records(str(data), config=split, split="train")


def load_items(data: str | Path, split: str, ds_size: int | None = None) -> list[QAItem]:
    """A split as :class:`QAItem` s (first ``ds_size`` items when given, as legacy TOFU's 300)."""
    records = load_split(data, split)
    if ds_size is not None:
        records = records[:ds_size]
    return items_from_records(records, f"{data} [{split}]")


def holdout_split(forget_split: str) -> str:
    """The MIA non-member split of a forget split (``forget01`` -> ``holdout01``)."""
    return forget_split.replace("forget", "holdout") if "forget" in forget_split else f"holdout_{forget_split}"


def load_task_items(data: str | Path, forget_split: str, ds_size: int | None) -> dict[str, tuple[str, list[QAItem]]]:
    """``{task name: (split, items)}`` of the four tasks."""
    return {task.name: (split, load_items(data, split, ds_size))
            for task in TASKS for split in [task.split.format(forget=forget_split)]}


def try_items(data: str | Path, split: str, ds_size: int | None) -> list[QAItem] | None:
    """A split's items, or None when it is absent (the holdout set is optional)."""
    try:
        return load_items(data, split, ds_size)
    except UserError:
        return None
