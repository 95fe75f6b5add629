"""Tests of biojax.md against physics (energy conservation, equipartition, the Johnson–
Zollweg–Gubbins LJ equation of state), against a peer (ASE's VelocityVerlet with ASE's own
Lennard-Jones) and against itself (overflow rerun, replicas vs separate runs, resume)."""

from __future__ import annotations

import dataclasses
import os

import ase
import ase.build
import ase.io
import ase.neighborlist
import ase.units as U
import jax
import numpy as np
import pytest
from ase.lattice.cubic import FaceCenteredCubic
from jax_md import partition
from scipy import integrate

from biojax.core.errors import BiojaxError, ConfigError, ModelError, SimulationError
from biojax.md.config import default_config
from biojax.md.simulation import Simulation
from biojax.nn.classical import lennard_jones

SIGMA, EPS = 3.405, 0.0103  # argon, Å and eV
ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
EXAMPLES = os.path.join(ROOT, "examples", "md")


def argon(size=3, a=5.8) -> ase.Atoms:
    """fcc argon, 4·size³ atoms; a = 5.8 Å is a dense liquid at ~120 K."""
    return FaceCenteredCubic("Ar", size=(size,) * 3, latticeconstant=a)


def lj(cutoff=8.5, elements=(18,), r_onset=None):
    return lennard_jones(list(elements), SIGMA, EPS, cutoff=cutoff, r_onset=r_onset)


def read_csv(path) -> dict:
    data = np.genfromtxt(path, delimiter=",", names=True)
    return {k: data[k] for k in data.dtype.names}


def fluctuation_ratio(obs):
    """std of the total energy about its linear trend / std of the kinetic energy."""
    t = obs["time_fs"] / 1000.0
    trend = np.polyval(np.polyfit(t, obs["total_energy"], 1), t)
    return np.std(obs["total_energy"] - trend) / np.std(obs["kinetic_energy"])


def drift_per_ps_per_atom(obs, n_atoms, key="total_energy"):
    slope = np.polyfit(obs["time_fs"] / 1000.0, obs[key], 1)[0]
    return abs(slope) / n_atoms


# ------------------------------------------------------------------ energy conservation
@pytest.mark.parametrize("size", [3, 7])
def test_nve_lennard_jones_conserves_energy(tmp_path, size):
    """108 and 1372 LJ atoms (every atom a candidate / biojax's cell list), 2 fs, 2 ps:
    |linear drift| < 1e-6 eV/ps/atom and the total energy's fluctuation is < 0.1% of the
    potential energy's (velocity Verlet, float32; measured here: 7e-10 and 4e-9
    eV/ps/atom, 3e-5 for both)."""
    cfg = default_config(ensemble="nve", timestep_fs=2.0, temperature_K=120.0, steps=1000,
                         chunk_steps=500, observe_every=10, frame_every=500)
    atoms = argon(size)
    Simulation(atoms, lj(), cfg).run(str(tmp_path))
    obs = read_csv(tmp_path / "observables.csv")
    assert len(obs["step"]) == 101
    assert drift_per_ps_per_atom(obs, len(atoms)) < 1e-6
    assert np.std(obs["total_energy"]) < 1e-3 * np.std(obs["potential_energy"])
    np.testing.assert_allclose(obs["conserved"], obs["total_energy"], rtol=1e-6)


def test_nve_learned_potential_conserves_energy(tmp_path):
    """Alanine dipeptide on the trained quick-start PaiNN (examples/models/ala2_painn,
    GFN2-xTB data), 0.25 fs, 400 steps: |drift| < 1e-5 eV/ps/atom and the total energy
    fluctuates < 1% as much as the kinetic energy."""
    from biojax.nn.io import load_potential

    atoms = ase.io.read(os.path.join(EXAMPLES, "alanine_dipeptide.extxyz"))
    pot = load_potential(os.path.join(ROOT, "examples", "models", "ala2_painn"))
    cfg = default_config(ensemble="nve", timestep_fs=0.25, temperature_K=300.0, steps=400,
                         chunk_steps=200, observe_every=5, frame_every=100)
    Simulation(atoms, pot, cfg).run(str(tmp_path))
    obs = read_csv(tmp_path / "observables.csv")
    assert drift_per_ps_per_atom(obs, len(atoms)) < 1e-5
    assert np.std(obs["total_energy"]) < 0.01 * np.std(obs["kinetic_energy"])


