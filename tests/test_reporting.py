"""Progress reporting: the plain fallback reports counts, a rate and an ETA."""

from __future__ import annotations

import re

from mtgrad.bench.reporting import PlainProgress, progress_bar


def test_plain_progress_lines_carry_count_rate_and_eta(capsys):
    bar = PlainProgress(total=10, desc="job", initial=2, interval=0.0)
    bar.set_postfix(success="0.50")
    bar.update(3)
    bar.update(5)
    lines = capsys.readouterr().err.strip().splitlines()
    assert re.fullmatch(r"job: 5/10 steps, \S+ steps/s, ETA \S+ min success=0.50", lines[0].strip())
    assert lines[-1].startswith("job: 10/10 steps") and "ETA 0.0 min" in lines[-1]


def test_progress_bar_modes():
    assert progress_bar(5, "x", False) is None
    assert isinstance(progress_bar(5, "x", "plain"), PlainProgress)
