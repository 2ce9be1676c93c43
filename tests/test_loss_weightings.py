"""Loss weightings (UW, IMTL-L, GLS, DWA, FAMO, GradNorm) against their update rules, by hand.

Every expected number below is written from the papers' formulas (see each class docstring), in
float64, independently of the implementation: hand-computed values, a literal FIFO port of
nash-mtl's DWA rule, and a textbook Adam step.
"""

from __future__ import annotations

import copy
import math
import warnings

import numpy as np
import pytest
import torch

import mtgrad
from mtgrad.methods.base import LossWeighting
from mtgrad.methods.dwa import DWA
from mtgrad.methods.famo import FAMO
from mtgrad.methods.gls import GLS
from mtgrad.methods.gradnorm import GradNorm
from mtgrad.methods.imtll import IMTLL
from mtgrad.methods.uw import UW

D64 = torch.float64


def t(*values: float, grad: bool = False) -> torch.Tensor:
    return torch.tensor(values, dtype=D64, requires_grad=grad)


def close(got, expected, rtol=1e-12, atol=1e-14):
    got = torch.as_tensor(got).detach().numpy()
    np.testing.assert_allclose(got, np.asarray(expected, dtype=float), rtol=rtol, atol=atol)


class Adam:
    """Textbook Adam (Kingma & Ba, Alg. 1) with torch's L2 weight decay, for the expected values."""

    def __init__(self, x, lr, weight_decay=0.0, betas=(0.9, 0.999), eps=1e-8):
        self.x = np.array(x, dtype=float)
        self.lr, self.wd, self.b1, self.b2, self.eps = lr, weight_decay, betas[0], betas[1], eps
        self.m = np.zeros_like(self.x)
        self.v = np.zeros_like(self.x)
        self.k = 0

    def step(self, g):
        g = np.asarray(g, dtype=float) + self.wd * self.x
        self.k += 1
        self.m = self.b1 * self.m + (1 - self.b1) * g
        self.v = self.b2 * self.v + (1 - self.b2) * g * g
        m_hat = self.m / (1 - self.b1**self.k)
        v_hat = self.v / (1 - self.b2**self.k)
        self.x = self.x - self.lr * m_hat / (np.sqrt(v_hat) + self.eps)
        return self.x


def dobjective_dlosses(method: LossWeighting, losses: torch.Tensor):
    """(objective, reported weights, ∂objective/∂L by autograd)."""
    L = losses.detach().clone().requires_grad_(True)
    objective, weights = method.combine(L)
    (grad,) = torch.autograd.grad(objective, L)
    return objective, weights, grad


# ---------------------------------------------------------------------------------------- UW


def test_uw_objective_weights_and_gradient_by_hand():
    uw = UW(3, dtype=D64)
    uw.load_state_dict({"log_vars": t(0.0, math.log(2.0), -1.0)})
    L = t(1.0, 2.0, 3.0, grad=True)
    objective, weights = uw.combine(L)
    # ½(e^{-s} L + s) per task
    expected = 0.5 * (1.0 + 0.0) + 0.5 * (1.0 + math.log(2.0)) + 0.5 * (3.0 * math.e - 1.0)
    close(objective, expected)
    close(weights, [0.5, 0.25, math.e / 2])
    g_s, g_L = torch.autograd.grad(objective, [uw.log_vars, L])
    close(g_s, [0.0, 0.0, 0.5 * (1.0 - 3.0 * math.e)])  # ½(1 − e^{-s} L)
    close(g_L, weights)


def test_uw_stationary_at_log_loss_and_libmtl_init():
    L = t(0.3, 4.0)
    uw = UW(2, dtype=D64)
    uw.load_state_dict({"log_vars": torch.log(L)})  # s* = log L_i: σ_i² equals the loss
    objective, _ = uw.combine(L)
    (g,) = torch.autograd.grad(objective, uw.log_vars)
    close(g, [0.0, 0.0], atol=1e-15)

    libmtl = UW(2, init=-0.5, dtype=D64)
    s = libmtl.log_vars.detach()
    objective, weights = libmtl.combine(L)
    close(objective, (L / (2 * s.exp()) + s / 2).sum())  # LibMTL's written form
    close(weights, 1 / (2 * s.exp()))


