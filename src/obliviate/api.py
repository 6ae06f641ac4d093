"""The Python API, mirroring the command line; it takes the model objects a notebook already holds.

    import obliviate.api as ob
    model, tokenizer = ...                                         # any loaded causal LM and its tokenizer
    run = ob.unlearn(model, tokenizer, "src/obliviate/data/demo/demo_request.json", method="npo", output_dir="runs/npo",
                     learning_rate=2e-5, num_train_epochs=1)       # HF names or dotted keys ("train.max_steps")
                                                                   # model is trained in place (copy.deepcopy to keep it)
    run.run_dir, run.model_dir, run.manifest                       # runs/npo/model is a normal HF directory
    result = ob.evaluate(model, tokenizer, benchmark="tofu", data="../shared/data/tofu", forget_split="forget01")
    result.summary["model_utility"], result.paths, result.output_dir   # progress bars show in a notebook

    config = ob.load_config("run.yaml", ["method=ulmr", "ulmr.alpha=0.5"])   # the config form
    run_dir = ob.unlearn(config).run_dir
    ob.evaluate(str(run_dir / "model"), benchmark="tofu", config="eval.yaml")  # a name or directory works too
    ob.methods(), ob.benchmarks()                                  # what is registered, with one-line summaries
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import logging
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from obliviate.config import HF_NAMES, RunConfig, load_config, load_eval_config
from obliviate.errors import UserError
from obliviate.io import flatten_keys

__all__ = ["load_config", "unlearn", "evaluate", "methods", "benchmarks", "UnlearnResult", "EvalResult"]


@dataclass
class UnlearnResult:
    """What `unlearn` made. `result / "model"` and `os.fspath(result)` still read as the run directory."""

    run_dir: Path
    model_dir: Path
    manifest: dict = field(repr=False)

    def __truediv__(self, other) -> Path:
        return self.run_dir / other

    def __fspath__(self) -> str:
        return str(self.run_dir)

    def __str__(self) -> str:
        return str(self.run_dir)


@dataclass
class EvalResult:
    """What `evaluate` wrote: the summary table, the files, and the whole result envelope
    (`result["summary"]`, `result["tasks"]`: the envelope's keys read as before)."""

    summary: dict
    paths: list[Path]
    output_dir: Path
    benchmark: str
    envelope: dict = field(repr=False)

    def __getitem__(self, key: str):
        return self.envelope[key]

    def __contains__(self, key: str) -> bool:
        return key in self.envelope

    def get(self, key: str, default=None):
        return self.envelope.get(key, default)


def unlearn(model=None, tokenizer=None, request=None, *, method: str | None = None, output_dir: str | None = None,
            config: RunConfig | str | Path | None = None, resume: bool = False, **options) -> UnlearnResult:
    """Run an unlearning method. Either `unlearn(config)` (a RunConfig) or with a loaded model:
    `unlearn(model, tokenizer, request, method="npo", output_dir="runs/npo", learning_rate=2e-5)`.
    `model`: a loaded model (then `tokenizer` too) or a hub id / directory; `request`: a file, a
    mapping ({"forget": [...], "retain": [...]}) or an UnlearningRequest; `config`: a RunConfig or a
    YAML file under the keywords; `options`: HF names (config.HF_NAMES) or dotted config keys
    (`**{"train.max_steps": 2}`), or whole sections (`ulmr={"alpha": 0.5}`).

    A loaded `model` is trained **in place**: afterwards it holds the unlearned weights (the same
    as run_dir/model). To keep the original, pass a copy: `unlearn(copy.deepcopy(model), ...)`.
    It comes back in eval mode with the caller's requires_grad flags and config.use_cache; the
    global random generators (torch, numpy, random) are left seeded with `seed`, as the
    transformers Trainer leaves them. A request given in memory is kept as run_dir/request.json."""
    _check_versions()
    from obliviate.methods.pipeline import run

    if isinstance(model, RunConfig):
        config, model = model, None
    loaded = model is not None and not isinstance(model, (str, Path))
    if loaded and tokenizer is None:
        raise UserError("unlearn: a loaded model needs its tokenizer; pass unlearn(model, tokenizer, request, ...)")
    if loaded:
        _check_loaded(model, "unlearn")
        _check_tokenizer(tokenizer)
        if request is None:
            print("[obliviate] warning: unlearn: no request given: unlearning the built-in demo request "
                  "(fictitious authors); pass request=...", flush=True)
    given = options or method or output_dir or request is not None or model is not None
    if isinstance(config, RunConfig) and not given:
        resolved = config  # nothing beside it: the config as given
    else:
        if isinstance(config, RunConfig) and method is not None and method != config.method:
            config = _without_presets(config)  # the new method's presets, not the old one's
        pairs = [(HF_NAMES.get(key, key), value) for key, value in options.items()]
        pairs += [(key, value) for key, value in (("method", method), ("output_dir", output_dir)) if value is not None]
        if model is not None and not loaded:
            pairs.append(("model", str(model)))
        elif loaded:
            pairs.append(("model", getattr(model, "name_or_path", None) or "loaded model"))
        if isinstance(request, (str, Path)):
            pairs.append(("request", str(request)))
        flat_base = flatten_keys(config.to_dict()) if isinstance(config, RunConfig) else (
            config if isinstance(config, dict) else None)
        resolved = load_config(None if flat_base is not None else config, pairs, base=flat_base)
    request_obj = None if request is None or isinstance(request, (str, Path)) else request
    with _padding_with_eos(tokenizer if loaded else None):
        run_dir = run(resolved, resume=resume, model=model if loaded else None,
                      tokenizer=tokenizer if loaded else None, request=request_obj)
    manifest_path = run_dir / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    return UnlearnResult(run_dir=run_dir, model_dir=run_dir / "model", manifest=manifest)


def evaluate(model, tokenizer=None, *, benchmark: str | None = None, output_dir: str | Path | None = None,
             device: str | None = None, precision: str | None = None, trust_remote_code: bool | None = None,
             config: str | Path | dict | None = None, progress: bool = True, **options) -> EvalResult:
    """Evaluate a model on a registered benchmark (default tofu). `model`: a loaded model (with its
    tokenizer, else the tokenizer of model.name_or_path is loaded) or a hub id / directory.
    `options`: the benchmark's own (TOFU: data, forget_split, retain_logs, ...), over those of
    `config` (an eval YAML: an `eval:` section or a flat mapping; docs/configuration.md).
    `output_dir` default: inside the run for a run's model (runs/x/eval-tofu), else
    runs/eval-<name>-<benchmark>; numbered (-2, -3, ...) so that no evaluation overwrites another.
    `progress`: tqdm.auto progress bars (a widget in a notebook)."""
    _check_versions()
    from obliviate.evaluation.progress import progress_bars
    from obliviate.evaluation.registry import build_options, get_benchmark
    from obliviate.evaluation.results import CLAIM, check_output_dir
    from obliviate.hardware import resolve_precision

    settings = {"benchmark": "tofu", "device": "auto", "precision": "auto", "trust_remote_code": False,
                "output_dir": None}
    file_options = load_eval_config(config) if config is not None else {}
    settings.update({key: file_options.pop(key) for key in list(file_options) if key in settings})
    file_options.pop("model", None)
    given = {"benchmark": benchmark, "device": device, "precision": precision,
             "trust_remote_code": trust_remote_code, "output_dir": output_dir}
    settings.update({key: value for key, value in given.items() if value is not None})
    if settings["output_dir"] is not None and not str(settings["output_dir"]).strip():
        raise UserError("output_dir is empty (it would write into the current directory); name a folder, or leave "
                        "it out for a fresh one")
    spec = get_benchmark(settings["benchmark"])
    own = {f.name for f in dataclasses.fields(spec.options)}  # `request` is an option of harmful and request
    if ({"method", "train", "objective", "request"} - own) & set(file_options):
        raise UserError(f"{config}: a run config without an 'eval:' section; add eval: with the evaluation's "
                        "options (docs/configuration.md, Evaluation config), or pass an eval YAML")
    try:
        built = build_options(spec, {**file_options, **options}, where=f"benchmark '{spec.name}' option")
        if spec.check is not None:
            spec.check(built)  # a wrong data path is told before a model loads for minutes
    except UserError as err:
        raise _naming_file(err, config, {k: v for k, v in file_options.items() if k not in options}) from None
    resolve_precision(settings["precision"], key="precision")  # refuse a bad value before loading anything
    _warn_other_prompt_format(model, built)
    if settings["output_dir"] is not None:
        check_output_dir(settings["output_dir"])
    with _processes(settings["device"]) as state:
        model, tokenizer, name = _place(model, tokenizer, settings, device if state is None else _device_name(state.device))
        with _output_dir(settings["output_dir"], name, spec.name, state) as out:
            started = time.time() - 1  # file systems with coarse timestamps
            try:
                with progress_bars(progress and (state is None or state.is_main_process)):
                    envelope = spec.run(model, tokenizer, built, out_dir=out, model_name=name,
                                        precision=settings["precision"])
                if not isinstance(envelope, dict):
                    raise UserError(f"benchmark '{spec.name}': its run returned {type(envelope).__name__}; it must "
                                    "return the result dict ({'summary': ..., 'tasks': ...})")
            except BaseException:
                if out.is_dir() and not any(out.iterdir()):
                    out.rmdir()  # a folder claimed for this evaluation, still empty
                raise
            paths = sorted(p for p in out.rglob("*") if p.is_file() and p.stat().st_mtime >= started
                           and p.name != CLAIM)
            out = _main_process_value(state, out)
            paths = paths if state is None or state.is_main_process else []
    return EvalResult(summary=dict(envelope.get("summary", {})), paths=paths, output_dir=out, benchmark=spec.name,
                      envelope=envelope)


def _warn_other_prompt_format(model, options) -> None:
    """One warning line when a run's model (runs/x/model) is evaluated with another prompt_format
    than the run trained with (its config.yaml): the evaluation does not adopt the run's."""
    wanted = getattr(options, "prompt_format", None)
    saved = Path(model).parent / "config.yaml" if isinstance(model, (str, Path)) else None
    if wanted is None or saved is None or not Path(model).is_dir() or not saved.is_file():
        return
    from obliviate.io import parse_yaml

    try:
        trained = (parse_yaml(saved.read_text(encoding="utf-8"), str(saved)) or {}).get("prompt_format", "auto")
    except (OSError, UnicodeDecodeError, UserError, AttributeError):
        return
    if _format_tags(trained) != _format_tags(wanted):
        print(f"[obliviate] warning: {model} was trained with prompt_format {trained!r}, evaluated with {wanted!r}; "
              "give the same prompt_format to compare", flush=True)


def _format_tags(value):
    """What a prompt_format value prompts with (a preset's name and its text, or 'phi-1_5' and
    'PHI-1_5', are one format); the value itself where it names none."""
    from obliviate.prompt_formats import resolve_format

    try:
        return resolve_format(value).tags
    except UserError:
        return value


def _naming_file(err: UserError, config, from_file: dict) -> UserError:
    """A refusal of an option the eval config file gave (its key quoted in the message, or a path
    it gave there) names the file."""
    if not isinstance(config, str | Path):
        return err
    text = str(err)
    for key, value in from_file.items():
        if f"'{key}'" in text or (isinstance(value, str) and "/" in value and value in text):  # a path it gave
            return UserError(f"{config}: {text}")
    return err


@contextlib.contextmanager
def _processes(device: str):
    """Under `accelerate launch` / torchrun (WORLD_SIZE > 1): every process runs the evaluation
    inside `data_parallel` (each engine call shared, the numbers of one process); else None."""
    from obliviate.evaluation.distributed import data_parallel, launched

    if not launched():
        yield None
        return
    with data_parallel(device=device) as state:
        yield state


def _device_name(device) -> str:
    """A launch's torch.device as a `device` setting (accelerate's CPU device may be cpu:0)."""
    return "cpu" if device.type == "cpu" else str(device)


def _place(model, tokenizer, settings: dict, device: str | None):
    """(model, tokenizer, name): a name or directory loaded onto `device` (else settings' device),
    a loaded model moved there when a device is asked for or the launch gives one."""
    from obliviate.hardware import resolve_device
    from obliviate.models import load_model, load_tokenizer

    trust = settings["trust_remote_code"]
    if isinstance(model, (str, Path)):
        name = str(model)
        model, tokenizer = load_model(name, trust_remote_code=trust, device=resolve_device(device or settings["device"]))
        return model, tokenizer, name
    _check_loaded(model, "evaluate")
    name = getattr(model, "name_or_path", None) or type(model).__name__
    if device is not None:  # asked for: placed there; else the model stays where the caller put it
        model.to(resolve_device(device))
    return model, tokenizer if tokenizer is not None else load_tokenizer(name, trust_remote_code=trust), name


def _without_presets(config: RunConfig) -> dict:
    """The keys of `config` that differ from its method's resolved defaults (what its user set),
    as a base for another method: the old method's presets (SKU's lr 2e-4, LoRA, 1000 steps) must
    not outrank the new one's."""
    defaults = flatten_keys(load_config(None, [("method", config.method)]).to_dict())
    return {key: value for key, value in flatten_keys(config.to_dict()).items()
            if key != "method" and defaults.get(key) != value}


def _check_tokenizer(tokenizer) -> None:
    """A tokenizer object that can pad: a pad token, or an end-of-sequence token to pad with."""
    if not callable(getattr(tokenizer, "apply_chat_template", None)):
        raise UserError(f"unlearn: tokenizer is a {type(tokenizer).__name__}, not a loaded tokenizer; pass "
                        "AutoTokenizer.from_pretrained(...)")
    if tokenizer.pad_token is None and tokenizer.eos_token is None:
        raise UserError("unlearn: the tokenizer has neither a pad nor an end-of-sequence token; set "
                        "tokenizer.pad_token before calling unlearn")


@contextlib.contextmanager
def _padding_with_eos(tokenizer):
    """For the run, a tokenizer without pad token (Llama-3's, Mistral's) pads with the
    end-of-sequence token, as the command line's loader sets it; the caller's is given back as it
    was (the saved model/ keeps the pad token it trained with)."""
    unset = tokenizer is not None and tokenizer.pad_token is None
    if unset:
        tokenizer.pad_token = tokenizer.eos_token
    try:
        yield
    finally:
        if unset:
            tokenizer.pad_token = None


def _check_loaded(model, what: str) -> None:
    """A model object holds its weights: a torch module, none of them on the meta device, not
    wrapped in a peft adapter (merged and dropped by training, or trained on its own)."""
    import torch

    if not isinstance(model, torch.nn.Module):
        raise UserError(f"{what}: model is a {type(model).__name__}, not a loaded model; pass a causal LM "
                        "(AutoModelForCausalLM.from_pretrained(...)), a hub id or a directory")
    if what == "unlearn" and hasattr(model, "peft_config") and hasattr(model, "get_base_model"):
        raise UserError("unlearn: the model is a peft PeftModel: merge its adapter first (model = "
                        "model.merge_and_unload()) or pass the base model; use_peft=True trains obliviate's own LoRA")
    offloaded = {str(v) for v in (getattr(model, "hf_device_map", None) or {}).values()} & {"cpu", "disk"}
    if offloaded and any(t.is_meta for t in model.parameters()):
        raise UserError(f"{what}: the model is offloaded (device_map puts layers on {', '.join(sorted(offloaded))}): "
                        "not supported; load it without offloading (one device, or several GPUs)")
    if any(t.is_meta for t in itertools.chain(model.parameters(), model.buffers())):
        raise UserError(f"{what}: the model's weights are on the meta device (built under torch.device('meta') or "
                        "init_empty_weights): they hold no values; load them (from_pretrained) first")


@contextlib.contextmanager
def _output_dir(given, name: str, benchmark: str, state):
    """The folder the results go to: `given`, else a fresh default one (results.default_output_dir).
    Under a launch only process 0 writes there; the others write into a scratch folder, removed after."""
    from obliviate.evaluation.results import claim_fresh_dir, default_output_dir

    if state is not None and not state.is_main_process:
        with tempfile.TemporaryDirectory(prefix="obliviate-eval-") as scratch:
            yield Path(scratch)
        return
    if given is not None and Path(given).is_dir() and any(Path(given).iterdir()):
        logging.getLogger("obliviate").info("output_dir %s holds earlier results: files of the same name are "
                                            "replaced (leave output_dir out for a fresh folder)", given)
    if given is not None:
        yield Path(given)
        return
    with claim_fresh_dir(default_output_dir(name, benchmark)) as fresh:
        yield fresh


def _main_process_value(state, value):
    """`value` as process 0 holds it (every process of a launch returns the same result)."""
    if state is None or state.num_processes == 1:
        return value
    from accelerate.utils import broadcast_object_list

    return broadcast_object_list([value], from_process=0)[0]


def _check_versions() -> None:
    """The CLI's start-up check (versions.check_versions), once per process, before the engine imports."""
    global _VERSIONS_CHECKED
    if not _VERSIONS_CHECKED:
        from obliviate.versions import check_versions

        check_versions()
        _VERSIONS_CHECKED = True


_VERSIONS_CHECKED = False


def methods() -> dict[str, str]:
    """Registered unlearning methods: name -> one-line summary."""
    from obliviate.methods.registry import methods as registered

    return {name: method.summary for name, method in registered().items()}


def benchmarks() -> dict[str, str]:
    """Registered benchmarks: name -> one-line summary."""
    from obliviate.evaluation.registry import benchmarks as registered

    return {name: spec.summary for name, spec in registered().items()}
