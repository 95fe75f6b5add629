"""Coarse-graining: mapping, priors, the CG potential, force matching and the stage."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from biojax.cg import mapping as cgmap
from biojax.cg.prior import Prior, chain_topology, fit_prior, nonbonded_pairs
from biojax.core.errors import ConfigError, DataError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ALA2 = os.path.join(ROOT, "examples", "data", "cgnet_ala2")
CONFIG = os.path.join(ROOT, "examples", "cg_ala2", "ala2_cg.toml")


# ---------------------------------------------------------------------- mapping
def test_force_mapping_recovers_known_mean_force_of_a_harmonic_system():
    """Gaussian fine-grained system U = ½ xᵀKx: the PMF of the centre-of-mass beads is
    ½ kT yᵀΣ_y⁻¹y with Σ_y = M C Mᵀ (C = kT K⁻¹), so the least-squares linear fit of the
    mapped (summed) forces against the bead positions must give −kT Σ_y⁻¹."""
    rng = np.random.default_rng(0)
    n, kT = 6, 0.7
    masses = np.array([1.0, 3.0, 2.0, 5.0, 1.0, 4.0])
    springs = [(0, 1, 4.0), (1, 2, 1.5), (2, 3, 3.0), (3, 4, 1.0), (4, 5, 2.5), (0, 5, 0.8)]
    K = np.diag(np.full(n, 0.3))  # a weak tether keeps K positive definite
    for i, j, k in springs:
        K[i, i] += k
        K[j, j] += k
        K[i, j] -= k
        K[j, i] -= k
    C = kT * np.linalg.inv(K)
    x = rng.multivariate_normal(np.zeros(n), C, size=(60000, 3)).transpose(0, 2, 1)  # (F,N,3)
    f = -np.einsum("ij,fjk->fik", K, x)
    m = cgmap.from_groups([(0, 1), (2, 3), (4, 5)], masses, numbers=[6] * n)
    y, fy = cgmap.map_positions(m, x), cgmap.map_forces(m, f)
    Y = y.transpose(0, 2, 1).reshape(-1, 3)  # every Cartesian axis is one sample
    FY = fy.transpose(0, 2, 1).reshape(-1, 3)
    A_fit = -np.linalg.lstsq(Y, FY, rcond=None)[0].T
    A_exact = kT * np.linalg.inv(m.matrix @ C @ m.matrix.T)
    np.testing.assert_allclose(A_fit, A_exact, rtol=0.03, atol=0.03 * np.abs(A_exact).max())
    # averaging the forces instead of summing them is not consistent: it must fail
    F_avg = np.einsum("bn,...nk->...bk", m.matrix, f).transpose(0, 2, 1).reshape(-1, 3)
    A_avg = -np.linalg.lstsq(Y, F_avg, rcond=None)[0].T
    assert np.abs(A_avg - A_exact).max() > 0.2 * np.abs(A_exact).max()


def test_mapping_weights_masses_and_bad_groups():
    m = cgmap.from_groups([(0, 1), (2,)], [12.0, 4.0, 16.0], numbers=[6, 1, 8], center="mass")
    np.testing.assert_allclose(m.matrix, [[0.75, 0.25, 0], [0, 0, 1]])
    assert m.bead_numbers == (6, 8) and m.bead_masses == (16.0, 16.0)
    g = cgmap.from_groups([(0, 1), (2,)], [12.0, 4.0, 16.0], numbers=[6, 1, 8],
                          center="geometry")
    np.testing.assert_allclose(g.matrix[0], [0.5, 0.5, 0])
    back = cgmap.Mapping.from_dict(json.loads(json.dumps(m.to_dict())))
    np.testing.assert_array_equal(back.matrix, m.matrix)
    assert (back.groups, back.bead_numbers, back.bead_masses) == (m.groups, m.bead_numbers,
                                                                  m.bead_masses)
    with pytest.raises(ConfigError, match=r"leaves 1 atom\(s\) unassigned \(2"):
        cgmap.from_groups([(0, 1)], [1.0, 1.0, 1.0], numbers=[6] * 3)
    with pytest.raises(ConfigError, match=r"names atom\(s\) \[7\] that do not exist"):
        cgmap.from_groups([(0, 1), (2, 7)], [1.0] * 3, numbers=[6] * 3)
    with pytest.raises(ConfigError, match="must not overlap"):
        cgmap.from_groups([(0, 1), (1, 2)], [1.0] * 3, numbers=[6] * 3)
    with pytest.raises(DataError, match=r"expects \(\.\.\., 3, 3\)"):
        cgmap.map_positions(m, np.zeros((2, 4, 3)))


def test_topology_builders_on_a_real_protein():
    import openmm.app

    pdb = os.path.join(os.path.dirname(openmm.app.__file__), "data", "test.pdb")
    ca = cgmap.from_topology(pdb, "ca")
    assert ca.n_beads == 35 and set(ca.bead_numbers) == {6}
    assert all(50 < m < 200 for m in ca.bead_masses)  # residue masses
    bb = cgmap.from_topology(pdb, "backbone")
    assert bb.n_beads == 3 * 35 and bb.bead_names[:3] == ("LEU1:N", "LEU1:CA", "LEU1:C")
    with pytest.raises(DataError, match="is not water"):
        cgmap.from_topology(pdb, "water")
    with pytest.raises(ConfigError, match="unknown mapping scheme"):
        cgmap.from_topology(pdb, "martini")


# ---------------------------------------------------------------------- priors
def _sample_radial(rng, n, kT, k, x0, jacobian):
    """Rejection samples of p(x) ∝ J(x) exp(−k (x − x0)² / 2kT)."""
    out = []
    sd = np.sqrt(kT / k)
    while sum(len(o) for o in out) < n:
        x = rng.normal(x0, sd, 4 * n)
        j = jacobian(x)
        keep = rng.random(x.size) < np.clip(j / jacobian(x0 + 5 * sd), 0, 1)
        out.append(x[keep & (j > 0)])
    return np.concatenate(out)[:n]


def test_boltzmann_inversion_recovers_harmonic_bond_and_angle():
    rng = np.random.default_rng(1)
    kT, n = 0.025, 40000
    r0, kb, t0, ka = 3.8, 2.0, np.radians(110.0), 3.0
    r1 = _sample_radial(rng, n, kT, kb, r0, lambda r: r ** 2)
    r2 = _sample_radial(rng, n, kT, kb, r0, lambda r: r ** 2)
    theta = _sample_radial(rng, n, kT, ka, t0, lambda t: np.where((t > 0) & (t < np.pi),
                                                                  np.sin(t), 0))
    # three beads: 1 at the origin, 0 along x, 2 in the xy plane at angle θ; random rotation
    x = np.zeros((n, 3, 3))
    x[:, 0, 0] = r1
    x[:, 2, 0], x[:, 2, 1] = r2 * np.cos(theta), r2 * np.sin(theta)
    q, _ = np.linalg.qr(rng.normal(size=(n, 3, 3)))
    x = np.einsum("fij,fkj->fki", q, x) + rng.normal(size=(n, 1, 3))
    prior = fit_prior(x, kT, bonds=[[0, 1], [1, 2]], angles=[[0, 1, 2]])
    np.testing.assert_allclose(prior.bond_r0, [r0, r0], rtol=2e-3)
    np.testing.assert_allclose(prior.bond_k, [kb, kb], rtol=0.06)
    np.testing.assert_allclose(prior.angle_theta0, [t0], rtol=3e-3)
    np.testing.assert_allclose(prior.angle_k, [ka], rtol=0.06)


def test_prior_forces_match_finite_differences_and_roundtrip():
    rng = np.random.default_rng(2)
    frames = np.cumsum(rng.normal(0, 1.0, (300, 6, 3)) + [3.0, 0, 0], axis=1)
    top = chain_topology(6)
    pairs = nonbonded_pairs(6, top["bonds"])
    assert {tuple(p) for p in pairs} == {(0, 3), (0, 4), (0, 5), (1, 4), (1, 5), (2, 5)}
    prior = fit_prior(frames, 0.025, top["bonds"], top["angles"], top["dihedrals"], pairs)
    again = Prior.from_dict(json.loads(json.dumps(prior.to_dict())))
    import jax
    import jax.numpy as jnp

    jax.config.update("jax_enable_x64", True)
    try:
        e = prior.energy_fn(lambda a, b, **kw: a - b)
        e2 = again.energy_fn(lambda a, b, **kw: a - b)
        x = jnp.asarray(frames[0], jnp.float64)
        g = np.asarray(jax.grad(e)(x))
        h = 1e-5
        fd = np.zeros_like(g)
        for i in range(6):
            for k in range(3):
                d = np.zeros((6, 3))
                d[i, k] = h
                fd[i, k] = (float(e(x + d)) - float(e(x - d))) / (2 * h)
        np.testing.assert_allclose(g, fd, rtol=1e-5, atol=1e-7)
        assert float(e(x)) == pytest.approx(float(e2(x)), rel=1e-6)
    finally:
        jax.config.update("jax_enable_x64", False)


# ---------------------------------------------------------------------- CG potential
def test_cg_model_saved_and_loaded_gives_identical_forces(tmp_path):
    from biojax.cg.potential import (CGPotential, bead_forces_fn, load_cg_potential,
                                     save_cg_potential)
    from biojax.nn.models import init_potential

    x = np.load(os.path.join(ALA2, "ala2_coordinates.npy"))[:200].astype(np.float64)
    numbers = [6, 7, 6, 6, 7]
    m = cgmap.from_groups([(i,) for i in range(5)], [12.0, 14.0, 12.0, 12.0, 14.0], numbers)
    top = chain_topology(5)
    prior = fit_prior(x, 0.0258, top["bonds"], top["angles"], top["dihedrals"],
                      nonbonded_pairs(5, top["bonds"]))
    learned = init_potential({"name": "schnet", "features": 16, "n_interactions": 1},
                             [6, 7], 8.0, scale=0.3)
    cg = CGPotential(learned, prior, m, 300.0)
    save_cg_potential(cg, tmp_path / "cg")
    back = load_cg_potential(tmp_path / "cg")
    f1 = bead_forces_fn(cg, numbers)(x[:20])
    f2 = bead_forces_fn(back, numbers)(x[:20])
    assert np.abs(f1).max() > 1e-3
    np.testing.assert_array_equal(f1, f2)
    assert back.mapping.bead_masses == m.bead_masses and back.temperature_K == 300.0
    prior_only = bead_forces_fn(cg, numbers, with_learned=False)(x[:20])
    assert np.abs(f1 - prior_only).max() > 1e-4  # the learned part contributes


# ---------------------------------------------------------------------- bad input
def _config(tmp_path, **data):
    text = open(CONFIG).read().replace('"../data/cgnet_ala2/', f'"{ALA2}/')
    p = tmp_path / "cg.toml"
    p.write_text(text)
    return p


def test_frame_count_mismatch_and_bad_files_are_clear_errors(tmp_path):
    from biojax.cg.forcematch import load_bead_data
    from biojax.cg.stage import load_config

    x = np.load(os.path.join(ALA2, "ala2_coordinates.npy"))[:50]
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "f.npy", x[:40])
    cfg = load_config(_config(tmp_path), [f"data.coordinates={tmp_path / 'x.npy'}",
                                          f"data.forces={tmp_path / 'f.npy'}"])
    with pytest.raises(DataError, match=r"forces have shape \(40, 5, 3\) but the coordinates "
                                         r"\(50, 5, 3\)"):
        load_bead_data(cfg)
    bad = x.copy()
    bad[7, 2, 1] = np.nan
    np.save(tmp_path / "nan.npy", bad)
    cfg = load_config(_config(tmp_path), [f"data.coordinates={tmp_path / 'nan.npy'}"])
    with pytest.raises(DataError, match="NaN or inf \\(first in frame 7\\)"):
        load_bead_data(cfg)
    with pytest.raises(ConfigError, match="'colour'"):
        load_config(_config(tmp_path), ["prior.colour=1"])
    with pytest.raises(ConfigError, match="method"):
        load_config(_config(tmp_path), ["method=magic"])
    cfg = load_config(_config(tmp_path), [f"data.topology={tmp_path / 'none.pdb'}"])
    with pytest.raises(DataError, match="none.pdb"):
        load_bead_data(cfg)


# ---------------------------------------------------------------------- the stage
def test_coarse_grain_cli_prior_only(tmp_path):
    """The CLI end to end on 600 CGnet frames, prior-only: CG MD runs, evaluation and the
    model are written, and a finished run directory is not overwritten. (Force matching
    through the stage, in process: tests/test_cg_villin.py.)"""
    cfg = _config(tmp_path)
    common = ["--set", "data.n_frames=600", "--set", "simulate.steps=400",
              "--set", "simulate.replicas=2", "--set", "simulate.frame_every=100",
              "--set", "simulate.observe_every=100", "--set", "simulate.chunk_steps=200",
              "--quiet"]
    out = tmp_path / "prior"
    run = lambda *a: subprocess.run([sys.executable, "-m", "biojax.cli", "coarse-grain", str(cfg),
                                     *a], capture_output=True, text=True, cwd=tmp_path)
    r = run("--out", str(out), "--set", "method=prior-only", *common)
    assert r.returncode == 0, r.stderr
    summary = json.loads((out / "summary.json").read_text())
    ev = summary["evaluation"]
    assert ev["frames_model"] == 2 * 4 and 0 <= ev["js_divergence"] <= np.log(2)
    assert set(ev["basins"]) == {"beta/PII", "alphaR", "alphaL", "other"}
    assert (out / "fes_comparison.png").stat().st_size > 1000
    assert (out / "model" / "cg_model.json").is_file()
    r = run("--out", str(out), "--set", "method=prior-only", *common)
    assert r.returncode == 1 and "already holds a coarse-grained run" in r.stderr


def test_dihedral_inversion_of_a_narrow_distribution_stays_bounded():
    """A helix-like narrow dihedral leaves most bins empty; the fit must still put its
    minimum at the mode and stay within a few kT (unregularised it swung by ±70 eV)."""
    from biojax.cg.prior import fourier_inversion

    kT = 0.0258
    phi = np.random.default_rng(0).normal(-1.0, 0.15, 5000)
    cos, sin = fourier_inversion(phi, kT, 3)
    grid = np.linspace(-np.pi, np.pi, 721)
    n = np.arange(1, 4)
    u = np.cos(np.outer(grid, n)) @ cos + np.sin(np.outer(grid, n)) @ sin
    assert abs(grid[np.argmin(u)] - (-1.0)) < 0.2
    assert np.ptp(u) < 20 * kT and np.abs(np.concatenate([cos, sin])).max() < 5 * kT