@pytest.mark.parametrize("kind", [UW, IMTLL, FAMO])
def test_a_missing_task_count_is_reported_against_the_class_the_user_called(kind):
    with pytest.raises(TypeError, match=rf"^{kind.__name__}\.__init__\(\) missing 1 required positional argument: 'num_tasks'"):
        kind()


def test_uw_parameter_identity_survives_load_state_dict():
    uw = UW(2, dtype=D64)
    s = uw.parameters()[0]
    opt = torch.optim.SGD(uw.parameters(), lr=0.1)
    uw.load_state_dict({"log_vars": t(1.0, -2.0)})
    assert uw.parameters()[0] is s and s.requires_grad and s.is_leaf
    objective, _ = uw.combine(t(1.0, 1.0))
    objective.backward()
    opt.step()  # the optimizer steps the loaded values
    close(s, [1.0 - 0.1 * 0.5 * (1 - math.exp(-1.0)), -2.0 - 0.1 * 0.5 * (1 - math.exp(2.0))])
    state = uw.state_dict()
    with torch.no_grad():
        s.add_(1.0)
    assert not torch.equal(state["log_vars"], s)  # the saved state is a copy


# ------------------------------------------------------------------------------------- IMTL-L


def test_imtll_objective_and_gradients_by_hand():
    m = IMTLL(2, dtype=D64)
    m.load_state_dict({"log_scales": t(0.0, math.log(0.5))})
    L = t(2.0, 4.0, grad=True)
    objective, weights = m.combine(L)
    close(objective, 2.0 + (0.5 * 4.0 - math.log(0.5)))  # Σ e^s L − s
    close(weights, [1.0, 0.5])
    g_s, g_L = torch.autograd.grad(objective, [m.log_scales, L])
    close(g_s, [2.0 - 1.0, 2.0 - 1.0])  # e^s L − 1
    close(g_L, weights)
    m.load_state_dict({"log_scales": -torch.log(t(2.0, 4.0))})  # stationary: e^{s} L = 1
    objective, _ = m.combine(t(2.0, 4.0))
    (g_s,) = torch.autograd.grad(objective, m.log_scales)
    close(g_s, [0.0, 0.0], atol=1e-15)


# ---------------------------------------------------------------------------------------- GLS


def test_gls_geometric_mean_and_gradient_weights():
    objective, weights, grad = dobjective_dlosses(GLS(), t(1.0, 4.0, 16.0))
    close(objective, 4.0)
    close(weights, [4 / 3, 1 / 3, 1 / 12])  # (Π L)^{1/T} / (T L_i)
    close(grad, weights)


def test_gls_log_space_survives_underflow():
    L = torch.full((4,), 1e-100, dtype=D64)
    assert torch.prod(L) == 0  # the naive product underflows
    objective, weights = GLS().combine(L)
    close(objective, 1e-100, rtol=1e-12)
    close(weights, [0.25] * 4)


# ---------------------------------------------------------------------------------------- DWA

DWA_EPOCHS = [  # two iterations per epoch
    [[1.0, 2.0], [3.0, 2.0]],  # average [2, 2]
    [[1.0, 1.0], [1.0, 3.0]],  # average [1, 2]
    [[0.5, 1.0], [0.5, 2.0]],  # average [0.5, 1.5]
    [[1.0, 1.0], [1.0, 1.0]],
]


def dwa_expected(ratio, T=2.0):
    e = [math.exp(w / T) for w in ratio]
    return [len(e) * x / sum(e) for x in e]


DWA_WEIGHTS = [
    [1.0, 1.0],
    [1.0, 1.0],
    dwa_expected([1 / 2, 2 / 2]),
    dwa_expected([0.5 / 1, 1.5 / 2]),
]


def test_dwa_epoch_weights_by_hand():
    dwa = DWA()
    for epoch, batches in enumerate(DWA_EPOCHS):
        for losses in batches:
            L = t(*losses, grad=True)
            objective, weights = dwa.combine(L)
            close(weights, DWA_WEIGHTS[epoch], rtol=1e-14)
            close(objective, float(np.dot(DWA_WEIGHTS[epoch], losses)), rtol=1e-14)
            (g,) = torch.autograd.grad(objective, L)
            close(g, weights)
        dwa.end_epoch()


