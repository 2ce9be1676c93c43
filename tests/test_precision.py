"""Precision: every weighting gives the float64 answer for the numbers it is given, in any dtype and
at any scale, and refuses Gramians that are not Gramians.

The references here are mtgrad's own float64 answers on the *same* numbers (``J.double()``), so
each test isolates what the dtype or the scale does; the float64 answers themselves are checked
against the papers' math in the per-method test modules.
"""

from __future__ import annotations

import pytest
import torch

import mtgrad
from mtgrad.gramian import combine, gramian

# Every Gramian weighting, seeded or in fixed order where it has randomness.
WEIGHTINGS = {
    "mean": mtgrad.Mean,
    "sum": mtgrad.Sum,
    "mgda": mtgrad.MGDA,
    "mgda_l2_normalized": lambda: mtgrad.MGDA(normalization="l2", apply_to="normalized"),
    "pcgrad": lambda: mtgrad.PCGrad(order="fixed"),
    "cagrad": lambda: mtgrad.CAGrad(c=0.4),
    "cagrad_c2": lambda: mtgrad.CAGrad(c=2.0),
    "cagrad_mtrl": lambda: mtgrad.CAGrad(c=0.9, rescale=1, solver="mtrl"),
    "imtlg": mtgrad.IMTLG,
    "gradvac": lambda: mtgrad.GradVac(order="fixed"),
    "alignedmtl": mtgrad.AlignedMTL,
    "rlw": lambda: mtgrad.RLW(generator=torch.Generator().manual_seed(0)),
    "upgrad": mtgrad.UPGrad,
    "dualproj": mtgrad.DualProj,
    "nashmtl": mtgrad.NashMTL,
    "fairgrad": mtgrad.FairGrad,
    "fairgrad_a3": lambda: mtgrad.FairGrad(alpha=3.0),
    "config": mtgrad.ConFIG,
}


def _jacobian(seed: int, T: int = 4, d: int = 7) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    norms = 10.0 ** (2 * torch.rand(T, 1, generator=gen, dtype=torch.float64) - 1)  # over 2 decades
    return torch.randn(T, d, generator=gen, dtype=torch.float64) * norms


def _combination_size(J: torch.Tensor, method) -> torch.Tensor:
    """``Σ_j |w_j| ‖g_j‖``: the size of the terms whose rounding bounds the update's error."""
    w = method.weights(J @ J.T)
    return (w.abs() * J.norm(dim=1)).sum()


def test_the_gramian_of_low_precision_gradients_is_that_of_their_float64_values():
    gen = torch.Generator().manual_seed(0)
    J = torch.randn(5, 3000, generator=gen) * 60.0  # fp16 squares overflow 65504 beyond ~256
    for dtype in (torch.float16, torch.bfloat16, torch.float32):
        Jq = J.to(dtype)
        G = gramian([Jq[:, :1000], Jq[:, 1000:]])
        exact = Jq.double() @ Jq.double().T
        assert G.dtype == torch.float64
        torch.testing.assert_close(G, exact, rtol=1e-14, atol=0)


