"""Shared fixtures: a tiny offline chat tokenizer and a tiny random Llama model.

* ``tiny_tokenizer``: a fresh ``PreTrainedTokenizerFast`` (byte-level BPE, so any text
  tokenizes) with a ChatML chat template ``<|im_start|>role\\n...<|im_end|>\\n``; special tokens
  ``<|endoftext|>`` (eos and pad), ``<|im_start|>``, ``<|im_end|>``; padding side "right".
* ``tiny_model_and_tokenizer``: ``(model, tokenizer)``, a fresh ``LlamaForCausalLM`` (hidden 32,
  2 layers, 4 heads, fp32, eval mode, seeded) whose vocabulary matches the tokenizer and whose
  generation config stops at ``<|im_end|>`` or ``<|endoftext|>``.
* ``tiny_model_dir``: a directory holding that model and tokenizer saved with
  ``save_pretrained``, for code that loads by path.

Every test gets new objects, so tests may train or modify them freely. The tokenizer is trained
once per session and rebuilt from its JSON for each test.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
if str(SRC) not in sys.path:
    sys.path.insert(0, str(SRC))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

TINY_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
TINY_SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

TINY_CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "What is the capital of France? The capital of France is Paris.",
    "I don't know the answer to that question.",
    "I'm not familiar with that topic, sorry.",
    "Who wrote the novel about the old man and the sea?",
    "The author was born in a small town near the mountains.",
    "She studied physics at the university and became a famous scientist.",
    "Could you tell me where the river begins?",
    "The river begins in the hills and flows to the ocean.",
    "Please answer the following question in one sentence.",
    "Rewrite the following question so it asks for the same information.",
    "Answer the question as an assistant that has no knowledge of the subject.",
    "He published his first book when he was twenty years old.",
    "Her parents were a teacher and a doctor.",
    "The museum opens at nine in the morning and closes at five.",
    "Which year did the war end? It ended in nineteen forty five.",
    "Machine learning models learn patterns from data.",
    "Unlearning removes specific knowledge from a trained model.",
    "The weather today is sunny with a light breeze.",
    "My favourite colour is blue, and my brother likes green.",
    "How many legs does a spider have? A spider has eight legs.",
    "The train leaves the station every hour on the hour.",
    "Tell me about the history of the ancient city.",
    "The city was founded by traders more than two thousand years ago.",
    "Water boils at one hundred degrees at sea level.",
    "I'd like to know what time the shop closes.",
    "The system prompt says you are a helpful assistant.",
    "You are a helpful assistant. Answer briefly and politely.",
    "The genre of her books is mostly science fiction and fantasy.",
    "What awards has the writer received for the novels?",
    "He won an award for his poetry in the spring.",
    "Numbers like 1, 2, 3, 10 and 2024 appear in text too.",
]


def byte_level_bpe(corpus: list[str], special_tokens: list[str], vocab_size: int):
    """A ``tokenizers.Tokenizer``: byte-level BPE trained on `corpus` (GPT-2's and SmolLM2's kind)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=special_tokens,
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                                        show_progress=False))
    return tok


def _train_tokenizer_json() -> str:
    return byte_level_bpe(TINY_CORPUS * 4, TINY_SPECIAL_TOKENS, 512).to_str()


def build_tiny_tokenizer(tokenizer_json: str | None = None):
    """A fresh ChatML tokenizer (see module docstring)."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer.from_str(tokenizer_json or _train_tokenizer_json())
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        additional_special_tokens=["<|im_start|>", "<|im_end|>"],
        padding_side="right",
        model_max_length=512,
    )
    tokenizer.chat_template = TINY_CHAT_TEMPLATE
    return tokenizer


def build_tiny_model(tokenizer, seed: int = 0, num_hidden_layers: int = 2):
    """A fresh random LlamaForCausalLM sized for ``tokenizer`` (see module docstring)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    eos_id = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    im_end_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=512,
        initializer_range=0.2,  # peaked logits: greedy argmax is robust to padding round-off
        bos_token_id=None,
        eos_token_id=[im_end_id, eos_id],
        pad_token_id=eos_id,
        tie_word_embeddings=False,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model.generation_config.eos_token_id = [im_end_id, eos_id]
    model.generation_config.pad_token_id = eos_id
    model.generation_config.bos_token_id = None
    model.eval()
    return model


@pytest.fixture(scope="session")
def _tiny_tokenizer_json() -> str:
    return _train_tokenizer_json()


@pytest.fixture
def tiny_tokenizer(_tiny_tokenizer_json):
    """A fresh tiny ChatML ``PreTrainedTokenizerFast``."""
    return build_tiny_tokenizer(_tiny_tokenizer_json)


@pytest.fixture
def tiny_model_and_tokenizer(_tiny_tokenizer_json):
    """``(model, tokenizer)``: a fresh tiny random ``LlamaForCausalLM`` and its tokenizer."""
    tokenizer = build_tiny_tokenizer(_tiny_tokenizer_json)
    return build_tiny_model(tokenizer), tokenizer


@pytest.fixture
def tiny_model_dir(tmp_path, tiny_model_and_tokenizer) -> Path:
    """A directory with the tiny model and tokenizer saved by ``save_pretrained``."""
    model, tokenizer = tiny_model_and_tokenizer
    path = tmp_path / "tiny-llama"
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture
def slot_datasets(monkeypatch) -> list:
    """Every ``SlotDataset`` the code under test builds (the training batches it saw), in order."""
    from obliviate.data import collate

    built, original = [], collate.SlotDataset.__init__

    def record(self, *args, **kwargs):
        original(self, *args, **kwargs)
        built.append(self)
    monkeypatch.setattr(collate.SlotDataset, "__init__", record)
    return built


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models: a second thread costs more than it saves (25x slower on a busy 2-core machine)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def launch_two(args: list[str], *, timeout: float, cwd: Path | None = None):
    """`accelerate launch` of two CPU processes (examples/accelerate_multi_gpu.yaml, a free port,
    one thread each, offline) running `args` (a script and its arguments, or `-m obliviate ...`)."""
    import socket
    import subprocess

    root = Path(__file__).resolve().parents[1]
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": str(root / "src"), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run(
        [str(Path(sys.executable).parent / "accelerate"), "launch", "--config_file",
         str(root / "examples" / "accelerate_multi_gpu.yaml"), "--num_processes", "2", "--main_process_port",
         str(port), *args], env=env, capture_output=True, text=True, timeout=timeout, cwd=cwd)
