"""RWKU evaluation (../shared/docs/BENCHMARKS.md section 3), one idea a module.

* ``prompts``: RWKU's prompt formats (FB, QA, AA variants, ICU prefix, utility prompts).
* ``probes``: forget FB / QA / AA and neighbor FB / QA: greedy, 30 new tokens, stop at a
  newline, ROUGE-L recall with the ``rouge`` package's semantics.
* ``mia``: LOSS, zlib and Min-K%++ (20%) on forget_mia and retain_mia.
* ``textscores``: token F1 / EM (TriviaQA, BBH) and n-gram entropy (fluency).
* ``utility``: MMLU (Gen), BBH (Rea), TruthfulQA MC1 (Tru), TriviaQA F1 (Fac), fluency (Flu).
* ``suite``: all of it over one or several targets -> the result envelope.
* ``report``: the ULMR paper's RWKU table.
"""

from obliviate.evaluation.rwku.suite import evaluate_rwku

__all__ = ["evaluate_rwku"]
