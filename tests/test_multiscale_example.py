"""The ala2-in-TIP3P reference (examples/data/ala2_tip3p, made by
examples/data/recipes/ala2_tip3p.py) and the hybrid example's committed models
(examples/multiscale_ala2)."""

import json
import os

import numpy as np
import pytest
from ase import units

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(ROOT, "examples", "data", "ala2_tip3p")
MODELS = os.path.join(ROOT, "examples", "multiscale_ala2", "models")
KJMOL_NM = units.kJ / units.mol / 10.0   # 1 kJ/mol/nm in eV/Å (written here, not imported)


@pytest.fixture(scope="module")
def frames():
    with np.load(os.path.join(DATA, "frames.npz")) as z:
        return {k: z[k] for k in z.files}


def _dihedral(x, idx):
    """IUPAC: atan2(|b1| b0·(b1×b2), (b0×b1)·(b1×b2)), degrees."""
    p0, p1, p2, p3 = (x[..., i, :].astype(np.float64) for i in idx)
    b0, b1, b2 = p1 - p0, p2 - p1, p3 - p2
    y = np.linalg.norm(b1, axis=-1) * np.sum(b0 * np.cross(b1, b2), -1)
    return np.degrees(np.arctan2(y, np.sum(np.cross(b0, b1) * np.cross(b1, b2), -1)))


def test_dataset_shapes_units_and_newton(frames):
    z = frames
    F, W = z["water_positions"].shape[:2]
    assert F >= 100 and W > 300
    for k in ("solute_positions", "solute_forces", "solute_vacuum_forces"):
        assert z[k].shape == (F, 22, 3) and z[k].dtype == np.float32
        assert np.all(np.isfinite(z[k]))
    assert z["water_forces"].shape == (F, W, 3)
    assert list(z["numbers"]) == [1, 6, 1, 1, 6, 8, 7, 1, 6, 1, 6, 1, 1, 1, 6, 8, 7, 1, 6, 1, 1, 1]
    assert abs(float(z["water_mass"]) - 18.015) < 0.01
    box = z["box"]
    assert np.all(box == box[0]) and 20.0 < box[0] < 30.0
    # beads inside the box; water density of liquid water (~0.0334 molecules/Å³ at 300 K)
    assert z["water_positions"].min() >= 0 and z["water_positions"].max() <= box[0]
    assert 0.029 < W / (box[0] ** 3 - 22 * 20.0) < 0.036
    # Newton's third law: the forces on all atoms of the full system sum to ~0 (PME's
    # reciprocal part is not exactly momentum-conserving: a small residual)
    total = z["solute_forces"].sum(1) + z["water_forces"].sum(1)
    typical = np.sqrt(np.mean(z["water_forces"] ** 2))
    assert np.abs(total).max() < 0.05 * typical
    # water bead forces are of the size of thermal forces on a molecule (eV/Å)
    assert 0.05 < typical < 1.0
    # consecutive frames are a fixed time apart
    t = z["time_ps"]
    assert np.allclose(np.diff(t), t[1] - t[0])


def test_phi_psi_series_matches_the_frames(frames):
    pp = np.load(os.path.join(DATA, "phi_psi.npy"))
    rec = json.loads(str(frames["recipe"]))
    dt = rec["settings"]["phipsi_ps"]
    assert pp.shape[1] == 2 and len(pp) * dt >= frames["time_ps"][-1] - 1e-3
    rows = np.round(frames["time_ps"] / dt).astype(int) - 1
    x = frames["solute_positions"]
    phi, psi = _dihedral(x, (4, 6, 8, 14)), _dihedral(x, (6, 8, 14, 16))
    d = np.abs((np.stack([phi, psi], 1) - pp[rows] + 180) % 360 - 180)
    assert d.max() < 0.05


def test_vacuum_labels_are_ff14sb_in_vacuum(frames):
    """Relabel two frames with OpenMM (amber14-all.xml, solute alone, no cutoff)."""
    openmm = pytest.importorskip("openmm")
    import openmm.unit as u
    from openmm import app

    pdb = app.PDBFile(os.path.join(ROOT, "examples", "data", "alanine-dipeptide-gbsa",
                                   "alanine-dipeptide.pdb"))
    system = app.ForceField("amber14-all.xml").createSystem(pdb.topology,
                                                             nonbondedMethod=app.NoCutoff)
    ctx = openmm.Context(system, openmm.VerletIntegrator(0.001),
                         openmm.Platform.getPlatformByName("Reference"))
    for i in (0, len(frames["time_ps"]) - 1):
        ctx.setPositions(frames["solute_positions"][i].astype(float) * 0.1 * u.nanometer)
        st = ctx.getState(getEnergy=True, getForces=True)
        e = st.getPotentialEnergy().value_in_unit(u.kilojoule_per_mole) * units.kJ / units.mol
        f = np.asarray(st.getForces(asNumpy=True).value_in_unit(
            u.kilojoule_per_mole / u.nanometer)) * KJMOL_NM
        assert abs(e - frames["solute_vacuum_energy"][i]) < 2e-3
        assert np.abs(f - frames["solute_vacuum_forces"][i]).max() < 0.02
        # the solvent changes the solute's forces (explicit-water ≠ vacuum)
        assert np.sqrt(np.mean((frames["solute_forces"][i] - f) ** 2)) > 0.05


