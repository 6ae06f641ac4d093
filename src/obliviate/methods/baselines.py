"""The baseline methods (METHODS.md section E): one training stage with one objective.

    obliviate unlearn --config examples/graddiff.yaml method=npo output_dir=runs/npo

    theta <- train(theta_0; forget set, retain set) with the method's loss (objectives/<name>.py)

ga, graddiff, kl, npo, simnpo, idk_dpo, rt, rmu: unlearn the request's forget set while keeping
its retain set. finetune: ordinary training on the request's forget set, used to teach a model
facts, or to retrain from the base model on retain data given as that set (the gold standard).
The run directory is the pipeline's (methods/pipeline.py): config.yaml, checkpoints/,
train_log.jsonl, model/ and manifest.json.
"""

from __future__ import annotations

from obliviate.data.refusals import refusals_source
from obliviate.methods.registry import Method, register_method
from obliviate.objectives import get_objective


def one_stage(run) -> dict:
    """theta = train(theta_0) on the request with the objective named like the method."""
    config = run.config
    own = config.objective.refusal_draw == "own"  # each item's answer is its refusal: no file
    if "forget_refusal" in get_objective(config.method).slots and not own:  # TOFU's idontknow.jsonl beside a request
        config.objective.refusals = refusals_source(config.objective.refusals, run.request.refusals)
        if config.objective.refusals:
            run.inputs.append(config.objective.refusals)
    return {"model": run.train(forget=run.request.forget, retain=run.request.retain)}


BASELINES = {
    "ga": "gradient ascent on the forget answers",
    "graddiff": "gradient difference: ascent on forget, descent on retain",
    "kl": "gradient ascent on forget + KL to the starting model on retain",
    "npo": "negative preference optimisation against the starting model (+ retain term)",
    "simnpo": "reference-free NPO on length-normalised log-likelihoods (+ retain term)",
    "idk_dpo": "DPO preferring a refusal over the forget answer (+ retain term)",
    "rt": "rejection tuning: fine-tune the forget questions towards refusals (+ retain term)",
    "rmu": "representation misdirection: push a layer's activations on forget to a random vector",
    "finetune": "plain fine-tuning on the request's forget set (teach facts, or retrain on retain data)",
}
# SimNPO's reference weights (METHODS.md E: open-unlearning's TOFU config, 0.125 on the forget term),
# applied under the user's own values when the config loads. The SimNPO authors' final TOFU config is
# forget 0.1375, retain 1, beta 2.5 (docs/training.md).
PRESETS = {"simnpo": {"objective.beta": 4.5, "objective.delta": 0.0, "objective.forget_weight": 0.125,
                      "objective.retain_weight": 1.0}}

for _name, _summary in BASELINES.items():
    register_method(Method(_name, one_stage, _summary, presets=PRESETS.get(_name, {}),
                           refusal_answers=_name in ("rt", "finetune")))  # they train towards the answers
