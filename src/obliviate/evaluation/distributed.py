"""Evaluation over several processes (accelerate data parallel), with the numbers of one.

Under ``accelerate launch`` (one process per GPU, or CPU processes over gloo), every process
runs the same evaluation inside :func:`data_parallel`; each engine call is then shared among
the processes (each scores whole batches of its own, :mod:`obliviate.evaluation.engine.sharding`)
and gathered, so every process holds the whole result and process 0 writes it::

    from obliviate.evaluation.distributed import data_parallel
    with data_parallel() as state:
        model.to(state.device)
        tofu.evaluate_tofu(model, tokenizer, out_dir=out if state.is_main_process else None, ...)

    accelerate launch --num_processes 4 my_eval.py

`obliviate eval` and ``obliviate.api.evaluate`` do this themselves under a launch::

    accelerate launch --num_processes 4 -m obliviate eval --model runs/npo/model --data DIR

Scores are bit-identical to one process (same batches); generations are too, up to the
rounding that a different decoding batch can bring (the same as changing ``batch_size``).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

from obliviate.evaluation.engine.sharding import Shard, sharded
from obliviate.hardware import process_state


def _shard(state) -> Shard:
    from accelerate.utils import broadcast_object_list, gather_object

    def all_gather(value):
        return gather_object([value])

    def broadcast(value):
        return broadcast_object_list([value], from_process=0)[0]

    return Shard(state.process_index, state.num_processes, all_gather, broadcast)


def launched() -> bool:
    """True inside a launch of several processes (accelerate launch, torchrun: WORLD_SIZE > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


@contextlib.contextmanager
def data_parallel(state=None, device: str = "auto") -> Iterator:
    """Share the engine calls made inside among the processes of this launch; yields
    accelerate's ``PartialState`` (``device``, ``process_index``, ``is_main_process``), by
    default :func:`process_state`. One process: no change."""
    state = state if state is not None else process_state(device)
    with sharded(_shard(state) if state.num_processes > 1 else None):
        yield state
    state.wait_for_everyone()  # process 0 has written before any process goes on
