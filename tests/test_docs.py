"""The documentation site builds in strict mode and its home page's code runs.

Strict mode turns every broken link, missing page in the nav and docstring the API reference
cannot render into an error; the integration pages' examples run in test_examples and friends.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_the_site_builds_strict(tmp_path):
    pytest.importorskip("mkdocs")
    pytest.importorskip("mkdocstrings")
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT, capture_output=True, text=True, timeout=300, env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    api = (tmp_path / "site" / "api" / "index.html").read_text()
    assert "mtgrad.backward" in api and "CAGrad" in api  # the reference was rendered
    # The docstrings' Sphinx roles became links (scripts/mkdocs_sphinx_roles.py), none left raw.
    assert ":class:" not in api and ":func:" not in api
    assert 'href="#mtgrad.CAGradFast"><code>CAGradFast</code>' in api
    shutil.rmtree(tmp_path / "site")


_PAGES = ["README.md", *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md"))]


def _blocks(page: str) -> list[tuple[str | None, str]]:
    """Every Python block of a page with its marker: ``<!-- fragment: FILE runs it whole -->``
    (FILE is the runnable example), ``<!-- not run: WHY -->``, or None (the block runs)."""
    text = (ROOT / page).read_text()
    marked = r"(?:<!-- (fragment: \S+ runs it whole|not run: [^>]*) -->\n)?```python\n(.*?)```"
    return [(m.group(1), m.group(2)) for m in re.finditer(marked, text, flags=re.S)]


@pytest.mark.parametrize("page", _PAGES)
def test_every_python_block_of_the_docs_runs_or_is_a_fragment_of_a_tested_example(page):
    for marker, code in _blocks(page):
        if marker is not None and marker.startswith("fragment: "):
            example = marker.split()[1]
            # A fragment (e.g. of a DDP script): its whole example runs in test_examples /
            # test_data_parallel / test_lightning; it must exist and contain the fragment's calls.
            whole = (ROOT / example).read_text()
            calls = set(re.findall(r"mtgrad\.[\w.]+", re.sub(r"#.*", "", code)))
            assert calls and calls <= set(re.findall(r"mtgrad\.[\w.]+", whole)), (page, example, calls)
        elif marker is not None:  # "not run: ..." (e.g. hours of Meta-World on a GPU)
            compile(code, page, "exec")  # it must at least be valid Python
        else:
            exec(compile(code, page, "exec"), {})
