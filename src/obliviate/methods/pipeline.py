"""The one run pipeline: every method, baseline or paper method, runs through `run(config)`.

    request -> load + place the model -> recipe (prepare -> train -> weight operation) -> save -> manifest

`run` owns what all methods share: the request and its warnings, the run directory (refused if it
already holds a run, unless resuming; created only once the request and the model have loaded, and
locked for the whole run so that a second run there is refused), the resolved config, loading the model and placing it on
the chosen device (`device=auto`: CUDA, else MPS, else CPU), the base weights' hash, saving every
model the recipe returns (process 0 only) and one manifest schema. A recipe is a function of a
`Run` that returns {name: model}: "model" is the result, other names (`model_alpha0.3`) are saved
beside it. Method-specific facts for the manifest go into `run.stats`, extra input files into
`run.inputs`.

    from obliviate.config import load_config
    from obliviate.methods.pipeline import run
    run_dir = run(load_config("examples/graddiff.yaml", ["method=npo"]))
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from obliviate.config import RunConfig, save_config
from obliviate.data.request import QAItem, UnlearningRequest, load_request, request_records
from obliviate.data.refusals import load_refusals, refusals_source
from obliviate.errors import UserError
from obliviate.hardware import process_state, resolve_device
from obliviate.io import atomic_write_text
from obliviate.methods.registry import get_method, methods
from obliviate.models import load_model, remove_stale_saves, save_model
from obliviate.objectives import OBJECTIVES, batch_slots, needs_retain
from obliviate.rundir import (CHECKPOINTS, MANIFEST, REQUEST_COPY, check_resume_config, check_run_dir,
                              check_started_from, discard_unstarted_run, lock_run_dir, prepare_run_dir, started_from,
                              weights_sha256, write_manifest)
from obliviate.training import no_retain_message, resolve_precision, train


#: the marker process 0 writes once a method's data is prepared (Run.main_first)
PREPARED = ".prepared"


@dataclass
class Run:
    """What a recipe works with. `train` runs one training stage in this run's directory
    (checkpoints, train log, resume) with this run's config."""

    config: RunConfig
    request: UnlearningRequest
    model: Any
    tokenizer: Any
    run_dir: Path
    device: torch.device
    resume: bool = False
    inputs: list[str] = field(default_factory=list)  # files the method read besides the request
    stats: dict = field(default_factory=dict)  # method-specific manifest entries
    lora_used: list[bool] = field(default_factory=list)  # per training stage (shared by dataclasses.replace)
    state: Any = None  # accelerate's PartialState of the launch (None: one process)

    @contextlib.contextmanager
    def main_first(self):
        """Process 0 runs the block first, then the others (which read what it cached): a
        method's data generation asks a model or a paid server once per launch, not once per
        process. The others wait on a marker file in the run directory, not in a collective
        (NCCL's would time out during a long generation), fail at once if process 0 failed, and
        print nothing of it (process 0 printed the progress and warnings)."""
        if self.state is None or self.state.num_processes <= 1:
            yield
            return
        from accelerate.utils import broadcast_object_list

        token = broadcast_object_list([uuid.uuid4().hex if self.state.is_main_process else None])[0]
        marker = self.run_dir / f"{PREPARED}-{token}"
        if self.state.is_main_process:
            for stale in self.run_dir.glob(f"{PREPARED}-*"):  # an earlier launch's
                stale.unlink(missing_ok=True)
            outcome = "failed"
            try:
                yield
                outcome = "done"
            finally:
                atomic_write_text(marker, outcome)
            return
        while not marker.exists():
            time.sleep(0.5)
        if marker.read_text(encoding="utf-8") != "done":
            raise UserError("process 0 failed while preparing the method's data (its error is above); fix that "
                            "and rerun")
        with contextlib.redirect_stdout(io.StringIO()):  # process 0 has said it all (progress, warnings)
            yield

    def train(self, model=None, *, forget: list[QAItem], retain: list[QAItem] = (), objective: str | None = None):
        """One training stage from `model` (default: the run's model); returns the trained model."""
        self.lora_used.append(self.config.train.lora.enabled)  # a recipe may switch it (sku.full_finetune)
        return train(self.model if model is None else model, self.tokenizer, forget=list(forget),
                     retain=list(retain), config=self.config, output_dir=self.run_dir, objective=objective,
                     resume=self.resume)


