"""Sliced Wasserstein distance between a weight tensor and its initial copy (SNAP / Opt-Out).

As the official code computes it (METHODS.md C.2), per tensor W0, W in R^{n x d} (PyTorch layout
(out, in): each of the n rows is a sample in R^d; a 1-D tensor is one sample, shape (1, d)):

    Theta in R^{d x L}, columns theta_l ~ N(0, I_d) / ||.||   (L = 100 random unit projections)
    U = W0 Theta,  V = W Theta                                (n x L: every row projected L times)
    SW(W0, W) = (1/L) sum_l sum_i | sort(U[:, l])_i - sort(V[:, l])_i |^p     (p = 2)

There is no 1/n and no p-th root: this is n * SW_p^p under uniform weights, the official scale.
Sorting matches the i-th smallest projection of W0 with the i-th smallest of W, which is the
optimal 1-D transport plan, so the cost is invariant to permuting rows (neurons): it penalises
a change in the distribution of the rows, not each weight's drift. The regulariser is

    reg(theta0, theta) = sum over tensors t of SW(W0_t, W_t).

Each tensor costs one (n x d)(d x L) matmul and one sort of n x L values; the loop runs over
tensors, not over rows or projections. The official code draws Theta fresh, unseeded, on every
call; here it comes from a generator the caller seeds (run seed and step), so a run repeats.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

__all__ = ["random_projections", "sliced_wasserstein", "sw_regulariser"]


def random_projections(dim: int, n_projections: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Theta [dim, L] on the CPU, fp32: L columns drawn from N(0, I) and normalised to unit length."""
    theta = torch.randn(dim, n_projections, generator=generator)
    return theta / theta.norm(dim=0, keepdim=True)


def sliced_wasserstein(initial: torch.Tensor, current: torch.Tensor, theta: torch.Tensor,
                       p: float = 2.0) -> torch.Tensor:
    """SW(W0, W) = (1/L) sum_l sum_i |sort(W0 theta_l)_i - sort(W theta_l)_i|^p, a 0-d fp32 tensor.

    Rows are samples; a 1-D tensor is one sample. The projections are computed in the initial
    copy's dtype (the official code casts the current projections to the bf16 reference's dtype),
    also under an autocast context, the differences in fp32. Gradients flow to `current` through the sort.
    """
    if initial.shape != current.shape:
        raise ValueError(f"SW: initial {tuple(initial.shape)} and current {tuple(current.shape)} differ")
    # a CPU copy travels to the weights' device one tensor at a time, so only one is there at once
    w0 = _as_rows(initial).to(current.device, non_blocking=True)
    w = _as_rows(current).to(w0.dtype)
    theta = theta.to(device=w0.device, dtype=w0.dtype)
    with torch.autocast(w0.device.type, enabled=False):  # the Trainer's bf16 autocast would round fp32 copies
        u = torch.sort(w0 @ theta, dim=0).values
        v = torch.sort(w @ theta, dim=0).values
    return (u.float() - v.float()).abs().pow(p).sum(dim=0).mean()


def _as_rows(tensor: torch.Tensor) -> torch.Tensor:
    """[n, d]: a matrix as it is, a 1-D tensor as one sample (1, d), higher ranks flattened per row."""
    return tensor.reshape(1, -1) if tensor.dim() < 2 else tensor.reshape(tensor.shape[0], -1)


def sw_regulariser(pairs: Iterable[tuple[torch.Tensor, torch.Tensor]], n_projections: int = 100, p: float = 2.0,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """sum over (W0, W) pairs of SW(W0, W), each tensor with its own fresh Theta from `generator`
    (drawn in the order of `pairs`, so a loop that draws the same way sees the same Theta)."""
    total = None
    for initial, current in pairs:
        theta = random_projections(_as_rows(initial).shape[1], n_projections, generator)
        value = sliced_wasserstein(initial, current, theta, p)
        total = value if total is None else total + value
    return total if total is not None else torch.zeros(())