def test_a_degenerate_float32_gramian_stays_positive_semidefinite():
    # T > d: G is singular. Formed in fp32 it came out indefinite by ~1e-7 and FairGrad gave NaN.
    J = torch.randn(4, 3, generator=torch.Generator().manual_seed(12), dtype=torch.float64).float()
    G = gramian([J])
    assert float(torch.linalg.eigvalsh(G)[0]) >= -1e-14 * float(G.diagonal().max())
    for name in ("fairgrad", "nashmtl", "cagrad_c2", "upgrad"):
        d = mtgrad.aggregate(J, WEIGHTINGS[name]())
        assert bool(torch.isfinite(d).all()), name
        if name in ("cagrad_c2", "upgrad"):  # the bargaining problems have no solution here (ridged)
            torch.testing.assert_close(d, mtgrad.aggregate(J.double(), WEIGHTINGS[name]()).float(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", sorted(WEIGHTINGS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_low_precision_answers_equal_the_float64_answer_on_the_same_numbers(name, dtype):
    eps = torch.finfo(dtype).eps
    for seed in range(4):
        Jq = _jacobian(seed).to(dtype)
        Jd = Jq.double()
        d = mtgrad.aggregate(Jq, WEIGHTINGS[name]())
        assert d.dtype == dtype
        ref = mtgrad.aggregate(Jd, WEIGHTINGS[name]())
        # The one rounding left is that of Σ w_j g_j (and of d itself) in the input dtype.
        bound = 8 * eps * float(_combination_size(Jd, WEIGHTINGS[name]())) + eps * float(ref.abs().max())
        assert float((d.double() - ref).abs().max()) <= bound, (name, seed)


@pytest.mark.parametrize("name", sorted(WEIGHTINGS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("log2_s", [-100, -60, 60, 100])
def test_every_method_is_positively_homogeneous_over_sixty_decades(name, dtype, log2_s):
    """``A(sJ) = s^(1+2k) A(J)`` for the method's Gramian degree k, s = 2^±60 and 2^±100 (≈ 1e±18,
    1e±30), in fp32 too: the Gramian is formed in float64 and scaled before the solve."""
    s = 2.0**log2_s
    k = WEIGHTINGS[name]().gramian_degree
    if dtype == torch.float32 and abs(2 * k * log2_s) > 126:
        pytest.skip("the weights themselves (∝ s^2k) are outside float32's range")
    for seed in range(3):
        J = _jacobian(seed).to(dtype)
        d = mtgrad.aggregate(J, WEIGHTINGS[name]())
        scaled = mtgrad.aggregate(J * s, WEIGHTINGS[name]())
        assert bool(torch.isfinite(scaled).all()), (name, seed)
        expected = d.double() * s ** (1 + 2 * k)
        size = float(_combination_size(J.double(), WEIGHTINGS[name]())) * s ** (1 + 2 * k)
        tol = 16 * torch.finfo(dtype).eps * size
        assert float((scaled.double() - expected).abs().max()) <= tol, (name, seed)


def test_pcgrad_on_tiny_float32_gradients_is_exact():
    # Formed in fp32 the Gramian underflowed to 0 and PCGrad returned [0, 1e-30].
    J = torch.tensor([[1.0, 0.0], [-1.0, 1.0]]) * 1e-30
    d = mtgrad.aggregate(J, mtgrad.PCGrad(order="fixed"))
    # g1 ⊥ g2 projection: g1 - (g1·g2/‖g2‖²) g2 = [0.5, 0.5]; g2 - (g2·g1/‖g1‖²) g1 = [0, 1].
    torch.testing.assert_close(d, torch.tensor([0.5, 1.5]) * 1e-30, rtol=1e-6, atol=0)


@pytest.mark.parametrize("scale", [1e19, 1e30])
def test_huge_float32_gradients_do_not_overflow(scale):
    J = _jacobian(1).float() * scale
    for name in ("mean", "pcgrad", "cagrad", "mgda", "nashmtl"):
        d = mtgrad.aggregate(J, WEIGHTINGS[name]())
        assert bool(torch.isfinite(d).all()), name


def test_half_precision_backward_with_large_entries():
    """fp16 gradients with entries ≈ 60 (finite; their squares overflow fp16) through backward."""
    torch.manual_seed(0)
    trunk = torch.nn.Linear(64, 64).half()
    x = torch.randn(8, 64).half()
    z = trunk(x)
    losses = [(z[:, :32] * 60).sum() / 8, (z[:, 32:] * -30).sum() / 8 + (z[:, :8] * 40).sum() / 8]
    record = mtgrad.backward(losses, trunk.parameters(), mtgrad.CAGrad(c=0.4))
    assert all(bool(torch.isfinite(p.grad).all()) for p in trunk.parameters())
    assert bool(torch.isfinite(record.gramian).all())
    assert float(trunk.weight.grad.float().abs().max()) > 0


def test_half_precision_weights_above_65504_still_combine():
    # PCGrad's coefficient ⟨g1, g2⟩/‖g2‖² is ~1e5 here; the update itself fits in fp16.
    J = torch.tensor([[1.0, 1.0], [-1e-5, 0.0]], dtype=torch.float16)
    w = mtgrad.PCGrad(order="fixed").weights(gramian([J]))
    assert float(w.abs().max()) > 65504
    d = combine(w, J)
    assert d.dtype == torch.float16 and bool(torch.isfinite(d).all())
    torch.testing.assert_close(d.double(), combine(w, J.double()), rtol=2e-3, atol=1e-6)



@pytest.mark.parametrize("device_rule", ["host", "branch-free"])
@pytest.mark.parametrize("log10_w, log10_j", [(-40, 30), (-44, 34), (40, -36), (-20, 10)])
def test_float64_weights_outside_float32_range_combine_exactly(log10_w, log10_j, device_rule, monkeypatch):
    # FairGrad on gradients of norm ~1e30 has weights ~1e-40: subnormal in float32. The update
    # (~1e-10) is a normal float32 number and must be the float64 one rounded once.
    import mtgrad.gramian as gramian_module

    if device_rule == "branch-free":
        monkeypatch.setattr(gramian_module, "_host_sync_is_free", lambda t: False)
    g = torch.Generator().manual_seed(log10_w + 100)
    w = torch.rand(3, generator=g, dtype=torch.float64) * 10.0**log10_w
    J = (torch.randn(3, 50, generator=g, dtype=torch.float64) * 10.0**log10_j).float()
    exact = torch.tensordot(w, J.double(), dims=1)
    got = combine(w, J)
    assert got.dtype == torch.float32
    size = torch.tensordot(w.abs(), J.double().abs(), dims=1)
    assert bool(((got.double() - exact).abs() <= 4 * torch.finfo(torch.float32).eps * size).all())

@pytest.mark.parametrize("name", ["pcgrad", "cagrad", "gradvac", "nashmtl", "upgrad"])
def test_a_jacobian_that_requires_grad_is_accepted(name):
    J = _jacobian(2).requires_grad_(True)
    d = mtgrad.aggregate(J, WEIGHTINGS[name]())
    torch.testing.assert_close(d.detach(), mtgrad.aggregate(J.detach(), WEIGHTINGS[name]()))


@pytest.mark.parametrize(
    "G, match",
    [
        (torch.tensor([[1.0, float("nan")], [float("nan"), 1.0]], dtype=torch.float64), "NaN or inf"),
        (torch.tensor([[1.0, float("inf")], [float("inf"), 1.0]], dtype=torch.float64), "NaN or inf"),
        (torch.tensor([[1.0, 0.5], [-0.5, 1.0]], dtype=torch.float64), "not symmetric"),
        (torch.tensor([[1.0, 2.0], [2.0, 1.0]], dtype=torch.float64), "not positive semi-definite"),
        (torch.tensor([[-1.0, 0.0], [0.0, 1.0]], dtype=torch.float64), "negative diagonal entry"),
        # PSD 2×2 minors, indefinite as a whole: three unit vectors at pairwise cosine −0.9.
        (torch.full((3, 3), -0.9, dtype=torch.float64).fill_diagonal_(1.0), "not positive semi-definite"),
    ],
)
@pytest.mark.parametrize("name", ["pcgrad", "cagrad", "mgda", "nashmtl", "mean"])
def test_weights_refuse_what_is_not_a_gramian(G, match, name):
    with pytest.raises(ValueError, match=match):
        WEIGHTINGS[name]().weights(G)


def test_weights_accept_gramians_indefinite_by_float32_rounding():
    J = torch.randn(6, 3, generator=torch.Generator().manual_seed(3))
    G = (J @ J.T).double()  # formed in fp32: singular, so indefinite by rounding
    assert float(torch.linalg.eigvalsh(G)[0]) < 0
    for name in ("cagrad", "mgda", "fairgrad", "upgrad"):
        assert bool(torch.isfinite(WEIGHTINGS[name]().weights(G)).all())


def test_validation_can_be_switched_off_and_forced():
    G = torch.tensor([[1.0, 2.0], [2.0, 1.0]], dtype=torch.float64)
    mtgrad.Mean().weights(G, validate=False)  # the engines form G themselves
    with pytest.raises(ValueError, match="positive semi-definite"):
        mtgrad.Mean().weights(G, validate=True)


def test_nash_mtl_reuses_its_weights_in_the_units_they_were_computed_in():
    """Between updates Nash-MTL reuses α itself; a rescaled Gramian must not rescale it."""
    G = (lambda J: J @ J.T)(_jacobian(4))
    method = mtgrad.NashMTL(update_weights_every=2)
    first = method.weights(G)
    reused = method.weights(G * 1000.0)  # another power-of-four bucket
    torch.testing.assert_close(reused, first, rtol=0, atol=0)
    fresh = method.weights(G * 1000.0)
    torch.testing.assert_close(fresh, first / 1000.0**0.5, rtol=1e-9, atol=0)


@pytest.mark.parametrize("alpha", [0.0, 0.02, -1.0, float("inf")])
def test_fairgrad_refuses_alpha_outside_its_stable_range(alpha):
    with pytest.raises(ValueError, match="alpha"):
        mtgrad.FairGrad(alpha=alpha)


def test_fairgrad_is_finite_over_its_accepted_range():
    for alpha in (0.05, 0.1, 1.0, 10.0, 1e3, 1e6):
        for seed in range(5):
            for dtype in (torch.float32, torch.float64):
                d = mtgrad.aggregate(_jacobian(seed).to(dtype), mtgrad.FairGrad(alpha=alpha))
                assert bool(torch.isfinite(d).all()), (alpha, seed, dtype)


# --- T = 2 closed forms at any norm ratio, against 50-digit references (mpmath) --------------

def _mp_rows(J: torch.Tensor):
    import mpmath as mp

    mp.mp.dps = 50
    return mp, [[mp.mpf(float(v)) for v in row] for row in J.tolist()]


def _mp_dot(a, b):
    import mpmath as mp

    return mp.fsum(x * y for x, y in zip(a, b))


def _two_task_jacobians():
    """Pairs with norm ratios 1 … 1e24, the small task first and second, with positive and
    negative cosines."""
    gen = torch.Generator().manual_seed(5)
    for k in range(50):
        J = torch.randn(2, 5, generator=gen, dtype=torch.float64)
        J[1] = J[1] / 10.0 ** (k % 25)
        yield J.flip(0) if k % 2 else J


def test_mgda_two_task_weights_are_exact_at_any_norm_ratio():
    worst = 0.0
    for J in _two_task_jacobians():
        mp, g = _mp_rows(J)
        g11, g22, g12 = _mp_dot(g[0], g[0]), _mp_dot(g[1], g[1]), _mp_dot(g[0], g[1])
        w1 = min(max((g22 - g12) / (g11 + g22 - 2 * g12), 0), 1)
        w = mtgrad.MGDA().weights(J @ J.T)
        for got, want in zip(w.tolist(), (w1, 1 - w1)):
            worst = max(worst, float(abs(got - want) / want) if want > 0 else float(got != 0))
    assert worst <= 1e-13


@pytest.mark.parametrize("c", [0.4, 2.0])
def test_cagrad_two_tasks_is_optimal_and_in_its_ball_at_any_norm_ratio(c):
    """The dual (eq. 11) is a convex function of one variable for T = 2: its minimiser to 50 digits
    (ternary search) gives d* and the optimal value min_i ⟨g_i, d*⟩ to compare with."""
    for J in _two_task_jacobians():
        mp, g = _mp_rows(J)
        g0 = [(a + b) / 2 for a, b in zip(*g)]
        rho = c * mp.sqrt(_mp_dot(g0, g0))

        def gw(x):
            return [x * a + (1 - x) * b for a, b in zip(*g)]

        def dual(x):
            return _mp_dot(gw(x), g0) + rho * mp.sqrt(_mp_dot(gw(x), gw(x)))

        lo, hi = mp.mpf(0), mp.mpf(1)
        for _ in range(250):
            m1, m2 = lo + (hi - lo) / 3, hi - (hi - lo) / 3
            lo, hi = (lo, m2) if dual(m1) < dual(m2) else (m1, hi)
        w = gw((lo + hi) / 2)
        d_ref = [a + rho * b / mp.sqrt(_mp_dot(w, w)) for a, b in zip(g0, w)]
        value_ref = min(_mp_dot(g[i], d_ref) for i in range(2))

        d = [mp.mpf(v) for v in mtgrad.aggregate(J, mtgrad.CAGrad(c=c)).tolist()]
        value = min(_mp_dot(g[i], d) for i in range(2))
        gmax = max(mp.sqrt(_mp_dot(r, r)) for r in g)
        assert abs(value - value_ref) <= 1e-13 * gmax * rho
        assert mp.sqrt(sum((x - y) ** 2 for x, y in zip(d, g0))) <= rho * (1 + 1e-13)


def test_nash_mtl_two_nearly_opposite_gradients_conflict_with_neither():
    # 1 + cos = 6e-10: the weights must balance to ~1e-10 relative or d turns against a task.
    J = torch.tensor([[1.304, 0.947], [-1.304, -0.94707]], dtype=torch.float64)
    for method in (mtgrad.NashMTL(), mtgrad.FairGrad(), mtgrad.FairGrad(alpha=2.0)):
        assert bool((J @ mtgrad.aggregate(J, method) > 0).all()), method


def test_upgrad_and_dualproj_do_not_conflict_with_a_nearly_opposite_pair():
    gen = torch.Generator().manual_seed(8)
    for _ in range(10):
        J = torch.randn(6, 30, generator=gen, dtype=torch.float64)
        J[1] = -J[0] * (1 + 1e-6 * torch.randn((), generator=gen, dtype=torch.float64))
        J[1, 0] += 1e-6 * J[0].norm()  # 1 + cos ≈ 1e-12
        for method in (mtgrad.UPGrad(), mtgrad.DualProj()):
            w = method.weights(J @ J.T)
            norms = J.norm(dim=1)
            tol = 16 * torch.finfo(torch.float64).eps * norms * (w.abs() * norms).sum()
            assert bool((J @ (w @ J) >= -tol).all()), method
