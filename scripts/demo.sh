#!/usr/bin/env bash
# The main job: CAGrad's and PCGrad's 2-D toy problems, tables on stdout, CSVs and figures in
# results/toy. Extra arguments go to `mtgrad toy` (see `mtgrad toy --help`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/mtgrad toy --out results/toy "$@"
