"""One state convention: every stateful method's state_dict/load_state_dict continues a run exactly,
survives torch.save/torch.load, and refuses a state with the wrong keys naming them."""

from __future__ import annotations

import io

import pytest
import torch

import mtgrad

T = 3


def _gramians(n: int):
    gen = torch.Generator().manual_seed(4)
    for _ in range(n):
        J = torch.randn(T, 6, generator=gen, dtype=torch.float64)
        yield J @ J.T


def _gen():
    return torch.Generator().manual_seed(11)


WEIGHTINGS = {
    "pcgrad": lambda: mtgrad.PCGrad(generator=_gen()),
    "gradvac": lambda: mtgrad.GradVac(generator=_gen()),
    "rlw": lambda: mtgrad.RLW(generator=_gen()),
    "nashmtl": lambda: mtgrad.NashMTL(update_weights_every=2),
    "reuse": lambda: mtgrad.Reuse(mtgrad.PCGrad(generator=_gen()), every=2),
    "cagrad_fast": lambda: mtgrad.CAGradFast(c=0.4, num_gradients=2, generator=_gen()),
}


def _step(method, G):
    if isinstance(method, mtgrad.CAGradFast):
        return method.sample(T)  # its state is the sampling stream
    if isinstance(method, mtgrad.Reuse):
        planned = method.planned_weights(T, G)
        w = method.method.weights(G) if planned is None else planned
        method.advance(w if planned is None else None)
        return w
    return method.weights(G)


@pytest.mark.parametrize("name", sorted(WEIGHTINGS))
def test_a_restored_method_continues_identically(name):
    Gs = list(_gramians(5))
    a = WEIGHTINGS[name]()
    for G in Gs[:2]:
        _step(a, G)
    buffer = io.BytesIO()
    torch.save(a.state_dict(), buffer)
    buffer.seek(0)
    b = WEIGHTINGS[name]()
    b.load_state_dict(torch.load(buffer, weights_only=False))
    for G in Gs[2:]:
        wa, wb = _step(a, G), _step(b, G)
        if isinstance(wa, torch.Tensor):
            torch.testing.assert_close(wb, wa, rtol=0, atol=0)
        else:
            assert wa == wb


@pytest.mark.parametrize("name", sorted(WEIGHTINGS))
def test_a_state_with_a_stray_key_is_refused_by_name(name):
    state = {**WEIGHTINGS[name]().state_dict(), "stray": 1}
    with pytest.raises(ValueError, match="stray|state keys"):
        WEIGHTINGS[name]().load_state_dict(state)


# A second device stands in for a GPU: "meta" tensors carry a device and shape but no data, and an
# elementwise op mixing them with CPU tensors raises, as CPU and CUDA tensors do. A state saved on
# the CPU must continue on the device its next inputs (or the method's own tensors) live on.
META = torch.device("meta")


def _saved(method):
    buffer = io.BytesIO()
    torch.save(method.state_dict(), buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=False)


@pytest.mark.parametrize("name", ["pcgrad", "gradvac", "rlw", "nashmtl"])
def test_a_weightings_state_continues_on_the_next_gramians_device(name):
    a = WEIGHTINGS[name]() if name != "nashmtl" else mtgrad.NashMTL()
    for G in _gramians(2):
        a.weights(G)
    b = WEIGHTINGS[name]() if name != "nashmtl" else mtgrad.NashMTL()
    b.load_state_dict(_saved(a))
    w = b.weights(next(_gramians(1)).to(META), validate=False)
    assert w.device == META and w.shape == (T,)


def test_reuse_plans_its_saved_weights_on_the_next_inputs_device():
    a = WEIGHTINGS["reuse"]()
    G = next(_gramians(1))
    a.advance(a.method.weights(G))
    b = WEIGHTINGS["reuse"]()
    b.load_state_dict(_saved(a))
    assert b.planned_weights(T, G.to(META)).device == META


