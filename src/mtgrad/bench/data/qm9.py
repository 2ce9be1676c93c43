"""QM9 with 11 regression tasks (the Nash-MTL / FAMO / LibMTL set) from the CSVs of ``qm9pack``.

``qm9pack`` (MIT) ships the full QM9 (130,831 molecules: SMILES, B3LYP/6-31G(2df,p) geometries in
Angstrom, and the standard properties) as ``qm9pack/data/qm9_part{1,2,3}.csv``. The package itself
cannot be imported (it needs ``pkg_resources``, gone from current setuptools), so the folder is
located with :func:`importlib.util.find_spec` and the CSVs are read with pandas.

The papers train graph networks on PyTorch Geometric's QM9; without RDKit or PyG we use cheap,
fixed molecular descriptors instead: the Coulomb-matrix eigenspectrum (Rupp et al., PRL 2012),
sorted by decreasing magnitude and zero-padded to 29 atoms, plus the counts of H, C, N, O and F.
They are computed once (vectorised over molecules padded to 29 atoms) and cached on disk.

Targets, in the order of the papers (PyG indices 0, 1, 2, 3, 5, 6, 12, 13, 14, 15, 11):

=====  =============================  ===========  ==========================  ====================
task   CSV column (qm9pack 1.0.3)     CSV unit     served as                   papers' MAE unit
=====  =============================  ===========  ==========================  ====================
mu     ``Dipole_debye``               D            D                           D
alpha  ``Polarizability_bohr3``       a0^3         a0^3                        a0^3
homo   ``HOMO_au``                    Hartree      Hartree                     meV
lumo   ``LUMO_au``                    Hartree      Hartree                     meV
r2     ``R2_bohr2``                   a0^2         a0^2                        a0^2
zpve   ``ZPVE_au``                    Hartree      Hartree                     meV
U0     ``InternalEnergy_0K_au``       Hartree      Hartree, atomization        meV, atomization
U      ``InternalEnergy_298K_au``     Hartree      Hartree, atomization        meV, atomization
H      ``Enthalphy_298K_au`` (sic)    Hartree      Hartree, atomization        meV, atomization
G      ``GibbsFreeEnergy_298K_au``    Hartree      Hartree, atomization        meV, atomization
Cv     ``Heatcapacity_Cv_cal_mol_K``  cal/(mol K)  cal/(mol K)                 cal/(mol K)
=====  =============================  ===========  ==========================  ====================

The CSV's U0, U, H, G are *total* energies; they are served as atomization energies (below)
unless ``energies="total"``. The CSV also has ``HOMO_LUMO_gap_au`` (gap, not one of the 11 tasks),
rotational constants, Mulliken charges, frequencies and, in ``qm9_polarizability.csv``, the
polarizability tensor; none of these is used.

What was checked, and against what:

* The CSV units are those of the column names and of ``qm9pack``'s own help text (HOMO/LUMO/ZPVE
  "in atomic units, hartree"; coordinates "in Angstroms"); the magnitudes fit (methane: HOMO
  -0.3877 Ha = -10.55 eV, C-H bonds 1.09 in the coordinates, U0 -40.47893 Ha).
* PyG converts Hartree to eV (``HAR2EV = 27.211386246``) and its targets 12-15 are *atomization*
  energies (total energy minus the atoms' reference energies). The Nash-MTL/FAMO evaluation code
  (``experiments/quantum_chemistry``, read in a public copy)
  picks ``target_idx = [0, 1, 2, 3, 5, 6, 12, 13, 14, 15, 11]`` and multiplies homo, lumo, zpve,
  U0, U, H and G by 1000 ("report meV instead of eV"); its single-task baseline MAEs (mu 0.0671,
  alpha 0.1814, homo 60.576, lumo 53.915, r2 0.5027, zpve 4.539, U0 58.838, ..., Cv 0.07212) are
  in those units. :meth:`QM9Data.mae` reports in these paper units by default.
* Atomization energies here subtract QM9's published atom references (figshare "atomref", the same
  B3LYP level, :data:`ATOM_REFERENCE_HARTREE`) from the total energies. PyG instead converts
  MoleculeNet's kcal/mol atomization energies with ``KCALMOL2EV``; the conversion factors agree to
  ~1e-6 relative (PyG's processed values themselves cannot be downloaded here to compare). ``energies="total"`` keeps the CSV's total energies
  (then errors are *not* comparable with the papers: total energies are nearly linear in the
  element counts, a much easier target).

The split follows Nash-MTL: a seeded random permutation, 10,000 test, 10,000 validation and the
rest (110,831) for training; with ``limit`` the validation and test sizes shrink in proportion.
Features and targets are standardised with training-split statistics only.

``pandas`` and ``qm9pack`` are optional (``pip install 'mtgrad[data]'``); :func:`load_qm9_table` and
:func:`qm9` take a ``data_dir`` holding CSVs in the same format, which is what the tests use.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import os
import pickle
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor
from torch.utils.data import TensorDataset

__all__ = [
    "ATOM_REFERENCE_HARTREE",
    "DESCRIPTOR_VERSION",
    "ELEMENTS",
    "FEATURE_NAMES",
    "HARTREE_TO_MEV",
    "MAX_ATOMS",
    "PAPER_SCALE",
    "PAPER_UNITS",
    "TARGETS",
    "TARGET_COLUMNS",
    "TARGET_UNITS",
    "QM9Data",
    "QM9Split",
    "build_qm9",
    "cache_root",
    "coulomb_eigenvalues",
    "descriptors",
    "load_qm9_table",
    "parse_molecules",
    "qm9",
    "qm9_arrays",
    "qm9pack_data_dir",
]

MAX_ATOMS = 29
"""Largest molecule in QM9 (hydrogens included); every molecule is padded to this size."""

DESCRIPTOR_VERSION = 1
"""Bump whenever :func:`descriptors` changes, so stale caches are not reused."""

ELEMENTS: tuple[str, ...] = ("H", "C", "N", "O", "F")
ATOMIC_NUMBER: dict[str, int] = {"H": 1, "C": 6, "N": 7, "O": 8, "F": 9}

FEATURE_NAMES: tuple[str, ...] = tuple(f"cm_eig{i}" for i in range(MAX_ATOMS)) + tuple(f"n_{e}" for e in ELEMENTS)
"""29 sorted Coulomb-matrix eigenvalues, then the counts of H, C, N, O, F (34 features)."""

TARGETS: tuple[str, ...] = ("mu", "alpha", "homo", "lumo", "r2", "zpve", "U0", "U", "H", "G", "Cv")

TARGET_COLUMNS: dict[str, str] = {
    "mu": "Dipole_debye",
    "alpha": "Polarizability_bohr3",
    "homo": "HOMO_au",
    "lumo": "LUMO_au",
    "r2": "R2_bohr2",
    "zpve": "ZPVE_au",
    "U0": "InternalEnergy_0K_au",
    "U": "InternalEnergy_298K_au",
    "H": "Enthalphy_298K_au",  # sic, as spelled in qm9pack's CSV header
    "G": "GibbsFreeEnergy_298K_au",
    "Cv": "Heatcapacity_Cv_cal_mol_K",
}

TARGET_UNITS: dict[str, str] = {
    "mu": "D",
    "alpha": "a0^3",
    "homo": "Ha",
    "lumo": "Ha",
    "r2": "a0^2",
    "zpve": "Ha",
    "U0": "Ha",
    "U": "Ha",
    "H": "Ha",
    "G": "Ha",
    "Cv": "cal/(mol K)",
}
"""Units of the served (de-standardised) targets: those of the CSV."""

HARTREE_TO_MEV = 27_211.386246
"""1 Hartree in meV (CODATA 2018, as PyG's ``HAR2EV = 27.211386246``)."""

_ENERGY = {"homo", "lumo", "zpve", "U0", "U", "H", "G"}
PAPER_UNITS: dict[str, str] = {t: ("meV" if t in _ENERGY else TARGET_UNITS[t]) for t in TARGETS}
PAPER_SCALE: dict[str, float] = {t: (HARTREE_TO_MEV if t in _ENERGY else 1.0) for t in TARGETS}
"""Factor from the served units to the units in which Nash-MTL/FAMO report MAE."""

ATOM_REFERENCE_HARTREE: dict[str, dict[str, float]] = {
    # QM9 "atomref" (Ramakrishnan et al. 2014, figshare 1057643), B3LYP/6-31G(2df,p).
    "U0": {"H": -0.500273, "C": -37.846772, "N": -54.583861, "O": -75.064579, "F": -99.718730},
    "U": {"H": -0.498857, "C": -37.845355, "N": -54.582445, "O": -75.063163, "F": -99.717314},
    "H": {"H": -0.497912, "C": -37.844411, "N": -54.581501, "O": -75.062219, "F": -99.716370},
    "G": {"H": -0.510927, "C": -37.861317, "N": -54.598897, "O": -75.079532, "F": -99.733544},
}

_STRUCTURE_COLUMNS = ("Index", "N_atoms", "Elements", "XYZ_Ang")
_CSV_PARTS = ("qm9_part1.csv", "qm9_part2.csv", "qm9_part3.csv")
_N_QM9 = 130_831
_PAPER_HOLDOUT = 10_000

PathLike = str | os.PathLike


# --------------------------------------------------------------------------------------------
# Reading the table
# --------------------------------------------------------------------------------------------


def _pandas() -> Any:
    try:
        import pandas as pd  # type: ignore[import-untyped]
    except ImportError as exc:  # optional extra
        raise ImportError(
            "QM9 needs pandas to read qm9pack's CSV files, which is not installed; "
            "install the data extra: pip install 'mtgrad[data]'"
        ) from exc
    return pd


def qm9pack_data_dir() -> Path:
    """The ``data`` folder of the installed ``qm9pack``, found without importing the package
    (its ``__init__`` needs ``pkg_resources``, absent from current setuptools)."""
    spec = importlib.util.find_spec("qm9pack")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            "QM9 needs the CSV files shipped by qm9pack, which is not installed; "
            "install the data extra: pip install 'mtgrad[data]' (from Python, data_options={'data_dir': ...} "
            "reads CSVs of the same format from another folder)"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def _csv_paths(data_dir: PathLike | None) -> list[Path]:
    root = qm9pack_data_dir() if data_dir is None else Path(data_dir)
    paths = [root / name for name in _CSV_PARTS if (root / name).is_file()]
    if not paths or paths[0].name != _CSV_PARTS[0]:
        raise FileNotFoundError(f"QM9 CSV not found: missing {root / _CSV_PARTS[0]}")
    return paths


def load_qm9_table(
    limit: int | None = None,
    *,
    columns: Sequence[str] | None = None,
    data_dir: PathLike | None = None,
) -> Any:
    """The raw QM9 table (a pandas ``DataFrame``, one row per molecule, in file order) from
    ``qm9_part{1,2,3}.csv`` of ``qm9pack`` or of ``data_dir``. ``limit`` keeps the first
    ``limit`` molecules (only the needed rows are parsed); ``columns`` restricts the columns."""
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be positive, got {limit}")
    pd = _pandas()
    usecols = None if columns is None else list(columns)
    frames = []
    remaining = limit
    for path in _csv_paths(data_dir):
        frame = pd.read_csv(path, usecols=usecols, nrows=remaining)
        frames.append(frame)
        if remaining is not None:
            remaining -= len(frame)
            if remaining <= 0:
                break
    return pd.concat(frames, ignore_index=True)


# --------------------------------------------------------------------------------------------
# Descriptors
# --------------------------------------------------------------------------------------------


def _flat_tokens(strings: Sequence[str], strip: str) -> list[str]:
    """All comma-separated tokens of nested-list strings such as ``"[[1.,2.],[3.,4.]]"`` or
    ``"['C','H']"``, with the characters in ``strip`` removed (one pass over the joined text)."""
    text = ",".join(strings).translate({ord(c): None for c in strip})
    return text.split(",")


def parse_molecules(table: Any) -> tuple[Tensor, Tensor, Tensor]:
    """Atomic numbers ``z`` (N, 29) int64 (0 = padding), positions ``pos`` (N, 29, 3) float64 in
    Angstrom (0 for padding) and atom counts ``n_atoms`` (N,) int64, parsed from the ``Elements``
    (``"['C','H',...]"``) and ``XYZ_Ang`` (``"[[x,y,z],...]"``) columns. Each molecule's element
    and coordinate lists are checked against ``N_atoms``."""
    import numpy as np  # here, not at the top: the benchmark registry imports this module on torch alone
    n_atoms = np.array(table["N_atoms"], dtype=np.int64)  # a writable copy
    n = len(n_atoms)
    if n and (n_atoms.min() < 1 or n_atoms.max() > MAX_ATOMS):
        raise ValueError(f"N_atoms must lie in [1, {MAX_ATOMS}], got [{n_atoms.min()}, {n_atoms.max()}]")
    elements = table["Elements"].astype(str)
    coords = table["XYZ_Ang"].astype(str)
    bad = np.nonzero((elements.str.count(",").to_numpy() + 1) != n_atoms)[0]
    if bad.size:
        raise ValueError(f"row {bad[0]}: Elements lists a different number of atoms than N_atoms")
    bad = np.nonzero((coords.str.count(r"\[").to_numpy() - 1) != n_atoms)[0]
    if bad.size:
        raise ValueError(f"row {bad[0]}: XYZ_Ang lists a different number of atoms than N_atoms")
    symbols = np.asarray(_flat_tokens(elements.tolist(), "[]'\" "))
    values = np.asarray(_flat_tokens(coords.tolist(), "[] "), dtype=np.float64)
    total = int(n_atoms.sum())
    if symbols.size != total or values.size != 3 * total:
        raise ValueError("XYZ_Ang must hold exactly three coordinates per atom")
    uniq, inverse = np.unique(symbols, return_inverse=True)
    unknown = [s for s in uniq if s not in ATOMIC_NUMBER]
    if unknown:
        raise ValueError(f"unknown element symbols {unknown}; QM9 has only {ELEMENTS}")
    z_flat = np.asarray([ATOMIC_NUMBER[s] for s in uniq], dtype=np.int64)[inverse]
    mol = np.repeat(np.arange(n), n_atoms)
    slot = np.arange(total) - np.repeat(np.cumsum(n_atoms) - n_atoms, n_atoms)
    z = np.zeros((n, MAX_ATOMS), dtype=np.int64)
    pos = np.zeros((n, MAX_ATOMS, 3), dtype=np.float64)
    z[mol, slot] = z_flat
    pos[mol, slot] = values.reshape(total, 3)
    return torch.from_numpy(z), torch.from_numpy(pos), torch.from_numpy(n_atoms)


def coulomb_eigenvalues(z: Tensor, pos: Tensor, chunk: int = 8192) -> Tensor:
    """Eigenvalues of the Coulomb matrix ``C_ii = 0.5 Z_i^2.4``, ``C_ij = Z_i Z_j / |r_i - r_j|``
    (distances in the units of ``pos``, Angstrom here) of padded molecules ``z`` (N, A) with
    0 = padding and ``pos`` (N, A, 3); returns (N, A) float64 sorted by decreasing magnitude.
    Padding atoms give zero rows and columns, hence exactly-zero eigenvalues that sort last, so
    the result is the usual zero-padded sorted eigenspectrum. Coincident atoms are an error."""
    if z.ndim != 2 or pos.shape != (*z.shape, 3):
        raise ValueError(f"z must be (N, A) and pos (N, A, 3), got {tuple(z.shape)} and {tuple(pos.shape)}")
    out = torch.empty(z.shape, dtype=torch.float64)
    for s in range(0, z.shape[0], chunk):
        zc = z[s : s + chunk].to(torch.float64)
        d = torch.cdist(pos[s : s + chunk].to(torch.float64), pos[s : s + chunk].to(torch.float64))
        zz = zc[:, :, None] * zc[:, None, :]
        off = ~torch.eye(z.shape[1], dtype=torch.bool)
        real = (zz > 0) & off
        if bool((d[real] <= 1e-8).any()):
            raise ValueError("two atoms of a molecule share a position")
        m = torch.where(real, zz / torch.where(real, d, 1.0), 0.0)
        m.diagonal(dim1=1, dim2=2).copy_(0.5 * zc.pow(2.4))
        ev = torch.linalg.eigvalsh(m)
        order = torch.argsort(ev.abs(), dim=1, descending=True, stable=True)
        out[s : s + chunk] = torch.gather(ev, 1, order)
    return out


def descriptors(z: Tensor, pos: Tensor) -> Tensor:
    """Features (N, 34) float64 of padded molecules: :func:`coulomb_eigenvalues` then the counts
    of H, C, N, O, F (see :data:`FEATURE_NAMES`)."""
    if z.shape[1] != MAX_ATOMS:
        raise ValueError(f"molecules must be padded to {MAX_ATOMS} atoms, got {z.shape[1]}")
    eig = coulomb_eigenvalues(z, pos)
    numbers = torch.tensor([ATOMIC_NUMBER[e] for e in ELEMENTS])
    counts = (z[:, :, None] == numbers).sum(dim=1).to(torch.float64)
    return torch.cat([eig, counts], dim=1)


# --------------------------------------------------------------------------------------------
# Cache
# --------------------------------------------------------------------------------------------


def cache_root(cache_dir: PathLike | None = None) -> Path:
    """Where cached descriptors live: ``cache_dir`` if given, else ``$MTGRAD_CACHE``, else
    ``$XDG_CACHE_HOME/mtgrad``, else ``~/.cache/mtgrad``."""
    if cache_dir is not None:
        return Path(cache_dir)
    if os.environ.get("MTGRAD_CACHE"):
        return Path(os.environ["MTGRAD_CACHE"])
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "mtgrad"


def _source_tag(data_dir: PathLike | None) -> str:
    """``qm9pack-<version>`` for the package's data; for a user folder a hash of the CSVs' paths,
    sizes and modification times, so edited files are not served from a stale cache."""
    if data_dir is None:
        try:
            return f"qm9pack-{importlib.metadata.version('qm9pack')}"
        except importlib.metadata.PackageNotFoundError:  # found on sys.path, not installed
            data_dir = qm9pack_data_dir()
    h = hashlib.sha1()
    for p in _csv_paths(data_dir):
        st = p.stat()
        h.update(f"{p.resolve()}|{st.st_size}|{st.st_mtime_ns};".encode())
    return f"dir-{h.hexdigest()[:16]}"


def qm9_arrays(
    limit: int | None = None,
    *,
    cache_dir: PathLike | None = None,
    data_dir: PathLike | None = None,
    cache: bool = True,
) -> dict[str, Tensor]:
    """Unstandardised arrays of the first ``limit`` molecules (all when None): ``features``
    (N, 34) float64, ``targets`` (N, 11) float64 in the CSV's units (total energies) and ``index``
    (N,) int64 QM9 ids. Built once and cached as ``qm9_<source>_d<DESCRIPTOR_VERSION>_<n>.pt``
    under :func:`cache_root`; later calls load the file."""
    path = None
    if cache:
        n_tag = "all" if limit is None else str(int(limit))
        name = f"qm9_{_source_tag(data_dir)}_d{DESCRIPTOR_VERSION}_{n_tag}.pt"
        path = cache_root(cache_dir) / name
        if path.is_file():
            try:
                return torch.load(path, weights_only=True)
            except (OSError, RuntimeError, EOFError, pickle.UnpicklingError):
                pass  # unreadable (e.g. truncated by a full disk): rebuild and overwrite it
    import numpy as np  # pandas, which reads the table, has it

    columns = (*_STRUCTURE_COLUMNS, *TARGET_COLUMNS.values())
    table = load_qm9_table(limit, columns=columns, data_dir=data_dir)
    z, pos, _ = parse_molecules(table)
    arrays = {
        "features": descriptors(z, pos),
        "targets": torch.from_numpy(np.array(table[[TARGET_COLUMNS[t] for t in TARGETS]], dtype=np.float64)),
        "index": torch.from_numpy(np.array(table["Index"], dtype=np.int64)),
    }
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        torch.save(arrays, tmp)
        os.replace(tmp, path)  # atomic: a concurrent reader never sees a half-written file
    return arrays


# --------------------------------------------------------------------------------------------
# Splits
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class QM9Split:
    """One split: ``x`` (N, 34) float32 standardised features, ``y`` (N, 11) float32 standardised
    targets (columns in :data:`TARGETS` order) and ``index`` (N,) int64 QM9 molecule ids."""

    x: Tensor
    y: Tensor
    index: Tensor

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def dataset(self) -> TensorDataset:
        """``TensorDataset(x, y)`` for a ``DataLoader``."""
        return TensorDataset(self.x, self.y)


@dataclass(frozen=True)
class QM9Data:
    """Train/val/test splits plus the training-split statistics used to standardise them.
    ``y_mean``/``y_std`` (11,) float64 are in :data:`TARGET_UNITS` (energies U0..G as atomization
    energies unless ``energies == "total"``); ``x_mean``/``x_std`` (34,) float64."""

    train: QM9Split
    val: QM9Split
    test: QM9Split
    x_mean: Tensor
    x_std: Tensor
    y_mean: Tensor
    y_std: Tensor
    energies: str
    targets: tuple[str, ...] = TARGETS

    def destandardize(self, y: Tensor) -> Tensor:
        """Standardised predictions or targets (..., 11) back to :data:`TARGET_UNITS` (float64)."""
        return y.to(torch.float64) * self.y_std + self.y_mean

    def to_paper_units(self, y: Tensor) -> Tensor:
        """Values (..., 11) in :data:`TARGET_UNITS` to :data:`PAPER_UNITS` (Hartree -> meV)."""
        return y.to(torch.float64) * torch.tensor([PAPER_SCALE[t] for t in self.targets], dtype=torch.float64)

    def mae(self, pred: Tensor, y: Tensor, units: Literal["paper", "data"] = "paper") -> Tensor:
        """Per-task mean absolute error (11,) float64 of *standardised* predictions ``pred``
        against standardised targets ``y`` (both (N, 11)), in :data:`PAPER_UNITS` (the units of
        the Nash-MTL/FAMO tables) or, with ``units="data"``, in :data:`TARGET_UNITS`."""
        if units not in ("paper", "data"):
            raise ValueError(f"units must be 'paper' or 'data', got {units!r}")
        err = (pred.to(torch.float64) - y.to(torch.float64)).abs().mean(dim=0) * self.y_std
        return self.to_paper_units(err) if units == "paper" else err


def _atomization(features: Tensor, targets: Tensor) -> Tensor:
    """Targets with U0, U, H, G replaced by atomization energies (total minus atom references),
    using the element counts stored in the last five feature columns."""
    out = targets.clone()
    counts = features[:, MAX_ATOMS : MAX_ATOMS + len(ELEMENTS)]
    for name, refs in ATOM_REFERENCE_HARTREE.items():
        ref = torch.tensor([refs[e] for e in ELEMENTS], dtype=torch.float64)
        out[:, TARGETS.index(name)] -= counts @ ref
    return out


def _holdout_size(n: int) -> int:
    """Nash-MTL holds out 10,000 of 130,831 molecules for each of val and test; scaled for subsets."""
    return max(1, min(_PAPER_HOLDOUT, round(n * _PAPER_HOLDOUT / _N_QM9)))


def _stats(a: Tensor) -> tuple[Tensor, Tensor]:
    mean = a.mean(dim=0)
    std = a.std(dim=0)
    return mean, torch.where(std > 1e-12, std, torch.ones_like(std))  # constant column: leave as is


def build_qm9(
    features: Tensor,
    targets: Tensor,
    index: Tensor,
    *,
    split_seed: int = 0,
    n_val: int | None = None,
    n_test: int | None = None,
    energies: Literal["atomization", "total"] = "atomization",
) -> QM9Data:
    """Split unstandardised ``features`` (N, 34), ``targets`` (N, 11, CSV units) and ``index``
    (N,) with a ``split_seed`` permutation (first ``n_test`` test, next ``n_val`` val, rest train;
    sizes default to Nash-MTL's 10,000 each, scaled down for fewer molecules) and standardise both
    with training statistics."""
    if energies not in ("atomization", "total"):
        raise ValueError(f"energies must be 'atomization' or 'total', got {energies!r}")
    n = features.shape[0]
    if features.shape != (n, len(FEATURE_NAMES)) or targets.shape != (n, len(TARGETS)) or index.shape != (n,):
        raise ValueError(
            f"expected features (N, {len(FEATURE_NAMES)}), targets (N, {len(TARGETS)}), index (N,); got "
            f"{tuple(features.shape)}, {tuple(targets.shape)}, {tuple(index.shape)}"
        )
    n_val = _holdout_size(n) if n_val is None else n_val
    n_test = _holdout_size(n) if n_test is None else n_test
    if n_val < 1 or n_test < 1 or n - n_val - n_test < 2:
        raise ValueError(f"{n} molecules cannot be split into val={n_val}, test={n_test} and >= 2 train")
    features = features.to(torch.float64)
    targets = targets.to(torch.float64)
    if energies == "atomization":
        targets = _atomization(features, targets)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(split_seed))
    parts = {"test": perm[:n_test], "val": perm[n_test : n_test + n_val], "train": perm[n_test + n_val :]}
    x_mean, x_std = _stats(features[parts["train"]])
    y_mean, y_std = _stats(targets[parts["train"]])

    def split(rows: Tensor) -> QM9Split:
        rows = rows.sort().values
        x = ((features[rows] - x_mean) / x_std).to(torch.float32)
        y = ((targets[rows] - y_mean) / y_std).to(torch.float32)
        return QM9Split(x, y, index[rows].clone())

    return QM9Data(
        train=split(parts["train"]),
        val=split(parts["val"]),
        test=split(parts["test"]),
        x_mean=x_mean,
        x_std=x_std,
        y_mean=y_mean,
        y_std=y_std,
        energies=energies,
    )


def qm9(
    split_seed: int = 0,
    limit: int | None = None,
    cache_dir: PathLike | None = None,
    *,
    n_val: int | None = None,
    n_test: int | None = None,
    energies: Literal["atomization", "total"] = "atomization",
    data_dir: PathLike | None = None,
    cache: bool = True,
) -> QM9Data:
    """QM9 with the 11 Nash-MTL targets and cached Coulomb-matrix descriptors: 110,831 / 10,000 /
    10,000 train/val/test molecules for the full set (``limit`` keeps the first ``limit`` rows of
    the CSVs for quick runs). The first call builds the descriptors (tens of seconds for the full
    set) and caches them (see :func:`qm9_arrays`). Needs ``pip install 'mtgrad[data]'`` unless
    ``data_dir`` points at CSVs in qm9pack's format."""
    arrays = qm9_arrays(limit, cache_dir=cache_dir, data_dir=data_dir, cache=cache)
    return build_qm9(
        arrays["features"],
        arrays["targets"],
        arrays["index"],
        split_seed=split_seed,
        n_val=n_val,
        n_test=n_test,
        energies=energies,
    )
