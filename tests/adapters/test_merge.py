"""Merge arithmetic on small tensors: hand-computed results, PEFT's reference functions, exact and
truncated re-factorisation, LiNeS factors."""

from __future__ import annotations

import math

import pytest
import torch
from peft.utils import merge_utils

from adapters.merge import (
    Factors,
    combine,
    concat_factors,
    dense_svd,
    drop_and_rescale,
    elect_sign,
    lines_factors,
    lowrank_svd,
    trim_to_density,
)

D1 = torch.tensor([[1.0, -2.0], [3.0, 0.5]])
D2 = torch.tensor([[-4.0, 1.5], [1.0, -0.1]])


def test_linear_is_the_weighted_sum() -> None:
    merged = combine([D1, D2], [0.25, 0.75], method="linear")
    assert torch.allclose(merged, torch.tensor([[-2.75, 0.625], [1.5, 0.05]]))


def test_ties_by_hand() -> None:
    # Trim to 2 of 4 entries: D1 keeps 3 and -2, D2 keeps -4 and 1.5. Summed signs: [[-, -], [+, + (zero)]].
    # Per entry the values agreeing with the elected sign are averaged: 1.5 disagrees with '-'.
    assert torch.equal(trim_to_density(D1, 0.5), torch.tensor([[0.0, -2.0], [3.0, 0.0]]))
    assert torch.equal(trim_to_density(D2, 0.5), torch.tensor([[-4.0, 1.5], [0.0, 0.0]]))
    merged = combine([D1, D2], [1.0, 1.0], method="ties", density=0.5)
    assert torch.equal(merged, torch.tensor([[-4.0, -2.0], [3.0, 0.0]]))
    # Weights scale the values after the election, and agreeing values are averaged, not summed.
    both = combine([D1, D1 * 3], [0.5, 0.5], method="ties", density=1.0)
    assert torch.allclose(both, (D1 * 0.5 + D1 * 1.5) / 2)


def test_frequency_sign_election_counts_votes_not_magnitudes() -> None:
    stacked = torch.tensor([[-10.0], [1.0], [1.0]])
    assert elect_sign(stacked, "total").item() == -1.0
    assert elect_sign(stacked, "frequency").item() == 1.0


@pytest.mark.parametrize("sign_method", ["total", "frequency"])
def test_ties_equals_peft_on_random_tensors(sign_method: str) -> None:
    generator = torch.Generator().manual_seed(0)
    deltas = [torch.randn(16, 24, generator=generator) for _ in range(3)]
    weights = [0.5, 0.3, 0.2]
    ours = combine(deltas, weights, method="ties", density=0.3, majority_sign=sign_method)
    theirs = merge_utils.ties(deltas, torch.tensor(weights), 0.3, sign_method)
    assert torch.allclose(ours, theirs, atol=1e-6)
    assert torch.allclose(combine(deltas, weights, method="linear"),
                          merge_utils.task_arithmetic(deltas, torch.tensor(weights)), atol=1e-6)


def test_dare_drops_at_the_given_rate_and_rescales_without_bias() -> None:
    delta = torch.full((200, 200), 2.0)
    dropped = drop_and_rescale(delta, 0.25, torch.Generator().manual_seed(1))
    kept = dropped != 0
    assert abs(kept.float().mean().item() - 0.25) < 0.01
    assert torch.all(dropped[kept] == 8.0)  # 2 / 0.25
    assert abs(dropped.mean().item() - 2.0) < 0.1  # unbiased in expectation
    again = drop_and_rescale(delta, 0.25, torch.Generator().manual_seed(1))
    assert torch.equal(dropped, again)  # seeded: the same merge every time


def test_dare_ties_is_dare_then_the_ties_election() -> None:
    generator = torch.Generator().manual_seed(3)
    deltas = [torch.randn(8, 8, generator=generator) for _ in range(2)]
    merged = combine(deltas, [1.0, 1.0], method="dare_ties", density=0.5, generator=torch.Generator().manual_seed(7))
    replay = torch.Generator().manual_seed(7)
    dropped = torch.stack([drop_and_rescale(d, 0.5, replay) for d in deltas])
    expected = merge_utils.disjoint_merge(dropped, merge_utils.calculate_majority_sign_mask(dropped, "total"))
    assert torch.allclose(merged, expected, atol=1e-6)
    linear = combine(deltas, [1.0, 1.0], method="dare_linear", density=0.5, generator=torch.Generator().manual_seed(7))
    assert torch.allclose(linear, dropped.sum(0), atol=1e-6)


def test_concatenated_factors_are_the_exact_weighted_sum() -> None:
    generator = torch.Generator().manual_seed(5)
    parts = [(torch.randn(6, r, generator=generator), torch.randn(r, 10, generator=generator), w)
             for r, w in ((2, 0.7), (4, -0.3))]
    merged = concat_factors(parts)
    assert merged.rank == 6
    expected = sum(w * (b @ a) for b, a, w in parts)
    assert torch.allclose(merged.b @ merged.a, expected, atol=1e-5)


def test_svd_refactorisation_is_exact_at_full_rank_and_reports_what_truncation_drops() -> None:
    u, _ = torch.linalg.qr(torch.randn(8, 3, generator=torch.Generator().manual_seed(2)))
    v, _ = torch.linalg.qr(torch.randn(12, 3, generator=torch.Generator().manual_seed(3)))
    s = torch.tensor([5.0, 2.0, 1.0])
    delta = (u * s) @ v.T  # rank 3, singular values 5, 2, 1
    full = dense_svd(delta, 3)
    assert torch.allclose(full.b @ full.a, delta, atol=1e-5) and full.error < 1e-6
    two = dense_svd(delta, 2)
    assert two.rank == 2 and two.error == pytest.approx(1 / math.sqrt(30), rel=1e-5)  # sqrt(1 / (25+4+1))
    assert torch.linalg.matrix_norm(delta - two.b @ two.a) == pytest.approx(1.0, rel=1e-4)
    low = lowrank_svd(Factors(u * s, v.T), 2)  # the same from the factors, never forming delta
    assert torch.allclose(low.b @ low.a, two.b @ two.a, atol=1e-5) and low.error == pytest.approx(two.error)


def test_lines_factors_rise_linearly_with_depth() -> None:
    assert lines_factors(4, 0.2, 0.8) == pytest.approx([0.2, 0.2 + 0.8 / 3, 0.2 + 1.6 / 3, 1.0])
    assert lines_factors(1, 0.5, 0.5) == [1.0]
