"""The request benchmark: a model scored on an unlearning request's own sets.

A user who unlearns their own request (docs/request.md) scores the result on what they asked
for: every set of the request (forget, retain, neighbours) with TOFU's per-item definitions
that need no extra data (ROUGE-L recall of the greedy answer, answer probability), the truth
ratio where items carry paraphrased and perturbed answers, and the change from the base model,
which is what shows the unlearning: the forget set's recall dropped, the others' kept.

The parts: :mod:`.sets` (the items), :mod:`.score` (one engine pass, per-item values),
:mod:`.compare` (the base model's values and the change), :mod:`.report`, :mod:`.suite`
(:func:`evaluate_request`). The registered benchmark is :mod:`obliviate.evaluation.benchmarks.request`.
"""

from obliviate.evaluation.request.suite import evaluate_request

__all__ = ["evaluate_request"]
