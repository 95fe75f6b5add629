"""Conformation generators and attributions of potentials (biojax.generative: internal,
conformations, explain, explain_stage; issue #16)."""

import json
import os

import ase
import ase.io
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from biojax.core.errors import BiojaxError, ConfigError, DataError
from biojax.generative import conformations as C
from biojax.generative import internal as I

HERE = os.path.dirname(__file__)
STARTS = os.path.join(HERE, "..", "examples", "alanine_dipeptide_starts.extxyz")
MODEL = os.path.join(HERE, "..", "examples", "models", "ala2_painn")


def _ala2():
    frames = ase.io.read(STARTS, ":")
    return np.stack([a.positions for a in frames]).astype(np.float32), frames[0].numbers


def test_internal_round_trip_and_jacobian():
    x, numbers = _ala2()
    zm = I.build_zmatrix(I.bonds_from_positions(x[0], numbers), len(numbers))
    assert zm.n_internal == 60 and sorted(zm.order.tolist()) == list(range(22))
    z = I.to_internal(zm, x)
    xc = I.to_cartesian(zm, z)
    # internal -> Cartesian -> internal is exact; Cartesian -> internal -> Cartesian is a
    # rigid motion (every interatomic distance kept, RMSD after superposition ~ 0)
    assert float(jnp.max(jnp.abs(I.wrap(I.to_internal(zm, xc) - z)))) < 2e-5
    d = lambda p: jnp.linalg.norm(p[:, :, None] - p[:, None], axis=-1)  # noqa: E731
    assert float(jnp.max(jnp.abs(d(xc) - d(jnp.asarray(x))))) < 1e-4
    from biojax.core.geometry import rmsd

    assert float(jnp.max(rmsd(xc, jnp.asarray(x)))) < 1e-4
    # canonical frame: first atom at the origin, second on +x, third in the xy plane
    first = xc[:, zm.order[:3]]
    assert float(jnp.max(jnp.abs(first[:, 0]))) == 0.0
    assert float(jnp.max(jnp.abs(first[:, 1, 1:]))) == 0.0 and float(first[0, 2, 2]) == 0.0
    # log J = 2 Σ log b + Σ log sin a: the volume of a 4-atom chain (3 translations, 3
    # rotations, 6 internal coordinates) from the full 12 × 12 Jacobian of the map
    zm4 = I.build_zmatrix([[0, 1], [1, 2], [2, 3]], 4, root=0)
    z4 = jnp.array([1.1, 1.4, 0.9, 1.9, 2.1, 0.7])

    def full(q):  # translation t, rotation vector w, internal coordinates
        t, w, zz = q[:3], q[3:6], q[6:]
        th = jnp.sqrt(jnp.sum(w * w) + 1e-30)
        k = jnp.array([[0, -w[2], w[1]], [w[2], 0, -w[0]], [-w[1], w[0], 0]]) / th
        r = jnp.eye(3) + jnp.sin(th) * k + (1 - jnp.cos(th)) * k @ k
        return ((I.to_cartesian(zm4, zz) @ r.T) + t).ravel()

    w0 = jnp.array([1e-3, 2e-3, 3e-3])  # near the identity: rotation Jacobian ≈ 1
    q = jnp.concatenate([jnp.zeros(3), w0, z4])
    logdet = np.linalg.slogdet(np.asarray(jax.jacfwd(full)(q), np.float64))[1]
    assert logdet == pytest.approx(float(I.log_jacobian(zm4, z4)), abs=2e-3)


def test_internal_bad_input():
    with pytest.raises(DataError, match="disconnected.*\\[3, 4\\]"):
        I.build_zmatrix([[0, 1], [1, 2], [3, 4]], 5)
    with pytest.raises(DataError, match="at least 3 atoms"):
        I.build_zmatrix([[0, 1]], 2)
    x, _ = _ala2()
    x[2, 5, 1] = np.nan
    with pytest.raises(DataError, match="NaN.*index \\(2, 5, 1\\)"):
        I.check_positions(x, "frames.extxyz")


