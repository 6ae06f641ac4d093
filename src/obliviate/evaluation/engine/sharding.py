"""Sharing one engine call's work among the processes of a launch (data parallel).

Inside :func:`sharded`, every process makes the same engine calls; each builds the whole plan
(tokenisation is cheap), runs the scoring groups ``rank, rank + processes, ...`` and their
generations, and the results of all processes are gathered, so every process returns the whole
result. Groups are those one process would form, with the same shared prefix, so each score
comes from the same batch, bit for bit, as in one process; generations decode in other
batches, which can change them only by the rounding that ``batch_size`` changes too. The
collectives come from the caller (:mod:`obliviate.evaluation.distributed` uses accelerate's).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Shard:
    """This process's place in a launch and the two collectives the engine needs."""

    rank: int
    processes: int
    all_gather: Callable[[Any], list[Any]]  # every process's object, in rank order
    broadcast: Callable[[Any], Any]  # process 0's object


_CURRENT: ContextVar[Shard | None] = ContextVar("obliviate_engine_shard", default=None)


def current_shard() -> Shard | None:
    """The shard engine calls use now (None: one process computes everything)."""
    return _CURRENT.get()


@contextlib.contextmanager
def sharded(shard: Shard | None) -> Iterator[Shard | None]:
    """Engine calls inside share their work as ``shard`` says (None or one process: no sharing)."""
    token = _CURRENT.set(shard if shard is not None and shard.processes > 1 else None)
    try:
        yield shard
    finally:
        _CURRENT.reset(token)
