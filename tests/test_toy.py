"""The 2-D toy problems (mtgrad.bench.toy): formulas, analytic gradients, Adam, and the
behaviour the CAGrad paper reports (Sec. 5.1, Fig. 3)."""

from __future__ import annotations

import math

import pytest
import torch

from mtgrad.bench import toy

torch.set_default_dtype(torch.float32)  # the module must not depend on the global default


def _points() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    pts = (torch.rand(3000, 2, generator=g, dtype=torch.float64) - 0.5) * 24  # [-12, 12]²
    special = torch.tensor(
        [
            [0.0, 0.0],  # θ2 = 0: both gates have derivative ±1/2 (clamp passes at the bound)
            [3.0, 0.0],
            [-8.5, 7.5],
            [9.0, 9.0],
            [10.0, -8.0],
            [0.0, toy.PARETO_Y],
            [0.5, -3.0],  # PCGrad start
            [-2.0, 0.0],
            [2.0 * math.tanh(1.0) - 7.0, 1.0],  # CAGrad f1 argument exactly 0 (clamped log)
            [-2.0 * math.tanh(-2.0), -2.0],  # PCGrad L1 argument exactly 0
        ],
        dtype=torch.float64,
    )
    return torch.cat([special, pts])


def _autograd_jacobian(losses_fn, theta: torch.Tensor) -> torch.Tensor:
    x = theta.clone().requires_grad_(True)
    L = losses_fn(x)
    rows = [torch.autograd.grad(L[:, i].sum(), x, retain_graph=True)[0] for i in range(2)]
    return torch.stack(rows, dim=1)  # (B, task, param)


@pytest.mark.parametrize(
    "losses_fn, grads_fn",
    [
        (toy.cagrad_toy_losses, toy.cagrad_toy_grads),
        (toy.pcgrad_toy_losses, toy.pcgrad_toy_grads),
    ],
    ids=["cagrad", "pcgrad"],
)
def test_analytic_gradients_equal_autograd(losses_fn, grads_fn):
    theta = _points()
    expected = _autograd_jacobian(losses_fn, theta)
    got = grads_fn(theta)
    assert got.shape == (theta.shape[0], 2, 2)
    assert got.dtype == torch.float64
    # relative to the size of the entry: r = 1/u reaches 2e5 next to the clamped logs
    err = (got - expected).abs() / (expected.abs() + 1.0)
    assert err.max().item() < 1e-9


def test_gradients_at_theta2_zero_follow_autograd_clamp_convention():
    # at (0, 0) the gates are c1 = c2 = 0 with derivatives +1/2 and -1/2 (torch.clamp passes the
    # gradient at the bound), so ∂L_i/∂θ2 = (f_i - g_i)/2 and ∂L_i/∂θ1 = 0
    J = toy.cagrad_toy_grads(torch.zeros(1, 2, dtype=torch.float64))[0]
    f1 = math.log(abs(0.5 * -7 - math.tanh(0.0))) + 6
    g1 = (49 + 0.1 * 64) / 10 - 20
    assert J[0, 0].item() == 0.0 and J[1, 0].item() == 0.0
    assert J[0, 1].item() == pytest.approx(0.5 * f1 - 0.5 * g1, rel=1e-12)


def _cagrad_direct(x1: float, x2: float) -> tuple[float, float]:
    """§4.1 written out with math, independently of the torch code."""
    lower = 5e-6
    f1 = math.log(max(abs(0.5 * (-x1 - 7) - math.tanh(-x2)), lower)) + 6
    f2 = math.log(max(abs(0.5 * (-x1 + 3) + math.tanh(-x2) + 2), lower)) + 6
    g1 = ((-x1 + 7) ** 2 + 0.1 * (-x2 - 8) ** 2) / 10 - 20
    g2 = ((-x1 - 7) ** 2 + 0.1 * (-x2 - 8) ** 2) / 10 - 20
    c1 = max(math.tanh(0.5 * x2), 0.0)
    c2 = max(math.tanh(-0.5 * x2), 0.0)
    return c1 * f1 + c2 * g1, c1 * f2 + c2 * g2


def _pcgrad_direct(x1: float, x2: float) -> tuple[float, float]:
    lower = 5e-6
    return (
        20 * math.log(max(abs(0.5 * x1 + math.tanh(x2)), lower)),
        25 * math.log(max(abs(0.5 * x1 - math.tanh(x2) + 2), lower)),
    )


@pytest.mark.parametrize(
    "losses_fn, direct",
    [(toy.cagrad_toy_losses, _cagrad_direct), (toy.pcgrad_toy_losses, _pcgrad_direct)],
    ids=["cagrad", "pcgrad"],
)
def test_losses_match_direct_formulas(losses_fn, direct):
    theta = _points()[:200]
    got = losses_fn(theta)
    for (x1, x2), (l1, l2) in zip(theta.tolist(), got.tolist()):
        e1, e2 = direct(x1, x2)
        assert l1 == pytest.approx(e1, rel=1e-12, abs=1e-12)
        assert l2 == pytest.approx(e2, rel=1e-12, abs=1e-12)