def test_hydrogen_mass_repartitioning_keeps_mass_and_allows_a_longer_step(tmp_path):
    """HMR to 4 amu on alanine dipeptide: each H weighs 4 amu, its heavy atom gives up the
    difference (methyl C 3.03 amu, amide N 11.02 amu), the total mass is unchanged. At
    1 fs on the trained PaiNN the total energy fluctuates clearly less than with element
    masses at the same step (4 replicas, 1 ps NVE; over 8 replicas this machine measured
    0.022 vs 0.042 of the kinetic energy's fluctuation, and 0.009 with element masses
    at 0.5 fs)."""
    from biojax.md.system import repartitioned_masses
    from biojax.nn.io import load_potential

    atoms = ase.io.read(os.path.join(EXAMPLES, "alanine_dipeptide.extxyz"))
    masses = repartitioned_masses(atoms, 4.0)
    assert masses.sum() == pytest.approx(atoms.get_masses().sum(), rel=1e-12)
    np.testing.assert_allclose(masses[atoms.numbers == 1], 4.0)
    i, j = ase.neighborlist.neighbor_list("ij", atoms, 1.2)
    bonded = j[(atoms.numbers[i] == 1) & (atoms.numbers[j] > 1)]
    for heavy, n_h in zip(*np.unique(bonded, return_counts=True)):
        lost = atoms.get_masses()[heavy] - masses[heavy]
        assert lost == pytest.approx(n_h * (4.0 - atoms.get_masses()[0]), rel=1e-6)
    assert min(masses) == pytest.approx(12.011 - 3 * (4.0 - 1.008), abs=1e-3)

    pot = load_potential(os.path.join(ROOT, "examples", "models", "ala2_painn"))
    ratio = {}
    for hydrogen_mass in (0.0, 4.0):
        cfg = default_config(ensemble="nve", timestep_fs=1.0, temperature_K=300.0,
                             steps=1000, chunk_steps=1000, observe_every=5,
                             frame_every=1000, hydrogen_mass=hydrogen_mass, replicas=4)
        out = tmp_path / str(hydrogen_mass)
        Simulation(atoms, pot, cfg).run(str(out))
        ratio[hydrogen_mass] = np.mean([fluctuation_ratio(read_csv(
            out / f"replica_{r:03d}" / "observables.csv")) for r in range(4)])
    assert ratio[4.0] < 0.75 * ratio[0.0], ratio


def test_nose_hoover_conserved_quantity_and_temperature(tmp_path):
    """NVT Nosé–Hoover chain: the extended-system invariant drifts < 5e-5 eV/ps/atom while the
    physical total energy changes; mean T within 10% of target after 2 ps (108 atoms)."""
    cfg = default_config(ensemble="nvt-nose-hoover", timestep_fs=4.0, temperature_K=120.0,
                         steps=1000, chunk_steps=500, observe_every=10, frame_every=500,
                         thermostat_tau_fs=200.0)
    Simulation(argon(), lj(), cfg).run(str(tmp_path))
    obs = read_csv(tmp_path / "observables.csv")
    assert drift_per_ps_per_atom(obs, 108, "conserved") < 5e-5
    assert np.ptp(obs["total_energy"]) > 10 * np.ptp(obs["conserved"])
    assert abs(obs["temperature"][50:].mean() - 120.0) < 12.0


# ------------------------------------------------------------------ Langevin statistics
def _block_sem(x, n_blocks=10):
    blocks = np.array_split(np.asarray(x), n_blocks)
    means = np.array([b.mean() for b in blocks])
    return means.std(ddof=1) / np.sqrt(n_blocks)


