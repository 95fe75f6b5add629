"""The villin headpiece Cα dataset (examples/data/villin_ca, made by
examples/data/recipes/villin_ca.py) and a Cα model force-matched on it."""

import os

import numpy as np
import pytest
from ase import units

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(ROOT, "examples", "data", "villin_ca")
CONFIG = os.path.join(ROOT, "examples", "cg_villin", "villin_ca.toml")
KJMOL_NM = units.kJ / units.mol / 10.0   # 1 kJ/mol/nm in eV/Å (written here, not imported)


@pytest.fixture(scope="module")
def data():
    x = np.load(os.path.join(DATA, "coordinates.npy"))
    f = np.load(os.path.join(DATA, "forces.npy"))
    with np.load(os.path.join(DATA, "villin_ca.npz")) as z:
        extra = {k: z[k] for k in z.files}
    with np.load(os.path.join(DATA, "villin_aa_sample.npz")) as z:
        aa = {k: z[k] for k in z.files}
    return x, f, extra, aa


def _protein_residues(path):
    from openmm import app

    top = app.PDBFile(path).topology
    return [r.name for r in top.residues() if r.name not in ("HOH", "Cl", "CL", "Na", "NA")]


def test_dataset_shapes_units_and_sequence(data):
    x, f, extra, aa = data
    assert x.dtype == f.dtype == np.float32
    assert x.shape == f.shape and x.shape[1:] == (35, 3) and x.shape[0] >= 2000
    assert np.all(np.isfinite(x)) and np.all(np.isfinite(f))
    # the sequence is OpenMM's test.pdb protein (read here from OpenMM, not from our files)
    from openmm import app

    src = os.path.join(os.path.dirname(app.__file__), "data", "test.pdb")
    assert list(extra["residue_names"]) == _protein_residues(src)
    assert _protein_residues(os.path.join(DATA, "villin_ca.pdb")) == list(extra["residue_names"])
    assert float(extra["temperature_K"]) == 300.0
    # a 300 K run: the kinetic temperature of the all-atom frames averages to it
    assert abs(extra["kinetic_temperature"].mean() - 300.0) < 5.0
    # trans peptide bonds: consecutive Cα about 3.8-3.9 Å apart in every frame, on average
    # as in the source structure (test.pdb, read here: 3.88 Å)
    d = np.linalg.norm(np.diff(x, axis=1), axis=-1)
    src_ca = np.array([[float(line[30:38]), float(line[38:46]), float(line[46:54])]
                       for line in open(src) if line.startswith("ATOM")
                       and line[12:16].strip() == "CA"])
    d_src = np.linalg.norm(np.diff(src_ca, axis=0), axis=-1).mean()
    assert abs(d.mean() - d_src) < 0.03 and d.min() > 3.5 and d.max() < 4.2
    # no two non-adjacent Cα closer than 3.8 Å (no overlaps, nothing folded through itself)
    i, j = np.triu_indices(35, 2)
    assert np.linalg.norm(x[:, i] - x[:, j], axis=-1).min() > 3.8
    # forces in eV/Å: thermal forces on a residue's Cα cluster are ~1 eV/Å, not ~100
    # (kJ/mol/nm) or ~20 (kcal/mol/Å)
    assert 0.3 < np.sqrt(np.mean(f ** 2)) < 3.0


def test_rmsd_and_rg_recomputed_independently(data):
    x, _, extra, _ = data
    ref = extra["reference_coordinates"]
    xs = x[::50].astype(np.float64)
    # Kabsch with numpy's SVD (not biojax.core.geometry)
    rm = []
    for y in xs:
        p, q = y - y.mean(0), ref - ref.mean(0)
        u, _, vt = np.linalg.svd(p.T @ q)
        dd = np.sign(np.linalg.det(u @ vt))
        r = u @ np.diag([1, 1, dd]) @ vt
        rm.append(np.sqrt(np.mean(np.sum((p @ r - q) ** 2, -1))))
    np.testing.assert_allclose(extra["rmsd"][::50], rm, atol=2e-3)
    rg = np.sqrt(np.mean(np.sum((xs - xs.mean(1, keepdims=True)) ** 2, -1), -1))
    np.testing.assert_allclose(extra["rg"][::50], rg, atol=1e-3)
    # a folded 35-residue headpiece: Rg about 9-10 Å, RMSD to the minimised structure small
    assert 8.5 < extra["rg"].mean() < 10.5 and extra["rmsd"].mean() < 3.0