def test_known_values():
    # CAGrad toy at its L0 minimiser: c1 = 0, L_i = tanh(4.1776)·(4.9 + 0.01·0.3552² - 20)
    L = toy.cagrad_toy_losses(torch.tensor([[0.0, toy.PARETO_Y]], dtype=torch.float64))[0]
    expected = math.tanh(-0.5 * toy.PARETO_Y) * (4.9 + 0.01 * (8 + toy.PARETO_Y) ** 2 - 20)
    assert L.tolist() == pytest.approx([expected, expected], rel=1e-12)
    # PCGrad toy on its clamped floor: 20·log(5e-6) and 25·log(5e-6)
    floor = toy.pcgrad_toy_losses(torch.tensor([[-2.0, 40.0]], dtype=torch.float64))[0]
    assert floor.tolist() == pytest.approx([20 * math.log(5e-6), 25 * math.log(5e-6)], rel=1e-12)


def test_minimiser_of_the_average_loss():
    # (0, -8.3552) minimises L0 = (L1 + L2)/2 (to the 4 decimals the official code draws)
    x = torch.linspace(-0.5, 0.5, 201, dtype=torch.float64)
    y = torch.linspace(-9.0, -7.5, 1501, dtype=torch.float64)
    X, Y = torch.meshgrid(x, y, indexing="ij")
    pts = torch.stack([X.reshape(-1), Y.reshape(-1)], dim=1)
    L0 = toy.cagrad_toy_losses(pts).mean(-1)
    best = pts[L0.argmin()]
    assert best[0].item() == pytest.approx(0.0, abs=1e-12)
    assert best[1].item() == pytest.approx(toy.PARETO_Y, abs=1e-3)


def test_batched_adam_equals_torch_adam():
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(7, 2, generator=g, dtype=torch.float64)
    grads = [torch.randn(7, 2, generator=g, dtype=torch.float64) * 10**k for k in range(-3, 3)] * 5
    ours = x0.clone()
    adam = toy.BatchedAdam(ours, lr=1e-3, betas=(0.9, 0.999), eps=1e-8)
    ref = x0.clone().requires_grad_(True)
    opt = torch.optim.Adam([ref], lr=1e-3, betas=(0.9, 0.999), eps=1e-8, foreach=False)
    for gr in grads:
        adam.step(gr)
        ref.grad = gr.clone()
        opt.step()
    torch.testing.assert_close(ours, ref.detach(), rtol=0, atol=1e-15)


def test_parse_method_list():
    assert toy.parse_method_list("gd,mgda,cagrad:c=0.5,rescale=2,pcgrad") == [
        "gd",
        "mgda",
        "cagrad:c=0.5,rescale=2",
        "pcgrad",
    ]
    assert toy.parse_method_list("cagrad:c=0.2;cagrad:c=0.8, pcgrad:reduction=mean") == [
        "cagrad:c=0.2",
        "cagrad:c=0.8",
        "pcgrad:reduction=mean",
    ]
    with pytest.raises(ValueError):
        toy.parse_method_list(" , ;")


def test_run_toy_shapes_and_rows():
    res = toy.run_toy("cagrad", methods=["gd", "mgda"], steps=250, record_every=100)
    assert res.trajectories.shape == (2, 5, 4, 2)  # steps 0, 100, 200, 250
    assert res.record_steps == [0, 100, 200, 250]
    torch.testing.assert_close(res.trajectories[:, :, 0], res.starts.expand(2, 5, 2))
    torch.testing.assert_close(res.trajectories[:, :, -1], res.final)
    rows = res.rows()
    assert len(rows) == 10
    assert [r["method"] for r in rows] == ["gd"] * 5 + ["mgda"] * 5
    for key in ("start_x", "start_y", "end_x", "end_y", "loss_1", "loss_2", "loss_avg"):
        assert all(math.isfinite(r[key]) for r in rows)


def test_methods_do_not_interact_in_the_batch():
    # each run's result must not depend on which other runs share the batch
    both = toy.run_toy("cagrad", methods=["gd", "cagrad:c=0.5"], steps=300)
    alone = toy.run_toy("cagrad", methods=["cagrad:c=0.5"], steps=300)
    torch.testing.assert_close(both.final[1], alone.final[0], rtol=0, atol=1e-12)


def test_gd_means_the_objective_of_each_problem():
    # on the PCGrad toy "gd" is Adam on L1 + L2 (Sum), on the CAGrad toy Adam on the mean: with
    # Adam the two differ only through eps, so compare the weights directly
    G = torch.eye(2, dtype=torch.float64).expand(3, 2, 2)
    w_ca = toy.resolve_method("gd", toy.PROBLEMS["cagrad"]).weights(G)
    w_pc = toy.resolve_method("gd", toy.PROBLEMS["pcgrad"]).weights(G)
    torch.testing.assert_close(w_ca, torch.full((3, 2), 0.5, dtype=torch.float64))
    torch.testing.assert_close(w_pc, torch.ones(3, 2, dtype=torch.float64))


