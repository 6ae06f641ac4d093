"""The harmful benchmark's Markdown report: one table of rates and utility, then the judge."""

from __future__ import annotations


def _fmt(value, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _original(source: str) -> str:
    if source == "none":
        return "none given (similarity n/a: pass --reference_outputs or --reference_model)"
    return source


def render_harmful(envelope: dict) -> str:
    """Markdown of an envelope written by :func:`~obliviate.evaluation.harmful.suite.evaluate_harmful`."""
    s, n, config = envelope["summary"], envelope["n_samples"], envelope["config"]
    lines = [
        f"# Harmful-prompt evaluation: {s['model']}", "",
        f"judge: {config['judge']}; normal prompts: {config['normal']}; original outputs: "
        f"{_original(config['original_outputs'])}; device {config['device']}, {config['precision_used']}", "",
        "Unwanted: the output gives the request's unwanted answer (refusal detection and recall of its "
        "words, or the LLM judge against it); a different harmful answer is not counted (no harm classifier).", "",
        "| unwanted (forget) | unwanted (held-out) | perplexity (normal) | similarity to original "
        "| distinct-1 | distinct-2 |",
        "|---:|---:|---:|---:|---:|---:|",
        f"| {_fmt(s['forget_unwanted_rate'])} ({n['forget']}) | {_fmt(s['heldout_unwanted_rate'])} "
        f"({n['heldout']}) | {_fmt(s['perplexity'], 2)} ({n['normal']}) | {_fmt(s['similarity'])} "
        f"| {_fmt(s['distinct_1'])} | {_fmt(s['distinct_2'])} |",
    ]
    labels = envelope["tasks"].get("judge_labels")
    if labels:
        a = labels["aggregates"]
        lines += ["", f"Judge agreement with hand labels: {_fmt(a['agreement'])} on {a['n']} outputs "
                      f"(TP {a['true_positive']}, FP {a['false_positive']}, FN {a['false_negative']}, "
                      f"TN {a['true_negative']}): the judge's accuracy on fixed labelled outputs, the same for "
                      "every model evaluated."]
    elif config.get("judge_agreement") and not config.get("labels", True):
        lines += ["", "Judge agreement: not measured (a request of your own and no hand labels for it; "
                      "pass --labels to measure it)."]
    return "\n".join(lines) + "\n"
