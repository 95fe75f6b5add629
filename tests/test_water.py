"""Periodic training batches and the shipped liquid-water data (examples/data/water).

- a padded batch of periodic (triclinic) frames gives, for every registered model, the
  energies, forces, stresses and loss sums of its frames taken one at a time;
- a cell narrower than twice the cutoff is handled by the training graphs (every periodic
  image: the energy of a 2×2×2 supercell is 8 × the cell's); MD refuses it (tested in
  test_md.py and test_bad_input.py);
- the shipped water frames load with their cell, pbc and labels, and the reference
  engine's density is SPC/Fw's published one.
"""

from __future__ import annotations

import json
import os

import jax
import numpy as np
import pytest
from ase import Atoms

from biojax.core.registry import models
from biojax.data.graphs import GraphDataset, batch_graphs
from biojax.data.io import Structure, read_dataset, structure_from_atoms
from biojax.nn.models import init_potential, model_keys
from biojax.nn.potential import graph_energy_forces_stress
from biojax.train.losses import combine, energy, forces, stress

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WATER = os.path.join(ROOT, "examples", "data", "water")
CUTOFF = 3.0
# tiny settings for the models we know; any other registered model gets its defaults,
# shrunk wherever it takes these keys
TINY = {"features": 8, "n_interactions": 1, "n_basis": 6, "radial_features": 8,
        "l_max": 1, "hidden_l": 1, "correlation": 2}


def _model_names():
    """Every registered model but the classical pair potentials (they need parameters
    and have no message passing to get wrong)."""
    from biojax.core.registry import load
    return sorted(n for n in load(models).names()
                  if getattr(models.get(n), "__module__", "") != "biojax.nn.classical")


def _tiny(name):
    keys = model_keys(models.get(name))
    arch = {"name": name}
    arch.update({k: v for k, v in TINY.items() if keys is None or k in keys})
    if keys is None:
        arch = {"name": name}
    return arch


def _periodic_frames(seed=0):
    """Three small O/H structures in triclinic cells (one narrower than 2 × cutoff), with
    random labels so the loss has something to compare."""
    rng = np.random.default_rng(seed)
    frames = []
    for n, length in ((5, 5.0), (7, 6.5), (9, 7.5)):
        cell = length * np.eye(3) + rng.uniform(-0.8, 0.8, (3, 3)) * (1 - np.eye(3))
        frac = rng.uniform(0, 1, (n, 3))
        atoms = Atoms(numbers=rng.choice([1, 8], n), scaled_positions=frac, cell=cell,
                      pbc=True)
        s = structure_from_atoms(atoms)
        frames.append(Structure(s.numbers, s.positions, s.cell, s.pbc,
                                energy=float(rng.normal()), forces=rng.normal(size=(n, 3)),
                                stress=np.diag(rng.normal(size=3)) * 1e-2))
    return frames


def _batch(ds, idx, like=None):
    """A padded batch of frames ``idx``; ``like``: pad to that batch's shapes (one compile)."""
    kw = {} if like is None else {"min_atoms": like.positions.shape[0],
                                  "min_edges": like.senders.shape[0]}
    return batch_graphs([ds.structures[i] for i in idx], [ds.graphs[i] for i in idx],
                        [ds.species[i] for i in idx], [ds.reference[i] for i in idx],
                        n_graphs=4, **kw)


@pytest.mark.parametrize("name", _model_names())
def test_periodic_batch_equals_its_frames(name):
    frames = _periodic_frames()
    pot = init_potential(_tiny(name), (1, 8), CUTOFF, (0.0, 0.0), key=jax.random.PRNGKey(1))
    ds = GraphDataset(frames, CUTOFF, pot.species_of, pot.reference_energy)
    loss = combine(energy(1.0), forces(10.0), stress(100.0))

    @jax.jit
    def fn(params, batch):
        pred = graph_energy_forces_stress(pot, params, batch, True)
        return pred, loss.parts({**pred, "positions": batch.positions}, batch)

    batch = _batch(ds, [0, 1, 2])
    pred, parts = jax.device_get(fn(pot.params, batch))
    a = 0
    total = {k: np.zeros(2) for k in parts}
    for g in range(3):
        one, one_parts = jax.device_get(fn(pot.params, _batch(ds, [g], like=batch)))
        n = frames[g].n_atoms
        np.testing.assert_allclose(pred["energy"][g], one["energy"][0], rtol=2e-5, atol=2e-5)
        np.testing.assert_allclose(pred["forces"][a:a + n], one["forces"][:n], atol=2e-5)
        np.testing.assert_allclose(pred["stress"][g], one["stress"][0], atol=2e-6)
        a += n
        for k in parts:
            total[k] += np.asarray(one_parts[k])
    assert np.isfinite(pred["energy"][:3]).all()
    if any(np.any(np.asarray(x) != 0) for x in jax.tree_util.tree_leaves(pot.params)):
        assert np.ptp(pred["forces"][:a]) > 0  # not a trivially constant model
    for k in parts:  # squared-error sums and counts add up over frames
        np.testing.assert_allclose(np.asarray(parts[k]), total[k], rtol=2e-5, atol=1e-9)
    assert np.all(pred["forces"][~batch.node_mask] == 0)  # padding rows carry nothing


