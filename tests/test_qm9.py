"""QM9 from qm9pack's CSVs: Coulomb-matrix descriptors (known molecules, padding, sorting,
invariances), CSV parsing, train-only standardisation and its inverse in the data's and the
papers' units, atomization energies, splits, and the on-disk cache. All but the last test run on
tiny tables written in qm9pack's CSV format; the last reads 500 real molecules when qm9pack is
installed."""

from __future__ import annotations

import csv
import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from mtgrad.bench.data import qm9

pytest.importorskip("pandas")

# The real header of qm9pack 1.0.3's qm9_part*.csv.
HEADER = [
    "XYZ_file",
    "Index",
    "SMILES",
    "InChi",
    "N_atoms",
    "Stoichiometry",
    "Elements",
    "XYZ_Ang",
    "Mulliken_pop",
    "Harmonic_Freq_cmi",
    "RotA_GHz",
    "RotB_GHz",
    "RotC_GHz",
    "Dipole_debye",
    "Polarizability_bohr3",
    "HOMO_au",
    "LUMO_au",
    "HOMO_LUMO_gap_au",
    "R2_bohr2",
    "ZPVE_au",
    "InternalEnergy_0K_au",
    "InternalEnergy_298K_au",
    "Enthalphy_298K_au",
    "GibbsFreeEnergy_298K_au",
    "Heatcapacity_Cv_cal_mol_K",
]

Z = {"H": 1, "C": 6, "N": 7, "O": 8, "F": 9}


def _coulomb_reference(symbols: list[str], pos: np.ndarray) -> np.ndarray:
    """Sorted (by |.|, descending) eigenvalues of the Coulomb matrix, built entry by entry."""
    n = len(symbols)
    z = [Z[s] for s in symbols]
    m = np.empty((n, n))
    for i in range(n):
        for j in range(n):
            m[i, j] = 0.5 * z[i] ** 2.4 if i == j else z[i] * z[j] / np.linalg.norm(pos[i] - pos[j])
    ev = np.linalg.eigvalsh(m)
    return ev[np.argsort(-np.abs(ev), kind="stable")]


def _fmt(x: float) -> str:
    return "0." if x == 0.0 else repr(float(x))  # the CSV writes exact zeros as "0."


def _row(index: int, symbols: list[str], pos: np.ndarray, targets: dict[str, float]) -> dict[str, object]:
    stoich = [symbols.count(e) for e in qm9.ELEMENTS]
    row: dict[str, object] = {c: 0.0 for c in HEADER}
    row.update(
        XYZ_file=f"dsgdb9nsd_{index:06d}.xyz",
        Index=index,
        SMILES="C",
        InChi="InChI=1S/X",
        N_atoms=len(symbols),
        Stoichiometry="[" + ",".join(map(str, stoich)) + "]",
        Elements="[" + ",".join(f"'{s}'" for s in symbols) + "]",
        XYZ_Ang="[" + ",".join("[" + ",".join(_fmt(v) for v in p) + "]" for p in pos) + "]",
        Mulliken_pop="[" + ",".join("0.1" for _ in symbols) + "]",
        Harmonic_Freq_cmi="[1000.0,2000.0]",
    )
    row.update({qm9.TARGET_COLUMNS[t]: v for t, v in targets.items()})
    return row


def _write_csv(path: Path, rows: list[dict[str, object]]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=HEADER, quoting=csv.QUOTE_NONNUMERIC)
        w.writeheader()
        w.writerows(rows)


