"""Shared test configuration: Hypothesis profiles, import paths, Jacobian helpers.

Profiles (select with HYPOTHESIS_PROFILE=<name>, default "dev"):
  dev       deadline None, 50 examples, derandomized (the README's test command: same verdict
            on every run and machine)
  ci        deadline None, 25 examples, derandomized (reproducible in CI)
  thorough  deadline None, 500 examples, random (a search for new counterexamples)
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, settings

# The suite's tensors are tiny: one intra-op thread avoids oversubscribing the CI's two cores,
# where the default two threads made small solves tens of times slower under load.
torch.set_num_threads(1)

_TESTS = Path(__file__).resolve().parent
_SRC = _TESTS.parent / "src"
if str(_TESTS) not in sys.path:
    sys.path.insert(0, str(_TESTS))
if importlib.util.find_spec("mtgrad") is None and str(_SRC) not in sys.path:
    sys.path.insert(0, str(_SRC))  # not installed: test the source tree

from jacobians import (  # noqa: E402  (re-exported helpers)
    ADVERSARIAL,
    FAMILIES,
    family_samples,
    jacobians,
    make_jacobian,
    to_torch,
)

_common = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("dev", max_examples=50, derandomize=True, **_common)
settings.register_profile("ci", max_examples=25, derandomize=True, **_common)
settings.register_profile("thorough", max_examples=500, **_common)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))

# Falsifying examples print numpy arrays; full precision makes them copy-paste reproducible.
np.set_printoptions(precision=17, linewidth=120)


@pytest.fixture
def rng():
    return np.random.default_rng(12345)


__all__ = ["ADVERSARIAL", "FAMILIES", "family_samples", "jacobians", "make_jacobian", "to_torch"]


@pytest.fixture(scope="session")
def metaworld_goals_memo():
    """Meta-World's goal lists, built once per seed and environment set for the whole session.

    Every Meta-World environment draws its 50 goal variations by resetting a fresh copy 50 times
    (``metaworld._make_tasks``: 1–1.5 s per environment, most of a short RL test's time). With a
    seed the draw is a pure function of its arguments and leaves NumPy's global state as it found
    it, so a memo returns exactly what a new draw would; unseeded draws are passed through.
    """
    import pickle

    try:
        import metaworld
    except ImportError:  # the rl extra is not installed: the tests that need it skip themselves
        yield None
        return
    make_tasks = metaworld._make_tasks
    memo: dict[bytes, list] = {}

    def memoised(classes, args_kwargs, kwargs_override, seed=None):
        if seed is None:
            return make_tasks(classes, args_kwargs, kwargs_override, seed)
        key = pickle.dumps((list(classes.items()), args_kwargs, kwargs_override, seed))
        if key not in memo:
            memo[key] = make_tasks(classes, args_kwargs, kwargs_override, seed)
        return list(memo[key])  # the Task tuples are immutable; the list is the caller's own

    memoised.unmemoised = make_tasks  # type: ignore[attr-defined]
    mp = pytest.MonkeyPatch()
    mp.setattr(metaworld, "_make_tasks", memoised)
    yield memoised
    mp.undo()