def run(config: RunConfig, *, resume: bool = False, model=None, tokenizer=None,
        request: UnlearningRequest | dict | None = None) -> Path:
    """Run config.method on config.model and config.request; return the run directory.
    `model`/`tokenizer`: an already loaded model to start from instead of loading config.model;
    `request`: a request object or mapping to use instead of the file config.request names.
    `resume`: the saved config.yaml must match `config` but for rundir.RESUME_SAFE keys."""
    started = time.perf_counter()
    method = get_method(config.method)
    device = resolve_device(config.device)
    state = process_state(config.device)
    in_memory = request is not None
    if not isinstance(request, UnlearningRequest):  # bad input is refused before anything is written
        request = load_request(config.request if request is None else request)
    if in_memory:  # its items are written beside the run: config.yaml names that file, so it reruns
        config = dataclasses.replace(config, request=str(Path(config.output_dir) / REQUEST_COPY))
    _check_request(config, method, request)
    # before minutes of model loading; writes nothing
    check_run_dir(config.output_dir, resume=resume, probe_lock=state.is_main_process)
    if resume:
        check_resume_config(config.output_dir, config.to_dict())
        _say_what_resumes(Path(config.output_dir))
    if model is None:
        model, tokenizer = load_model(config.model, trust_remote_code=config.trust_remote_code)
    created = not Path(config.output_dir).exists()  # an empty folder the user made is not removed
    fresh = not resume and not (Path(config.output_dir).is_dir() and any(Path(config.output_dir).iterdir()))
    # one lock per launch: process 0 holds it, the others wait until it has it
    lock = lock_run_dir(config.output_dir, resume=resume) if state.is_main_process else None
    failed = False
    try:
        state.wait_for_everyone()
        run_dir = prepare_run_dir(config.output_dir, resume=resume)
        return _locked_run(config, method, request, model, tokenizer, run_dir, device, state, resume, started)
    except BaseException:  # a refusal, a crash or Ctrl-C before anything worth keeping was written
        failed = True
        raise
    finally:
        if lock is not None and failed and fresh:
            discard_unstarted_run(config.output_dir, lock, created=created)  # nothing to block the rerun
        elif lock is not None:
            lock.release()


def _check_request(config: RunConfig, method, request: UnlearningRequest) -> None:
    """The refusals file an IDK-DPO / RT run trains towards, read before the model loads (training
    reads it again), and the retain items a retain term needs: a bad request fails in seconds, not
    after the load."""
    if request.answers_are_refusals and not method.refusal_answers:  # first: the other advice would not help
        takers = ", ".join(sorted(name for name, m in methods().items() if m.refusal_answers))
        raise UserError(f"method '{config.method}' on a request whose answers are refusals (rwku forget: refusals): "
                        "it would unlearn the refusals, or prefer another refusal to them; use rwku forget: probes "
                        f"for it (or use {takers} on this request)")
    if _uses_refusals(config) and config.objective.refusal_draw == "own" and not request.answers_are_refusals:
        raise UserError("objective.refusal_draw=own trains each question towards its own answer, a refusal only in "
                        "an rwku forget: refusals request; this request's answers are facts: use each_epoch or once")
    for source in _refusals_file(config, request):
        load_refusals(source)
    retain = (method.retain_items or (lambda request, config: request.retain))(request, config)
    if config.method in OBJECTIVES and needs_retain(config.method, config.objective) and not retain:
        raise UserError(no_retain_message(config.method))  # before the model loads and SNAP generates its data


def _warn_low_precision(model) -> None:
    """Weights held in bf16/fp16 (a model loaded so and passed to api.unlearn): an update below
    their resolution (lr 1e-5 on a weight of 0.01 is a relative 1e-3, bf16 resolves 4e-3) is lost,
    and most of an unlearning run's are. The command line loads fp32 master weights."""
    low = {str(t.dtype).removeprefix("torch.") for t in model.parameters()
           if t.dtype in (torch.bfloat16, torch.float16)}
    if low:
        print(f"[obliviate] warning: the model's weights are {', '.join(sorted(low))}: updates smaller than their "
              "resolution are lost (most of an unlearning run's); load it in float32 (torch_dtype=torch.float32) "
              "and let train.precision=auto or bf16 run the matmuls in bf16", flush=True)


def _uses_refusals(config: RunConfig) -> bool:
    return config.method in OBJECTIVES and "forget_refusal" in batch_slots(config.method, config.objective)


