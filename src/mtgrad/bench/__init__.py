"""Experiments built on :mod:`mtgrad`: the 2-D toy problems (``mtgrad toy``) and, later, the
benchmarks. Optional dependencies (matplotlib, tqdm) are imported lazily, where they are used."""
