"""TOFU evaluation: Forget, Retain, Real Authors and World Facts; Forget Quality and Model Utility.

Each task scores, per question, the answer (probability and ROUGE-L recall of a greedy
generation), a "correct" answer (the paraphrase, or the answer itself for Real Authors and
World Facts) and the perturbed (wrong) answers (truth ratio), exactly as TOFU's
``config/eval_everything.yaml`` (docs/metrics.md has the formulas):

==============  ==========================  ==========================  ===================
task            split                       base (correct) answer       Prob.
==============  ==========================  ==========================  ===================
forget          ``<forget>_perturbed``      ``paraphrased_answer``      mean p̄(answer)
retain          ``retain_perturbed``        ``paraphrased_answer``      mean p̄(answer)
real_authors    ``real_authors_perturbed``  ``answer``                  normalised over options
world_facts     ``world_facts_perturbed``   ``answer``                  normalised over options
==============  ==========================  ==========================  ===================

The parts: :mod:`.data` (tasks, splits), :mod:`.items` (one task over any QA items),
:mod:`.extras` (extraction strength, memorisation, MIA), :mod:`.reference` (the retain
model's side of Forget Quality and PrivLeak), :mod:`.suite` (:func:`evaluate_tofu`). All four
tasks (and the holdout set for the MIA extras) go through the engine
(:mod:`obliviate.evaluation.engine`) in one pass, so prompts are shared and batches are full.
The registered benchmark is :mod:`obliviate.evaluation.benchmarks.tofu`.
"""

from obliviate.evaluation.tofu.data import TASKS, UTILITY_TASKS, TofuTask, load_items, load_split
from obliviate.evaluation.tofu.extras import MIN_K
from obliviate.evaluation.tofu.items import evaluate_items
from obliviate.evaluation.tofu.suite import evaluate_tofu

__all__ = ["MIN_K", "TASKS", "UTILITY_TASKS", "TofuTask", "evaluate_items", "evaluate_tofu", "load_items",
           "load_split"]
