#!/usr/bin/env bash
# Create .venv (once) and install mtgrad with its development extras, torch pinned by
# requirements/constraints.txt. Re-running is cheap: it reinstalls only when pyproject.toml or
# the constraints change.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv with $("$PYTHON" --version)" >&2
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.mtgrad-installed
want=$(cat pyproject.toml requirements/constraints.txt | sha256sum | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "setup: installing mtgrad[dev] into .venv: $(grep -h '^torch' requirements/constraints.txt)," \
       "metaworld, lightning, mkdocs, pytest, hypothesis, mypy, ... (about 1.5 min, once)" >&2
  .venv/bin/python -m pip install --quiet --upgrade pip >/dev/null 2>&1 || true
  .venv/bin/python -m pip install --quiet -c requirements/constraints.txt -e ".[dev]"
  echo "$want" > "$stamp"
  echo "setup: done (.venv/bin/mtgrad, .venv/bin/python)" >&2
fi