def test_dwa_iteration_windows_equal_epochs_of_that_length():
    dwa = DWA(temperature=2.0, window=2)
    for epoch, batches in enumerate(DWA_EPOCHS):
        for losses in batches:
            _, weights = dwa.combine(t(*losses))
            close(weights, DWA_WEIGHTS[epoch], rtol=1e-14)
    with pytest.raises(RuntimeError, match="closes its windows itself"):
        dwa.end_epoch()


def nash_mtl_dwa(loss_rows, n, temp):
    """A literal port of nash-mtl's ``DynamicWeightAverage`` rule (FIFO of 2n rows, init ones)."""
    K = len(loss_rows[0])
    costs = np.ones((2 * n, K))
    weights = np.ones(K)
    out = []
    for k, cost in enumerate(loss_rows):
        costs[:-1] = costs[1:]
        costs[-1] = cost
        if k > n:
            ws = costs[n:].mean(0) / costs[:n].mean(0)
            weights = K * np.exp(ws / temp) / np.exp(ws / temp).sum()
        out.append(weights.copy())
    return out


def test_dwa_sliding_reproduces_nash_mtl_including_its_ones_initialisation():
    rng = np.random.default_rng(0)
    rows = rng.uniform(0.2, 3.0, size=(12, 3))
    expected = nash_mtl_dwa(rows, n=3, temp=2.0)
    dwa = DWA(window=3, sliding=True)
    for k, row in enumerate(rows):
        _, weights = dwa.combine(torch.tensor(row))
        close(weights, expected[k], rtol=1e-13)
    # By hand at call k = 4 (the 5th): buffer [1, l0, l1, l2, l3, l4].
    ws = rows[2:5].mean(0) / np.r_[[np.ones(3)], rows[0:2]].mean(0)
    close(expected[4], 3 * np.exp(ws / 2) / np.exp(ws / 2).sum(), rtol=1e-13)
    assert np.allclose(expected[3], 1.0)


def test_dwa_state_round_trip_mid_window():
    def run(method, rows):
        return [method.combine(t(*r))[1] for r in rows]

    rows = [[1.0 + i, 2.0 / (1 + i), 0.5 + 0.1 * i] for i in range(9)]
    for make in (lambda: DWA(window=2), lambda: DWA(window=2, sliding=True), lambda: DWA(temperature=1.0)):
        a = make()
        run(a, rows[:5])
        if a.window == "epoch":
            a.end_epoch()
            run(a, rows[5:6])
        saved = copy.deepcopy(a.state_dict())
        rest_a = run(a, rows[6:])
        b = make()
        b.load_state_dict(saved)
        rest_b = run(b, rows[6:])
        for x, y in zip(rest_a, rest_b):
            assert torch.equal(x, y)


def test_dwa_errors():
    with pytest.raises(ValueError, match="positive"):
        DWA().combine(t(1.0, 0.0))
    with pytest.raises(RuntimeError, match="no losses"):
        DWA().end_epoch()
    with pytest.raises(ValueError, match="window"):
        DWA(window=0)
    with pytest.raises(ValueError, match="sliding"):
        DWA(sliding=True)
    with pytest.raises(ValueError, match="temperature"):
        DWA(temperature=0.0)
    dwa = DWA()
    dwa.combine(t(1.0, 2.0))
    with pytest.raises(ValueError, match="2 tasks but got 3"):
        dwa.combine(t(1.0, 2.0, 3.0))


# --------------------------------------------------------------------------------------- FAMO


def test_famo_objective_and_weights_by_hand():
    famo = FAMO(2, dtype=D64)
    objective, weights, grad = dobjective_dlosses(famo, t(1.0, 3.0))
    eps = 1e-8
    D = np.array([1.0 + eps, 3.0 + eps])
    c = 0.5 / D[0] + 0.5 / D[1]
    close(weights, 0.5 / (c * D), rtol=1e-14)  # ≈ [0.75, 0.25]
    close(weights, [0.75, 0.25], rtol=1e-8)
    close(objective, (0.5 * np.log(D)).sum() / c, rtol=1e-14)  # ≈ 0.75 ln 3
    close(grad, weights, rtol=1e-14)
    close(weights.sum(), 1.0, rtol=1e-14)


