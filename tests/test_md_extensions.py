"""The MD extension seams (biojax.md.integrators / terms / simulation), tested through
``Simulation.run`` and its files: a user integrator (passed in or named by import path)
reproduces the built-in velocity Verlet; a harmonic restraint moves a distance's mean to
the exact Boltzmann expectation; extra observables are recorded per replica; replica r of
a blocked, padded R = 4 run is the one-replica run with seed + r; unknown names list the
registered ones; a run with terms and observables resumes byte-identically."""

from __future__ import annotations

import csv
import dataclasses
import os
import sys

import ase
import ase.io
import ase.units as U
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ase.lattice.cubic import FaceCenteredCubic
from jax_md import dataclasses as md_dataclasses
from scipy import integrate

from biojax.core.errors import BiojaxError, ConfigError
from biojax.md import checkpoint
from biojax.md.config import default_config
from biojax.md.integrators import maxwell_boltzmann
from biojax.md.simulation import Simulation
from biojax.md.terms import EnergyTerm
from biojax.nn.classical import lennard_jones

# `ensemble = "test_md_extensions:velocity_verlet"` imports this module by name
_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

SIGMA, EPS = 3.405, 0.0103  # argon, Å and eV


def argon(size=3, a=5.8) -> ase.Atoms:
    """fcc argon, 4·size³ atoms; a = 5.8 Å is a dense liquid at ~120 K."""
    return FaceCenteredCubic("Ar", size=(size,) * 3, latticeconstant=a)


def dimer(r=3.6) -> ase.Atoms:
    return ase.Atoms("Ar2", positions=[[0.0, 0.0, 0.0], [r, 0.0, 0.0]])


def lj(cutoff=8.5):
    return lennard_jones([18], SIGMA, EPS, cutoff=cutoff)


def read_csv(path) -> dict:
    """Columns of an observables.csv by their exact names (``v[0]`` stays ``v[0]``)."""
    with open(path) as f:
        rows = list(csv.reader(f))
    data = np.array(rows[1:], dtype=np.float64)
    return {name: data[:, i] for i, name in enumerate(rows[0])}


def header(path) -> list[str]:
    with open(path) as f:
        return f.readline().strip().split(",")


def frames_of(path) -> list[ase.Atoms]:
    return ase.io.read(path, index=":")


# ------------------------------------------------------------------ 1. user integrator
@md_dataclasses.dataclass
class VerletState:
    position: jax.Array
    momentum: jax.Array
    force: jax.Array
    mass: jax.Array


def velocity_verlet(energy_fn, shift_fn, units=None, n_atoms=None, **unused):
    """Velocity Verlet written from scratch: an (init_fn, step_fn) pair. Momenta are drawn
    like the built-in ``nve`` (zero total momentum), so the same key gives the same start."""
    grad = jax.grad(energy_fn)

    def force(R, **kw):
        return -grad(R, **kw)

    def init(key, R, mass, kT, momenta=None, **kw):
        if momenta is None:
            momenta = maxwell_boltzmann(key, mass, kT, R.shape, R.dtype, True)
        return VerletState(R, momenta, force(R, **kw), mass)

    def step(state, dt, kT, **kw):
        half = 0.5 * dt
        p = state.momentum + half * state.force                       # half kick
        R = shift_fn(state.position, dt * p / state.mass, **kw)        # drift
        F = force(R, **kw)
        return VerletState(R, p + half * F, F, state.mass)             # half kick

    return init, step


