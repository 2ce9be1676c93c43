"""The integration pages' runnable examples run and print what the pages claim.

(``docs/examples/ddp.py`` and ``lightning_train.py`` run in test_data_parallel and test_lightning.)
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "docs" / "examples"


@pytest.mark.parametrize(
    "script,claims",
    [
        ("amp.py", ["same weights with and without the scaler: True", "overflow skipped: True"]),
        (
            "accumulation.py",
            [
                "4 micro-batches = the whole batch: True",
                "mtgrad.backward per micro-batch is not the whole-batch step: True",
                "apply(), clip, step() on 4 micro-batches = on the whole batch: True",
                "UW accumulates exactly (linear in the losses): True",
                "DWA accumulates exactly (linear in the losses): True",
                "GLS is refused under accumulation: True",
            ],
        ),
        pytest.param(
            "compile.py", ["loop: compiled = eager: True", "batched: compiled = eager: True", "gramian: compiled = eager: True"],
            marks=pytest.mark.slow,  # inductor compiles three models (~20 s); tests/test_compile.py covers it
        ),
    ],
)
def test_example_prints_its_claims(script, claims):
    done = subprocess.run([sys.executable, str(EXAMPLES / script)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    for claim in claims:
        assert claim in done.stdout, done.stdout
