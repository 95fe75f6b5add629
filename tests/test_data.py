"""Readers, reference energies, splits and padded batches."""

import numpy as np
import pytest

from biojax.data.graphs import GraphDataset, bucket_size, find_edges
from biojax.data.io import (fit_reference_energies, read_dataset, read_isolated_atoms,
                            split_indices, write_extxyz)
from biojax.core.errors import DataError
from biojax.core.units import KCAL_PER_MOL


def test_reads_extxyz_with_energies_and_forces(ethanol_train):
    frames = read_dataset(ethanol_train, index=":20")
    assert len(frames) == 20
    s = frames[0]
    assert s.n_atoms == 9 and not s.periodic
    assert s.energy == pytest.approx(-4209.4657843064815)
    assert s.forces.shape == (9, 3)
    np.testing.assert_allclose(s.forces[0], [-4.15950961, 0.10729389, 3.61777644])


def test_extxyz_roundtrip_keeps_labels_and_stress(tmp_path):
    from ase.build import bulk
    from ase.calculators.emt import EMT
    from biojax.data.io import structure_from_atoms

    atoms = bulk("Cu", cubic=True).repeat(2)
    atoms.rattle(0.05, seed=0)
    atoms.calc = EMT()
    atoms.get_stress()
    s = structure_from_atoms(atoms)
    path = tmp_path / "cu.extxyz"
    write_extxyz([s], path)
    (back,) = read_dataset(path)
    np.testing.assert_allclose(back.stress, s.stress, rtol=1e-7, atol=1e-10)  # 8 written digits
    np.testing.assert_allclose(back.forces, s.forces, rtol=0, atol=1e-8)
    assert back.energy == pytest.approx(s.energy) and back.periodic


def test_reads_sgdml_npz_converting_kcal_mol(tmp_path, capsys):
    R = np.random.default_rng(0).normal(size=(3, 2, 3))
    np.savez(tmp_path / "md17.npz", R=R, z=np.array([1, 8]), E=np.array([[1.0], [2.0], [3.0]]),
             F=np.ones((3, 2, 3)))
    frames = read_dataset(tmp_path / "md17.npz")
    assert frames[1].energy == pytest.approx(2.0 * KCAL_PER_MOL)
    np.testing.assert_allclose(frames[0].forces, KCAL_PER_MOL)
    assert "kcal/mol" in capsys.readouterr().err
    # 1 kcal/mol in eV by ASE's own constants
    from ase import units
    assert KCAL_PER_MOL == pytest.approx(units.kcal / units.mol, rel=1e-8)


def test_missing_malformed_and_nan_inputs_are_clear_errors(tmp_path):
    with pytest.raises(DataError, match="data file not found: .*nope.xyz"):
        read_dataset(tmp_path / "nope.xyz")
    bad = tmp_path / "bad.extxyz"
    bad.write_text("3\nProperties=species:S:1:pos:R:3 energy=1.0\nH 0 0 0\nH 0 0\n")
    with pytest.raises(DataError, match="bad.extxyz: cannot be read"):
        read_dataset(bad)
    nan = tmp_path / "nan.extxyz"
    nan.write_text("2\nProperties=species:S:1:pos:R:3 energy=1.0\nH 0 0 0\nH nan 0 0.7\n")
    with pytest.raises(DataError, match="nan.extxyz frame 0: coordinates contain NaN"):
        read_dataset(nan)


def test_reference_energies_from_file_and_by_least_squares(ethanol_train, ethanol_isolated):
    table = read_isolated_atoms(ethanol_isolated)
    assert table[6] == pytest.approx(-1025.2770951782686)
    # synthetic data with known per-element energies is recovered exactly
    frames = read_dataset(ethanol_train, index=":5")
    from dataclasses import replace
    rng = np.random.default_rng(1)
    fake = []
    for n_h in (1, 2, 3, 4, 5, 6):
        numbers = np.array([1] * n_h + [6] * (7 - n_h) + [8] * (n_h % 3 + 1))
        fake.append(replace(frames[0], numbers=numbers, positions=rng.normal(size=(len(numbers), 3)),
                            energy=float(-1.0 * n_h - 10.0 * (7 - n_h) - 100.0 * (n_h % 3 + 1))))
    np.testing.assert_allclose(fit_reference_energies(fake, (1, 6, 8)), [-1, -10, -100], atol=1e-9)


def test_split_is_seeded_and_disjoint():
    a = split_indices(100, 0.1, 5, seed=3)
    b = split_indices(100, 0.1, 5, seed=3)
    c = split_indices(100, 0.1, 5, seed=4)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not np.array_equal(a[0], c[0])
    assert [len(x) for x in a] == [85, 10, 5]
    assert len(set(np.concatenate(a))) == 100
    with pytest.raises(DataError, match="cannot hold out"):
        split_indices(10, 8, 2)


def test_bucket_ladder_is_small_and_covering():
    sizes = {bucket_size(n) for n in range(1, 5000)}
    assert len(sizes) <= 40
    for n in range(1, 5000, 7):
        b = bucket_size(n)
        assert b >= n and b % 8 == 0 and (b <= 8 or b < 1.25 * n + 8)


def test_batches_pad_with_masks_and_match_ase_neighbours(ethanol_train):
    frames = read_dataset(ethanol_train, index=":10")
    ds = GraphDataset(frames, 3.0, lambda z: np.searchsorted([1, 6, 8], z),
                      lambda z: 0.0)
    shapes = {(b.positions.shape, b.senders.shape) for b in ds.batches(4)}
    assert len(shapes) <= 2  # the last, partial batch may fall in a smaller bucket
    batch = next(ds.batches(4))
    assert batch.node_mask.sum() == 36 and batch.graph_mask.sum() == 4
    assert batch.graph_mask.shape == (5,)
    pad = batch.positions.shape[0] - 1
    assert not batch.node_mask[pad] and np.all(batch.senders[~batch.edge_mask] == pad)
    # edge count per structure equals a brute-force count of pairs within the cutoff
    for s, g in zip(frames[:4], ds.graphs[:4]):
        d = np.linalg.norm(s.positions[:, None] - s.positions[None], axis=-1)
        assert len(g.senders) == int(((d < 3.0) & (d > 0)).sum())
    # periodic images: a single atom in a small cubic cell has 6 neighbours at a < rc < √2 a
    from biojax.data.io import Structure
    one = Structure(numbers=np.array([29]), positions=np.zeros((1, 3)), cell=np.eye(3) * 2.5,
                    pbc=np.ones(3, bool))
    graph = find_edges(one, 3.0)
    assert len(graph.senders) == 6
    np.testing.assert_allclose(np.sort(np.linalg.norm(graph.shifts, axis=1)), 2.5)
