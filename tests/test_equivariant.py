"""The MACE-class model (biojax.nn.equivariant) against physics, and the training recipe's
loss-weight switch (biojax.train.schedule / losses / loop).

Physics, in float64 with a tiny model (4 channels, l_max = 2, hidden l = 1, correlation 3):
energy invariant under rotation, translation and permutation of like atoms; forces
equivariant and equal to −∇E by central finite differences; in free space (also through
jax-md pair lists, whose reverse edges use Y_l(−r̂) = (−1)^l Y_l(r̂)) and in a periodic
triclinic cell; a padded training batch of periodic and free frames gives each frame's
energy and forces as alone.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ase import Atoms
from ase.build import molecule

from biojax.calculator import BiojaxCalculator
from biojax.core.errors import ConfigError
from biojax.nn.models import init_potential

ARCH = {"name": "mace", "features": 4, "n_interactions": 2, "l_max": 2, "hidden_l": 1,
        "correlation": 3, "n_basis": 6, "radial_features": 8, "avg_neighbors": 4.0}


@pytest.fixture(autouse=True, scope="module")
def float64():
    jax.config.update("jax_enable_x64", True)
    yield
    jax.config.update("jax_enable_x64", False)


@functools.lru_cache(maxsize=None)
def mace(cutoff=3.0):
    return init_potential(ARCH, (1, 6, 8), cutoff, reference_energies=[-13.6, -1025.0, -2035.0],
                          key=jax.random.PRNGKey(3), dtype=jnp.float64)


def rotation(seed=0):
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(3, 3)))
    return q * np.sign(np.linalg.det(q))


def ethanol():
    atoms = molecule("CH3CH2OH")
    atoms.rattle(0.05, seed=3)
    return atoms


def triclinic():
    """Nine atoms (ethanol's elements) in a small triclinic cell: with a 3 Å cutoff
    every atom sees periodic images of itself and of its neighbours."""
    rng = np.random.default_rng(5)
    cell = np.array([[4.2, 0.0, 0.0], [1.1, 4.0, 0.0], [-0.7, 0.9, 4.4]])
    frac = rng.uniform(size=(9, 3))
    return Atoms("C2OH6", scaled_positions=frac, cell=cell, pbc=True)


@functools.lru_cache(maxsize=None)
def calculator(cutoff):
    """One calculator per potential: it compiles once per padded shape."""
    return BiojaxCalculator(mace(cutoff))


def energy_forces(atoms, potential):
    atoms = atoms.copy()
    atoms.calc = calculator(potential.cutoff)
    return atoms.get_potential_energy(), atoms.get_forces()


def check_symmetries_and_gradient(atoms, potential, probes):
    e0, f0 = energy_forces(atoms, potential)
    assert np.abs(f0).max() > 1e-3  # a nontrivial check
    rot = rotation()
    moved = atoms.copy()
    if atoms.pbc.any():
        moved.set_cell(atoms.get_cell().array @ rot.T, scale_atoms=False)
    moved.set_positions(atoms.get_positions() @ rot.T + np.array([1.5, -2.0, 0.7]))
    e1, f1 = energy_forces(moved, potential)
    np.testing.assert_allclose(e1, e0, rtol=0, atol=1e-9)
    np.testing.assert_allclose(f1, f0 @ rot.T, atol=1e-9)
    perm = np.arange(len(atoms))
    hydrogens = np.where(atoms.numbers == 1)[0]
    perm[hydrogens] = hydrogens[::-1]
    e2, f2 = energy_forces(atoms[perm], potential)
    np.testing.assert_allclose(e2, e0, rtol=0, atol=1e-9)
    np.testing.assert_allclose(f2, f0[perm], atol=1e-9)
    h = 1e-4
    for i, k in probes:
        energies = []
        for sign in (1, -1):
            shifted = atoms.copy()
            p = shifted.get_positions()
            p[i, k] += sign * h
            shifted.set_positions(p)
            energies.append(energy_forces(shifted, potential)[0])
        np.testing.assert_allclose(f0[i, k], -(energies[0] - energies[1]) / (2 * h),
                                   rtol=1e-5, atol=1e-7)


def test_mace_free_space_invariances_and_forces():
    """Rotation/translation/permutation, −∇E, and jax-md pairs (OrderedSparse, each pair
    once) = directed edges (the calculator)."""
    from jax_md import partition, space

    atoms, potential = ethanol(), mace()
    check_symmetries_and_gradient(atoms, potential, [(0, 0), (3, 1), (8, 2)])
    # inversion: every feature is a true tensor (paths with l1 + l2 + l3 even), so the
    # energy is also invariant under r -> -r
    mirrored = atoms.copy()
    mirrored.set_positions(-atoms.get_positions())
    np.testing.assert_allclose(energy_forces(mirrored, potential)[0],
                               energy_forces(atoms, potential)[0], atol=1e-9)
    displacement, _ = space.free()
    positions = jnp.asarray(atoms.get_positions())
    neighbor = partition.neighbor_list(displacement, 20.0, potential.cutoff,
                                       format=partition.OrderedSparse,
                                       disable_cell_list=True).allocate(positions)
    value, grad = jax.jit(jax.value_and_grad(potential.energy_fn(displacement, atoms.numbers)))(
        positions, neighbor)
    e, f = energy_forces(atoms, potential)  # directed edges
    np.testing.assert_allclose(value + potential.reference_energy(atoms.numbers), e, atol=1e-8)
    np.testing.assert_allclose(-grad, f, atol=1e-8)


def test_mace_periodic_triclinic_invariances_and_forces():
    check_symmetries_and_gradient(triclinic(), mace(), [(0, 0), (4, 2)])


def test_mace_batch_equals_its_frames_alone():
    """A padded batch of two periodic frames and a molecule gives each frame's energy and
    forces as evaluated alone (no leakage through padding or between graphs)."""
    from biojax.data.graphs import GraphDataset
    from biojax.data.io import structure_from_atoms
    from biojax.nn.potential import graph_energy_forces_stress

    potential = mace()
    other = triclinic()
    other.positions[:3] += 0.1
    frames = [triclinic(), ethanol(), other]
    dataset = GraphDataset([structure_from_atoms(a) for a in frames], potential.cutoff,
                           potential.species_of, potential.reference_energy, np.float64)
    together = jax.jit(lambda b: graph_energy_forces_stress(potential, potential.params, b))(
        next(dataset.batches(3)))
    start = 0
    for i, atoms in enumerate(frames):
        e, f = energy_forces(atoms, potential)
        n = len(atoms)
        np.testing.assert_allclose(together["energy"][i] + potential.reference_energy(
            atoms.numbers), e, atol=1e-8)
        np.testing.assert_allclose(together["forces"][start:start + n], f, atol=1e-8)
        start += n
    assert abs(float(together["energy"][0] - together["energy"][2])) > 1e-6


def test_mace_bad_hyperparameters_are_config_errors():
    with pytest.raises(ConfigError, match="correlation must be in 1..3"):
        init_potential({**ARCH, "correlation": 5}, (1, 6), 3.0)
    with pytest.raises(ConfigError, match="hidden_l .2. must be ≤ l_max .1."):
        init_potential({**ARCH, "l_max": 1, "hidden_l": 2}, (1, 6), 3.0)


# ---------------------------------------------------------------- the loss-weight switch
def test_switch_due_follows_epochs_or_the_time_budget():
    from biojax.train import schedule
    from biojax.train.config import TrainingConfig

    cfg = TrainingConfig(epochs=10, switch_at=0.8,
                         switch_weights={"energy": 1000.0, "forces": 100.0})
    state = schedule.new_state(cfg)
    assert [e for e in range(1, 11) if schedule.switch_due(state, cfg, e)] == [9, 10]
    timed = TrainingConfig(epochs=10**6, max_minutes=10, schedule="time", switch_at=0.5,
                           switch_weights={"energy": 10.0})
    state = schedule.new_state(timed)
    assert not schedule.switch_due(state, timed, 10**5, elapsed_fraction=0.49)
    assert schedule.switch_due(state, timed, 2, elapsed_fraction=0.5)
    off = TrainingConfig(epochs=10)
    assert not schedule.switch_due(schedule.new_state(off), off, 10)
    loss = cfg.switched_loss()
    assert {t.name: t.weight for t in loss.terms} == {"energy": 1000.0, "forces": 100.0,
                                                       "stress": 0.0}


def test_switch_settings_are_checked():
    from biojax.train.config import TrainingConfig

    with pytest.raises(ValueError, match="switch_at must be in"):
        TrainingConfig(switch_at=1.5, switch_weights={"energy": 1.0})
    with pytest.raises(ValueError, match="needs both switch_at"):
        TrainingConfig(switch_weights={"energy": 1.0})
    with pytest.raises(ConfigError, match="unknown loss term.*'enrgy'.*energy, forces"):
        TrainingConfig(switch_at=0.5, switch_weights={"enrgy": 1.0}).make_loss()


def test_switched_run_trains_and_resumes_with_the_switched_weights(
        tmp_path, ethanol_train, ethanol_isolated):
    """3 epochs with switch_at = 0.5 switch before epoch 3; a resume to 4 epochs keeps the
    switched weights without switching again. Each epoch's logged validation loss equals
    Σ weight · MSE recomputed from its logged RMSEs with the weights of its stage."""
    import json

    from biojax.train.config import DataConfig, TrainConfig, TrainingConfig
    from biojax.train.loop import train_and_evaluate

    data = DataConfig(train_file=ethanol_train, isolated_atoms=ethanol_isolated,
                      n_train=8, n_valid=4, seed=0)

    def config(epochs):
        return TrainConfig(data=data, model={"name": "painn", "cutoff": 4.0, "features": 8,
                                             "n_interactions": 1, "n_basis": 6},
                           training=TrainingConfig(
                               epochs=epochs, batch_size=4, energy_weight=1.0,
                               forces_weight=10.0, switch_at=0.5,
                               switch_weights={"energy": 1000.0, "forces": 1.0}))

    log = []
    run = str(tmp_path / "run")
    train_and_evaluate(config(3), run, log=log.append)
    train_and_evaluate(config(4), run, resume=True, log=log.append)
    switches = [m for m in log if "loss weights switched" in m]
    assert len(switches) == 1 and switches[0].startswith("epoch 3:"), switches
    assert "energy 1000, forces 1," in switches[0]
    with open(tmp_path / "run" / "metrics.jsonl") as f:
        records = [json.loads(line) for line in f]
    assert [r["epoch"] for r in records] == [0, 1, 2, 3, 4]
    for r in records:
        w_e, w_f = (1000.0, 1.0) if r["epoch"] >= 3 else (1.0, 10.0)
        expected = (w_e * (r["valid_energy_per_atom_rmse"] / 1000) ** 2
                    + w_f * (r["valid_forces_rmse"] / 1000) ** 2)
        assert r["valid_loss"] == pytest.approx(expected, rel=2e-3), r
