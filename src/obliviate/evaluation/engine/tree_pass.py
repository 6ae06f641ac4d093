"""The scoring pass: prompts and all their answers' trie nodes in one forward.

Layout per row: [shared prefix (cache)] [question, left-padded to ``width_q``] [trie nodes,
right-padded]. A node attends to the prefix, the question and its ancestors (4-D mask), so
it computes exactly what feeding its answer after the prompt would. The output layer then
runs only on the positions that predict an answer token (plus each prompt's last position
and every node, for the teacher-forced argmax), ``HEAD_CHUNK`` rows at a time, reduced at
once to what the metrics need.
"""

from __future__ import annotations

import numpy as np
import torch

from obliviate.evaluation.engine.runner import ModelRunner
from obliviate.evaluation.engine.stats import AnswerStats
from obliviate.evaluation.engine.trie import Prompt

#: Rows of the output layer computed at once (fp32 logits: chunk x vocab x 4 bytes).
HEAD_CHUNK = 256


def _ancestors(parents: list[int]) -> np.ndarray:
    """(n, n) mask: node i sees node j iff j is i or one of its ancestors."""
    n = len(parents)
    seen = np.zeros((n, n), dtype=bool)
    for i, parent in enumerate(parents):  # parents come before children
        if parent >= 0:
            seen[i] = seen[parent]
        seen[i, i] = True
    return seen


def _layout(prompts: list[Prompt], prefix_len: int, width_q: int, pad_id: int):
    """Input ids, position ids and the 4-D boolean attention mask of one tree pass."""
    size, width = len(prompts), width_q + max(len(p.tokens) for p in prompts)
    ids = torch.full((size, width), pad_id, dtype=torch.long)
    positions = torch.zeros((size, width), dtype=torch.long)
    mask = np.zeros((size, width, prefix_len + width), dtype=bool)
    mask[:, :, :prefix_len] = True
    diagonal = np.arange(width)
    mask[:, diagonal, prefix_len + diagonal] = True  # no query without a key (pads included)
    lower = np.tril(np.ones((width_q, width_q), dtype=bool))
    start = prefix_len + width_q
    for r, p in enumerate(prompts):
        question = p.ids[prefix_len:]
        q0 = width_q - len(question)
        ids[r, q0:width_q] = torch.tensor(question)
        positions[r, q0:width_q] = torch.arange(prefix_len, len(p.ids))
        real_q = np.zeros(width_q, dtype=bool)
        real_q[q0:] = True
        mask[r, :width_q, prefix_len:start] |= lower & real_q
        n = len(p.tokens)
        if n:
            ids[r, width_q:width_q + n] = torch.tensor(p.tokens)
            positions[r, width_q:width_q + n] = len(p.ids) + torch.tensor(p.depths)
            mask[r, width_q:width_q + n, prefix_len:start] = real_q
            mask[r, width_q:width_q + n, start:start + n] = _ancestors(p.parents)
    return ids, positions, torch.from_numpy(mask)[:, None]


def tree_pass(runner: ModelRunner, prompts: list[Prompt], prefix_len: int, prefix_kv, width_q: int) -> None:
    """Score every answer row of ``prompts`` (``row.result``), record each prompt's
    teacher-forced argmax per source, and keep the generation caches of prompts to decode."""
    size = len(prompts)
    ids, positions, mask = _layout(prompts, prefix_len, width_q, runner.pad_id)
    cache = runner.new_cache(
        [(k.expand(size, -1, -1, -1), v.expand(size, -1, -1, -1)) for k, v in prefix_kv] if prefix_kv else None)
    hidden = runner.forward(ids, mask, positions, cache)
    runner.tokens["prompt"] += sum(len(p.ids) - prefix_len for p in prompts)
    runner.tokens["answer"] += sum(len(p.tokens) for p in prompts)

    # Sources of predictions: each prompt's last position, then every trie node.
    node_offset, count, source_rows = [], size, [hidden[:, width_q - 1]]
    for r, p in enumerate(prompts):
        node_offset.append(count)
        count += len(p.tokens)
        if p.tokens:
            source_rows.append(hidden[r, width_q:width_q + len(p.tokens)])
    sources = torch.cat(source_rows)
    src, tgt, det, owners = [], [], [], []  # per prediction: source, target, wants details
    for r, p in enumerate(prompts):
        for row in p.rows:
            if row.answer:
                owners.append((row, len(src)))
                src.append(r)
                src.extend(node_offset[r] + node for node in row.path)
                tgt.extend(row.answer)
                det.extend([row.details] * len(row.answer))
    src = torch.tensor(src, dtype=torch.long)
    logp, argmax, mu, sigma = predict(runner, sources, src, torch.tensor(tgt, dtype=torch.long),
                                      torch.tensor(det, dtype=torch.bool))
    for row, start in owners:
        _fill_result(row, start, logp, argmax[src[start:start + len(row.answer)]], mu, sigma)
    for r, p in enumerate(prompts):
        p.argmax = [int(argmax[r])] + argmax[node_offset[r]:node_offset[r] + len(p.tokens)].tolist()
        if p.generate:
            keep_generation_cache(p, r, cache, prefix_len + width_q, width_q)


