#!/usr/bin/env bash
# The main job: `mtgrad compare` with its defaults — equal weighting, MGDA, PCGrad and CAGrad
# against single-task baselines on MultiMNIST built from real MNIST digits, 3 seeds — printing
# the mean ± std table and writing results.csv, report.md and figures into results/compare.
# Extra arguments go to `mtgrad compare` (see `mtgrad compare --help`); the 2-D toys of both
# papers are `.venv/bin/mtgrad toy`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/mtgrad compare --out results/compare "$@"