def test_langevin_temperature_and_equipartition(tmp_path):
    """Binary LJ (Ar and Kr: same σ, ε, masses 40 vs 84 amu), BAOAB Langevin at 120 K,
    γ = 5/ps, 4 fs, 10 ps. The mean temperature equals the target within 3 block standard
    errors, and the kinetic energy per degree of freedom of each species (and each Cartesian
    direction) equals k_B T/2 within 3 standard errors and 5%."""
    atoms = argon()
    atoms.numbers[::2] = 36
    pot = lennard_jones([18, 36], [SIGMA, SIGMA], [EPS, EPS], cutoff=8.5)
    cfg = default_config(ensemble="nvt-langevin", timestep_fs=4.0, temperature_K=120.0,
                         friction_per_ps=5.0, steps=2500, chunk_steps=500, observe_every=10,
                         frame_every=50, write_velocities=True, seed=3)
    Simulation(atoms, pot, cfg).run(str(tmp_path))
    obs = read_csv(tmp_path / "observables.csv")
    T = obs["temperature"][25:]  # drop the first 1 ps
    sem = _block_sem(T)
    assert abs(T.mean() - 120.0) < 3 * sem + 1e-9, (T.mean(), sem)
    frames = ase.io.read(tmp_path / "trajectory.extxyz", index="5:")
    half_kT = 0.5 * U.kB * 120.0
    for z in (18, 36):
        per_frame = []
        for a in frames:
            sel = a.numbers == z
            v = a.get_velocities()[sel]
            per_frame.append(0.5 * a.get_masses()[sel][:, None] * v * v)  # (n, 3)
        ke = np.array([p.mean(axis=0) for p in per_frame])  # (frames, 3)
        for direction in range(3):
            mean, err = ke[:, direction].mean(), _block_sem(ke[:, direction], 5)
            assert abs(mean - half_kT) < 3 * err + 1e-12, (z, direction, mean, half_kT, err)
            assert abs(mean / half_kT - 1) < 0.05


# ------------------------------------------------------------------ NPT vs equation of state
_JZG_X = [0.8623085097507421, 2.976218765822098, -8.402230115796038, 0.1054136629203555,
          -0.8564583828174598, 1.582759470107601, 0.7639421948305453, 1.753173414312048,
          2.798291772190376e3, -4.8394220260857657e-2, 0.9963265197721935,
          -3.698000291272493e1, 2.084012299434647e1, 8.305402124717285e1,
          -9.574799715203068e2, -1.477746229234994e2, 6.398607852471505e1,
          1.603993673294834e1, 6.805916615864377e1, -2.791293578795945e3,
          -6.245128304568454, -8.116836104958410e3, 1.488735559561229e1,
          -1.059346754655084e4, -1.131607632802822e2, -8.867771540418822e3,
          -3.986982844450543e1, -4.689270299917261e3, 2.593535277438717e2,
          -2.694523589434903e3, -7.218487631550215e2, 1.721802063863269e2]


def jzg_pressure(rho, T):
    """Reduced pressure of the full LJ fluid, Johnson, Zollweg & Gubbins, Mol. Phys. 78,
    591 (1993), modified Benedict–Webb–Rubin form with their Table 10 parameters."""
    x = [None] + _JZG_X
    a = [x[1] * T + x[2] * np.sqrt(T) + x[3] + x[4] / T + x[5] / T ** 2,
         x[6] * T + x[7] + x[8] / T + x[9] / T ** 2, x[10] * T + x[11] + x[12] / T, x[13],
         x[14] / T + x[15] / T ** 2, x[16] / T, x[17] / T + x[18] / T ** 2, x[19] / T ** 2]
    b = [x[20] / T ** 2 + x[21] / T ** 3, x[22] / T ** 2 + x[23] / T ** 4,
         x[24] / T ** 2 + x[25] / T ** 3, x[26] / T ** 2 + x[27] / T ** 4,
         x[28] / T ** 2 + x[29] / T ** 3, x[30] / T ** 2 + x[31] / T ** 3 + x[32] / T ** 4]
    F = np.exp(-3.0 * rho ** 2)
    return (rho * T + sum(a[i] * rho ** (i + 2) for i in range(8))
            + F * sum(b[i] * rho ** (2 * i + 3) for i in range(6)))


