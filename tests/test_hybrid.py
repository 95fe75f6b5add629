"""Hybrid fine-grained-in-coarse-grained systems (biojax.cg.hybrid, issue #11).

The system: the shipped alanine dipeptide (22 atoms) in a 16 Å periodic box with 40
atomistic waters mapped to one bead each; a spline-pair CG water model and a random
coupling. The FG model is the shipped PaiNN for the energy-conservation run, a cheap
spline-pair potential on H/C/N/O elsewhere (compiles in seconds; any Potential will do).
"""

from __future__ import annotations

import json
import os

import ase
import ase.io

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ALA2 = os.path.join(ROOT, "examples", "md", "alanine_dipeptide.extxyz")
PAINN = os.path.join(ROOT, "examples", "models", "ala2_painn")
BOX = 16.0


def ala2_in_water(n_water=40, box=BOX, seed=0) -> ase.Atoms:
    """Alanine dipeptide (ACE 1, ALA 2, NME 3) and ``n_water`` randomly oriented waters
    (HOH 4...) on a 3.1 Å grid at least 3 Å from the solute, in a periodic cube (Å)."""
    sol = ase.io.read(ALA2)
    x = sol.positions - sol.positions.mean(0) + box / 2
    rng = np.random.default_rng(seed)
    g = np.arange(1.5, box, 3.1)
    sites = np.array(np.meshgrid(g, g, g, indexing="ij")).reshape(3, -1).T
    d = np.min(np.linalg.norm(sites[:, None] - x[None], axis=-1), axis=1)
    sites = sites[d > 3.0]
    sites = sites[rng.permutation(len(sites))[:n_water]]
    oh = np.array([[0, 0, 0], [0.9572, 0, 0], [-0.2400, 0.9266, 0]])
    pos, num = [x], [sol.numbers]
    for s in sites:
        q = np.linalg.qr(rng.normal(size=(3, 3)))[0]
        pos.append(s + oh @ q.T)
        num.append([8, 1, 1])
    atoms = ase.Atoms(numbers=np.concatenate(num), positions=np.concatenate(pos),
                      cell=[box] * 3, pbc=True)
    nw = 3 * len(sites)
    atoms.set_array("residuenames", np.array(["ACE"] * 6 + ["ALA"] * 10 + ["NME"] * 6
                                             + ["HOH"] * nw))
    atoms.set_array("residuenumbers", np.array([1] * 6 + [2] * 10 + [3] * 6
                                               + [4 + k // 3 for k in range(nw)]))
    atoms.set_array("atomtypes", np.array(
        "H1 CH3 H2 H3 C O N H CA HA CB HB1 HB2 HB3 C O N H C H1 H2 H3".split()
        + ["O", "H1", "H2"] * len(sites)))
    return atoms


def spline_fg(elements=(1, 6, 7, 8), seed=3):
    """A smooth, cheap FG Potential (spline pairs on the region's elements)."""
    from biojax.cg.spline import spline_pair_potential

    n = len(elements) * (len(elements) + 1) // 2
    e = 0.02 * np.random.default_rng(seed).normal(size=(n, 11))
    return spline_pair_potential(elements, 4.0, n_knots=12, r_min=0.8, energies=e)


def water_cg(seed=1):
    from biojax.cg.potential import CGPotential
    from biojax.cg.spline import spline_pair_potential

    e = 0.01 * np.random.default_rng(seed).normal(size=(1, 11))
    return CGPotential(spline_pair_potential((8,), 6.0, n_knots=12, r_min=2.4,
                                             prior_epsilon=0.01, prior_sigma=2.9,
                                             energies=e))


def random_coupling(seed=2, scale=0.01, screening=None):
    """A coupling with random knot energies; with ``screening`` (λ), also screening pairs
    from random charges on the 22 solute atoms (a few pairs excluded or scaled)."""
    from biojax.cg.hybrid import Coupling, coulomb_pairs

    rng = np.random.default_rng(seed)
    e = scale * rng.normal(size=(4, 1, 11))
    pairs = None
    if screening is not None:
        pairs = coulomb_pairs(rng.normal(scale=0.3, size=22), {(0, 1): 0.0, (4, 6): 0.0,
                                                               (4, 14): 0.02})
    return Coupling.create([1, 6, 7, 8], [8], cutoff=6.0, n_knots=12, r_min=1.5,
                           energies=e, screening_pairs=pairs,
                           screening=0.0 if screening is None else screening)


@pytest.fixture(scope="module")
def full():
    return ala2_in_water()


@pytest.fixture(scope="module")
def built(full):
    from biojax.cg import hybrid

    region = hybrid.check_region(full, hybrid.select_region(
        full, {"residues": ["ACE", "ALA", "NME"]}))
    return hybrid.build_hybrid(full, region, "water")


def md_config(**kw):
    from biojax.md.config import default_config

    base = dict(ensemble="nve", steps=200, timestep_fs=0.5, chunk_steps=100, frame_every=50,
                observe_every=10, plots=False, velocities="structure")
    base.update(kw)
    return default_config(**base)


def with_momenta(atoms, temperature_K=150.0, seed=0):
    """A copy with Maxwell–Boltzmann momenta (zero total) from our own RNG."""
    from ase.units import kB

    a = atoms.copy()
    m = a.get_masses()[:, None]
    p = np.random.default_rng(seed).normal(size=(len(a), 3)) * np.sqrt(m * kB * temperature_K)
    p -= m * p.sum(0) / m.sum()
    a.set_momenta(p)
    return a


# ---------------------------------------------------------------------------- building
def test_build_hybrid_layout(full, built):
    from biojax.cg.hybrid import hybrid_atoms, map_reference

    hyb, system = built
    assert system.n_region == 22 and system.n_env == 40 and len(hyb) == 62
    assert np.array_equal(hyb.numbers[:22], full.numbers[:22])
    assert set(hyb.numbers[22:].tolist()) == {8}
    np.testing.assert_allclose(hyb.get_masses()[22:], 18.015, atol=1e-2)
    # each bead at its water's centre of mass (waters are whole here)
    o = full.positions[22::3]
    com = (16.0 * o + 1.008 * (full.positions[23::3] + full.positions[24::3])) / 18.016
    np.testing.assert_allclose(hyb.positions[22:], com, atol=1e-3)
    # the same particles from already-mapped data
    again = hybrid_atoms(system, hyb.positions, cell=[BOX] * 3)
    np.testing.assert_allclose(again.get_masses(), hyb.get_masses())
    assert np.array_equal(again.numbers, hyb.numbers) and again.pbc.all()
    pos, frc = map_reference(system, full.positions[None], np.ones((1, len(full), 3)),
                             full.cell, full.pbc)
    np.testing.assert_allclose(pos[0], hyb.positions, atol=1e-9)
    assert np.all(frc[0, :22] == 1) and np.all(frc[0, 22:] == 3)  # summed per water


def test_selection_by_distance(full):
    from biojax.cg import hybrid

    near = hybrid.select_region(full, {"within": 3.5, "site_residues": ["ALA"]})
    assert set(range(22)) <= set(near.tolist())   # the whole solute is one... residues
    assert len(near) > 22 and (len(near) - 22) % 3 == 0  # whole waters only
    far = hybrid.select_region(full, {"within": 0.5, "site_atoms": [8]})
    assert far.tolist() == list(range(6, 16))    # atom 8 alone → its residue ALA


# ---------------------------------------------------------------------------- bad input
def test_bad_input_errors(full, built, tmp_path):
    from biojax.cg import hybrid
    from biojax.core.errors import BiojaxError, ConfigError, ModelError

    with pytest.raises(ConfigError, match="residue 'GLY' matches no atom"):
        hybrid.select_region(full, {"residues": ["GLY"]})
    with pytest.raises(ConfigError, match="matches no atom"):
        hybrid.select_region(full, hybrid.RegionSpec())
    with pytest.raises(ConfigError, match=r"cuts 3 covalent bond.*atoms 8 \(C, ALA2:CA\) "
                                          r"and 14 \(C, ALA2:C\)"):
        hybrid.check_region(full, list(range(0, 12)))  # ACE + part of ALA
    assert len(hybrid.check_region(full, list(range(0, 12)), "residues")) == 16
    # an FG model that lacks nitrogen
    hyb, system = built
    with pytest.raises(ModelError, match=r"fine-grained \(FG\) model.*region.*N"):
        hybrid.HybridPotential(spline_fg((1, 6, 8)), water_cg(), random_coupling(), system)
    with pytest.raises(ModelError, match="coupling model lacks region element"):
        bad = hybrid.Coupling.create([1, 6, 8], [8], n_knots=12)
        hybrid.HybridPotential(spline_fg(), water_cg(), bad, system)
    # an unknown [multiscale] key, through the simulate config loader
    from biojax.md.config import load_config

    path = tmp_path / "bad.toml"
    with open(path, "w") as f:
        f.write('steps = 10\n[multiscale]\nregion_residues = ["ALA"]\nfg_modle = "x"\n')
    with pytest.raises(ConfigError, match=r"multiscale.*unknown key.*'fg_modle'"):
        load_config(path)
    with open(path, "w") as f:
        f.write('steps = 10\n[multiscale]\nfg_model = "x"\n')
    with pytest.raises(ConfigError, match="give the region"):
        load_config(path)
    assert issubclass(ConfigError, BiojaxError)


def test_coupling_save_load(tmp_path):
    from biojax.cg import hybrid
    from biojax.core.errors import ModelError

    for c in (random_coupling(), random_coupling(screening=-0.3)):
        path = tmp_path / "coupling.json"
        hybrid.save_coupling(c, path)
        back = hybrid.load_coupling(tmp_path)  # a folder holding coupling.json
        assert back.model == c.model
        assert set(back.params) == set(c.params)
        for k in c.params:
            np.testing.assert_array_equal(np.asarray(back.params[k]), np.asarray(c.params[k]))
    assert len(c.model.screening_pairs) == 22 * 21 // 2 - 2   # two excluded pairs
    doc = json.loads(path.read_text())
    doc["screening_lambda"] = None
    path.write_text(json.dumps(doc))
    with pytest.raises(ModelError, match="screening_lambda"):
        hybrid.load_coupling(path)
    path.write_text('{"format": "biojax-hybrid-coupling", "model": {"elements": [1]}}')
    with pytest.raises(ModelError, match="malformed coupling"):
        hybrid.load_coupling(path)
    path.write_text("{not json")
    with pytest.raises(ModelError, match="malformed"):
        hybrid.load_coupling(path)


# ---------------------------------------------------------------------------- forces
def test_forces_are_minus_gradient_through_region_beads(full):
    """Region beads (ACE, ALA, NME as residue beads) make E_CG(B_all) − E_CG(B_reg) depend
    on the region atoms through the mapping; central differences of the float32 energy
    at h = 2e-3 Å against autodiff forces."""
    import jax
    import jax.numpy as jnp

    from biojax.cg import hybrid
    from biojax.md.system import make_space

    region = np.arange(22)
    hyb, system = hybrid.build_hybrid(full, region, "residue", region_beads="same",
                                      bead_number=8)
    assert system.n_region_beads == 3
    pot = hybrid.HybridPotential(spline_fg(), water_cg(),
                                 random_coupling(scale=0.05, screening=-0.4), system)
    space = make_space(hyb, False)
    parts = pot.energy_parts_fn(space.displacement_fn)
    P = jnp.asarray(hyb.positions, jnp.float32)
    e_parts = jax.jit(parts)(P)
    assert float(e_parts["cg_region"]) != 0.0
    energy = jax.jit(pot.energy_fn(space.displacement_fn, hyb.numbers))
    forces = -np.asarray(jax.jit(jax.grad(energy))(P))
    h = 2e-3
    rng = np.random.default_rng(0)
    picks = [(i, int(rng.integers(3))) for i in (0, 5, 8, 14, 21)] + \
            [(i, int(rng.integers(3))) for i in rng.choice(np.arange(22, 62), 5, False)]
    for i, k in picks:
        d = np.zeros(P.shape, np.float32)
        d[i, k] = h
        fd = -(float(energy(P + d)) - float(energy(P - d))) / (2 * h)
        assert abs(fd - forces[i, k]) < 2e-3 + 2e-2 * abs(forces[i, k]), (i, k, fd,
                                                                           forces[i, k])


def test_neighbor_list_energy_equals_all_pairs(built):
    """The MD neighbor list (Dense, or each pair once) gives the energy of every pair."""
    import jax
    import jax.numpy as jnp
    from jax_md import partition

    from biojax.cg import hybrid
    from biojax.md.system import make_space

    hyb, system = built
    pot = hybrid.HybridPotential(spline_fg(), water_cg(), random_coupling(), system)
    space = make_space(hyb, False)
    P = jnp.asarray(np.mod(hyb.positions, BOX), jnp.float32)
    energy = jax.jit(pot.energy_fn(space.displacement_fn, hyb.numbers))
    reference = float(energy(P))
    for fmt in ("Dense", "OrderedSparse"):
        nf = partition.neighbor_list(space.displacement_fn, space.box, pot.cutoff + 0.5,
                                     format=getattr(partition.NeighborListFormat, fmt))
        nbrs = nf.allocate(P)
        assert abs(float(energy(P, nbrs)) - reference) < 1e-4


# ---------------------------------------------------------------------------- MD
def test_coupling_off_equals_separate_runs(built):
    """With the coupling off and no region beads, the hybrid NVE trajectory's region part
    equals an FG-only run of the region and its bead part a CG-only run of the beads
    (same starting momenta given through the structure, so nothing is drawn)."""
    from biojax.cg import hybrid
    from biojax.md import Simulation

    hyb, system = built
    hyb = with_momenta(hyb)
    fg, cg = spline_fg(), water_cg()
    cfg = md_config(steps=100, check_bonds=False)
    pot = hybrid.HybridPotential(fg, cg, None, system)
    sim = Simulation(hyb, pot, cfg)
    sim.run(None)
    both = np.asarray(sim.final_state.position[0])
    region = hyb[:22]
    s_fg = Simulation(region, fg, cfg)
    s_fg.run(None)
    beads = hyb[22:]
    s_cg = cg.simulation(beads, cfg)
    s_cg.run(None)

    def wrapped_diff(a, b):
        d = a - b
        return np.max(np.abs(d - BOX * np.round(d / BOX)))

    moved = wrapped_diff(both, np.mod(hyb.positions, BOX))
    assert moved > 0.05                                  # something happened
    assert wrapped_diff(both[:22], np.asarray(s_fg.final_state.position[0])) < 1e-4
    assert wrapped_diff(both[22:], np.asarray(s_cg.final_state.position[0])) < 1e-4


@pytest.mark.slow
def test_nve_energy_conservation_painn(built, tmp_path):
    """Hybrid NVE with the shipped PaiNN as FG, spline CG water and a random coupling:
    0.5 fs steps for 1 ps from 300 K; the total energy drifts less than 2e-5 eV per ps
    per particle and its standard deviation stays below 1e-4 eV per particle (float32;
    measured over 2 ps: -5e-7 eV/ps and 1e-5 eV per particle)."""
    from biojax.cg import hybrid
    from biojax.md import Simulation
    from biojax.nn.io import load_potential

    hyb, system = built
    pot = hybrid.HybridPotential(load_potential(PAINN), water_cg(), random_coupling(),
                                 system)
    cfg = md_config(steps=2000, chunk_steps=1000, frame_every=500, observe_every=20)
    sim = Simulation(with_momenta(hyb, 300.0), pot, cfg)
    sim.run(tmp_path)
    rows = np.genfromtxt(tmp_path / "observables.csv", delimiter=",", names=True)
    t, e = rows["time_fs"] / 1000.0, rows["total_energy"]
    assert len(t) == 101 and np.ptp(rows["temperature"]) > 0
    n = len(hyb)
    slope = np.polyfit(t, e, 1)[0]
    assert abs(slope) / n < 2e-5, slope / n
    assert np.std(e) / n < 1e-4, np.std(e) / n


def test_kill_and_resume_equals_uninterrupted(built, tmp_path):
    from biojax.cg import hybrid
    from biojax.md import Simulation

    hyb, system = built
    hyb = with_momenta(hyb)
    pot = hybrid.HybridPotential(spline_fg(), water_cg(), random_coupling(), system)
    cfg = md_config(steps=300, check_bonds=False, ensemble="nvt-langevin",
                    velocities="maxwell-boltzmann", temperature_K=200.0)
    sim = Simulation(hyb, pot, cfg)
    whole = sim.run(tmp_path / "whole")
    assert whole["completed"]
    sim.run(tmp_path / "part", max_chunks=1)   # as if killed after the first chunk
    sim.run(tmp_path / "part", resume=True)     # state from the checkpoint file
    a = ase.io.read(tmp_path / "whole" / "trajectory.extxyz", ":")
    b = ase.io.read(tmp_path / "part" / "trajectory.extxyz", ":")
    assert len(a) == len(b) == 7
    for x, y in zip(a, b):
        np.testing.assert_allclose(x.positions, y.positions, atol=1e-5)
    # another coupling is another model: resuming with it is refused
    other = pot.replace(coupling=random_coupling(seed=9))
    from biojax.core.errors import BiojaxError

    with pytest.raises(BiojaxError, match="model"):
        Simulation(hyb, other, cfg).run(tmp_path / "part", resume=True)


# ---------------------------------------------------------------------------- fitting
def test_fit_recovers_known_coupling(built):
    """Frames near the start, forces from the hybrid model with a known coupling: the
    least-squares fit from zero knot energies brings the held-out force error to ~0."""
    import jax
    import jax.numpy as jnp

    from biojax.cg import hybrid
    from biojax.md.system import orthorhombic_displacement

    hyb, system = built
    truth = hybrid.HybridPotential(spline_fg(), water_cg(),
                                   random_coupling(scale=0.03, screening=-0.35), system)
    rng = np.random.default_rng(5)
    P = hyb.positions[None] + rng.normal(scale=0.15, size=(24, len(hyb), 3))
    disp = orthorhombic_displacement(np.full(3, BOX, np.float32))
    energy = truth.energy_fn(disp, hyb.numbers)
    F = np.asarray(jax.jit(jax.vmap(jax.grad(lambda R: -energy(R))))(jnp.asarray(
        P, jnp.float32)))
    start = truth.replace(coupling=truth.coupling.replace(
        params=truth.coupling.model.init()))
    res = hybrid.fit_coupling(start, P, F, box=np.full(3, BOX), n_valid=6, seed=0,
                              progress=False)
    m = res.metrics
    assert m["before"]["valid"]["region"] > 0.02
    assert m["after"]["valid"]["all"] < 0.02 * m["before"]["valid"]["all"]
    assert m["after"]["valid"]["region"] < 2e-3
    assert abs(float(res.coupling.params["screening"]) + 0.35) < 0.01   # λ recovered


# ---------------------------------------------------------------------------- CLI
def test_simulate_cli_multiscale(full, tmp_path):
    """``biojax simulate cfg.toml --structure full.pdb`` with a [multiscale] table builds the
    hybrid system from the atomistic PDB and runs it; frames hold the hybrid particles."""
    from biojax import cli
    from biojax.cg import hybrid
    from biojax.cg.potential import save_cg_potential
    from biojax.nn.io import save_potential

    ase.io.write(tmp_path / "full.pdb", full, format="proteindatabank")
    save_potential(spline_fg(), tmp_path / "fg")
    save_cg_potential(water_cg(), tmp_path / "cg")
    hybrid.save_coupling(random_coupling(), tmp_path / "coupling.json")
    (tmp_path / "md.toml").write_text(
        'ensemble = "nvt-langevin"\ntemperature_K = 100.0\nsteps = 100\nreplicas = 2\n'
        'chunk_steps = 100\nframe_every = 50\nobserve_every = 10\ncheck_bonds = false\n'
        'plots = false\n[multiscale]\nregion_residues = ["ACE", "ALA", "NME"]\n'
        'fg_model = "fg"\ncg_model = "cg"\ncoupling = "coupling.json"\n')
    out = tmp_path / "run"
    assert cli.main(["simulate", str(tmp_path / "md.toml"), "--structure",
                     str(tmp_path / "full.pdb"), "--out", str(out)]) == 0
    frames = ase.io.read(out / "replica_001" / "trajectory.extxyz", ":")
    assert len(frames) == 3 and len(frames[-1]) == 62
    assert np.array_equal(frames[-1].numbers[:22], full.numbers[:22])
    assert np.all(frames[-1].numbers[22:] == 8)
