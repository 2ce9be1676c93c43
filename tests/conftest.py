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