def tail_pressure(rho, rc, ro):
    """P_full − P_switched (reduced) for LJ switched off smoothly between ro and rc (σ),
    assuming g(r) = 1 beyond ro (the standard long-range correction)."""
    def switch(r):
        r2, rc2, ro2 = r * r, rc * rc, ro * ro
        return np.where(r2 < ro2, 1.0, np.where(r2 < rc2, (rc2 - r2) ** 2 * (
            rc2 + 2 * r2 - 3 * ro2) / (rc2 - ro2) ** 3, 0.0))

    u = lambda r: 4 * (r ** -12 - r ** -6)  # noqa: E731
    h = 1e-6
    du = lambda r: (u(r + h) * (1 - switch(r + h)) - u(r - h) * (1 - switch(r - h))) / (2 * h)  # noqa: E731
    val = integrate.quad(lambda r: r ** 3 * du(r), ro, rc, limit=200)[0]
    val += integrate.quad(lambda r: r ** 3 * -24 * (2 * r ** -13 - r ** -7), rc, np.inf)[0]
    return -(2 * np.pi / 3) * rho ** 2 * val


def test_npt_lennard_jones_density_matches_jzg_equation_of_state(tmp_path):
    """LJ fluid at T* = 2.0 and the JZG pressure of ρ* = 0.70 (P* = 3.05, plus the tail
    correction for our 3σ switched cutoff): 256 atoms started 6% too dilute (ρ* = 0.66)
    relax under the MTK barostat; the mean density over the last 8 ps is within 2% of 0.70."""
    T_red, rho_ref, rc, ro = 2.0, 0.70, 3.0, 2.7
    p_sim = jzg_pressure(rho_ref, T_red) - tail_pressure(rho_ref, rc, ro)
    atoms = argon(4, (4 / 0.66) ** (1 / 3) * SIGMA)
    cfg = default_config(ensemble="npt", timestep_fs=8.0, temperature_K=T_red * EPS / U.kB,
                         pressure_bar=p_sim * EPS / SIGMA ** 3 / U.bar, steps=2000,
                         chunk_steps=500, observe_every=10, frame_every=500,
                         thermostat_tau_fs=200.0, barostat_tau_fs=1000.0)
    Simulation(atoms, lj(rc * SIGMA, r_onset=ro * SIGMA), cfg).run(str(tmp_path))
    obs = read_csv(tmp_path / "observables.csv")
    rho = 256 * SIGMA ** 3 / obs["volume"]
    assert rho[0] == pytest.approx(0.66, rel=1e-3)
    assert abs(rho[100:].mean() / rho_ref - 1) < 0.02, rho[100:].mean()


