"""mtgrad.CAGrad against the exact primal solution of Liu et al. (2021), eq. 3 (tests/reference.py).

Note on uniqueness: the primal optimum d* is unique whenever 0 is not in conv{g_i}; when the
gradients are Pareto-stationary (0 in conv, e.g. two exactly opposite rows) the optimal value is 0
and the optimal set is {d : ||d - g0|| <= rho, J d >= 0}, which can be a whole region. The vector
comparison is therefore only made when the MGDA min-norm point is not tiny; the optimal value and
feasibility are checked always.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st

import mtgrad
import reference as ref
from jacobians import ADVERSARIAL, family_samples, jacobians, make_jacobian, to_torch

CS = [0.1, 0.4, 0.5, 0.9, 2.0]


def run(J: np.ndarray, method) -> np.ndarray:
    out = mtgrad.aggregate(to_torch(J), method)
    assert out.dtype == torch.float64 and out.shape == (J.shape[1],)
    return out.numpy()


def mgda_ratio(J) -> float:
    x, _ = ref.mgda(J)
    return float(np.linalg.norm(x) / max(np.linalg.norm(J, axis=1).max(), 1e-300))


def check_against_reference(J, c, d, rtol=1e-6):
    """Feasibility, optimal value and (where unique and well conditioned) the vector."""
    g0 = J.mean(0)
    rho = c * np.linalg.norm(g0)
    gmax = np.linalg.norm(J, axis=1).max()
    d_ref, v_ref = ref.cagrad(J, c)
    assert np.all(np.isfinite(d))
    # primal feasibility
    assert np.linalg.norm(d - g0) <= rho * (1 + rtol) + 1e-12 * gmax
    # optimal value min_i <g_i, d>
    v = ref.cagrad_value(J, d)
    v_scale = gmax * np.linalg.norm(g0) * (1 + c)
    # The same absolute floor as feasibility's (d known to 1e-12·gmax moves the value by gmax times
    # that): with g₀ ≈ 0 (cancelling gradients) v_scale itself is rounding, ~1e-31 here.
    assert abs(v - v_ref) <= rtol * v_scale + 1e-12 * gmax**2, f"value {v!r} vs {v_ref!r} (scale {v_scale:.2e})"
    if mgda_ratio(J) > 1e-3:
        err = np.linalg.norm(d - d_ref)
        assert err <= rtol * np.linalg.norm(d_ref) + 1e-12 * gmax, f"|d-d*|/|d*| = {err / np.linalg.norm(d_ref):.3e}"
        if rho > 0:
            assert np.linalg.norm(d - g0) == pytest.approx(rho, rel=rtol)


# --------------------------------------------------------------------------------------------


def test_torchjd_docs_example():
    J = np.array([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]])
    np.testing.assert_allclose(run(J, mtgrad.CAGrad(c=0.5)), [0.1835, 1.2041, 1.2041], atol=1e-4)


def test_default_c_is_0_4():
    J = make_jacobian("conflict", 3, 6, 0)
    np.testing.assert_allclose(run(J, mtgrad.CAGrad()), run(J, mtgrad.CAGrad(c=0.4)), rtol=0, atol=0)


@given(jacobians(), st.sampled_from(CS))
def test_matches_exact_primal(case, c):
    _, J = case
    check_against_reference(J, c, run(J, mtgrad.CAGrad(c=c)))


@pytest.mark.parametrize("kind", ADVERSARIAL)
def test_matches_exact_primal_deterministic_sweep(kind):
    """Fixed sample per family (Hypothesis' 50 random draws can miss the rarer degenerate cases)."""
    for _, J in family_samples((kind,), n_per_family=6, seed=1):
        for c in (0.5, 2.0):
            check_against_reference(J, c, run(J, mtgrad.CAGrad(c=c)))


@pytest.mark.parametrize("T", [1, 2, 3, 4, 5, 6])
def test_identical_rows(T):
    """All gradients equal to g: no conflict, g_w = g for every w, d* = (1 + c) g (Alg. 1)."""
    g = np.array([1.0, 2.0, -0.5])
    J = np.tile(g, (T, 1))
    np.testing.assert_allclose(run(J, mtgrad.CAGrad(c=0.5)), 1.5 * g, rtol=1e-9)


def test_nearly_all_equal_gramian():
    """Identical gradients in fp32 give an all-equal Gramian up to one ulp; the answer must stay
    close to the exact all-equal one, weights summing to 1 + c."""
    G = torch.ones(3, 3, dtype=torch.float64)
    G[0, 1] = G[1, 0] = 1.0 - 2.0**-24
    w = mtgrad.CAGrad(c=0.4).weights(G)
    assert float(w.sum()) == pytest.approx(1.4, abs=1e-3)


@pytest.mark.parametrize(
    "rows, c",
    [
        ([[-2.0, -2.0], [0.0, 1.0], [0.0, 0.0]], 0.5),
        ([[0.0, 0.0], [0.4941521992538255, 0.5745536031050376], [-0.2179440234272259, 0.07299144875939255]], 2.0),
    ],
)
def test_zero_row_pareto_stationary_optimum(rows, c):
    """A zero gradient puts 0 in conv{g_i}, so min_i <g_i, d> <= 0; the optimum value is 0 when
    the ball meets {d : J d >= 0}, as here (e.g. d = (-2/3, 0.0393) for the first case), and
    returning g0 there is suboptimal (first case: value -1/3; second: -0.0043)."""
    J = np.array(rows)
    check_against_reference(J, c, run(J, mtgrad.CAGrad(c=c)))


# Found by Hypothesis (colinear family): rows 0 and 5 exactly opposite, so 0 is in conv{g_i} and the
# optimum value is 0; mtgrad returned an interior point with min_i <g_i, d> = -0.098.
# Rounding-sensitive: an isometric 6-D rewrite of the same matrix does not fail.
OPPOSITE_PAIR_6x20 = np.array([
        [-0.37176189079352345, 0.47743841516694474, -0.3474248063373547, 0.1398270481934662, -1.1808823841349887, 0.6848132618243258, 2.2210993435930155, -0.6315581162189798, -0.9462993401279124, 0.708197948249168, -1.3859726025510473, -0.3047693445684931, -0.8414240460809683, 0.5667970534698227, 1.5273619378867065, -0.4503038799483447, 0.1370516873101545, -0.5453683565947115, 1.0392141115563325, -1.1759969443447507],
        [-0.8336665129525573, 0.9128866776174402, -0.6621124453299421, -0.050821069025110584, -0.3160018586025284, 1.3343387258474086, -0.11859577514208663, 0.4252917495451155, 0.12201999366735371, 0.5353939129663216, -0.372519601588073, 0.07795663463814512, -0.6257638425352702, -1.3681558727324714, -0.468357833734782, 0.18791416005575712, 0.002853762253149596, -0.5399555261811065, -0.5542064012962455, 0.13099830645312124],
        [0.5681298484577098, -1.0110104828668551, -0.1119679401746584, 1.150975020531727, 0.24554897637634593, -1.3722659736199114, -1.529367703408937, -0.2686859176027794, 1.737209415178279, 0.31779988727969716, 2.000402592474957, -1.2950608332864104, 1.8966245115680793, 0.2742726711556745, 1.3114786367025633, -0.566606591082727, 0.2979318272655955, 2.6648545495561065, 1.378624848117828, 0.584245258232115],
        [-0.23957370641413195, -1.2542092204189976, 0.2593167470644904, -1.8159585475499047, -1.7421250861451627, 0.4420855940585517, 0.6892895446342991, 1.1348510238532952, 0.9675924812392126, 0.20132445061772655, 0.6136985024219413, -1.6952732313312, -0.6732387646062027, 1.1157447478844562, -0.6198901202243324, 0.8283533992869594, 0.4687895552860808, -0.40217429378363484, -0.5191060374747988, 1.266701898180156],
        [0.12343068376420527, -0.4499319980749418, 1.3647618688521668, -0.9984481799752766, 0.7445555026172681, 0.20527754314864938, -0.7081123721943071, 0.6098038094005988, -0.8552465261018769, -3.3003489739527603, -1.2806188891034234, 2.0804785874238463, -2.2463405151841838, -0.0988126169388296, 0.6700853271202041, -0.07211840956727841, 0.40922148865331237, -1.7224224607920313, 1.6360901643013113, 0.43511053270057715],
        [0.37176189079352345, -0.47743841516694474, 0.3474248063373547, -0.1398270481934662, 1.1808823841349887, -0.6848132618243258, -2.2210993435930155, 0.6315581162189798, 0.9462993401279124, -0.708197948249168, 1.3859726025510473, 0.3047693445684931, 0.8414240460809683, -0.5667970534698227, -1.5273619378867065, 0.4503038799483447, -0.1370516873101545, 0.5453683565947115, -1.0392141115563325, 1.1759969443447507],
])


def test_opposite_pair_pareto_stationary_regression():
    check_against_reference(OPPOSITE_PAIR_6x20, 0.4, run(OPPOSITE_PAIR_6x20, mtgrad.CAGrad(c=0.4)))


@given(jacobians(families=("gaussian", "conflict", "benign"), max_T=4, max_d=10), st.sampled_from(CS))
def test_matches_two_task_dual_value(case, c):
    _, J = case
    J = J[:2]
    d = run(J, mtgrad.CAGrad(c=c))
    v = ref.cagrad_value(J, d)
    dual = ref.cagrad_dual_value_2task(J, c)
    scale = np.linalg.norm(J, axis=1).max() * np.linalg.norm(J.mean(0)) * (1 + c)
    assert abs(v - dual) <= 1e-7 * scale + 1e-300


@given(jacobians(), st.sampled_from(CS))
def test_constraint_active_when_not_pareto_stationary(case, c):
    _, J = case
    assume(mgda_ratio(J) > 1e-3)
    g0 = J.mean(0)
    d = run(J, mtgrad.CAGrad(c=c))
    assert np.linalg.norm(d - g0) == pytest.approx(c * np.linalg.norm(g0), rel=1e-6)


@given(jacobians(families=ADVERSARIAL + ("benign",)))
def test_c_zero_is_mean(case):
    _, J = case
    Jt = to_torch(J)
    got = mtgrad.aggregate(Jt, mtgrad.CAGrad(c=0.0))
    torch.testing.assert_close(got, Jt.mean(0), rtol=0, atol=1e-14 * float(Jt.abs().max()))


@given(jacobians(families=("gaussian", "conflict", "benign", "lognorm")))
def test_large_c_gives_mgda_direction(case):
    _, J = case
    assume(mgda_ratio(J) > 0.05)
    x, _ = ref.mgda(J)
    d = run(J, mtgrad.CAGrad(c=1e3))
    cos = d @ x / (np.linalg.norm(d) * np.linalg.norm(x))
    assert cos >= 0.9999


@given(jacobians(families=ADVERSARIAL + ("benign",)), st.sampled_from(CS))
def test_rescale_and_scale_by_tasks(case, c):
    _, J = case
    T = J.shape[0]
    base = run(J, mtgrad.CAGrad(c=c, rescale=0))
    atol = 1e-13 * (np.abs(base).max() + np.abs(J).max())
    np.testing.assert_allclose(run(J, mtgrad.CAGrad(c=c, rescale=1)), base / (1 + c**2), rtol=1e-12, atol=atol)
    np.testing.assert_allclose(run(J, mtgrad.CAGrad(c=c, rescale=2)), base / (1 + c), rtol=1e-12, atol=atol)
    np.testing.assert_allclose(run(J, mtgrad.CAGrad(c=c, scale_by_tasks=True)), T * base, rtol=1e-12, atol=T * atol)
    np.testing.assert_allclose(
        run(J, mtgrad.CAGrad(c=c, rescale=1, scale_by_tasks=True)), T * base / (1 + c**2), rtol=1e-12, atol=T * atol
    )


def test_default_rescale_is_paper_algorithm_1():
    J = make_jacobian("conflict", 3, 6, 1)
    d_ref, _ = ref.cagrad(J, 0.4)
    np.testing.assert_allclose(run(J, mtgrad.CAGrad(c=0.4)), d_ref, rtol=1e-6)


@pytest.mark.parametrize("seed", range(5))
def test_mtrl_solver_close_to_exact_on_benign_case(seed):
    J = make_jacobian("benign", 3, 10, seed)
    exact = run(J, mtgrad.CAGrad(c=0.5, solver="exact"))
    mtrl = run(J, mtgrad.CAGrad(c=0.5, solver="mtrl"))
    assert np.all(np.isfinite(mtrl))
    cos = exact @ mtrl / (np.linalg.norm(exact) * np.linalg.norm(mtrl))
    assert cos > 0.99


@given(jacobians(families=ADVERSARIAL), st.sampled_from(CS))
def test_mtrl_solver_finite_and_feasible_direction(case, c):
    _, J = case
    d = run(J, mtgrad.CAGrad(c=c, solver="mtrl"))
    assert np.all(np.isfinite(d))


@pytest.mark.parametrize("solver", ["exact", "mtrl"])
@pytest.mark.parametrize("rescale", [0, 1, 2])
@pytest.mark.parametrize("T", [1, 2, 5])
def test_zero_jacobian_gives_zeros(solver, rescale, T):
    J = torch.zeros(T, 7, dtype=torch.float64)
    out = mtgrad.aggregate(J, mtgrad.CAGrad(c=0.4, rescale=rescale, solver=solver))
    assert torch.equal(out, torch.zeros(7, dtype=torch.float64))
    w = mtgrad.CAGrad(c=0.4, rescale=rescale, solver=solver).weights(J @ J.T)
    assert torch.isfinite(w).all()


@pytest.mark.parametrize("solver", ["exact", "mtrl"])
def test_opposite_pair_has_zero_mean_and_zero_update(solver):
    """g0 = 0 => rho = 0 => d* = g0 = 0 (no 0/0 from ||g_w|| = 0)."""
    g = np.array([1.0, -2.0, 0.5])
    J = np.stack([g, -g])
    d = run(J, mtgrad.CAGrad(c=0.4, solver=solver))
    np.testing.assert_allclose(d, 0.0, atol=1e-12)


def test_single_task_is_identity():
    J = np.array([[3.0, -1.0, 2.0]])
    np.testing.assert_allclose(run(J, mtgrad.CAGrad(c=0.4)), J[0] * (1 + 0.4), rtol=1e-12)


@pytest.mark.parametrize("solver", ["exact", "mtrl"])
def test_batched_gramians_match_one_at_a_time(solver):
    Js = [make_jacobian(kind, 4, 6, s) for s, kind in enumerate(ADVERSARIAL)]
    G = torch.stack([to_torch(J) @ to_torch(J).T for J in Js])
    method = mtgrad.CAGrad(c=0.5, solver=solver)
    W = method.weights(G)
    assert W.shape == (len(Js), 4)
    for b in range(len(Js)):
        torch.testing.assert_close(W[b], method.weights(G[b]), rtol=1e-9, atol=1e-12)
    W2 = method.weights(G.reshape(len(Js), 1, 4, 4))  # several batch dims
    torch.testing.assert_close(W2.reshape(len(Js), 4), W, rtol=1e-9, atol=1e-12)


@given(jacobians(), st.sampled_from(CS), st.sampled_from([1e-3, 7.0, 1e3]))
def test_weights_invariant_to_gramian_scale(case, c, alpha):
    _, J = case
    assume(mgda_ratio(J) > 1e-3)
    G = to_torch(J) @ to_torch(J).T
    method = mtgrad.CAGrad(c=c)
    a = method.weights(G).numpy() @ J
    b = method.weights(alpha**2 * G).numpy() @ J
    assert np.linalg.norm(a - b) <= 1e-6 * np.linalg.norm(a) + 1e-12 * np.linalg.norm(J, axis=1).max()


@pytest.mark.parametrize(
    "kwargs, word",
    [
        (dict(c=-0.1), r"\bc\b"),
        (dict(c=float("nan")), r"\bc\b"),
        (dict(rescale=3), "rescale"),
        (dict(solver="cvxpy"), "solver"),
    ],
)
def test_invalid_arguments(kwargs, word):
    with pytest.raises(ValueError, match=word):
        mtgrad.CAGrad(**kwargs)


# --------------------------------------------------------------------------------------------
# Precision at norm ratios up to 1e24 (issue: "defining properties ... at norm ratios up to 1e24
# in float64"), against a 50-digit reference that shares no code with mtgrad.


def _mp_gramian(J: np.ndarray):
    """The rows as 50-digit numbers and their exact Gramian (a product of doubles is exact there)."""
    import mpmath as mp

    rows = [[mp.mpf(float(x)) for x in row] for row in J]
    T = len(rows)
    G = mp.matrix(T, T)
    for i in range(T):
        for j in range(i, T):
            G[i, j] = G[j, i] = mp.fsum(x * y for x, y in zip(rows[i], rows[j]))
    return rows, G


def _mp_face(G, b, rho, S):
    """The stationary point of CAGrad's dual (eq. 11), ``F(w) = g_wᵀg₀ + ρ‖g_w‖``, on the affine
    hull of the face S, if it is a point of the simplex: ``(F, w, a)`` with ``a = m + ρw/‖g_w‖``
    (Alg. 1's weights, ``d = Σ a_i g_i``), else None.

    Stationarity is ``b_S + ρ G_S w/‖g_w‖ = ν1``. With ``z = G_S⁻¹(ν1 − b_S)`` that is
    ``w = z/1ᵀz`` where ``zᵀG_S z = ρ²`` (the scale ``‖g_w‖`` cancels), a quadratic in ν, and
    ``1ᵀz > 0``.
    """
    import mpmath as mp

    T, k = G.rows, len(S)
    m = mp.mpf(1) / T
    # mpmath's LU has an absolute singularity test: invert the unit-diagonal D G_S D instead.
    D = [1 / mp.sqrt(G[i, i]) for i in S]
    unit = mp.inverse(mp.matrix([[D[p] * G[i, j] * D[q] for q, j in enumerate(S)] for p, i in enumerate(S)]))
    inv = mp.matrix([[D[p] * unit[p, q] * D[q] for q in range(k)] for p in range(k)])
    x = inv * mp.matrix([1] * k)
    y = inv * mp.matrix([b[i] for i in S])
    sx, sy = mp.fsum(x), mp.fsum(y)
    byy = mp.fsum(b[i] * y[n] for n, i in enumerate(S))
    disc = sy * sy - sx * (byy - rho * rho)
    if disc < 0:
        return None
    nu = (sy + mp.sqrt(disc)) / sx
    z = [nu * x[n] - y[n] for n in range(k)]
    total = mp.fsum(z)
    if total <= 0 or min(z) < 0:
        return None
    w = [mp.mpf(0)] * T
    for n, i in enumerate(S):
        w[i] = z[n] / total
    gw = mp.sqrt(mp.fsum(w[i] * G[i, j] * w[j] for i in range(T) for j in range(T)))
    F = mp.fsum(w[i] * b[i] for i in range(T)) + rho * gw
    return F, w, [m + rho * w[i] / gw for i in range(T)]


def _mp_problem(J: np.ndarray, c: float):
    import mpmath as mp

    rows, G = _mp_gramian(J)
    T = len(rows)
    b = [mp.fsum(G[i, j] for j in range(T)) / T for i in range(T)]
    return rows, G, b, c * mp.sqrt(mp.fsum(b) / T)


def _mp_dual_reference(J: np.ndarray, c: float):
    """CAGrad's dual (eq. 11), ``min_{w∈Δ} g_wᵀg₀ + c‖g₀‖‖g_w‖``, by enumeration of the faces: the
    minimum of F over the feasible stationary points of all faces (:func:`_mp_face`) is its minimum
    over the simplex, F being convex. Returns ``(F*, w*, a*)``. For T ≤ 6 and full-rank rows."""
    import itertools

    import mpmath as mp

    with mp.workdps(50):
        _, G, b, rho = _mp_problem(J, c)
        T = G.rows
        faces = (_mp_face(G, b, rho, S) for k in range(1, T + 1) for S in itertools.combinations(range(T), k))
        return min((f for f in faces if f is not None), key=lambda f: f[0])


def _mp_certified_optimum(J: np.ndarray, c: float, a: np.ndarray):
    """The optimum F* for any T, certified in 50 digits: the face S of the tasks the answer weights
    above the mean (``a_i > 1/T``) has a feasible stationary point whose update leaves every other
    task at or above its value (KKT: then it is the optimum, whatever the answer was)."""
    import mpmath as mp

    with mp.workdps(50):
        rows, G, b, rho = _mp_problem(J, c)
        T, n = len(rows), len(rows[0])
        norm = lambda v: mp.sqrt(mp.fsum(x * x for x in v))  # noqa: E731
        S = [i for i in range(T) if a[i] > 1.0 / T]
        face = _mp_face(G, b, rho, S)
        assert face is not None, f"no stationary point on the answer's face {S}"
        F, _, a_S = face
        d_S = [mp.fsum(a_S[i] * rows[i][k] for i in range(T)) for k in range(n)]
        for i in range(T):
            slack = mp.mpf(10) ** -35 * (abs(F) + norm(rows[i]) * norm(d_S))
            assert mp.fsum(x * y for x, y in zip(rows[i], d_S)) >= F - slack, (i, S)
        return F


def _mp_properties(J: np.ndarray, c: float, a: np.ndarray, F_ref) -> dict[str, float]:
    """The defining properties of the update ``d = Σ a_i g_i`` (computed in 50 digits from the rows):

    * ``feasibility``: ``(‖d − g₀‖ − c‖g₀‖)/(c‖g₀‖)`` (≤ 0 inside the ball);
    * ``value``: the worst task's shortfall against the optimum (strong duality: the dual optimum
      ``F*``), ``max_i (F* − ⟨g_i, d⟩)/(‖g_i‖‖d‖)`` — per task, so that a task 1e24 times smaller
      than the others counts as much as they do; ≤ 0 with feasibility certifies optimality;
    * ``conflict``: ``max_i −⟨g_i, d⟩/(‖g_i‖‖d‖)``, which c ≥ 1 must keep ≤ 0 (then ``F* ≥ 0``).
    """
    import mpmath as mp

    with mp.workdps(50):
        rows, _, _, rho = _mp_problem(J, c)
        T, n = len(rows), len(rows[0])
        a = [mp.mpf(float(x)) for x in a]
        d = [mp.fsum(a[i] * rows[i][k] for i in range(T)) for k in range(n)]
        g0 = [mp.fsum(rows[i][k] for i in range(T)) / T for k in range(n)]
        norm = lambda v: mp.sqrt(mp.fsum(x * x for x in v))  # noqa: E731
        values = [mp.fsum(x * y for x, y in zip(r, d)) for r in rows]
        unit = [norm(rows[i]) * norm(d) for i in range(T)]
        return {
            "feasibility": float((norm([x - y for x, y in zip(d, g0)]) - rho) / rho),
            "value": float(max((F_ref - values[i]) / unit[i] for i in range(T))),
            "conflict": float(max(-values[i] / unit[i] for i in range(T))),
        }


def _skewed(T: int, n: int, decades: float, seed: int) -> np.ndarray:
    """Gaussian rows whose norms are log-spaced over ``decades`` decades, in a random order."""
    rng = np.random.default_rng(seed)
    scales = np.logspace(-decades / 2, decades / 2, T)[rng.permutation(T)]
    return rng.standard_normal((T, n)) * scales[:, None]


RATIOS = [0, 4, 8, 12, 16, 20, 24]  # norm ratio 10^k between the largest and smallest task


@pytest.mark.parametrize("decades", RATIOS)
@pytest.mark.parametrize("c", [0.4, 1.5])
def test_defining_properties_at_norm_ratios_up_to_1e24(decades, c):
    """Feasibility, optimality (against the enumerated dual and by the duality gap) and, for c ≥ 1,
    non-conflict, per task, for T = 3…6 with norms spread over up to 24 decades (the support search
    held only to ~1e12 before: 0.4 suboptimal per task at 1e16)."""
    worst: dict[str, float] = {}
    for seed in range(4):
        T = 3 + seed
        J = _skewed(T, T + 3, decades, seed=100 * decades + seed)
        Jt = to_torch(J)
        a = mtgrad.CAGrad(c).weights(Jt @ Jt.T).numpy()
        F_ref, _, _ = _mp_dual_reference(J, c)
        for key, val in _mp_properties(J, c, a, F_ref).items():
            worst[key] = max(worst.get(key, -np.inf), val)
    assert worst["feasibility"] <= 1e-13, worst
    assert worst["value"] <= 1e-13, worst
    if c >= 1:
        assert worst["conflict"] <= 1e-13, worst


@pytest.mark.parametrize("order", ["small_first", "small_second"])
@pytest.mark.parametrize("decades", [*RATIOS, 40, 80, 120])
def test_two_task_closed_form_exact_at_any_norm_ratio(decades, order):
    """T = 2: the closed form against the enumerated dual, per task, with either row the small one."""
    rng = np.random.default_rng(decades)
    for c in (0.4, 1.5):
        for _ in range(3):
            J = rng.standard_normal((2, 4)) * np.array([[10.0 ** (-decades / 2)], [10.0 ** (decades / 2)]])
            if order == "small_second":
                J = J[::-1].copy()
            Jt = to_torch(J)
            a = mtgrad.CAGrad(c).weights(Jt @ Jt.T).numpy()
            F_ref, _, a_ref = _mp_dual_reference(J, c)
            props = _mp_properties(J, c, a, F_ref)
            assert props["feasibility"] <= 1e-14, props
            assert props["value"] <= 1e-14, props
            np.testing.assert_allclose(a, [float(x) for x in a_ref], rtol=1e-12)


@pytest.mark.parametrize("T, c", [(40, 0.4), (64, 0.4), (64, 1.5)])
def test_large_skewed_problem_is_optimal(T, c):
    """T ≫ 6 (no enumeration): the optimum certified in 50 digits on the answer's face. Rows barely
    independent (dim T + 2) and norms over 24 decades: the support search's hardest regime measured
    (~25 block-pivoting rounds at T = 64, c = 0.4)."""
    J = _skewed(T, T + 2, 24, seed=T)
    Jt = to_torch(J)
    a = mtgrad.CAGrad(c).weights(Jt @ Jt.T).numpy()
    props = _mp_properties(J, c, a, _mp_certified_optimum(J, c, a))
    assert props["feasibility"] <= 1e-13, props
    assert props["value"] <= 1e-13, props
    if c >= 1:
        assert props["conflict"] <= 1e-13, props


def test_mp_reference_agrees_with_the_primal_enumeration():
    """The 50-digit dual reference and tests/reference.py's primal enumeration (numpy) agree."""
    for seed in range(4):
        J = make_jacobian("conflict", 3 + seed % 2, 6, seed)
        for c in (0.4, 1.5):
            d_ref, v_ref = ref.cagrad(J, c)
            F, _, a = _mp_dual_reference(J, c)
            np.testing.assert_allclose(np.array([float(x) for x in a]) @ J, d_ref, rtol=1e-7, atol=1e-9)
            assert float(F) == pytest.approx(v_ref, rel=1e-7, abs=1e-12)


def test_batch_mixes_certified_and_fallback_problems():
    """A batch where some problems are settled by the support search and others (a zero row, a
    duplicate pair) by the root search returns each problem's own answer, in place."""
    rng = np.random.default_rng(3)
    Js = []
    for k in range(6):
        J = _skewed(5, 8, 12 * (k % 3), seed=k)
        if k == 1:
            J[2] = 0.0
        if k == 4:
            J[3] = J[1]
        Js.append(J)
    G = torch.stack([to_torch(J) @ to_torch(J).T for J in Js]).reshape(2, 3, 5, 5)
    method = mtgrad.CAGrad(0.4)
    W = method.weights(G)
    for k, J in enumerate(Js):
        torch.testing.assert_close(W.reshape(6, 5)[k], method.weights(G.reshape(6, 5, 5)[k]), rtol=1e-12, atol=0)
        check_against_reference(J, 0.4, W.reshape(6, 5)[k].numpy() @ J)
    del rng