def test_mapped_forces_match_openmm_and_the_cg_mapping(data):
    """The shipped bead forces are OpenMM's own forces (recomputed here on stored all-atom
    frames, with OpenMM's CustomGBForce OBC2, not the recipe's native replacement) summed
    over each Cα and its hydrogens, converted with ase.units; positions are the Cα atoms,
    as biojax.cg.mapping.from_topology(scheme="ca") maps them."""
    import openmm
    import openmm.unit as u
    from openmm import app

    from biojax.cg import mapping as cgmap

    x, f, extra, aa = data
    pdb = app.PDBFile(os.path.join(DATA, "villin_aa.pdb"))
    ff = app.ForceField("amber14-all.xml", "implicit/obc2.xml")
    system = ff.createSystem(pdb.topology, nonbondedMethod=app.NoCutoff, constraints=None)
    ctx = openmm.Context(system, openmm.VerletIntegrator(0.001),
                         openmm.Platform.getPlatformByName("Reference"))
    top = pdb.topology
    ca = [a.index for a in top.atoms() if a.name == "CA"]
    m = cgmap.from_topology(os.path.join(DATA, "villin_aa.pdb"), "ca")
    assert [g[0] for g in m.groups] == ca
    for k in (0, len(aa["frame"]) - 1):
        frame = int(aa["frame"][k])
        pos = aa["positions"][k].astype(np.float64)
        np.testing.assert_allclose(cgmap.map_positions(m, pos), x[frame], atol=1e-5)
        ctx.setPositions(pos * 0.1)
        fo = ctx.getState(getForces=True).getForces(asNumpy=True).value_in_unit(
            u.kilojoule_per_mole / u.nanometer) * KJMOL_NM
        np.testing.assert_allclose(aa["forces"][k], fo, rtol=1e-3, atol=2e-3)
        cluster = np.stack([fo[a.index] + sum(fo[b.index] for b in _bonded_h(top, a))
                            for a in top.atoms() if a.name == "CA"])
        np.testing.assert_allclose(f[frame], cluster, rtol=1e-3, atol=2e-3)
        # the Cα atom alone differs by the force on its hydrogen(s): not the same array
        assert np.abs(cgmap.map_forces(m, fo) - cluster).max() > 0.1


def _bonded_h(top, atom):
    out = []
    for a, b in top.bonds():
        for p, q in ((a, b), (b, a)):
            if p.index == atom.index and q.element.symbol == "H":
                out.append(q)
    return out


def test_mapped_forces_obey_generalised_equipartition(data):
    """For Cα positions X and their mapped forces F (mean force + noise), integration by
    parts over the 3B − 3 internal coordinates gives ⟨Σ_b (X_b − X̄)·F_b⟩ = −(3B − 3) kT.
    The shipped forces (Cα + its rigidly constrained H) satisfy it within 2 block standard
    errors; the force on the Cα atom alone, which misses the constraint, does not (it is
    off by > 4 errors): this is why the recipe sums the cluster."""
    x, f, extra, _ = data
    kT = units.kB * 300.0
    expected = (3 * x.shape[1] - 3) * kT
    xc = x.astype(np.float64) - x.mean(1, keepdims=True)

    def virial(forces):
        v = -np.sum(xc * forces.astype(np.float64), axis=(1, 2))
        blocks = v[: len(v) // 10 * 10].reshape(10, -1).mean(1)
        return v.mean(), blocks.std(ddof=1) / np.sqrt(10)

    mean, err = virial(f)
    assert abs(mean - expected) < 2 * err, (mean, err, expected)
    mean_ca, err_ca = virial(extra["forces_ca_atom_only"])
    assert abs(mean_ca - expected) > 4 * err_ca, (mean_ca, err_ca, expected)


@pytest.mark.slow
def test_short_force_matching_and_stable_cg_md(tmp_path):
    """villin_ca.toml end to end, shortened (slow: the stage compiles training, evaluation
    and MD): prior fitted on the shipped frames, a tiny SchNet force-matched for one
    epoch, CG Langevin MD of 2 replicas x 1000 steps (2 ps):
    no blow-up, the chain stays intact, and the prior alone already explains part of the
    mapped forces (its held-out RMSE is below the forces' own rms)."""
    import ase.io

    from biojax.cg.stage import load_config, run

    cfg = load_config(CONFIG, ["data.n_frames=200", "training.epochs=1", "model.features=8",
                               "model.n_interactions=1", "training.batch_size=160",
                               "simulate.steps=1000", "simulate.replicas=2",
                               "simulate.chunk_steps=1000", "simulate.frame_every=100",
                               "simulate.observe_every=100", "simulate.plots=false"])
    summary = run(cfg, tmp_path / "cg", log=lambda msg: None)
    x, f, _, _ = data_arrays()
    held = summary["held_out_forces"]
    prior_rmse = summary["held_out_forces_prior_only"]["rmse_eV_A"]
    assert held["frames"] == 20 and np.isfinite(held["rmse_eV_A"])
    assert prior_rmse < 0.97 * np.sqrt(np.mean(f[:200] ** 2))
    assert summary["simulation"]["steps_run"] == 1000
    for r in range(2):
        frames = ase.io.read(tmp_path / "cg" / "simulate" / f"replica_{r:03d}" /
                             "trajectory.extxyz", ":")
        assert len(frames) == 11
        y = np.stack([a.positions for a in frames])
        assert np.all(np.isfinite(y))
        d = np.linalg.norm(np.diff(y, axis=1), axis=-1)
        assert d.min() > 3.3 and d.max() < 4.5, (d.min(), d.max())
    ev = summary["evaluation"]
    assert ev["frames_model"] == 2 * 10 and ev["rg"]["model_mean_A"] < 14.0


def data_arrays():
    return (np.load(os.path.join(DATA, "coordinates.npy")),
            np.load(os.path.join(DATA, "forces.npy")), None, None)