# ------------------------------------------------------------------ peer: ASE
def test_same_trajectory_as_ase_velocity_verlet(tmp_path):
    """Same start (positions, momenta), same LJ (ASE LennardJones smooth=True): after 100
    steps of 2 fs the positions agree to 2e-3 Å and the energies to 1e-4 eV/atom."""
    from ase.calculators.lj import LennardJones
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary
    from ase.md.verlet import VelocityVerlet

    atoms = argon()
    MaxwellBoltzmannDistribution(atoms, temperature_K=120.0, rng=np.random.default_rng(0))
    Stationary(atoms)
    cfg = default_config(ensemble="nve", timestep_fs=2.0, temperature_K=120.0, steps=100,
                         chunk_steps=100, observe_every=10, frame_every=50,
                         velocities="structure")
    Simulation(atoms.copy(), lj(), cfg).run(str(tmp_path))
    ours = ase.io.read(tmp_path / "trajectory.extxyz", index=":")
    obs = read_csv(tmp_path / "observables.csv")

    ref = atoms.copy()
    ref.calc = LennardJones(sigma=SIGMA, epsilon=EPS, rc=8.5, ro=0.8 * 8.5, smooth=True)
    e0 = ref.get_potential_energy()
    assert obs["potential_energy"][0] == pytest.approx(e0, abs=1e-4 * len(atoms))
    VelocityVerlet(ref, timestep=2.0 * U.fs).run(100)
    d = ours[-1].positions - ref.positions
    cell = np.diag(ref.cell)
    d -= cell * np.round(d / cell)
    assert np.abs(d).max() < 2e-3
    assert obs["potential_energy"][-1] == pytest.approx(ref.get_potential_energy(),
                                                        abs=1e-4 * len(atoms))
    assert obs["kinetic_energy"][-1] == pytest.approx(ref.get_kinetic_energy(),
                                                      abs=1e-4 * len(atoms))


# ------------------------------------------------------------------ neighbor lists
def _cell_lists(atoms, cutoff, skin=0.5, multiplier=1.25):
    from biojax.md.cells import dense_cell_neighbor_list
    from biojax.md.system import make_space, to_internal

    sys_space = make_space(atoms, npt=False)
    fns = dense_cell_neighbor_list(sys_space.displacement_fn, sys_space.box, cutoff, skin,
                                   multiplier)
    return fns, to_internal(atoms.positions, sys_space)


def _same_pairs_as_ase(nbrs, atoms, radius):
    """Every row of the Dense list holds exactly ASE's neighbours within ``radius``."""
    from ase.neighborlist import neighbor_list

    i, j = neighbor_list("ij", atoms, radius)
    idx, n = np.asarray(nbrs.idx), len(atoms)
    ours = sorted((a, int(b)) for a in range(n) for b in idx[a] if b < n)
    assert ours == sorted(zip(i.tolist(), j.tolist()))


@pytest.mark.parametrize("case", ["fcc-liquid", "gas-in-a-brick", "small-box"])
def test_cell_list_neighbours_equal_ase_neighbor_list(case):
    """biojax's cell-list builder finds exactly the pairs of ASE's neighbor list: a
    rattled fcc argon box (4 cells a side), a random gas in a 31 × 40 × 52 Å brick (3, 4
    and 5 cells, atoms on the faces at 0 and just below the side) and a box too small
    for 3 cells (every atom a candidate)."""
    rng = np.random.default_rng(1)
    if case == "fcc-liquid":
        atoms = argon(size=7)
        atoms.rattle(0.4, seed=2)
        atoms.wrap()
    elif case == "gas-in-a-brick":
        side = np.array([31.0, 40.0, 52.0])
        pos = rng.uniform(0, 1, (700, 3)) * side
        pos[:3] = [[0, 0, 0], side - 1e-4, [0, side[1] - 1e-4, 0]]
        atoms = ase.Atoms("Ar700", positions=pos, cell=side, pbc=True)
    else:
        atoms = argon(size=3)
        atoms.rattle(0.4, seed=2)
        atoms.wrap()
    cutoff = 8.0 if case == "small-box" else 8.5  # cutoff + skin < half the 17.4 Å box
    fns, positions = _cell_lists(atoms, cutoff=cutoff)
    nbrs = fns.allocate(positions)
    assert (nbrs.cell_list_capacity is None) == (case == "small-box")
    assert not nbrs.did_buffer_overflow
    _same_pairs_as_ase(nbrs, atoms, cutoff + 0.5)


