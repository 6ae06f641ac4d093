"""Stage bookkeeping: a stage is done when its marker exists, written last and atomically.

    book = StageBook(Path("runs/bench-tofu"))
    record = book.run("eval-target", fingerprint, lambda: evaluate(...))

<bench>/stages/<name>.json is the marker: the stage's fingerprint (what it was computed from), its
wall time and its result (a small JSON value). A marker whose fingerprint differs from the one
asked for is stale: the stage runs again (its `reset` removes the old outputs first).
<bench>/stages.log.jsonl gets one line per start, end and reuse; the terminal one line each.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

from obliviate.io import atomic_write_json


def fingerprint(value) -> str:
    """A short hash of a JSON-able value (sorted keys)."""
    text = json.dumps(value, sort_keys=True, default=str, ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class NotDone(Exception):
    """A stage that is not done, met while only reporting."""


class StageBook:
    def __init__(self, root: Path, echo: Callable[[str], None] = print, dry: bool = False):
        self.root = Path(root)
        self.echo = echo
        self.dry = dry  # report only: a stage that is not done is not run (run() raises NotDone)
        self.ran: list[str] = []  # stages run (not reused) by this process, in order

    def marker(self, name: str) -> Path:
        return self.root / "stages" / f"{name}.json"

    def record(self, name: str) -> dict | None:
        path = self.marker(name)
        if not path.is_file():
            return None
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None  # unreadable marker: the stage counts as not done

    def log(self, event: str, name: str, **extra) -> None:
        path = self.root / "stages.log.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps({"time": _now(), "event": event, "stage": name, **extra}) + "\n")

    def run(self, name: str, key: str, work: Callable[[], object], reset: Callable[[], None] | None = None,
            reuse: Callable[[dict], bool] | None = None) -> dict:
        """Run `work` unless the marker of `name` is current: it holds fingerprint `key`, or, where
        the stage gives `reuse`, `reuse(marker)` says so. Returns the marker."""
        done = self.record(name)
        if done is not None and (reuse(done) if reuse is not None else done.get("fingerprint") == key):
            self.echo(f"[bench] {name}: done already ({done.get('wall_s', 0):.0f} s when it ran)")
            self.log("reused", name)
            return done
        if self.dry:
            raise NotDone(name)
        if done is not None:
            self.echo(f"[bench] {name}: its inputs changed since it ran; redoing it")
            self.marker(name).unlink()
            if reset is not None:
                reset()
        self.echo(f"[bench] {name}: start")
        self.log("start", name)
        started, wall = _now(), time.perf_counter()
        result = work()
        wall = time.perf_counter() - wall
        record = {"stage": name, "fingerprint": key, "started": started, "finished": _now(), "wall_s": wall,
                  "result": result}
        atomic_write_json(self.marker(name), record)  # last: the stage is done only now
        self.log("end", name, wall_s=round(wall, 1))
        self.echo(f"[bench] {name}: done in {_duration(wall)}")
        self.ran.append(name)
        return record


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"