def _fill_result(row, start: int, logp, preds, mu, sigma) -> None:
    n = len(row.answer)
    lp = logp[start:start + n]
    row.result = AnswerStats(float(-lp.double().sum()), n)
    if row.details:
        row.result.logprobs = lp.tolist()
        row.result.preds = preds.tolist()
        row.result.targets = list(row.answer)
        row.result.mu = mu[start:start + n].tolist()
        row.result.sigma = sigma[start:start + n].tolist()


def predict(runner: ModelRunner, sources: torch.Tensor, src: torch.Tensor, tgt: torch.Tensor, det: torch.Tensor):
    """Per prediction: log p(target | source); per source: argmax; per detail prediction:
    mean / std of log p. The output layer runs on HEAD_CHUNK sources at a time."""
    total = len(src)
    logp, mu, sigma = torch.zeros(total), torch.zeros(total), torch.ones(total)
    argmax = torch.empty(len(sources), dtype=torch.long)
    order = torch.argsort(src, stable=True)
    sorted_src = src[order]
    for start in range(0, len(sources), HEAD_CHUNK):
        stop = min(start + HEAD_CHUNK, len(sources))
        logits = runner.logits(sources[start:stop])
        argmax[start:stop] = logits.argmax(-1).cpu()
        lo, hi = torch.searchsorted(sorted_src, torch.tensor([start, stop])).tolist()
        if lo == hi:
            continue
        which = order[lo:hi]
        local = (src[which] - start).to(logits.device)
        lse = torch.logsumexp(logits, dim=-1)
        logp[which] = (logits[local, tgt[which].to(logits.device)] - lse[local]).cpu()
        wants = det[which]
        if bool(wants.any()):
            rows = local[wants.to(logits.device)]
            log_probs = logits[rows] - lse[rows].unsqueeze(-1)
            probs = log_probs.exp()
            m = (probs * log_probs).sum(-1)
            var = (probs * log_probs.square()).sum(-1) - m.square()
            mu[which[wants]] = m.cpu()
            sigma[which[wants]] = var.clamp(min=1e-6).sqrt().cpu()
    return logp, argmax, mu, sigma


def keep_generation_cache(p: Prompt, r: int, cache, prompt_width: int, width_q: int) -> None:
    """Keep row r's prompt keys/values plus those of the reference answer's tokens that
    greedy decoding is known to reproduce (teacher-forced argmax == label)."""
    forced, feed = [p.argmax[0]], 0
    if p.reference is not None and p.reference.answer:
        answer = p.reference.answer
        k = 0
        while k < len(answer) and p.next_argmax(k) == answer[k]:
            k += 1
        if k < len(answer):  # tokens answer[:k] match, then the model's own argmax
            forced, feed = list(answer[:k]) + [p.next_argmax(k)], k
        else:  # the whole answer is reproduced; its last token is fed when decoding resumes
            forced, feed = list(answer), len(answer) - 1
    # Compact: the prefix, the real question tokens (no padding) and the forced path.
    prefix_len = prompt_width - width_q
    path = p.reference.path[:feed] if feed else []
    columns = torch.cat([torch.arange(prefix_len),
                         torch.arange(prompt_width - (len(p.ids) - prefix_len), prompt_width),
                         prompt_width + torch.tensor(path, dtype=torch.long)])
    p.forced, p.feed = forced, feed
    p.kv = [(layer.keys[r].index_select(1, columns.to(layer.keys.device)),
             layer.values[r].index_select(1, columns.to(layer.values.device))) for layer in cache.layers]
