"""Tragic-triad measures against the PCGrad paper's definitions and sanity values."""

from __future__ import annotations

import math

import pytest
import torch

import mtgrad
from mtgrad.diagnostics import conflict_rate, cosine_matrix, curvature_bound, magnitude_similarity


def gram(*rows):
    J = torch.tensor(rows, dtype=torch.float64)
    return J @ J.T


def test_sanity_values_from_the_paper_definitions():
    G = gram([1.0, 0.0], [-10.0, 1.0])
    assert cosine_matrix(G)[0, 1].item() == pytest.approx(-0.99504, abs=1e-5)
    assert magnitude_similarity(G)[0, 1].item() == pytest.approx(0.19706, abs=1e-5)
    assert curvature_bound(G)[0, 1].item() == pytest.approx(0.01473, abs=1e-5)
    assert magnitude_similarity(gram([3.0, 4.0], [5.0, 0.0]))[0, 1].item() == pytest.approx(1.0)


def test_conflict_rate_counts_pairs():
    G = gram([1.0, 0.0], [-1.0, 0.1], [0.0, 1.0])  # (0,1) conflict; (0,2) orthogonal; (1,2) agree
    assert conflict_rate(G).item() == pytest.approx(1 / 3)
    assert conflict_rate(gram([1.0, 2.0])).item() == 0.0


def test_zero_gradient_and_opposite_pairs_are_finite_or_documented():
    G = gram([0.0, 0.0], [1.0, 2.0], [-1.0, -2.0])
    cos = cosine_matrix(G)
    assert cos[0, 1] == 0 and cos[1, 2].item() == pytest.approx(-1.0)
    assert magnitude_similarity(G)[0, 1] == 0
    assert math.isinf(curvature_bound(G)[1, 2].item())


def test_record_exposes_diagnostics():
    w = torch.tensor([1.0, -1.0], requires_grad=True)
    record = mtgrad.backward([(w * torch.tensor([1.0, 0.0])).sum(), (w * torch.tensor([-10.0, 1.0])).sum()], [w], mtgrad.PCGrad())
    d = record.diagnostics()
    assert d.conflict_rate.item() == 1.0
    torch.testing.assert_close(d.norms, torch.tensor([1.0, math.sqrt(101.0)], dtype=torch.float64))


def test_multitask_curvature_is_exact_for_a_quadratic():
    """For L(θ) = ½ θᵀAθ the estimate equals sᵀAs exactly (Taylor's theorem with no remainder)."""
    from mtgrad.diagnostics import multitask_curvature

    A = torch.tensor([[3.0, 1.0], [1.0, 2.0]], dtype=torch.float64)
    theta = torch.tensor([0.5, -1.0], dtype=torch.float64, requires_grad=True)
    loss = 0.5 * theta @ A @ theta
    (grad,) = torch.autograd.grad(loss, theta)
    step = torch.tensor([-0.1, 0.3], dtype=torch.float64)
    after = 0.5 * (theta + step) @ A @ (theta + step)
    H = multitask_curvature(loss.detach(), after.detach(), [grad], [step])
    assert H.item() == pytest.approx((step @ A @ step).item(), rel=1e-12)
    with pytest.raises(ValueError, match="pair up"):
        multitask_curvature(loss, after, [grad], [])
