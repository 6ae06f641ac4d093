"""Membership-inference scores of RWKU's eval_mia.py on forget_mia (FM) and retain_mia (RM).

Each text is tokenised alone (``tokenizer.encode(text)``, special tokens as the tokenizer adds
them, no chat template) and run through the model with ``labels = input_ids``; for its
tokens x_2..x_n with log-probs ``l_t = log p(x_t | x_<t)``:

* ``nll = −(1/(n−1)) Σ_t l_t``; RWKU's ``loss`` is ``ll = −nll``, the paper reports LOSS as
  ``100 · mean(nll)`` (the FM / RM columns);
* ``zlib = ll / len(zlib.compress(text.encode("utf-8")))``;
* Min-K%++ at 20%: ``z_t = (l_t − μ_t) / σ_t`` with μ_t, σ_t the mean and std of log p under
  the model's next-token distribution; score = mean of the lowest ``⌊0.2 (n−1)⌋`` z_t.

Higher FM LOSS after unlearning = the target's fragments look less remembered; RM should stay
near its value before unlearning. Differences from RWKU: σ² is clamped at 1e-6
(:func:`~obliviate.evaluation.metrics.next_token_logprob_moments`; RWKU takes the square root
unclamped), and at least one token enters the Min-K%++ mean.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence

import numpy as np
import torch

from obliviate.evaluation import metrics
from obliviate.evaluation.engine.settings import precision_context, resolve_precision
from obliviate.hardware import model_device

MIN_K_RATIO = 0.2


def _forward(model, rows: list[list[int]], precision: str):
    """Per row: (log-probs of tokens 2..n, μ, σ) as float64 numpy arrays (right-padded batch)."""
    width = max(len(r) for r in rows)
    ids = torch.zeros((len(rows), width), dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, :len(row)] = torch.tensor(row)
        mask[i, :len(row)] = 1
    device = model_device(model)
    with torch.inference_mode(), precision_context(model, precision):
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
    labels = ids.masked_fill(mask == 0, metrics.IGNORE_INDEX).to(device)
    logp, valid = metrics.token_logprobs(logits, labels)
    mu, sigma = metrics.next_token_logprob_moments(logits)
    out = []
    for i in range(len(rows)):
        keep = valid[i]
        out.append(tuple(t[i][keep].double().cpu().numpy() for t in (logp, mu, sigma)))
    return out


def text_scores(logp: np.ndarray, mu: np.ndarray, sigma: np.ndarray, text: str) -> dict[str, float]:
    """RWKU's scores of one text from its token log-probs and next-token moments."""
    nll = float(-logp.mean())
    z = np.sort((logp - mu) / sigma)
    return {"nll": nll, "loss": -nll, "zlib": -nll / len(zlib.compress(text.encode("utf-8"))),
            "mink_pp_20": float(z[: max(1, int(len(z) * MIN_K_RATIO))].mean())}


def mia_scores(model, tokenizer, texts: Sequence[str], *, batch_size: int = 8, max_length: int = 2048,
               precision: str = "auto") -> list[dict[str, float]]:
    """:func:`text_scores` of each text (texts longer than ``max_length`` tokens are cut)."""
    precision = resolve_precision(model, precision)
    encoded = [tokenizer(t, add_special_tokens=True)["input_ids"][:max_length] for t in texts]
    order = sorted(range(len(texts)), key=lambda i: -len(encoded[i]))
    results: list[dict | None] = [None] * len(texts)
    for start in range(0, len(order), batch_size):
        batch = order[start:start + batch_size]
        for i, (logp, mu, sigma) in zip(batch, _forward(model, [encoded[i] for i in batch], precision)):
            results[i] = text_scores(logp, mu, sigma, texts[i])
    return results


def mia_aggregates(items: Sequence[dict[str, float]]) -> dict[str, float]:
    """Set means: ``loss_x100 = 100 · mean(nll)`` (the paper's column), ``loss``, ``zlib``,
    ``mink_pp_20`` (RWKU's signs: higher = more likely a member)."""
    mean = lambda key: float(np.mean([i[key] for i in items])) if items else float("nan")  # noqa: E731
    return {"loss_x100": 100.0 * mean("nll"), "loss": mean("loss"), "zlib": mean("zlib"),
            "mink_pp_20": mean("mink_pp_20")}