@pytest.mark.parametrize("sliding", [False, True], ids=["windows", "sliding"])
def test_dwa_state_continues_on_the_losses_device(sliding):
    a = mtgrad.DWA(window=2, sliding=sliding)
    gen = torch.Generator().manual_seed(0)
    for _ in range(5):
        a.combine(torch.rand(T, generator=gen) + 0.5)
    b = mtgrad.DWA(window=2, sliding=sliding)
    b.load_state_dict(_saved(a))
    b.check_values = False  # meta tensors have no values to check
    for _ in range(3):  # through a window's end: every state tensor is used
        total, weights = b.combine(torch.rand(T, device=META) + 0.5)
        assert total.device == META and weights.device == META


def _gradnorm(device):
    layer = torch.ones(4, 2, device=device, requires_grad=True)
    return mtgrad.GradNorm(T, layer), lambda: torch.stack([layer[:, i % 2].square().sum() * (i + 1) for i in range(T)])


def _fixed(method):
    return method, lambda: torch.tensor([1.0, 2.0, 0.5])


@pytest.mark.parametrize(
    "make",
    [
        lambda device: _fixed(mtgrad.UW(T, device=device)),
        lambda device: _fixed(mtgrad.IMTLL(T, device=device)),
        lambda device: _fixed(mtgrad.FAMO(T, device=device)),
        _gradnorm,
    ],
    ids=["uw", "imtll", "famo", "gradnorm"],
)
def test_a_loss_weightings_state_is_loaded_onto_its_own_device(make):
    # As torch.optim does: the tensors replaced take the device of those they replace.
    a, losses = make("cpu")
    a.combine(losses())
    b, _ = make(META)
    b.load_state_dict(_saved(a))
    tensors = [t for t in b.state_dict().values() if isinstance(t, torch.Tensor)]
    assert tensors and all(t.device == META for t in tensors)
    assert all(p.device == META for p in b.parameters())


def test_an_optimizer_state_saved_with_one_method_is_refused_by_another():
    model = torch.nn.Linear(4, 2)

    def optimizer(method):
        return mtgrad.MTLOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), list(model.parameters()), method)

    saved = optimizer(mtgrad.PCGrad()).state_dict()  # the global generator: a state of {}
    with pytest.raises(ValueError, match="saved with PCGrad; this MTLOptimizer uses MGDA"):
        optimizer(mtgrad.MGDA()).load_state_dict(saved)
    optimizer(mtgrad.PCGrad(order="fixed")).load_state_dict(saved)
    del saved["method_type"]  # a state from before the type was saved still loads
    optimizer(mtgrad.MGDA()).load_state_dict(saved)
    reused = optimizer(mtgrad.Reuse(mtgrad.PCGrad(), every=2)).state_dict()
    with pytest.raises(ValueError, match=r"saved with Reuse\(PCGrad\); this MTLOptimizer uses Reuse\(MGDA\)"):
        optimizer(mtgrad.Reuse(mtgrad.MGDA(), every=2)).load_state_dict(reused)


def test_gradvac_refuses_a_gramian_for_another_number_of_tasks():
    method = mtgrad.GradVac(generator=_gen())
    method.weights(next(_gramians(1)))
    targets = method.targets.clone()
    J = torch.randn(T + 1, 6, dtype=torch.float64)
    with pytest.raises(ValueError, match=f"targets φ̂ for {T} tasks, got a Gramian for {T + 1}"):
        method.weights(J @ J.T)
    torch.testing.assert_close(method.targets, targets, rtol=0, atol=0)


def test_a_state_whose_generator_ownership_differs_says_so():
    own = mtgrad.PCGrad(generator=_gen()).state_dict()
    with pytest.raises(ValueError, match="saved from a PCGrad with its own generator"):
        mtgrad.PCGrad().load_state_dict(own)
    with pytest.raises(ValueError, match="holds no generator state"):
        mtgrad.PCGrad(generator=_gen()).load_state_dict(mtgrad.PCGrad().state_dict())