def _generator_files(config: RunConfig) -> list[str]:
    """A local generation model's weight files (generation.model): a resumed run refuses one
    retrained since it started, as it refuses changed base weights, instead of training on
    data prepared by two different models."""
    gen = config.generation
    if gen.backend != "local" or not gen.model or not Path(gen.model).is_dir():
        return []
    return sorted(str(path) for path in Path(gen.model).glob("*.safetensors"))


def _refusals_file(config: RunConfig, request: UnlearningRequest) -> list[str | None]:
    """The refusals an IDK-DPO / RT run draws from: [file], [None] for the built-in list, [] when
    it draws none (another method, or refusal_draw=own: each item's own answer)."""
    if not _uses_refusals(config) or config.objective.refusal_draw == "own":
        return []
    return [refusals_source(config.objective.refusals, request.refusals)]


def request_sha256(request: UnlearningRequest) -> str:
    """The request's items (every set, the passages), whether read from files or given in memory."""
    text = json.dumps(_without_unset(request.to_dict()), sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _without_unset(value):
    """Unset fields (None, empty) dropped at every depth: an optional field a later version adds
    to the items does not change the hash of a request that does not use it."""
    if isinstance(value, dict):
        return {k: _without_unset(v) for k, v in value.items() if v not in (None, [], {}, "")}
    return [_without_unset(v) for v in value] if isinstance(value, list) else value


def _say_what_resumes(run_dir: Path) -> None:
    """--resume on a finished run is refused (it would train past max_steps and rewrite the
    manifest); on a directory with no checkpoint yet it starts afresh, and says so."""
    if (run_dir / MANIFEST).is_file():
        raise UserError(f"output_dir '{run_dir}' holds a finished run ({MANIFEST} is written last): nothing to "
                        "resume; use its model, or drop --resume and choose another output_dir")
    if not (run_dir / CHECKPOINTS).is_dir():
        print(f"[obliviate] --resume: no checkpoint in {run_dir} yet; starting from the beginning", flush=True)


def _locked_run(config, method, request, model, tokenizer, run_dir, device, state, resume, started) -> Path:
    if state.is_main_process:
        for stale in remove_stale_saves(run_dir):  # a save killed before its rename
            print(f"[obliviate] removed {stale}, left by an interrupted save", flush=True)
        for warning in request.warnings:
            print(f"[obliviate] warning: {warning}", flush=True)
        if config.request == str(run_dir / REQUEST_COPY):
            atomic_write_text(run_dir / REQUEST_COPY, json.dumps(request_records(request), ensure_ascii=False))
        save_config(config, run_dir / "config.yaml")
        _warn_low_precision(model)
    model.to(device)
    base_weights = weights_sha256(model)  # before training changes the weights in place
    weights_dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
    request_sha = request_sha256(request)
    if state.is_main_process:
        refusals = [source for source in _refusals_file(config, request) if source]  # a file: an input to keep
        inputs = [*request.sources, *_generator_files(config), *refusals]
        check_started_from(run_dir, started_from(base_weights, inputs, request_sha), resume)
    context = Run(config, request, model, tokenizer, run_dir, device, resume, state=state)
    models = method.recipe(context)
    if not isinstance(models, dict) or "model" not in models:
        raise UserError(f"method '{config.method}': its recipe returned {type(models).__name__} "
                        f"{sorted(models) if isinstance(models, dict) else ''}; it must return a dict of models "
                        "with a 'model' key ({'model': run.model})")
    if state.is_main_process:
        saved = {name: weights_sha256(save_model(m, tokenizer, run_dir / name)) for name, m in models.items()}
        weights = {name: weights_sha256(m) for name, m in models.items()}  # the base's kind of hash: comparable
        write_manifest(run_dir, {
            "method": config.method,
            "seed": config.seed,
            "device": str(next(models["model"].parameters()).device),
            "precision": resolve_precision(config.train.precision, device.type),
            "lora": any(context.lora_used) if context.lora_used else config.train.lora.enabled,
            "base_model": {"name": config.model, "weights_sha256": base_weights, "dtype": weights_dtype},
            "request": {"name": request.name, "forget": len(request.forget), "retain": len(request.retain),
                        "sha256": request_sha},
            "inputs": [*request.sources, *context.inputs],
            "models": saved,  # sha256 of each saved folder's files
            "models_weights_sha256": weights,  # of its tensors, as base_model.weights_sha256
            "wall_time_s": time.perf_counter() - started,
            "method_stats": context.stats,
        })
    return run_dir