def _screening():
    """(charge products (22, 22) e², λ) of the committed coupling's screening term, or None."""
    path = os.path.join(MODELS, "coupling.json")
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        doc = json.load(f)
    pairs = doc["model"].get("screening_pairs") or []
    if not pairs:
        return None
    Q = np.zeros((22, 22))
    for i, j, q in pairs:
        Q[i, j] = Q[j, i] = q
    return Q, float(doc["screening_lambda"])


def _coulomb_forces(Q, x, scale=1.0):
    """Forces (N, 3) eV/Å of scale · Σ_{i<j} k_e Q_ij / r_ij (numpy, free space)."""
    d = x[:, None, :] - x[None, :, :]
    r = np.sqrt(np.sum(d * d, -1)) + np.eye(len(x))
    k_e = units.Hartree * units.Bohr                 # e²/(4π ε0) in eV·Å
    return scale * k_e * np.sum((Q / r ** 3)[..., None] * d, axis=1)


@pytest.mark.skipif(_screening() is None, reason="no screening term committed")
def test_screening_term_is_the_solutes_ff14sb_coulomb(frames):
    """The committed coupling's screening pairs give OpenMM's ff14SB Coulomb forces within
    the solute (LJ switched off), so the term is λ × the solute's own electrostatics."""
    openmm = pytest.importorskip("openmm")
    import openmm.unit as u
    from openmm import app

    Q, lam = _screening()
    assert -1.0 <= lam <= 0.0        # a screening: it weakens, never reverses
    pdb = app.PDBFile(os.path.join(ROOT, "examples", "data", "alanine-dipeptide-gbsa",
                                   "alanine-dipeptide.pdb"))
    system = app.ForceField("amber14-all.xml").createSystem(pdb.topology,
                                                             nonbondedMethod=app.NoCutoff)
    for k in reversed(range(system.getNumForces())):
        if not isinstance(system.getForce(k), openmm.NonbondedForce):
            system.removeForce(k)
    nb = system.getForce(0)
    for i in range(nb.getNumParticles()):
        q, s, _ = nb.getParticleParameters(i)
        nb.setParticleParameters(i, q, s, 0.0)
    for k in range(nb.getNumExceptions()):
        a, b, qq, s, _ = nb.getExceptionParameters(k)
        nb.setExceptionParameters(k, a, b, qq, s, 0.0)
    ctx = openmm.Context(system, openmm.VerletIntegrator(0.001),
                         openmm.Platform.getPlatformByName("Reference"))
    x = frames["solute_positions"][0].astype(np.float64)
    ctx.setPositions(x * 0.1 * u.nanometer)
    f = np.asarray(ctx.getState(getForces=True).getForces(asNumpy=True).value_in_unit(
        u.kilojoule_per_mole / u.nanometer)) * KJMOL_NM
    assert np.abs(_coulomb_forces(Q, x) - f).max() < 1e-4 * np.abs(f).max() + 1e-6


@pytest.mark.skipif(not os.path.isfile(os.path.join(MODELS, "coupling.json")),
                    reason="hybrid example models not committed")
def test_committed_hybrid_models_beat_the_prior_on_held_out_forces(frames):
    """The fitted CG water + coupling explain part of the solvent forces on a frame: lower
    error than the same hybrid with the coupling's and CG water's splines set to zero."""
    import jax
    import jax.numpy as jnp

    pytest.importorskip("biojax.cg.hybrid")
    from biojax.cg.hybrid import HybridPotential, HybridSystem, load_coupling
    from biojax.cg.potential import load_cg_potential
    from biojax.md.system import orthorhombic_displacement
    from biojax.nn.classical import ZeroModel
    from biojax.nn.potential import Potential

    z = frames
    W = z["water_positions"].shape[1]
    system = HybridSystem(tuple(int(n) for n in z["numbers"]), (8,) * W)
    # the FG part cancels in the solvent forces below: a zero model keeps the test fast
    fg = Potential(model=ZeroModel(), params={}, cutoff=5.0, elements=(1, 6, 7, 8),
                   reference_energies=(0.0,) * 4, architecture={"name": "zero"})
    pot = HybridPotential(fg, load_cg_potential(os.path.join(MODELS, "cg_water")),
                          load_coupling(os.path.join(MODELS, "coupling.json")), system)
    energy = pot.energy_fn(orthorhombic_displacement(jnp.asarray(z["box"], jnp.float32)),
                           system.numbers)
    i = len(z["time_ps"]) - 1            # the last frame: the fit used the first 240 only
    P = jnp.asarray(np.concatenate([z["solute_positions"][i], z["water_positions"][i]]))
    target = np.concatenate([z["solute_forces"][i] - z["solute_vacuum_forces"][i],
                             z["water_forces"][i]])
    only_fg = pot.replace(cg=None, coupling=None).energy_fn(
        orthorhombic_displacement(jnp.asarray(z["box"], jnp.float32)), system.numbers)

    @jax.jit
    def _solvent(params):
        return -jax.grad(lambda R: energy(R, params=params) - only_fg(R))(P)

    def solvent_forces(params):
        return np.asarray(_solvent(params), np.float64)

    fitted = solvent_forces(pot.params)      # CG water + coupling (screening included)
    zero = jax.tree_util.tree_map(jnp.zeros_like, pot.params)
    zero = {**pot.params, "cg": zero["cg"], "coupling": zero["coupling"]}
    prior = solvent_forces(zero)
    assert np.all(np.isfinite(fitted))
    err_fit = np.sqrt(np.mean((fitted - target) ** 2))
    err_prior = np.sqrt(np.mean((prior - target) ** 2))
    assert err_fit < 0.95 * err_prior