def test_cell_list_rebuilds_after_half_a_skin_and_flags_overflow():
    """No rebuild while every atom moved less than skin/2; a rebuild (equal to ASE's list)
    once one moved more; both buffers flag an overflow when atoms crowd together, and a
    reallocation from the crowded positions is correct again."""
    atoms = argon(size=7)
    atoms.rattle(0.2, seed=3)
    atoms.wrap()
    fns, positions = _cell_lists(atoms, cutoff=8.5)
    nbrs = fns.allocate(positions)
    update = jax.jit(lambda r, n: n.update(r))
    nudged = positions.copy()
    nudged[0] += [0.2, 0.0, 0.0]                     # < skin/2 = 0.25 Å
    kept = update(nudged, nbrs)
    np.testing.assert_array_equal(np.asarray(kept.reference_position), positions)
    moved = atoms.copy()
    moved.positions[0] += [0.3, 0.0, 0.0]
    rebuilt = update(moved.positions.astype(np.float32), nbrs)
    np.testing.assert_allclose(np.asarray(rebuilt.reference_position), moved.positions,
                               atol=1e-5)
    _same_pairs_as_ase(rebuilt, moved, 9.0)

    crowded = atoms.copy()
    crowded.positions[:400] = crowded.positions[0] + np.random.default_rng(4).uniform(
        0, 4.0, (400, 3))
    crowded.wrap()
    r = crowded.positions.astype(np.float32)
    over = update(r, nbrs)
    code = int(over.error.code)
    assert code & int(partition.PartitionErrorCode.NEIGHBOR_LIST_OVERFLOW)
    assert code & int(partition.PartitionErrorCode.CELL_LIST_OVERFLOW)
    fresh = fns.allocate(r)
    assert not fresh.did_buffer_overflow
    assert fresh.cell_list_capacity > nbrs.cell_list_capacity
    _same_pairs_as_ase(fresh, crowded, 9.0)


def test_cell_list_rebuild_vmapped_over_replicas_equals_one_at_a_time():
    """Replicas update their lists under vmap (the rebuild's conditionals become selects):
    each replica's list equals the one rebuilt alone."""
    atoms = argon(size=7)
    fns, positions = _cell_lists(atoms, cutoff=8.5, multiplier=2.0)
    nbrs = fns.allocate(positions)
    rng = np.random.default_rng(5)
    moved = np.stack([np.mod(positions + rng.normal(0, s, positions.shape), np.diag(atoms.cell))
                      for s in (0.05, 0.4)]).astype(np.float32)   # no rebuild / rebuild
    batched = jax.vmap(lambda r: nbrs.update(r))(moved)
    for k in range(2):
        alone = jax.jit(lambda r: nbrs.update(r))(moved[k])
        np.testing.assert_array_equal(np.asarray(batched.idx[k]), np.asarray(alone.idx))
        assert not alone.did_buffer_overflow
    assert not np.array_equal(np.asarray(batched.idx[0]), np.asarray(batched.idx[1]))


# ------------------------------------------------------------------ self-consistency
@pytest.mark.parametrize("size", [3, 7])
def test_neighbor_overflow_is_rerun_not_lost(tmp_path, size):
    """With no spare capacity (capacity_multiplier = 1: exactly the neighbours of the fcc
    start) the melting liquid overflows the list inside a chunk; the chunk is rerun with
    more capacity and the run ends with the same trajectory as one with ample capacity.
    A forced initial capacity of 8 (the start needs ~60) is grown before the first step.
    108 atoms: every atom is a candidate; 1372 atoms: candidates from biojax's cell list.
    (Overflow of the cell list's own buffer is tested on the builder itself.)"""
    base = dict(ensemble="nve", timestep_fs=2.0, temperature_K=120.0, steps=200,
                chunk_steps=100, observe_every=10, frame_every=50)
    tight = Simulation(argon(size), lj(), default_config(capacity_multiplier=1.0, **base))
    start_capacity = tight.initial_state().nbrs.idx.shape[-1]
    s_small = tight.run(str(tmp_path / "small"))
    s_big = Simulation(argon(size), lj(), default_config(capacity_multiplier=1.6, **base)
                       ).run(str(tmp_path / "big"))
    assert s_small["overflows"] >= 1 and s_big["overflows"] == 0
    assert s_small["neighbor_capacity"] > start_capacity
    forced = Simulation(argon(size), lj(), default_config(initial_capacity=8, **base))
    assert forced.initial_state().nbrs.idx.shape[-1] > 8 and forced.overflows >= 1
    a = read_csv(tmp_path / "small" / "observables.csv")
    b = read_csv(tmp_path / "big" / "observables.csv")
    np.testing.assert_array_equal(a["step"], b["step"])
    np.testing.assert_allclose(a["total_energy"], b["total_energy"], rtol=1e-5)
    fa = ase.io.read(tmp_path / "small" / "trajectory.extxyz", index=":")
    fb = ase.io.read(tmp_path / "big" / "trajectory.extxyz", index=":")
    assert [f.info["step"] for f in fa] == [0, 50, 100, 150, 200]
    np.testing.assert_allclose(fa[-1].positions, fb[-1].positions, atol=1e-4)