def test_transform_and_flow_log_density():
    x, numbers = _ala2()
    zm = I.build_zmatrix(I.bonds_from_positions(x[0], numbers), 22)
    z = np.asarray(I.to_internal(zm, x))
    rng = np.random.default_rng(0)
    zs = z[rng.integers(0, 4, 64)] + rng.normal(0, 0.02, (64, 60)).astype(np.float32)
    tf = C.fit_transform(zm, zs)
    y, logdet = tf.forward(jnp.asarray(zs[:3]))
    back = tf.inverse(y)
    assert float(jnp.max(jnp.abs(I.wrap(back - zs[:3])))) < 1e-4
    jac = jax.vmap(jax.jacfwd(lambda v: tf.forward(v)[0]))(jnp.asarray(zs[:3]))
    assert np.allclose(np.linalg.slogdet(np.asarray(jac, np.float64))[1], logdet, atol=1e-3)
    # a tiny RealNVP with random (non-identity) couplings: log q(y) equals the base
    # density of its preimage plus the log|det| of a finite-difference Jacobian of the
    # sampling map, and the density integrates to 1 over the plane
    flow = C.RealNVP(dim=2, layers=3, hidden=8, scale_cap=1.0)
    params = flow.init(jax.random.PRNGKey(1), jnp.zeros((1, 2)))
    params = jax.tree_util.tree_map(
        lambda p: p + 0.3 * jax.random.normal(jax.random.PRNGKey(p.size), p.shape), params)
    u = jnp.array([[0.3, -0.7], [1.2, 0.4]])
    fwd = jax.jit(lambda v: flow.apply(params, v, method=C.RealNVP.sample_from))
    y = fwd(u)
    h = 1e-2
    for k in range(2):
        cols = [(fwd(u.at[k, c].add(h))[k] - fwd(u.at[k, c].add(-h))[k]) / (2 * h)
                for c in range(2)]
        jnum = np.stack([np.asarray(c, np.float64) for c in cols], 1)
        expect = (-0.5 * float(jnp.sum(u[k] ** 2)) - np.log(2 * np.pi)
                  - np.linalg.slogdet(jnum)[1])
        assert float(flow.apply(params, y[k:k + 1])[0]) == pytest.approx(expect, abs=2e-3)
    g = np.linspace(-16, 16, 641)
    grid = jnp.asarray(np.stack(np.meshgrid(g, g), -1).reshape(-1, 2), jnp.float32)
    mass = float(jnp.sum(jnp.exp(jax.jit(flow.apply)(params, grid)))) * (g[1] - g[0]) ** 2
    assert mass == pytest.approx(1.0, abs=0.02)


def _toy_data(n=400, dim=6, seed=0):
    rng = np.random.default_rng(seed)
    h = rng.normal(size=(n, 2))
    return (np.tanh(h @ rng.normal(size=(2, dim))) + 0.05 * rng.normal(size=(n, dim))
            ).astype(np.float32)


def test_vae_elbo_improves(tmp_path):
    y = _toy_data()
    gen = C.vae_generator(6, latent=2, hidden=32, iw_samples=8)
    key = jax.random.PRNGKey(3)
    before = -float(gen.loss(gen.init(jax.random.PRNGKey(0)), jnp.asarray(y), key)[0])
    params = C.train_generator(gen, y, steps=150, batch_size=64, learning_rate=3e-3,
                               workdir=str(tmp_path), name="vae", progress=False,
                               log=lambda m: None)
    after = -float(gen.loss(params, jnp.asarray(y), key)[0])
    assert after > before + 2.0, (before, after)   # nats per point
    log = [json.loads(line) for line in open(tmp_path / "vae.metrics.jsonl")]
    assert log[-1]["step"] == 150 and log[-1]["neg_elbo"] < log[0]["neg_elbo"]
    # the importance-weighted estimate is a tighter bound than the one-sample ELBO
    lq = float(jnp.mean(gen.log_prob(params, jnp.asarray(y), key)))
    assert lq > after - 0.5