def test_user_integrator_reproduces_builtin_velocity_verlet(tmp_path):
    """108 LJ argon atoms, 2 fs, 300 steps (3 chunks): the hand-written velocity Verlet,
    passed as ``integrator=`` and named by import path in ``ensemble``, gives the built-in
    ``nve`` run: positions and velocities of every frame within 1e-4 Å (Å/ASE time) and
    every energy within 1e-5 eV (measured: identical to the last printed digit). Its
    temperature column uses 3N degrees of freedom (what a plain (init, step) pair gets)
    instead of nve's 3N − 3, so it differs by exactly that ratio."""
    base = dict(timestep_fs=2.0, temperature_K=120.0, steps=300, chunk_steps=100,
                observe_every=10, frame_every=50, write_velocities=True, seed=11)
    Simulation(argon(), lj(), default_config(ensemble="nve", **base)).run(
        str(tmp_path / "builtin"))
    Simulation(argon(), lj(), default_config(ensemble="nve", **base),
               integrator=velocity_verlet).run(str(tmp_path / "passed"))
    Simulation(argon(), lj(), default_config(
        ensemble="test_md_extensions:velocity_verlet", **base)).run(str(tmp_path / "named"))

    ref = read_csv(tmp_path / "builtin" / "observables.csv")
    ref_frames = frames_of(tmp_path / "builtin" / "trajectory.extxyz")
    assert [f.info["step"] for f in ref_frames] == list(range(0, 301, 50))
    # the run really moved: atoms travelled and energy flowed between KE and PE
    assert np.abs(ref_frames[-1].positions - ref_frames[0].positions).max() > 0.1
    assert np.ptp(ref["kinetic_energy"]) > 0.05
    for name in ("passed", "named"):
        obs = read_csv(tmp_path / name / "observables.csv")
        np.testing.assert_array_equal(obs["step"], ref["step"])
        for col in ("potential_energy", "kinetic_energy", "total_energy", "conserved"):
            np.testing.assert_allclose(obs[col], ref[col], rtol=0, atol=1e-5, err_msg=col)
        np.testing.assert_allclose(obs["temperature"] * 324 / 321, ref["temperature"],
                                   rtol=1e-5)
        frames = frames_of(tmp_path / name / "trajectory.extxyz")
        assert [f.info["step"] for f in frames] == [f.info["step"] for f in ref_frames]
        for a, b in zip(frames, ref_frames):
            np.testing.assert_allclose(a.positions, b.positions, rtol=0, atol=1e-4)
            np.testing.assert_allclose(a.get_velocities(), b.get_velocities(), rtol=0,
                                       atol=1e-4)
    # energy conservation of the user integrator (float32 Verlet, 0.6 ps)
    obs = read_csv(tmp_path / "named" / "observables.csv")
    assert np.std(obs["total_energy"]) < 2e-3 * np.std(obs["potential_energy"])


# ------------------------------------------------------------------ 2. energy terms
def _lj_energy(r):
    s6 = (SIGMA / r) ** 6
    return 4 * EPS * (s6 * s6 - s6)  # unswitched: the dimer stays far below r_onset


def exact_mean_distance(T, r0, k):
    """<r> of a dimer in free space with LJ + ½k(r − r0)²: weight r² exp(−βW(r))."""
    beta = 1.0 / (U.kB * T)
    w0 = _lj_energy(r0)

    def weight(r, n):
        return r ** n * np.exp(-beta * (_lj_energy(r) - w0 + 0.5 * k * (r - r0) ** 2))

    lo, hi = r0 - 1.0, r0 + 1.0
    return (integrate.quad(weight, lo, hi, args=(3,), epsabs=0, epsrel=1e-12)[0]
            / integrate.quad(weight, lo, hi, args=(2,), epsabs=0, epsrel=1e-12)[0])