def test_cagrad_reaches_the_average_loss_minimiser_from_every_start():
    # CAGrad Sec. 5.1: CAGrad with c < 1 converges to the minimiser of L0 from all five starts.
    # At the papers' Adam lr 1e-3 this takes ~68k steps from (9, 9) (~25 s here), so this test
    # uses lr 1e-2 (Adam moves ~lr per step): all five runs arrive by ~11k steps. Caveat: at
    # lr 1e-2 plain GD also escapes the valley, so this test says nothing about GD; GD getting
    # stuck is tested at the paper's lr below.
    res = toy.run_toy("cagrad", methods=["cagrad:c=0.5"], steps=15_000, lr=1e-2)
    dist = (res.final[0] - torch.tensor(toy.CAGRAD_MINIMISER, dtype=res.final.dtype)).norm(dim=-1)
    assert bool(res.reached.all()), f"distances to (0, -8.3552): {dist.tolist()}"
    assert dist.max().item() < 0.01


def test_cagrad_with_c_zero_is_gd():
    res = toy.run_toy("cagrad", methods=["gd", "cagrad:c=0"], steps=2_000)
    torch.testing.assert_close(res.trajectories[0], res.trajectories[1], rtol=0, atol=0)


def test_gd_gets_stuck_in_the_valley():
    # CAGrad Sec. 5.1: "GD gets stuck" (the paper: 2 of its 5 runs). At the paper's settings
    # (Adam lr 1e-3) the three starts in the θ2 > 0 region, (-8.5, 7.5), (-8.5, 5) and (9, 9),
    # stay in the steep log valley (still after the paper's 100k steps) while (0, 0) and (10, -8)
    # reach the L0 minimiser (by ~17k steps). The paper lists (-8.5, 5) but the official toy.py
    # starts from (-8.5, -5), in the quadratic region, and from there GD does reach the minimiser
    # (checked here too): with that start the count is the paper's 2 of 5.
    starts = list(toy.CAGRAD_STARTS) + [(-8.5, -5.0)]  # the paper's five, then toy.py's
    res = toy.run_toy("cagrad", methods=["gd"], starts=starts, steps=25_000, record_every=5_000)
    reached = res.reached[0].tolist()
    assert reached == [False, False, True, False, True, True]
    traj = res.trajectories[0]  # (start, record, 2)
    stuck = [0, 1, 3]
    # stuck: still in the θ2 > 0 (log-valley) region and hardly moving over the last 10k steps
    assert bool((res.final[0, stuck, 1] > 0).all())
    moved = (traj[stuck, -1] - traj[stuck, -3]).norm(dim=-1)
    assert bool((moved < 1.0).all()), moved.tolist()


def test_unbatched_weightings_run_once_per_run(monkeypatch):
    # a weighting that accepts only a single (T, T) Gramian (as stateful ones may) is called
    # once per run with its own instance; results equal the batched equivalent
    from mtgrad import methods

    class OneAtATime(methods.Weighting):
        def _weights(self, gramian, losses=None):
            if gramian.dim() != 2:
                raise ValueError("only a (T, T) Gramian is accepted, not a batch")
            return gramian.new_full((2,), 0.5)

    monkeypatch.setitem(methods.REGISTRY, "oneatatime", OneAtATime)
    res = toy.run_toy("cagrad", methods=["oneatatime", "gd"], steps=300)
    torch.testing.assert_close(res.final[0], res.final[1], rtol=0, atol=1e-12)


def _panels(fig):
    return [ax for ax in fig.axes if ax.get_visible() and ax.get_label() != "<colorbar>"]


def test_toy_figures_wrap_into_rows_of_four_with_labelled_axes(tmp_path):
    # issue 13: the PCGrad figure with 5 methods was one row of 7 panels, 3234 px wide
    pytest.importorskip("matplotlib")
    from mtgrad.bench import toy_plots

    pc = toy.run_toy("pcgrad", methods=["gd", "pcgrad", "mgda", "cagrad:c=0.2", "cagrad:c=0.5"], steps=20)
    ca = toy.run_toy("cagrad", methods=list(toy.CAGRAD_METHODS), steps=20)
    for fig, n in ((toy_plots.pcgrad_figure(pc, grid=30), 7), (toy_plots.cagrad_figure(ca, grid=30), 8)):
        panels = _panels(fig)
        assert len(panels) == n
        assert panels[0].get_subplotspec().get_gridspec().get_geometry() == (2, 4)
        for ax in panels:
            assert (ax.get_xlabel(), ax.get_ylabel()) == ("θ1", "θ2")
    path = toy_plots.plot_result(pc, tmp_path / "toy_pcgrad.png")
    import matplotlib.image

    height, width = matplotlib.image.imread(path).shape[:2]
    assert width < 1800 and height < width