def _molecules(n: int, seed: int = 0) -> list[tuple[list[str], np.ndarray, dict[str, float]]]:
    """``n`` random small molecules (1-3 heavy atoms plus hydrogens) with random targets."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        heavy = list(rng.choice(["C", "N", "O", "F"], size=int(rng.integers(1, 4))))
        symbols = heavy + ["H"] * int(rng.integers(0, 6))
        pos = rng.normal(scale=1.5, size=(len(symbols), 3))
        pos[0, 2] = 0.0  # exercise the "0." spelling
        targets = {t: float(rng.normal(loc=-40.0 if t in ("U0", "U", "H", "G") else 1.0)) for t in qm9.TARGETS}
        out.append((symbols, pos, targets))
    return out


@pytest.fixture()
def qm9_dir(tmp_path: Path) -> tuple[Path, list[tuple[list[str], np.ndarray, dict[str, float]]]]:
    """40 molecules split over qm9_part1.csv (25 rows) and qm9_part2.csv (15 rows)."""
    mols = _molecules(40)
    rows = [_row(i + 1, *m) for i, m in enumerate(mols)]
    d = tmp_path / "data"
    d.mkdir()
    _write_csv(d / "qm9_part1.csv", rows[:25])
    _write_csv(d / "qm9_part2.csv", rows[25:])
    return d, mols


# --------------------------------------------------------------------------------------------
# Descriptors
# --------------------------------------------------------------------------------------------


def _padded(symbols: list[str], pos: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    z = torch.zeros(1, qm9.MAX_ATOMS, dtype=torch.int64)
    p = torch.zeros(1, qm9.MAX_ATOMS, 3, dtype=torch.float64)
    z[0, : len(symbols)] = torch.tensor([Z[s] for s in symbols])
    p[0, : len(symbols)] = torch.from_numpy(pos)
    return z, p


def test_h2_coulomb_eigenvalues_are_half_plus_minus_inverse_distance():
    r = 0.74
    z, p = _padded(["H", "H"], np.array([[0.0, 0.0, 0.0], [r, 0.0, 0.0]]))
    ev = qm9.coulomb_eigenvalues(z, p)[0]
    # C = [[0.5, 1/r], [1/r, 0.5]] -> 0.5 +- 1/r, sorted by magnitude; padding adds exact zeros.
    assert ev[:2].tolist() == pytest.approx([0.5 + 1 / r, 0.5 - 1 / r], abs=1e-12)
    assert bool((ev[2:] == 0).all())


def test_eigenvalues_match_entrywise_matrix_padding_and_sorting():
    rng = np.random.default_rng(3)
    symbols = ["C", "O", "N", "H", "H", "F", "H"]
    pos = rng.normal(scale=1.5, size=(7, 3))
    z, p = _padded(symbols, pos)
    ev = qm9.coulomb_eigenvalues(z, p)[0].numpy()
    assert ev.shape == (qm9.MAX_ATOMS,)
    np.testing.assert_allclose(ev[:7], _coulomb_reference(symbols, pos), rtol=1e-10, atol=1e-10)
    assert np.all(ev[7:] == 0)
    assert np.all(np.diff(np.abs(ev)) <= 1e-12)  # non-increasing magnitude, zeros last
    # Same molecule unpadded (A = 7) gives the same spectrum.
    unpadded = qm9.coulomb_eigenvalues(z[:, :7], p[:, :7])[0].numpy()
    np.testing.assert_allclose(unpadded, ev[:7], rtol=1e-12, atol=1e-12)


def test_descriptors_invariant_to_rotation_translation_and_atom_order():
    rng = np.random.default_rng(4)
    symbols = ["C", "C", "O", "H", "H", "H", "H"]
    pos = rng.normal(size=(7, 3))
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    perm = rng.permutation(7)
    moved = (pos @ q.T + rng.normal(size=3))[perm]
    a = qm9.descriptors(*_padded(symbols, pos))
    b = qm9.descriptors(*_padded([symbols[i] for i in perm], moved))
    torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)
    assert a[0, qm9.MAX_ATOMS :].tolist() == [4.0, 2.0, 0.0, 1.0, 0.0]  # H, C, N, O, F counts
    assert a.shape == (1, len(qm9.FEATURE_NAMES))


def test_coincident_atoms_are_rejected():
    z, p = _padded(["C", "H"], np.zeros((2, 3)))
    with pytest.raises(ValueError, match="share a position"):
        qm9.coulomb_eigenvalues(z, p)


# --------------------------------------------------------------------------------------------
# CSV parsing
# --------------------------------------------------------------------------------------------


def test_table_limit_spans_csv_parts_and_parsing_round_trips(qm9_dir):
    d, mols = qm9_dir
    table = qm9.load_qm9_table(data_dir=d)
    assert len(table) == 40 and list(table.columns) == HEADER
    part = qm9.load_qm9_table(30, data_dir=d)  # 25 rows of part 1 + 5 of part 2
    assert part["Index"].tolist() == list(range(1, 31))
    z, pos, n_atoms = qm9.parse_molecules(table)
    assert z.shape == (40, qm9.MAX_ATOMS) and pos.shape == (40, qm9.MAX_ATOMS, 3)
    for i, (symbols, p, _) in enumerate(mols):
        k = len(symbols)
        assert n_atoms[i] == k
        assert z[i, :k].tolist() == [Z[s] for s in symbols] and bool((z[i, k:] == 0).all())
        np.testing.assert_array_equal(pos[i, :k].numpy(), p)  # repr() round-trips floats exactly
    feats = qm9.descriptors(z, pos)
    for i in (0, 17, 39):
        symbols, p, _ = mols[i]
        np.testing.assert_allclose(feats[i, : len(symbols)].numpy(), _coulomb_reference(symbols, p), rtol=1e-10)
    stoich = torch.tensor([[int(v) for v in s.strip("[]").split(",")] for s in table["Stoichiometry"]])
    assert torch.equal(feats[:, qm9.MAX_ATOMS :].to(torch.int64), stoich)


def test_inconsistent_atom_count_is_an_error(tmp_path):
    symbols, pos, targets = _molecules(1)[0]
    row = _row(1, symbols, pos, targets)
    row["N_atoms"] = len(symbols) + 1
    _write_csv(tmp_path / "qm9_part1.csv", [row])
    with pytest.raises(ValueError, match="N_atoms"):
        qm9.parse_molecules(qm9.load_qm9_table(data_dir=tmp_path))


def test_missing_files_and_missing_package_give_clear_errors(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="qm9_part1.csv"):
        qm9.load_qm9_table(data_dir=tmp_path)
    real = importlib.util.find_spec
    monkeypatch.setattr(qm9.importlib.util, "find_spec", lambda name, *a: None if name == "qm9pack" else real(name, *a))
    with pytest.raises(ImportError, match=r"pip install 'mtgrad\[data\]'.*data_dir"):
        qm9.load_qm9_table(5)


# --------------------------------------------------------------------------------------------
# Splits and standardisation
# --------------------------------------------------------------------------------------------


def _atomization_u0(symbols: list[str], u0: float) -> float:
    return u0 - sum(qm9.ATOM_REFERENCE_HARTREE["U0"][s] for s in symbols)


def test_splits_are_disjoint_deterministic_and_standardised_on_train(qm9_dir, tmp_path):
    d, _ = qm9_dir
    data = qm9.qm9(split_seed=1, cache_dir=tmp_path / "cache", data_dir=d)
    ids = [s.index for s in (data.train, data.val, data.test)]
    assert [len(s) for s in (data.train, data.val, data.test)] == [34, 3, 3]  # 10k/130,831 of 40
    assert sorted(torch.cat(ids).tolist()) == list(range(1, 41))
    again = qm9.qm9(split_seed=1, cache_dir=tmp_path / "cache", data_dir=d)
    other = qm9.qm9(split_seed=2, cache_dir=tmp_path / "cache", data_dir=d)
    assert torch.equal(again.test.index, data.test.index) and torch.equal(again.train.x, data.train.x)
    assert not torch.equal(other.test.index, data.test.index)
    x, y = data.train.x.double(), data.train.y.double()
    assert data.train.x.dtype == torch.float32 and data.train.y.dtype == torch.float32
    varying = data.x_std != 1  # constant columns (e.g. padded eigenvalues) are left centred only
    torch.testing.assert_close(x.mean(0), torch.zeros(34, dtype=torch.float64), atol=1e-5, rtol=0)
    torch.testing.assert_close(
        x.std(0)[varying], torch.ones(int(varying.sum()), dtype=torch.float64), atol=1e-5, rtol=0
    )
    torch.testing.assert_close(y.std(0), torch.ones(11, dtype=torch.float64), atol=1e-5, rtol=0)
    ds = data.train.dataset()
    assert len(ds) == 34 and ds[0][1].shape == (11,)
    with pytest.raises(ValueError, match="cannot be split"):
        qm9.qm9(cache_dir=tmp_path / "cache", data_dir=d, n_val=20, n_test=19)


def test_destandardised_targets_are_the_csv_values_and_atomization_energies(qm9_dir, tmp_path):
    d, mols = qm9_dir
    for energies in ("atomization", "total"):
        data = qm9.qm9(cache_dir=tmp_path / "cache", data_dir=d, energies=energies)
        for split in (data.train, data.val, data.test):
            back = data.destandardize(split.y)
            for row, mol_id in zip(back, split.index.tolist()):
                symbols, _, t = mols[mol_id - 1]
                expected = [t[name] for name in qm9.TARGETS]
                if energies == "atomization":
                    for name in ("U0", "U", "H", "G"):
                        refs = qm9.ATOM_REFERENCE_HARTREE[name]
                        expected[qm9.TARGETS.index(name)] -= sum(refs[s] for s in symbols)
                # float32 standardised targets: exact up to ~1e-7 of each target's spread
                tol = 1e-6 * (1.0 + data.y_std.numpy())
                assert np.all(np.abs(row.numpy() - np.asarray(expected)) <= tol)


def test_mae_in_data_and_paper_units(qm9_dir, tmp_path):
    d, _ = qm9_dir
    data = qm9.qm9(cache_dir=tmp_path / "cache", data_dir=d)
    y = data.test.y
    assert torch.equal(data.mae(y, y), torch.zeros(11, dtype=torch.float64))
    shift = torch.linspace(0.01, 0.11, 11, dtype=torch.float64)  # an error in data units per task
    pred = (data.destandardize(y) + shift - data.y_mean) / data.y_std
    torch.testing.assert_close(data.mae(pred, y, units="data"), shift, rtol=1e-5, atol=1e-7)
    paper = data.mae(pred, y)
    for k, name in enumerate(qm9.TARGETS):
        scale = qm9.HARTREE_TO_MEV if qm9.PAPER_UNITS[name] == "meV" else 1.0
        assert paper[k].item() == pytest.approx(shift[k].item() * scale, rel=1e-4)
    assert qm9.PAPER_UNITS["homo"] == "meV" and qm9.TARGET_UNITS["homo"] == "Ha"
    assert qm9.PAPER_UNITS["mu"] == "D" and qm9.PAPER_UNITS["Cv"] == "cal/(mol K)"


# --------------------------------------------------------------------------------------------
# Cache
# --------------------------------------------------------------------------------------------


def test_cache_hit_returns_identical_tensors_without_reading_the_csv(qm9_dir, tmp_path, monkeypatch):
    d, _ = qm9_dir
    cache = tmp_path / "cache"
    first = qm9.qm9_arrays(cache_dir=cache, data_dir=d)
    files = list(cache.glob("qm9_dir-*_d1_all.pt"))
    assert len(files) == 1

    def fail(*args, **kwargs):
        raise AssertionError("the cache should have been used")

    monkeypatch.setattr(qm9, "load_qm9_table", fail)
    second = qm9.qm9_arrays(cache_dir=cache, data_dir=d)
    assert first.keys() == second.keys()
    for k in first:
        assert torch.equal(first[k], second[k])
    a = qm9.qm9(split_seed=3, cache_dir=cache, data_dir=d)
    assert torch.equal(
        a.train.x, qm9.build_qm9(**{k: first[k] for k in ("features", "targets", "index")}, split_seed=3).train.x
    )
    with pytest.raises(AssertionError, match="cache"):
        qm9.qm9_arrays(limit=7, cache_dir=cache, data_dir=d)  # another limit is another cache entry


def test_cache_location_env_vars_and_invalidation(qm9_dir, tmp_path, monkeypatch):
    d, mols = qm9_dir
    monkeypatch.delenv("MTGRAD_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert qm9.cache_root() == tmp_path / "xdg" / "mtgrad"
    monkeypatch.setenv("MTGRAD_CACHE", str(tmp_path / "env"))
    assert qm9.cache_root() == tmp_path / "env"
    assert qm9.cache_root(tmp_path / "arg") == tmp_path / "arg"
    qm9.qm9_arrays(5, data_dir=d)
    assert len(list((tmp_path / "env").glob("*.pt"))) == 1
    # Rewriting the CSVs changes the cache key, so stale descriptors are not served.
    rows = [_row(i + 1, *m) for i, m in enumerate(mols[:25])]
    rows[0]["Dipole_debye"] = 123.0
    _write_csv(d / "qm9_part1.csv", rows)
    fresh = qm9.qm9_arrays(5, data_dir=d)
    assert fresh["targets"][0, 0].item() == 123.0
    assert not qm9.qm9_arrays(5, data_dir=d, cache=False)["targets"].isnan().any()


# --------------------------------------------------------------------------------------------
# The real data (qm9pack cannot be imported, so importorskip would always skip: use find_spec)
# --------------------------------------------------------------------------------------------


@pytest.mark.skipif(importlib.util.find_spec("qm9pack") is None, reason="qm9pack is not installed")
def test_real_qm9pack_first_500_molecules(tmp_path):
    data = qm9.qm9(limit=500, cache_dir=tmp_path)
    sizes = [len(s) for s in (data.train, data.val, data.test)]
    assert sum(sizes) == 500 and sizes[1] == sizes[2] == 38
    for s in (data.train, data.val, data.test):
        assert s.x.shape == (len(s), 34) and s.y.shape == (len(s), 11)
        assert bool(torch.isfinite(s.x).all()) and bool(torch.isfinite(s.y).all())
    arrays = qm9.qm9_arrays(500, cache_dir=tmp_path)
    assert arrays["index"][:3].tolist() == [1, 2, 3]
    methane = arrays["features"][0]
    assert methane[qm9.MAX_ATOMS :].tolist() == [4.0, 1.0, 0.0, 0.0, 0.0]
    assert bool((methane[5 : qm9.MAX_ATOMS] == 0).all()) and bool((methane[:5] != 0).all())
    # Methane in the CSV: HOMO -0.3877 Ha, U0 -40.47893 Ha -> atomization -0.631066 Ha (-17.17 eV).
    total = qm9.build_qm9(arrays["features"], arrays["targets"], arrays["index"], energies="total")
    atom = qm9.build_qm9(arrays["features"], arrays["targets"], arrays["index"])
    assert int(atom.train.index[0]) == 1  # molecule 1 lands in train with seed 0 (splits are sorted)
    row = 0
    assert total.destandardize(total.train.y[row])[2].item() == pytest.approx(-0.3877)
    u0 = atom.destandardize(atom.train.y[row])[qm9.TARGETS.index("U0")].item()
    assert u0 == pytest.approx(_atomization_u0(["C", "H", "H", "H", "H"], -40.47893))
    assert u0 * qm9.HARTREE_TO_MEV / 1000 == pytest.approx(-17.172, abs=1e-3)
    # Total energies (spread ~ tens of Ha) survive float32 standardisation to ~1e-5 Ha (0.3 meV).
    assert math.isclose(total.destandardize(total.train.y[row])[6].item(), -40.47893, abs_tol=1e-4)
