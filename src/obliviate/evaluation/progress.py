"""Progress lines and stage timings of long evaluations.

Progress goes to the ``obliviate.evaluation`` logger (the command line prints it on stderr); inside
``with progress_bars():`` (what ``api.evaluate`` does by default) every ProgressLog also draws a
``tqdm.auto`` bar, a widget in a notebook and a text bar in a terminal.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import time

logger = logging.getLogger("obliviate.evaluation")

#: Seconds between two progress lines: enough to see a run move, few enough for a log file.
PROGRESS_EVERY_S = 30.0
_BARS = contextvars.ContextVar("obliviate_progress_bars", default=False)


@contextlib.contextmanager
def progress_bars(enabled: bool = True):
    """Within this block, ProgressLog also draws tqdm.auto progress bars."""
    token = _BARS.set(enabled)
    try:
        yield
    finally:
        _BARS.reset(token)


class ProgressLog:
    """A ``progress(done, total)`` callback for the engine: logs ``"<label>: done/total <unit>
    (N s)"`` at the first call, then at most once every ``every`` seconds, and always when
    ``done == total`` (so the last line says the work is complete)."""

    def __init__(self, label: str, unit: str = "questions scored", *, every: float = PROGRESS_EVERY_S,
                 started: float | None = None, log: logging.Logger = logger):
        self.label, self.unit, self.every, self.log = label, unit, every, log
        self.started = time.perf_counter() if started is None else started
        self.last: float | None = None
        self.bar = None

    def __call__(self, done: int, total: int) -> None:
        now = time.perf_counter()
        if _BARS.get():
            self._draw(done, total)
        if self.last is None or now - self.last >= self.every or done == total:
            self.last = now
            self.log.info("%s: %d/%d %s (%.0f s)", self.label, done, total, self.unit, now - self.started)

    def _draw(self, done: int, total: int) -> None:
        if self.bar is None or self.bar.total != total or done < self.bar.n:
            from tqdm.auto import tqdm

            if self.bar is not None:
                self.bar.close()
            self.bar = tqdm(total=total, desc=self.label, unit=self.unit.split()[0], leave=True)
        self.bar.update(done - self.bar.n)
        if done >= total:
            self.bar.close()
            self.bar = None


class StageTimer:
    """Wall seconds per named stage, in the order the stages ran.

    ``with timer("load data"): ...`` adds to that stage; :meth:`add` merges timings measured
    elsewhere (the engine's phases); :meth:`finish` adds ``total`` since construction."""

    def __init__(self):
        self.started = time.perf_counter()
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, stage: str):
        tick = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[stage] = self.seconds.get(stage, 0.0) + time.perf_counter() - tick

    def add(self, timings: dict[str, float], prefix: str = "") -> None:
        for stage, seconds in timings.items():
            self.seconds[prefix + stage] = self.seconds.get(prefix + stage, 0.0) + seconds

    def finish(self) -> dict[str, float]:
        """The stages and ``total``, rounded to milliseconds."""
        self.seconds["total"] = time.perf_counter() - self.started
        return {stage: round(seconds, 3) for stage, seconds in self.seconds.items()}
