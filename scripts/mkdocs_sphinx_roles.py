"""An mkdocs hook: the docstrings' Sphinx roles become cross-references on the site.

The docstrings use Sphinx roles (``:class:`~mtgrad.CAGrad```), which read well in ``help()`` and
IDEs; mkdocstrings renders them literally (":class:" followed by the code). This hook turns each
rendered role into an *optional* mkdocs-autorefs reference: a link where the target is documented
on the site, plain code where it is not (e.g. ``torch.optim.Optimizer``). ``~`` shows only the
last component, as in Sphinx.
"""

from __future__ import annotations

import re
from typing import Any

_ROLE = re.compile(r":(?:class|func|meth|mod|data|attr|exc|obj):<code>(~?)([A-Za-z_][\w.]*)(\(\))?</code>")


def _reference(match: re.Match[str]) -> str:
    short, target, call = match.group(1), match.group(2), match.group(3) or ""
    title = target.rsplit(".", 1)[-1] if short else target
    return f'<autoref identifier="{target}" optional><code>{title}{call}</code></autoref>'


def on_page_content(html: str, **kwargs: Any) -> str:
    return _ROLE.sub(_reference, html)