def softmax_jacobian_transpose_times(xi, delta):
    z = np.exp(xi - xi.max())
    z /= z.sum()
    J = np.diag(z) - np.outer(z, z)
    return J.T @ delta


def test_famo_logits_follow_softmax_jacobian_and_adam():
    lr, wd = 0.025, 1e-3
    famo = FAMO(3, lr=lr, weight_decay=wd, dtype=D64)
    adam = Adam(np.zeros(3), lr=lr, weight_decay=wd)
    before = [[1.0, 2.0, 3.0], [0.8, 1.9, 2.0], [0.7, 1.0, 1.9]]
    after = [[0.9, 1.95, 2.5], [0.75, 1.5, 1.99], [0.6, 0.99, 1.0]]
    eps = 1e-8
    for prev, new in zip(before, after):
        famo.combine(t(*prev))
        famo.after_step(t(*new))
        delta = np.log(np.array(prev) + eps) - np.log(np.array(new) + eps)
        expected = adam.step(softmax_jacobian_transpose_times(adam.x, delta))
        close(famo.logits, expected, rtol=1e-12, atol=1e-15)
    assert not np.allclose(adam.x, 0)


def test_famo_jacobian_matches_official_autograd_form():
    famo = FAMO(3, dtype=D64)
    with torch.no_grad():
        famo.logits.copy_(t(0.3, -0.2, 0.5))
    xi = famo.logits.detach().clone().requires_grad_(True)
    delta = t(0.2, -0.1, 0.4)
    (official,) = torch.autograd.grad(torch.softmax(xi, -1), xi, grad_outputs=delta)  # FAMO.update
    famo.combine(t(1.0, 1.0, 1.0))
    famo.optimizer = torch.optim.SGD([famo.logits], lr=1.0)  # expose the raw gradient
    famo.after_step(torch.exp(-delta))  # log 1 − log e^{-δ} = δ (up to the 1e-8 shift)
    close(xi.detach() - famo.logits.detach(), official, rtol=1e-7)