def test_generator_resume_equals_uninterrupted(tmp_path):
    y = _toy_data(dim=4)
    gen = C.flow_generator(4, layers=2, hidden=16)
    kw = dict(steps=40, batch_size=32, learning_rate=1e-3, name="flow", progress=False,
              log=lambda m: None, checkpoint_every=20, log_every=10)
    full = C.train_generator(gen, y, workdir=str(tmp_path / "a"), **kw)

    class Killed(Exception):
        pass

    def kill(k):
        if k == 25:
            raise Killed

    with pytest.raises(Killed):
        C.train_generator(gen, y, workdir=str(tmp_path / "b"), on_step=kill, **kw)
    with pytest.raises(ConfigError, match="--resume"):
        C.train_generator(gen, y, workdir=str(tmp_path / "b"), **kw)
    resumed = C.train_generator(gen, y, workdir=str(tmp_path / "b"), resume=True, **kw)
    for a, b in zip(jax.tree_util.tree_leaves(full), jax.tree_util.tree_leaves(resumed)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    steps = [json.loads(line)["step"] for line in open(tmp_path / "b" / "flow.metrics.jsonl")]
    assert steps == [10, 20, 30, 40]


def test_importance_weights_recover_a_known_target():
    # samples from q = N(0, 2²) reweighted to p ∝ exp(-x²/2): weighted mean of x² → 1
    rng = np.random.default_rng(0)
    s = rng.normal(0, 2.0, 20000)
    w = C.importance_weights(-0.5 * s ** 2, -0.5 * (s / 2.0) ** 2)
    assert np.sum(w * s ** 2) == pytest.approx(1.0, abs=0.05)
    ess = C.effective_sample_size(w)
    assert 0.3 * len(s) < ess < 0.8 * len(s)   # analytic: 20000 · √3/2 / ... ≈ 0.58 n
    assert C.effective_sample_size(np.ones(10)) == pytest.approx(10.0)
    # populations of φ/ψ regions and their importance-sampling errors (binomial for
    # equal weights)
    from biojax.analysis.config import RegionConfig

    left = [RegionConfig("left", (((-180.0, 0.0), (-180.0, 180.1)),))]
    pp = rng.uniform(-180, 180, (1000, 2))
    p = C.region_populations(pp, left)["left"]
    assert p == pytest.approx(np.mean(pp[:, 0] < 0))
    err = C.region_populations(pp, left, np.ones(1000), errors=True)["left"]
    assert err == pytest.approx(np.sqrt(p * (1 - p) / 1000), rel=1e-6)


def _write_frames(path, n=60, seed=0):
    x, numbers = _ala2()
    rng = np.random.default_rng(seed)
    frames = [ase.Atoms(numbers=numbers, positions=x[i % 4] + rng.normal(0, 0.03, (22, 3)))
              for i in range(n)]
    ase.io.write(path, frames, format="extxyz")


def test_explain_cli_tiny(tmp_path):
    from biojax.cli import main

    traj = tmp_path / "traj.extxyz"
    _write_frames(traj)
    x, numbers = _ala2()   # the C7eq start and two thermal-size displacements of it
    rng = np.random.default_rng(1)
    ase.io.write(tmp_path / "near.extxyz", [
        ase.Atoms(numbers=numbers, positions=x[0] + rng.normal(0, s, (22, 3)))
        for s in (0.0, 0.05, 0.05)], format="extxyz")
    cfg = tmp_path / "explain.toml"
    cfg.write_text(f"""
[explain]
potential = "{os.path.abspath(MODEL)}"
structures = "near.extxyz"
baseline = 0
ig_steps = 16
internal = false
plots = false

[explain.states]
trajectory = ["traj.extxyz"]
dihedrals = {{phi = [4, 6, 8, 14], psi = [6, 8, 14, 16]}}
distance_atoms = [4, 6, 8, 14]
k = 2
steps = 100
ig_steps = 8
""")
    out = tmp_path / "out"
    assert main(["explain", str(cfg), "--out", str(out), "--quiet"]) == 0
    res = json.load(open(out / "explain.json"))
    # per-atom energies sum to the total, and the total is the Potential's energy by its
    # other path (the ASE calculator: jax-md neighbor list, reference energies added)
    assert res["decomposition_max_error_eV"] < 1e-5
    from biojax.calculator import BiojaxCalculator
    from biojax.nn.io import load_potential

    pot = load_potential(MODEL)
    atoms = ase.io.read(tmp_path / "near.extxyz", 1)
    atoms.calc = BiojaxCalculator(pot)
    total = atoms.get_potential_energy() - pot.reference_energy(numbers)
    per_atom = np.asarray(res["per_atom_energies_eV"])
    assert per_atom.shape == (3, 22) and per_atom[1].sum() == pytest.approx(total, abs=2e-5)
    assert abs(per_atom[1] - per_atom[0]).max() > 1e-3   # not a constant per species
    # integrated gradients of the energy: complete up to the quadrature error
    for rec in res["integrated_gradients"]:
        assert abs(sum(rec["per_atom"]) - rec["delta"]) == pytest.approx(
            abs(rec["completeness_error"]), abs=1e-5)
        assert abs(rec["completeness_error"]) < 0.05 * max(abs(rec["delta"]), 0.1)
    assert len(res["integrated_gradients"]) == 2
    st = res["states"]
    assert st["test_accuracy"] >= 0.9 and len(st["ig_share"]) == 4 + 6
    assert st["ig_completeness_max_error"] < 0.05
    # a second run into the same folder is refused; an unknown key is named
    assert main(["explain", str(cfg), "--out", str(out), "--quiet"]) == 1
    bad = tmp_path / "bad.toml"
    bad.write_text(cfg.read_text().replace("ig_steps = 16\ninternal", "ig_step = 16\ninternal"))
    with pytest.raises(ConfigError, match="unknown key.*'ig_step'"):
        from biojax.generative.explain_stage import load_config

        load_config(bad)


def test_generate_conformations_tiny(tmp_path):
    traj = tmp_path / "traj.extxyz"
    _write_frames(traj, n=120)
    cfg = tmp_path / "gen.toml"
    text = f"""
[generate]
kind = "conformations"
trajectory = ["traj.extxyz"]
potential = "{os.path.abspath(MODEL)}"
n_samples = 64
phi = [4, 6, 8, 14]
psi = [6, 8, 14, 16]
oversample = {{left = 3.0}}           # training frames in "left" drawn 3x as often

[[generate.regions]]
name = "left"
boxes = [[[-180.0, 0.0], [-180.0, 180.1]]]

[[generate.generators]]
name = "flow"
steps = 20
options = {{layers = 2, hidden = 16}}
"""
    cfg.write_text(text)
    m = C.run(str(cfg), str(tmp_path / "run"), progress=False, log=lambda s: None)
    for name in ("flow",):
        g = m["generators"][name]
        assert 0.0 <= g["sane_bond_fraction"] <= 1.0 and 1.0 <= g["ess"] <= 64.0
        assert 0.0 <= g["js_phi_psi"] <= np.log(2) + 1e-6
        assert sum(g["populations_reweighted"].values()) <= 1.0 + 1e-9
        assert len(ase.io.read(tmp_path / "run" / "samples" / f"{name}.extxyz", ":")) <= 64
    assert m["generators"]["flow"]["density"].startswith("exact")
    assert json.load(open(tmp_path / "run" / "metrics.json"))["n_frames"] == 120
    # bad input: an unknown key, NaN coordinates, a disconnected molecule
    (tmp_path / "bad.toml").write_text(text.replace("n_samples", "n_sample"))
    with pytest.raises(ConfigError, match="unknown key.*'n_sample'"):
        C.run(str(tmp_path / "bad.toml"), str(tmp_path / "bad"), progress=False)
    (tmp_path / "over.toml").write_text(text.replace("left = 3.0", "right = 3.0"))
    with pytest.raises(ConfigError, match=r"oversample: regions \['right'\] need"):
        C.run(str(tmp_path / "over.toml"), str(tmp_path / "over"), progress=False)
    frames = ase.io.read(traj, ":")
    frames[7].positions[3, 0] = np.nan
    ase.io.write(tmp_path / "nan.extxyz", frames, format="extxyz")
    (tmp_path / "nan.toml").write_text(text.replace("traj.extxyz", "nan.extxyz"))
    with pytest.raises(BiojaxError, match="NaN"):
        C.run(str(tmp_path / "nan.toml"), str(tmp_path / "nan"), progress=False)
    (tmp_path / "split.toml").write_text(text.replace(
        'n_samples = 64', 'n_samples = 64\nbonds = [[0, 1], [1, 2]]'))
    with pytest.raises(DataError, match="disconnected"):
        C.run(str(tmp_path / "split.toml"), str(tmp_path / "split"), progress=False)