def test_killed_run_resumes_identically(tmp_path):
    """Langevin (stochastic, so the PRNG key must be restored): a run stopped after 2 of 4
    chunks, with a half-written chunk appended after its checkpoint (as if killed between
    flush and checkpoint), resumes to files identical to an uninterrupted run: same frames,
    no duplicates, bit-identical numbers."""
    cfg = default_config(ensemble="nvt-langevin", timestep_fs=2.0, temperature_K=120.0,
                         steps=400, chunk_steps=100, observe_every=10, frame_every=50,
                         write_velocities=True, observables_format="both")
    Simulation(argon(), lj(), cfg).run(str(tmp_path / "full"))
    part = Simulation(argon(), lj(), cfg).run(str(tmp_path / "killed"), max_chunks=2)
    assert part["step"] == 200 and not part["completed"]
    with open(tmp_path / "killed" / "trajectory.extxyz", "a") as f:
        f.write("108\nProperties=species:S:1:pos:R:3 step=250\nAr 0.0 0.")  # torn frame
    with open(tmp_path / "killed" / "observables.csv", "a") as f:
        f.write("210,420.0,-1.0,")
    with pytest.raises(SimulationError, match="--resume"):
        Simulation(argon(), lj(), cfg).run(str(tmp_path / "killed"))
    with pytest.raises(ConfigError, match="hydrogen_mass was 0.0, now 4.0"):
        Simulation(argon(), lj(), dataclasses.replace(cfg, hydrogen_mass=4.0)).run(
            str(tmp_path / "killed"), resume=True)
    done = Simulation(argon(), lj(), cfg).run(str(tmp_path / "killed"), resume=True)
    assert done["completed"] and done["steps_run"] == 200
    for name in ("observables.csv", "observables.jsonl", "trajectory.extxyz"):
        assert (tmp_path / "full" / name).read_bytes() == \
            (tmp_path / "killed" / name).read_bytes(), name
    frames = ase.io.read(tmp_path / "killed" / "trajectory.extxyz", ":")
    assert [f.info["step"] for f in frames] == list(range(0, 401, 50))


def test_blowup_stops_with_step_and_keeps_good_output(tmp_path):
    """Argon squeezed to 3.2 Å neighbours, rattled, with a 10 fs step explodes at once:
    SimulationError names the step; the checkpoint (step 0) and the frames before that step
    remain readable."""
    cfg = default_config(ensemble="nve", timestep_fs=10.0, temperature_K=120.0, steps=200,
                         chunk_steps=100, observe_every=10, frame_every=10)
    atoms = argon(3, 4.5)
    atoms.rattle(0.3, seed=1)
    with pytest.raises(SimulationError, match=r"blew up at step \d+") as err:
        Simulation(atoms, lj(6.0), cfg).run(str(tmp_path))
    step = int(str(err.value).split("blew up at step ")[1].split()[0])
    frames = ase.io.read(tmp_path / "trajectory.extxyz", ":")
    assert frames and all(f.info["step"] < step for f in frames)
    assert all(np.isfinite(f.positions).all() for f in frames)
    assert (tmp_path / "checkpoint.npz").exists()