def test_cell_narrower_than_twice_the_cutoff():
    """Training graphs see every periodic image of a cell narrower than 2 × cutoff: the
    energy of a 2×2×2 supercell is 8 × the cell's. (MD, which uses the minimum image,
    refuses such a cell: tests/test_md.py::test_bad_inputs_raise_clear_errors.)"""
    from ase.build import make_supercell

    frame = _periodic_frames(seed=3)[0]  # a 5 Å cell, cutoff 3 Å
    big = structure_from_atoms(make_supercell(frame.to_atoms(), 2 * np.eye(3)))
    small = Structure(frame.numbers, frame.positions, frame.cell, frame.pbc)
    big = Structure(big.numbers, big.positions, big.cell, big.pbc)
    pot = init_potential(_tiny("painn"), (1, 8), CUTOFF, (0.0, 0.0))
    ds = GraphDataset([big, small], CUTOFF, pot.species_of, pot.reference_energy)
    fn = jax.jit(lambda p, b: graph_energy_forces_stress(pot, p, b)["energy"])
    b_big = _batch(ds, [0])
    e_big = float(fn(pot.params, b_big)[0])
    e_small = float(fn(pot.params, _batch(ds, [1], like=b_big))[0])
    assert len(ds.graphs[1].senders) > 0 and abs(e_small) > 1e-4
    np.testing.assert_allclose(e_big, 8 * e_small, rtol=1e-5)


def test_shipped_water_data():
    frames = read_dataset(os.path.join(WATER, "water64.extxyz.xz"), index=":3")
    big = read_dataset(os.path.join(WATER, "water216.extxyz.xz"), index="0")
    with open(os.path.join(WATER, "reference.json")) as f:
        ref = json.load(f)
    for s, n in [(x, 192) for x in frames] + [(big[0], 648)]:
        assert s.n_atoms == n and s.pbc.all()
        assert list(s.numbers[:3]) == [8, 1, 1]
        L = np.diag(s.cell)
        assert np.allclose(s.cell, np.diag(L)) and np.allclose(L, L[0])  # cubic, NPT-scaled
        rho = n / 3 * 18.01528 / 6.02214076e23 / (s.volume * 1e-24)
        assert 0.95 < rho < 1.07, rho  # liquid water, g/cm³
        assert s.energy is not None and s.stress is not None
        assert s.forces.shape == (n, 3) and 0.5 < np.abs(s.forces).max() < 20
        # O–H bonds near SPC/Fw's 1.012 Å (minimum image)
        d = s.positions[1::3] - s.positions[0::3]
        d -= L * np.round(d / L)
        assert np.all(np.abs(np.linalg.norm(d, axis=1) - 1.012) < 0.15)
    # the reference engine's density against SPC/Fw's published 1.012 g/cm³ (Wu, Tepper &
    # Voth 2006, 298 K, 1 bar); our shorter cutoff and 300 K allow a little more
    for key in ("w64_300K_npt", "w216_300K_npt"):
        assert abs(ref["runs"][key]["density_g_cm3"] - 1.012) < 0.03, ref["runs"][key]
    r, g = np.array(ref["rdf_OO"]["r_A"]), np.array(ref["rdf_OO"]["g_216"])
    assert 2.6 < r[np.argmax(g)] < 3.0 and 2.5 < g.max() < 4.0  # the first O–O peak


def test_periodic_edges_equal_ase():
    """The all-pairs periodic search finds ASE's pairs and shifts: triclinic cells, atoms
    outside the cell, cells narrower than the cutoff (several images per pair)."""
    from ase.neighborlist import primitive_neighbor_list

    from biojax.data.graphs import periodic_edges

    rng = np.random.default_rng(0)
    for n, length, cutoff in ((5, 5.0, 3.0), (7, 3.0, 4.0), (40, 9.0, 5.0)):
        cell = length * np.eye(3) + rng.uniform(-0.3, 0.3, (3, 3)) * length * (1 - np.eye(3))
        pos = rng.uniform(-1, 2, (n, 3)) @ cell
        e = periodic_edges(pos, cell, cutoff)
        i, j, S = primitive_neighbor_list("ijS", [True] * 3, cell, pos, cutoff,
                                          self_interaction=False)
        ours = set(zip(e.senders, e.receivers, map(tuple, np.round(e.shifts, 6))))
        theirs = set(zip(i, j, map(tuple, np.round(S @ cell, 6))))
        assert ours == theirs and len(ours) == len(e.senders) > n
        d = pos[e.receivers] - pos[e.senders] + e.shifts
        assert np.all(np.linalg.norm(d, axis=1) < cutoff)
