"""Merging LoRA adapters of one base model: the task-vector arithmetic, on plain tensors.

An adapter's *task vector* for one module is its weight update delta = scale * B @ A ([out, in]). A merge
combines the task vectors of N adapters module by module, then re-factorises the result into LoRA factors
so that it serves like any adapter.

Methods (`combine`), with weights w_i applied as given (weights summing to 1 make a weighted average, the
"model soup"):

* `linear`:      sum_i w_i delta_i.
* `ties`:        TIES-merging. Trim each delta_i to its `density` largest-magnitude entries; elect a sign per
                 entry (the sign of the sum of the trimmed deltas, or of their signs: `majority_sign`); then
                 the disjoint merge: per entry, the sum of the weighted trimmed values that agree with the
                 elected sign, divided by how many agree (entries no one keeps are 0).
* `dare_linear`: DARE. Drop each entry with probability 1 - `density` and rescale the survivors by
                 1/`density` (unbiased), seeded; then `linear`.
* `dare_ties`:   DARE's drop-and-rescale in place of TIES' trim, then sign election and the disjoint merge.

These follow the definitions of the TIES and DARE papers as PEFT and mergekit implement them (the tests
check against PEFT's functions on random tensors, and against hand-computed results).

Re-factorisation: `linear` merges of LoRA adapters are exactly LoRA adapters of the summed rank
(concatenated factors, `concat_factors`); `lowrank_svd` truncates such a product to a target rank without
forming the dense matrix, `dense_svd` factorises a dense merge (TIES, DARE) to a target rank. Both report
the relative Frobenius error of what they drop.

LiNeS (`lines_factors`): post-training layer scaling; layer l of L gets its update scaled by
alpha + beta * l / (L - 1), so shallow layers (general features) keep less of the fine-tune than deep ones.
For a LoRA module that is an exact rescaling of B.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

METHODS = ("linear", "ties", "dare_linear", "dare_ties")


def trim_to_density(delta: torch.Tensor, density: float) -> torch.Tensor:
    """The `density` share of entries with the largest magnitude kept (at least one when density > 0),
    the rest zeroed. Ties at the threshold are broken by position, so exactly k entries are kept."""
    if density >= 1.0:
        return delta.clone()
    k = int(density * delta.numel())
    if k <= 0:
        return torch.zeros_like(delta)
    flat = delta.reshape(-1)
    keep = torch.zeros_like(flat, dtype=torch.bool)
    keep[torch.topk(flat.abs(), k, sorted=False).indices] = True
    return torch.where(keep, flat, torch.zeros_like(flat)).reshape(delta.shape)


def drop_and_rescale(delta: torch.Tensor, density: float, generator: torch.Generator) -> torch.Tensor:
    """DARE: each entry survives with probability `density` and is then divided by `density`."""
    if density >= 1.0:
        return delta.clone()
    if density <= 0.0:
        return torch.zeros_like(delta)
    survive = torch.rand(delta.shape, generator=generator, dtype=torch.float32) < density
    return torch.where(survive, delta / density, torch.zeros_like(delta))


def elect_sign(deltas: torch.Tensor, method: str = "total") -> torch.Tensor:
    """Per entry, +1 or -1: the sign of the summed values (`total`) or of the summed signs (`frequency`)
    over the stacked deltas [n, ...]. A zero sum elects +1."""
    votes = deltas.sum(0) if method == "total" else deltas.sign().sum(0)
    return torch.where(votes >= 0, 1.0, -1.0).to(deltas.dtype)


def disjoint_merge(weighted: torch.Tensor, agrees: torch.Tensor) -> torch.Tensor:
    """Per entry: the sum of the values whose sign agrees with the elected one, divided by their count."""
    kept = (weighted * agrees).sum(0)
    return kept / agrees.sum(0).clamp(min=1)


def combine(deltas: Sequence[torch.Tensor], weights: Sequence[float], *, method: str, density: float = 1.0,
            majority_sign: str = "total", generator: torch.Generator | None = None) -> torch.Tensor:
    """The merged task vector of one module (see the module docstring for each method)."""
    if method not in METHODS:
        raise ValueError(f"unknown merge method {method!r}")
    stacked = torch.stack([d.float() for d in deltas])
    w = torch.tensor(list(weights), dtype=torch.float32).reshape(-1, *([1] * (stacked.dim() - 1)))
    if method == "linear":
        return (stacked * w).sum(0)
    if method.startswith("dare"):
        assert generator is not None, "DARE needs a seeded generator"
        stacked = torch.stack([drop_and_rescale(d, density, generator) for d in stacked])
        if method == "dare_linear":
            return (stacked * w).sum(0)
    else:
        stacked = torch.stack([trim_to_density(d, density) for d in stacked])
    # The elected sign comes from the trimmed (or dropped) deltas before weighting, as in TIES and PEFT.
    signs = elect_sign(stacked, majority_sign)
    agrees = (stacked.sign() == signs).to(stacked.dtype)
    return disjoint_merge(stacked * w, agrees)


@dataclass(frozen=True)
class Factors:
    """LoRA factors of one module with the scale folded in: delta = b @ a."""

    b: torch.Tensor  # [out, r]
    a: torch.Tensor  # [r, in]
    #: Relative Frobenius norm of what a truncation dropped (0 when exact).
    error: float = 0.0

    @property
    def rank(self) -> int:
        return int(self.a.shape[0])


def concat_factors(parts: Sequence[tuple[torch.Tensor, torch.Tensor, float]]) -> Factors:
    """sum_i w_i B_i A_i exactly, as one factor pair of the summed rank ([w_1 B_1 ... w_n B_n], [A_1; ...; A_n])."""
    b = torch.cat([weight * b for b, _, weight in parts], dim=1)
    a = torch.cat([a for _, a, _ in parts], dim=0)
    return Factors(b.float(), a.float())


def _truncate(u: torch.Tensor, s: torch.Tensor, vh: torch.Tensor, rank: int) -> Factors:
    total = float((s ** 2).sum())
    kept = min(rank, int(s.numel()))
    dropped = float((s[kept:] ** 2).sum())
    # Split the singular values evenly between the factors: balanced norms train and quantise better.
    root = s[:kept].sqrt()
    error = math.sqrt(dropped / total) if total > 0 else 0.0
    return Factors((u[:, :kept] * root).contiguous(), (root[:, None] * vh[:kept]).contiguous(), error)


def lowrank_svd(factors: Factors, rank: int) -> Factors:
    """The best rank-`rank` approximation of b @ a (Eckart-Young), without forming the [out, in] matrix:
    QR of each factor, SVD of the small core."""
    q_b, r_b = torch.linalg.qr(factors.b.double())
    q_a, r_a = torch.linalg.qr(factors.a.double().T)
    u, s, vh = torch.linalg.svd(r_b @ r_a.T)
    truncated = _truncate(q_b @ u, s, vh @ q_a.T, rank)
    return Factors(truncated.b.float(), truncated.a.float(), truncated.error)


def dense_svd(delta: torch.Tensor, rank: int) -> Factors:
    """The best rank-`rank` factorisation of a dense task vector."""
    u, s, vh = torch.linalg.svd(delta.double(), full_matrices=False)
    truncated = _truncate(u, s, vh, rank)
    return Factors(truncated.b.float(), truncated.a.float(), truncated.error)


def lines_factors(num_layers: int, alpha: float, beta: float) -> list[float]:
    """LiNeS: the factor of each layer's update, rising linearly from `alpha` (first) to `alpha + beta` (last)."""
    if num_layers == 1:
        return [alpha + beta]
    return [alpha + beta * layer / (num_layers - 1) for layer in range(num_layers)]
