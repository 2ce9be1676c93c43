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