# ------------------------------------------------------------------ bad input
def test_bad_inputs_raise_clear_errors(tmp_path):
    cfg = default_config(ensemble="nve", steps=10, chunk_steps=10, frame_every=10)
    with pytest.raises(SimulationError, match="too small for the cutoff"):
        Simulation(argon(2), lj(8.5), cfg)  # 11.6 Å box, 17 Å needed
    crowded = argon()
    crowded.positions[1] = crowded.positions[0] + [0.1, 0.0, 0.0]
    with pytest.raises(SimulationError, match="overlapping atoms 0 and 1"):
        Simulation(crowded, lj(), cfg)
    krypton = argon()
    krypton.numbers[:] = 36
    with pytest.raises(ModelError, match="Kr not known"):
        Simulation(krypton, lj(), cfg)
    with pytest.raises(ConfigError, match="timestep_fs must be > 0"):
        default_config(timestep_fs=-1.0)
    with pytest.raises(ConfigError, match="absurd"):
        default_config(timestep_fs=100.0)
    with pytest.raises(ConfigError, match="unknown key"):
        default_config(time_step=1.0)
    with pytest.raises(ConfigError, match="replica_block must be >= 0"):
        default_config(replica_block=-1)
    with pytest.raises(ConfigError, match="hydrogen_mass must be 0"):
        default_config(hydrogen_mass=0.5)
    methane = ase.build.molecule("CH4")
    with pytest.raises(SimulationError, match="leaves heavy atom 0"):
        Simulation(methane, lj(elements=(1, 6)), default_config(hydrogen_mass=4.0))
    hydrogen = ase.Atoms("H2", positions=[[0, 0, 0], [0.74, 0, 0]])
    with pytest.raises(SimulationError, match="hydrogen atom 0 is not bonded"):
        Simulation(hydrogen, lj(elements=(1,)), default_config(hydrogen_mass=2.0))
    with pytest.raises(SimulationError, match="NPT needs a periodic"):
        Simulation(ase.Atoms("Ar2", positions=[[0, 0, 0], [3.8, 0, 0]]), lj(),
                   default_config(ensemble="npt"))


def test_cli_runs_and_reports_missing_model(tmp_path, capsys):
    """``biojax simulate`` writes observables.csv (contract columns) and an ASE-readable
    trajectory; a missing --model directory is a one-line error with exit code 1."""
    from biojax.cli import main

    config = tmp_path / "run.toml"
    config.write_text(
        f'structure = "{os.path.abspath(os.path.join(EXAMPLES, "argon_256.extxyz"))}"\n'
        'ensemble = "nve"\nsteps = 40\nchunk_steps = 20\nobserve_every = 10\n'
        'frame_every = 20\n[classical]\nkind = "lennard-jones"\n')
    out = tmp_path / "out"
    assert main(["simulate", str(config), "--ensemble", "nvt-langevin", "--timestep", "1.0",
                 "--temperature", "100", "--steps", "60", "--out", str(out)]) == 0
    header = (out / "observables.csv").read_text().splitlines()[0].split(",")
    for col in ("step", "time_fs", "potential_energy", "kinetic_energy", "total_energy",
                "temperature"):
        assert col in header
    frames = ase.io.read(out / "trajectory.extxyz", ":")
    assert [f.info["step"] for f in frames] == [0, 20, 40, 60]
    assert "steps/s" in capsys.readouterr().err
    assert main(["simulate", str(config), "--model", str(tmp_path / "nope"),
                 "--out", str(tmp_path / "o2")]) == 1
    assert "model directory not found" in capsys.readouterr().err
    assert main(["simulate", str(config), "--timestep", "-2", "--out",
                 str(tmp_path / "o3")]) == 1
    assert "timestep_fs must be > 0" in capsys.readouterr().err


def test_errors_are_biojax_errors():
    assert issubclass(SimulationError, BiojaxError)