def test_famo_min_losses_and_errors():
    famo = FAMO(2, min_losses=[0.5, 1.0], dtype=D64)
    _, weights = famo.combine(t(1.0, 2.0))  # gaps D = [0.5, 1]
    D = np.array([0.5 + 1e-8, 1.0 + 1e-8])
    close(weights, (0.5 / D) / (0.5 / D).sum(), rtol=1e-14)
    with pytest.raises(ValueError, match=r"losses\[1\].*below min_losses\[1\]"):
        famo.combine(t(1.0, 0.9))
    with pytest.raises(RuntimeError, match="combine"):
        FAMO(2, dtype=D64).after_step(t(1.0, 1.0))
    with pytest.raises(ValueError, match="3 losses"):
        FAMO(2, dtype=D64).combine(t(1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match=r"losses\[0\] is nan"):
        FAMO(2, dtype=D64).combine(t(float("nan"), 1.0))
    with pytest.raises(ValueError, match="weight_decay"):
        FAMO(2, weight_decay=-1.0)
    assert FAMO(2).parameters() == []


def test_famo_state_round_trip_is_exact_and_not_aliased():
    rows = [([1.0, 2.0, 3.0], [0.9, 1.7, 2.9]), ([0.95, 1.8, 2.5], [0.9, 1.7, 2.0])] * 3

    def run(method, rows):
        out = []
        for prev, new in rows:
            out.append(method.combine(t(*prev))[1])
            method.after_step(t(*new))
        return out

    a = FAMO(3, dtype=D64)
    run(a, rows[:3])
    a.combine(t(1.0, 1.5, 2.0))  # a combine pending: prev_losses is part of the state
    saved = a.state_dict()
    frozen = copy.deepcopy(saved)
    a.after_step(t(0.9, 1.4, 1.9))
    rest_a = run(a, rows[3:])
    for key in ("logits", "prev_losses"):
        assert torch.equal(saved[key], frozen[key])
    assert torch.equal(saved["optimizer"]["state"][0]["exp_avg"], frozen["optimizer"]["state"][0]["exp_avg"])

    b = FAMO(3, dtype=D64)
    b.load_state_dict(saved)
    b.after_step(t(0.9, 1.4, 1.9))
    rest_b = run(b, rows[3:])
    assert torch.equal(a.logits, b.logits)
    for x, y in zip(rest_a, rest_b):
        assert torch.equal(x, y)
    run(b, rows[:1])
    assert torch.equal(saved["logits"], frozen["logits"])  # loading did not alias the dictionary


# ----------------------------------------------------------------------------------- GradNorm


class Tiny:
    """h = W x (W shared, 2×3); task i predicts a_iᵀ h; L_i = (a_iᵀ W x − y_i)²."""

    def __init__(self):
        self.W = torch.tensor([[0.5, -1.0, 0.3], [0.2, 0.4, -0.6]], dtype=D64, requires_grad=True)
        self.heads = torch.tensor([[1.0, 0.5], [-0.3, 2.0], [0.7, -1.2]], dtype=D64, requires_grad=True)

    def losses(self, x, y):
        h = self.W @ x
        return (self.heads @ h - y) ** 2

    def grad_norms_by_hand(self, x, y):
        """‖∇_W L_i‖ = ‖2 (a_iᵀWx − y_i) a_i xᵀ‖ = 2 |residual_i| ‖a_i‖ ‖x‖."""
        with torch.no_grad():
            resid = self.heads @ (self.W @ x) - y
            return (2 * resid.abs() * self.heads.norm(dim=1) * x.norm()).numpy()


def gradnorm_by_hand(w, L, L0, n, alpha):
    """∇_w L_grad with the target Ḡ r^α held constant, G_i = |w_i| n_i."""
    G = np.abs(w) * n
    ratio = L / L0
    r = ratio / ratio.mean()
    target = G.mean() * r**alpha
    return np.sign(G - target) * np.sign(w) * n


def test_gradnorm_weights_by_hand_on_a_tiny_linear_model():
    model = Tiny()
    gn = GradNorm(3, last_shared=model.W, alpha=1.5, lr=0.025)
    adam = Adam(np.ones(3), lr=0.025)
    xs = [t(1.0, 2.0, -1.0), t(0.5, -1.0, 2.0), t(-1.0, 0.3, 0.8)]
    ys = [t(0.2, -0.1, 0.4), t(1.0, 0.5, -0.5), t(0.0, 2.0, 0.3)]
    L0 = None
    w = np.ones(3)
    for x, y in zip(xs, ys):
        losses = model.losses(x, y)
        L = losses.detach().numpy()
        L0 = L.copy() if L0 is None else L0
        objective, used = gn.combine(losses)
        close(used, w, rtol=1e-14)  # the objective uses the weights before the update
        # The model gradient is Σ_i w_i(t) ∇L_i.
        (gW,) = torch.autograd.grad(objective, model.W)
        per_task = [torch.autograd.grad(model.losses(x, y)[i], model.W)[0] for i in range(3)]
        close(gW, sum(wi * g for wi, g in zip(w, per_task)), rtol=1e-12)
        # w ← Adam step on ∇_w L_grad, then renormalised to Σ w = T.
        g = gradnorm_by_hand(adam.x, L, L0, model.grad_norms_by_hand(x, y), 1.5)
        adam.step(g)
        adam.x = adam.x * 3 / adam.x.sum()
        w = adam.x.copy()
        close(gn.weights, w, rtol=1e-12)
        close(gn.weights.sum(), 3.0, rtol=1e-14)
    assert not np.allclose(w, 1.0)


def test_gradnorm_analytic_gradient_equals_double_backward():
    """∇_w L_grad in closed form equals autograd through ‖∇_W (w_i L_i)‖ (create_graph=True)."""
    model = Tiny()
    x, y = t(1.0, 2.0, -1.0), t(0.2, -0.1, 0.4)
    L0 = t(2.0, 0.5, 3.0)
    gn = GradNorm(3, last_shared=[model.W], alpha=0.7, lr=1.0, initial_losses=L0)
    w0 = t(0.5, 1.2, 1.3)
    with torch.no_grad():
        gn.weights.copy_(w0)
    gn.optimizer = torch.optim.SGD([gn.weights], lr=1.0)  # w ← w − ∇_w L_grad, then renormalised
    losses = model.losses(x, y)
    gn.combine(losses)

    w = w0.clone().requires_grad_(True)
    losses = model.losses(x, y)
    G = torch.stack(
        [torch.autograd.grad(w[i] * losses[i], model.W, create_graph=True)[0].norm() for i in range(3)]
    )
    ratio = losses.detach() / L0
    r = ratio / ratio.mean()
    target = (G.mean() * r**0.7).detach()
    (g,) = torch.autograd.grad((G - target).abs().sum(), w)
    stepped = w0 - g
    close(gn.weights, stepped * 3 / stepped.sum(), rtol=1e-12)


def test_gradnorm_state_round_trip_and_errors():
    model = Tiny()
    xs = [t(1.0, 2.0, -1.0), t(0.5, -1.0, 2.0), t(-1.0, 0.3, 0.8), t(0.1, 0.2, 0.3)]
    y = t(0.2, -0.1, 0.4)
    a = GradNorm(3, model.W)
    for x in xs[:2]:
        a.combine(model.losses(x, y))
    saved = a.state_dict()
    rest_a = [a.combine(model.losses(x, y))[1] for x in xs[2:]]
    b = GradNorm(3, model.W)
    b.load_state_dict(saved)
    rest_b = [b.combine(model.losses(x, y))[1] for x in xs[2:]]
    for p, q in zip(rest_a, rest_b):
        assert torch.equal(p, q)
    assert torch.equal(a.weights, b.weights)
    assert a.parameters() == []

    unrelated = torch.zeros(2, dtype=D64, requires_grad=True)
    with pytest.raises(ValueError, match=r"losses\[0\] does not depend on last_shared"):
        GradNorm(3, unrelated).combine(model.losses(xs[0], y))
    with pytest.raises(ValueError, match="positive"):
        GradNorm(3, model.W).combine(model.losses(xs[0], y) * 0.0)
    with pytest.raises(ValueError, match="requires grad"):
        GradNorm(2, torch.zeros(3))
    with pytest.raises(ValueError, match="initial_losses"):
        GradNorm(3, model.W, initial_losses=[1.0, 0.0, 1.0])


# ------------------------------------------------------------------------------ all of them


def make_all():
    return {
        "uw": UW(3, dtype=D64),
        "imtll": IMTLL(3, dtype=D64),
        "gls": GLS(),
        "dwa": DWA(window=1),
        "famo": FAMO(3, dtype=D64),
    }


@pytest.mark.parametrize("name", list(make_all()))
def test_reported_weights_are_the_objective_gradient(name):
    """The interface's contract: ``combine``'s weights are ∂objective/∂L_i, at every step."""
    method = make_all()[name]
    rng = np.random.default_rng(1)
    for _ in range(5):
        losses = torch.tensor(rng.uniform(0.1, 5.0, size=3))
        _, weights, grad = dobjective_dlosses(method, losses)
        close(grad, weights, rtol=1e-12)
        if name == "famo":
            method.after_step(losses * 0.9)
        for p in method.parameters():
            with torch.no_grad():
                p.add_(torch.tensor(rng.normal(size=3)))


@pytest.mark.parametrize("name", list(make_all()))
def test_input_validation_names_the_problem(name):
    method = make_all()[name]
    with pytest.raises(ValueError, match="1-D"):
        method.combine(torch.ones(3, 1, dtype=D64))
    with pytest.raises(ValueError, match=r"losses\[2\] is inf"):
        method.combine(t(1.0, 1.0, float("inf")))
    with pytest.raises(TypeError, match="torch.Tensor"):
        method.combine([1.0, 2.0, 3.0])
    if name in ("gls", "dwa"):
        with pytest.raises(ValueError, match=r"positive.*losses\[1\] = -1"):
            method.combine(t(1.0, -1.0, 1.0))
    if name in ("uw", "imtll", "famo"):
        with pytest.raises(ValueError, match="3 tasks but got 2"):
            method.combine(t(1.0, 1.0))
    method.check_values = False  # the host read can be switched off
    method.combine(t(1.0, 1.0, float("inf")))


def test_constructor_validation():
    with pytest.raises(ValueError, match="num_tasks must be at least 1"):
        UW(0)
    with pytest.raises(TypeError, match="num_tasks must be an int"):
        IMTLL(2.0)
    with pytest.raises(ValueError, match="init must be finite"):
        UW(2, init=float("nan"))
    with pytest.raises(ValueError, match="alpha"):
        GradNorm(2, torch.zeros(2, requires_grad=True), alpha=-1.0)
    with pytest.raises(ValueError, match="lr must be positive"):
        FAMO(2, lr=0.0)
    with pytest.raises(ValueError, match=r"exactly the keys \['log_vars'\], got \['s'\]"):
        UW(2).load_state_dict({"s": torch.zeros(2)})
    with pytest.raises(ValueError, match="shape"):
        UW(2).load_state_dict({"log_vars": torch.zeros(3)})
    assert repr(DWA(window=25, sliding=True)) == "DWA(temperature=2.0, window=25, sliding=True)"
    assert repr(UW(2, init=-0.5)) == "UW(num_tasks=2, init=-0.5)"


def test_no_host_synchronisation_with_check_values_off():
    """On the meta device any read of a value on the host raises, so running there proves that
    combine / after_step never synchronise with an accelerator once ``check_values`` is off."""
    meta = "meta"
    methods = [UW(3, device=meta), IMTLL(3, device=meta), GLS(), DWA(window=1), DWA(window=2, sliding=True)]
    methods.append(FAMO(3, device=meta))
    with pytest.raises(RuntimeError, match="meta"):  # the default check does read values
        GLS().combine(torch.ones(3, device=meta))
    for method in methods:
        method.check_values = False
        for _ in range(4):
            objective, weights = method.combine(torch.ones(3, device=meta, requires_grad=True))
            objective.backward()
            assert weights.device.type == meta
            method.after_step(torch.ones(3, device=meta))
    W = torch.ones(2, 3, device=meta, requires_grad=True)
    gn = GradNorm(3, W)
    gn.check_values = False
    for _ in range(3):
        h = W @ torch.ones(3, device=meta)
        objective, _ = gn.combine(torch.stack([h.sum() * (i + 1) for i in range(3)]))
        objective.backward()
    assert gn.weights.device.type == meta


def test_state_must_be_on_the_losses_device():
    with pytest.raises(ValueError, match="losses are on cpu but the method's state is on meta"):
        UW(2, device="meta").combine(torch.ones(2))
    with pytest.raises(ValueError, match="losses are on cpu but the method's state is on meta"):
        FAMO(2, device="meta").combine(torch.ones(2))


def test_famo_warns_when_its_logits_are_left_without_after_step():
    trunk, heads = torch.nn.Linear(3, 4).double(), [torch.nn.Linear(4, 1).double() for _ in range(2)]
    x = torch.randn(6, 3, dtype=D64, generator=torch.Generator().manual_seed(0))

    def losses():
        z = torch.tanh(trunk(x))
        return [h(z).pow(2).mean() + 0.1 for h in heads]

    famo = FAMO(2, dtype=D64)
    mtgrad.backward(losses(), trunk.parameters(), famo)
    with pytest.warns(mtgrad.MtgradWarning, match=r"before after_step\(\): the logits learned nothing"):
        mtgrad.backward(losses(), trunk.parameters(), famo)  # the previous step's after_step is missing
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        famo.after_step(torch.stack(losses()).detach())
        mtgrad.backward(losses(), trunk.parameters(), famo)  # after_step came between: no warning
        famo.after_step(torch.stack(losses()).detach())
        params = [*trunk.parameters(), *(p for h in heads for p in h.parameters())]
        opt = mtgrad.MTLOptimizer(torch.optim.SGD(params, lr=0.1), trunk.parameters(), famo)
        for _ in range(3):  # the closure hands the recomputed losses to after_step every step
            opt.zero_grad()
            opt.step(losses(), closure=losses)
    assert not torch.equal(famo.logits.detach(), torch.zeros(2, dtype=D64))
