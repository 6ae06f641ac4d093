"""The evaluation engine: answer log-likelihoods and greedy generations of a causal LM.

Every benchmark metric here needs two things from the model: the summed NLL of answer tokens
given a prompt (probability, truth ratio, MIA scores, extraction strength) and a greedy
answer to a prompt (ROUGE). The obvious loop (one padded forward per (question, answer) pair,
one ``generate`` per batch) repeats a lot of work; the engine does each piece of work once:

* **Shared prompts** (:mod:`.trie`). A question is scored with many answers (answer,
  paraphrase, 3-5 perturbed answers). Its prompt runs through the model once; its answers
  form a trie continuing from that prompt, so shared answer beginnings run once too. The
  prompt prefix common to *all* questions (the chat template's system block) runs once per
  call.
* **No wasted positions** (:mod:`.tree_pass`). Batches are sorted by length and padded to the
  batch maximum; the output layer runs only on answer positions, in chunks, and the fp32
  log-softmax is reduced at once to what is needed (logsumexp and the label's logit).
* **Generation from the same prompt cache** (:mod:`.slot_decoder`, :mod:`.scheduler`),
  greedy, in wide continuously refilled batches. The answer tokens that the model would
  reproduce anyway (teacher-forced argmax == label) are read off the scoring pass; decoding
  starts where greedy output leaves the reference answer.
* **Decoding paths** (:mod:`.slot_decoder`, :mod:`.static_decoder`): ``decode="plain"`` sizes
  each step to the rows and cache width in use; ``"static"`` keeps every shape fixed so that on
  CUDA one step is one CUDA-graph replay (no per-step Python or launch overhead); ``"auto"``
  picks static on CUDA, plain elsewhere.
* **Several processes** (:mod:`.sharding`): inside ``sharded(...)`` each process of a launch
  computes whole scoring groups of its own and the results are gathered.
* **Per-item result cache** (:mod:`.result_cache`): each scored pair and generation is stored
  on disk under a key of (model weights, tokenizer, prompt text, answer, settings), so a
  re-run, or a run resumed after an interruption, only computes what is missing.

Prompts and stops are injectable (:mod:`.formatters`, :mod:`.stops`): ``formatter`` turns a
question into prompt text (default: the chat template; ready-made plain and few-shot
formatters), ``stop_strings`` end a generation at a string such as ``"\\n"`` besides the stop
tokens. Both are part of the result-cache key.

Exactness. Each answer's score equals an unbatched, uncached fp32 forward of ``prompt +
answer + EOS`` up to floating-point rounding (different matrix shapes sum in different
orders); greedy outputs equal ``model.generate(do_sample=False)`` up to the same rounding,
which can flip an argmax between two near-tied tokens. With the default formatter,
tokenisation is exactly :func:`obliviate.prompts.encode_qa`.

Precision (:mod:`.settings`). ``precision="auto"`` runs under bf16 autocast where the
hardware does bf16 natively (CUDA with bf16, CPUs with AMX / AVX512-BF16) and in fp32
elsewhere, so its numbers depend on the machine; ``"fp32"`` forces fp32 and is what
comparisons against official (fp32) logs and exactness checks must use; ``"bf16"`` forces
autocast. Log-probabilities are always reduced in fp32.
"""

from obliviate.evaluation.engine.api import answer_losses, greedy_generate, score_and_generate, score_answers
from obliviate.fingerprints import model_fingerprint, tokenizer_fingerprint
from obliviate.evaluation.engine.formatters import (
    PromptFormatter,
    chat_formatter,
    few_shot_formatter,
    plain_formatter,
)
from obliviate.evaluation.engine.result_cache import ResultCache, open_result_cache, result_cache_for
from obliviate.evaluation.engine.settings import DECODES, ENGINE_VERSION, PRECISIONS, resolve_decode, resolve_precision
from obliviate.evaluation.engine.sharding import Shard, current_shard, sharded
from obliviate.evaluation.engine.stats import AnswerStats
from obliviate.evaluation.engine.stops import END_OF_TURN_TOKENS, stop_token_ids

__all__ = [
    "DECODES",
    "END_OF_TURN_TOKENS",
    "ENGINE_VERSION",
    "PRECISIONS",
    "AnswerStats",
    "PromptFormatter",
    "ResultCache",
    "Shard",
    "answer_losses",
    "chat_formatter",
    "current_shard",
    "few_shot_formatter",
    "greedy_generate",
    "model_fingerprint",
    "open_result_cache",
    "plain_formatter",
    "resolve_decode",
    "resolve_precision",
    "result_cache_for",
    "score_and_generate",
    "score_answers",
    "sharded",
    "stop_token_ids",
    "tokenizer_fingerprint",
]
