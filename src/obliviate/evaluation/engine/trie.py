"""The work of one prompt: its token ids, the answers to score as a trie, its generation state."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from obliviate.evaluation.engine.stats import AnswerStats


@dataclass(eq=False)
class Row:
    """One answer to score: token ids, detail flag, and its path in the question's answer trie
    (``path[j]`` = the node that feeds ``answer[j]``, i.e. predicts ``answer[j + 1]``)."""

    answer: list[int]
    details: bool
    path: list[int] = field(default_factory=list)
    result: AnswerStats | None = None


@dataclass(eq=False)
class Prompt:
    """One unique prompt: its ids, the answers to score, and its answer trie.

    Answers that begin alike share trie nodes, so a shared beginning runs through the model
    once. The EOS label is never an input: the last answer token feeds no node.
    """

    text: str
    ids: list[int]
    rows: list[Row] = field(default_factory=list)
    generate: bool = False
    reference: Row | None = None
    tokens: list[int] = field(default_factory=list)  # trie node -> its input token
    parents: list[int] = field(default_factory=list)  # trie node -> parent node (-1: the prompt)
    depths: list[int] = field(default_factory=list)  # trie node -> answer position of its token
    argmax: list[int] = field(default_factory=list)  # per source (prompt end, then nodes): argmax id
    kv: list[tuple[torch.Tensor, torch.Tensor]] | None = None  # generation cache (prompt + forced path)
    forced: list[int] = field(default_factory=list)  # greedy tokens known from the reference
    feed: int = 0  # forced tokens whose keys/values are in kv

    def build_trie(self) -> None:
        children: dict[tuple[int, int], int] = {}
        for row in self.rows:
            node = -1
            row.path = []
            for j, token in enumerate(row.answer[:-1]):
                child = children.get((node, token))
                if child is None:
                    child = children[(node, token)] = len(self.tokens)
                    self.tokens.append(token)
                    self.parents.append(node)
                    self.depths.append(j)
                node = child
                row.path.append(node)

    def next_argmax(self, k: int) -> int:
        """The teacher-forced argmax after the reference answer's first ``k`` tokens."""
        return self.argmax[0] if k == 0 else self.argmax[1 + self.reference.path[k - 1]]


def shared_prefix_length(prompts: list[list[int]]) -> int:
    """Length of the token prefix common to all prompts, leaving each at least one token
    (its last position predicts the first answer token)."""
    if not prompts:
        return 0
    first = prompts[0]
    length = min(len(p) for p in prompts) - 1
    for p in prompts[1:]:
        n = 0
        while n < length and p[n] == first[n]:
            n += 1
        length = n
    return max(length, 0)