def block_sem(series: list[np.ndarray], block: int) -> tuple[float, int]:
    """Standard error of the mean from block averages of ``block`` records, pooled over
    independent series (replicas); returns (sem, number of blocks)."""
    means = np.concatenate([x[: len(x) // block * block].reshape(-1, block).mean(axis=1)
                            for x in series])
    return means.std(ddof=1) / np.sqrt(len(means)), len(means)


def test_harmonic_restraint_moves_mean_distance_to_exact_expectation(tmp_path):
    """LJ argon dimer in free space, BAOAB Langevin at 30 K (γ = 20/ps, 4 fs), 8 replicas
    × 100 ps. Restrained by ``harmonic-distance`` (r0 = 3.6 Å, inside the LJ wall at
    r_min = 3.82 Å; k = 1 eV/Å²), the mean distance equals the exact Boltzmann average
    ⟨r⟩ = ∫r³e^{−βW}/∫r²e^{−βW} (W = LJ + restraint; 3.62039 Å, i.e. r0 pushed out 0.02
    Å by the LJ wall; with k/2 it would be 3.6372) within 4 block standard errors
    (measured: 3.62034 ± 0.0005 Å); the `terms_energy` column is ½k(d − r0)² of the
    `distance` column. Unrestrained, the weakly bound dimer (ε/k_BT ≈ 4) wanders and
    partly dissociates: its mean over 8 replicas × 20 ps is > 3.85 Å (r_min; measured
    4.35 Å), hundreds of standard errors away."""
    T, r0, k = 30.0, 3.6, 1.0
    base = dict(ensemble="nvt-langevin", timestep_fs=4.0, temperature_K=T,
                friction_per_ps=20.0, chunk_steps=25000, observe_every=10,
                frame_every=5000, replicas=8, seed=1,
                observables=({"name": "distance", "atoms": [0, 1], "label": "r01"},))
    restrained = default_config(steps=25000, energy_terms=(
        {"name": "harmonic-distance", "atoms": [0, 1], "r0": r0, "k": k},), **base)
    Simulation(dimer(r0), lj(), restrained).run(str(tmp_path / "on"))
    Simulation(dimer(r0), lj(), default_config(steps=5000, **base)).run(
        str(tmp_path / "off"))

    on = [read_csv(tmp_path / "on" / f"replica_{r:03d}" / "observables.csv")
          for r in range(8)]
    off = [read_csv(tmp_path / "off" / f"replica_{r:03d}" / "observables.csv")
           for r in range(8)]
    assert "r01" in on[0] and "terms_energy" in on[0] and "terms_energy" not in off[0]
    for obs in on:
        np.testing.assert_allclose(obs["terms_energy"], 0.5 * k * (obs["r01"] - r0) ** 2,
                                   rtol=1e-4, atol=1e-7)
    d_on = [obs["r01"][100:] for obs in on]  # drop 4 ps
    mean = np.mean(np.concatenate(d_on))
    # blocks of 2–8 ps ≫ the ~0.1 ps correlation time; take the largest estimate
    sem = max(block_sem(d_on, b)[0] for b in (50, 100, 200))
    exact = exact_mean_distance(T, r0, k)
    assert 0.01 < exact - r0 < 0.03  # the LJ wall pushes the restrained dimer out
    assert abs(mean - exact) < 4 * sem, (mean, exact, sem)
    assert sem < 0.002, sem
    # the temperature is the target's (the restraint does not heat the dimer)
    temps = np.concatenate([obs["temperature"][100:] for obs in on])
    assert abs(temps.mean() / T - 1) < 0.05
    mean_off = np.mean(np.concatenate([obs["r01"][50:] for obs in off]))
    assert mean_off > 3.85, mean_off
    assert mean_off - mean > 100 * sem


def test_plain_function_energy_term_equals_registered_term(tmp_path):
    """A Python function ``energy(R, **kw)`` passed in ``energy_terms`` acts exactly like
    the registered ``harmonic-distance`` with the same r0 and k (same seed → same
    distances and term energies to float32 tolerance), and a function term of a
    different strength gives a different run (so the function is really applied)."""
    r0 = 4.4

    def restraint(k):
        return lambda R, **kw: 0.5 * k * (jnp.sqrt(jnp.sum((R[0] - R[1]) ** 2)) - r0) ** 2

    base = dict(ensemble="nvt-langevin", timestep_fs=4.0, temperature_K=30.0,
                friction_per_ps=5.0, steps=2000, chunk_steps=1000, observe_every=10,
                frame_every=1000, seed=4,
                observables=({"name": "distance", "atoms": [0, 1]},))
    Simulation(dimer(r0), lj(), default_config(energy_terms=(
        {"name": "harmonic-distance", "atoms": [0, 1], "r0": r0, "k": 0.5},), **base)
               ).run(str(tmp_path / "registered"))
    Simulation(dimer(r0), lj(), default_config(**base),
               energy_terms=[restraint(0.5)]).run(str(tmp_path / "function"))
    Simulation(dimer(r0), lj(), default_config(**base),
               energy_terms=[restraint(0.1)]).run(str(tmp_path / "weaker"))
    a = read_csv(tmp_path / "registered" / "observables.csv")
    b = read_csv(tmp_path / "function" / "observables.csv")
    c = read_csv(tmp_path / "weaker" / "observables.csv")
    for col in ("distance", "terms_energy", "potential_energy", "kinetic_energy"):
        np.testing.assert_allclose(b[col], a[col], rtol=0, atol=1e-4, err_msg=col)
    # held near 4.4 Å against the LJ attraction (free: ≈ 3.95 Å at 30 K)
    assert abs(b["distance"][50:].mean() - r0) < 0.05
    assert np.abs(c["distance"] - a["distance"]).max() > 0.05


# ------------------------------------------------------------------ 3. extra observables
def test_extra_observables_recorded_per_replica(tmp_path):
    """replicas = 3 with a scalar (x of atom 0) and a 3-vector observable (velocity of
    atom 0): each replica's observables.csv has columns x0, v[0], v[1], v[2], and at frame
    steps they equal that replica's trajectory frame (position to 1e-5 Å, velocity to
    1e-5 relative); replicas differ."""
    cfg = default_config(ensemble="nvt-langevin", timestep_fs=2.0, temperature_K=120.0,
                         steps=100, chunk_steps=50, observe_every=10, frame_every=50,
                         replicas=3, seed=2, write_velocities=True)
    extra = {"x0": lambda state, **kw: state.position[0, 0],
             "v": lambda state, **kw: state.momentum[0] / state.mass[0]}
    Simulation(argon(), lj(), cfg, observables=extra).run(str(tmp_path))
    x0s = []
    for r in range(3):
        folder = tmp_path / f"replica_{r:03d}"
        cols = header(folder / "observables.csv")
        # the extra observables come last, in the order given
        assert cols[-4:] == ["x0", "v[0]", "v[1]", "v[2]"], cols
        assert "v" not in cols
        obs = read_csv(folder / "observables.csv")
        assert len(obs["step"]) == 11
        frames = frames_of(folder / "trajectory.extxyz")
        assert [f.info["step"] for f in frames] == [0, 50, 100]
        for f in frames:
            j = int(np.flatnonzero(obs["step"] == f.info["step"])[0])
            assert obs["x0"][j] == pytest.approx(f.positions[0, 0], abs=1e-5)
            v = np.array([obs[f"v[{i}]"][j] for i in range(3)])
            np.testing.assert_allclose(v, f.get_velocities()[0], rtol=1e-5, atol=1e-8)
        x0s.append(obs["x0"])
    assert not np.allclose(x0s[0][1:], x0s[1][1:]) and not np.allclose(x0s[1][1:],
                                                                         x0s[2][1:])


# ------------------------------------------------------------------ 4. replicas
@pytest.mark.parametrize("ensemble", ["nvt-langevin"])  # per-replica noise: the hard case
def test_replica_blocks_equal_one_replica_runs(tmp_path, ensemble):
    """R = 4 replicas with seed 20 run as vmapped blocks of 2 (no padding) and of 3 (the
    second block padded with copies of replicas 0 and 1): replica r equals the
    one-replica run with seed 20 + r (observables to 1e-5 relative, frames to 1e-4 Å;
    measured: ≤ 1.1e-7 relative, frames identical as written)."""
    base = dict(ensemble=ensemble, timestep_fs=2.0, temperature_K=120.0, steps=100,
                chunk_steps=50, observe_every=10, frame_every=50, seed=20)
    for block in (2, 3):
        summary = Simulation(argon(), lj(), default_config(
            replicas=4, replica_block=block, **base)).run(str(tmp_path / f"b{block}"))
        assert summary["replica_block"] == block
    for r in range(4):
        Simulation(argon(), lj(), default_config(**dict(base, seed=20 + r))).run(
            str(tmp_path / f"one{r}"))
        b = read_csv(tmp_path / f"one{r}" / "observables.csv")
        fb = frames_of(tmp_path / f"one{r}" / "trajectory.extxyz")
        for block in (2, 3):
            folder = tmp_path / f"b{block}" / f"replica_{r:03d}"
            a = read_csv(folder / "observables.csv")
            assert set(a) == set(b)
            for col in b:
                np.testing.assert_allclose(a[col], b[col], rtol=1e-5, atol=1e-6,
                                           err_msg=f"block {block} replica {r} {col}")
            fa = frames_of(folder / "trajectory.extxyz")
            assert len(fa) == len(fb) == 3
            for x, y in zip(fa, fb):
                np.testing.assert_allclose(x.positions, y.positions, rtol=0, atol=1e-4)
    temps = [read_csv(tmp_path / f"one{r}" / "observables.csv")["temperature"]
             for r in range(4)]
    assert not np.allclose(temps[0], temps[3])  # seeds differ


# ------------------------------------------------------------------ 5. bad names
def test_unknown_names_list_registered_ones():
    cfg = dict(steps=10, chunk_steps=10, frame_every=10)
    with pytest.raises(ConfigError, match="unknown integrator 'nvt-langevinn'") as err:
        Simulation(dimer(), lj(), default_config(ensemble="nvt-langevinn", **cfg))
    for name in ("nve", "nvt-langevin", "nvt-nose-hoover", "npt"):
        assert name in str(err.value)
    with pytest.raises(ConfigError, match="unknown energy term 'harmonic-distanc'") as err:
        Simulation(dimer(), lj(), default_config(energy_terms=(
            {"name": "harmonic-distanc", "atoms": [0, 1], "r0": 3.8, "k": 1.0},), **cfg))
    assert "harmonic-distance" in str(err.value)
    with pytest.raises(ConfigError, match="unknown observable 'radius_of_gyration'") as err:
        Simulation(dimer(), lj(), default_config(
            observables=({"name": "radius_of_gyration"},), **cfg))
    assert "distance" in str(err.value) and "radius-of-gyration" in str(err.value)
    assert isinstance(err.value, BiojaxError)
    with pytest.raises(ConfigError, match=r"harmonic-distance: atom indices must be in "
                                          r"\[0, 2\), got \[0, 2\]"):
        Simulation(dimer(), lj(), default_config(energy_terms=(
            {"name": "harmonic-distance", "atoms": [0, 2], "r0": 3.8, "k": 1.0},), **cfg))
    with pytest.raises(ConfigError, match="harmonic-distance: atoms must list 2"):
        Simulation(dimer(), lj(), default_config(energy_terms=(
            {"name": "harmonic-distance", "atoms": [0], "r0": 3.8, "k": 1.0},), **cfg))
    with pytest.raises(ConfigError, match="harmonic-distance.*r0"):
        Simulation(dimer(), lj(), default_config(energy_terms=(
            {"name": "harmonic-distance", "atoms": [0, 1], "k": 1.0},), **cfg))
    with pytest.raises(ConfigError, match="distance: atom indices must be in"):
        Simulation(dimer(), lj(), default_config(
            observables=({"name": "distance", "atoms": [-1, 1]},), **cfg))
    with pytest.raises(ConfigError, match="integrator 'no_such_module:vv'.*cannot import"):
        Simulation(dimer(), lj(), default_config(ensemble="no_such_module:vv", **cfg))


# ------------------------------------------------------------------ 6. resume
def sliding_restraint(box, k=0.5, r0=4.4, rate=1e-4):
    """A stateful term: ½k(d₀₁ − r0 − rate·n)², n = steps taken (the term's state);
    d₀₁ by minimum image in the cubic ``box`` (Å) (positions are wrapped into it)."""
    def energy(R, n, **kw):
        d = R[0] - R[1]
        d = d - box * jnp.round(d / box)
        return 0.5 * k * (jnp.sqrt(jnp.sum(d * d)) - r0 - rate * n) ** 2

    return EnergyTerm(energy, init=lambda R: jnp.zeros((), jnp.float32),
                      update=lambda n, R, **kw: n + 1.0)


def test_resume_with_terms_and_observables_is_identical(tmp_path):
    """Langevin, 2 replicas, a config restraint + config distance observable + a Python
    observable + a stateful Python term (whose state must come back from the checkpoint):
    run(max_chunks=1) then run(resume=True) writes byte-identical files to an
    uninterrupted run; resuming with a changed [[energy_terms]] is refused naming it."""
    cfg = default_config(
        ensemble="nvt-langevin", timestep_fs=2.0, temperature_K=120.0, steps=300,
        chunk_steps=100, observe_every=10, frame_every=50, replicas=2, seed=9,
        energy_terms=({"name": "harmonic-distance", "atoms": [0, 1], "r0": 4.4, "k": 2.0},),
        observables=({"name": "distance", "atoms": [0, 1]},
                     {"name": "radius-of-gyration", "atoms": [0, 1, 2], "label": "rg"}))
    extra = {"x0": lambda state, **kw: state.position[0, 0]}

    def sim(config=cfg):
        # argon(2, 6.2): 32 atoms (atoms 0 and 1 4.38 Å apart), 12.4 Å box, 5.9 Å cutoff
        return Simulation(argon(2, 6.2), lj(5.9), config, observables=extra,
                          energy_terms=[sliding_restraint(12.4)])

    sim().run(str(tmp_path / "full"))
    part = sim().run(str(tmp_path / "killed"), max_chunks=1)
    assert part["step"] == 100 and not part["completed"]
    changed = dataclasses.replace(cfg, energy_terms=(
        {"name": "harmonic-distance", "atoms": [0, 1], "r0": 4.4, "k": 3.0},))
    with pytest.raises(ConfigError, match="energy_terms was"):
        sim(changed).run(str(tmp_path / "killed"), resume=True)
    with pytest.raises(ConfigError, match="observables was"):
        sim(dataclasses.replace(cfg, observables=())).run(str(tmp_path / "killed"),
                                                          resume=True)
    done = sim().run(str(tmp_path / "killed"), resume=True)
    assert done["completed"] and done["steps_run"] == 200
    for r in range(2):
        for name in ("observables.csv", "trajectory.extxyz"):
            path = os.path.join(f"replica_{r:03d}", name)
            assert (tmp_path / "full" / path).read_bytes() == \
                (tmp_path / "killed" / path).read_bytes(), path
        cols = header(tmp_path / "full" / f"replica_{r:03d}" / "observables.csv")
        for col in ("distance", "rg", "x0", "terms_energy"):
            assert col in cols
    # the checkpoint carries the stateful term's step count n = 300 for both replicas
    # (a resume that restarted it at 0 would shift the restraint centre by 0.01 Å)
    leaves, meta = checkpoint.load(str(tmp_path / "killed" / checkpoint.CHECKPOINT_FILE))
    assert meta["step"] == 300
    assert any(np.shape(x) == (2,) and np.array_equal(x, [300.0, 300.0]) for x in leaves)
