"""Tests for biojax.analysis: each numeric piece against a peer we did not write
(scikit-learn, NumPy, mdtraj, scipy) or a known answer, plus bad-input errors and the
``biojax analyze`` command on the real CG alanine dipeptide data."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from biojax.analysis import cluster, decomposition, features, fes, msm, selection
from biojax.analysis.trajectory import load_trajectory, read_topology
from biojax.core.errors import AnalysisError, ConfigError, DataError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ALA2 = os.path.join(ROOT, "examples", "data", "cgnet_ala2")
EXAMPLE = os.path.join(ROOT, "examples", "ala2_fes", "analyze.toml")


ALA2_PDB = os.path.join(ROOT, "examples", "data", "alanine-dipeptide-gbsa",
                        "alanine-dipeptide.pdb")


@pytest.fixture(scope="module")
def blobs():
    rng = np.random.default_rng(1)
    centres = rng.uniform(-10, 10, (4, 5))
    truth = rng.integers(0, 4, 3000)
    x = (centres[truth] + 0.7 * rng.standard_normal((3000, 5))).astype(np.float32)
    return x, truth


@pytest.fixture(scope="module")
def blob_fit(blobs):
    x, _ = blobs
    return cluster.kmeans(x, 4, n_init=5, max_iter=100, tol=1e-4, seed=0)


# ------------------------------------------------------------------ clustering


def test_kmeans_matches_sklearn(blobs, blob_fit):
    from sklearn.cluster import KMeans
    from sklearn.metrics import adjusted_rand_score
    x, truth = blobs
    km = KMeans(4, n_init=5, max_iter=100, tol=1e-4, random_state=0).fit(x)
    ours = cluster.inertia(x, blob_fit.centers)
    theirs = cluster.inertia(x, km.cluster_centers_)
    assert abs(ours - theirs) / theirs < 0.01
    assert abs(blob_fit.inertia - ours) / ours < 1e-3  # reported inertia is the real one
    assert adjusted_rand_score(km.labels_, blob_fit.labels) >= 0.99
    assert adjusted_rand_score(truth, blob_fit.labels) >= 0.99
    assert blob_fit.converged and blob_fit.inertias.shape == (5,)


def test_kmeans_is_deterministic_and_labels_are_nearest(blobs, blob_fit):
    x, _ = blobs
    again = cluster.kmeans(x, 4, n_init=5, max_iter=100, tol=1e-4, seed=0)
    np.testing.assert_array_equal(again.labels, blob_fit.labels)
    d = ((x[:, None, :] - blob_fit.centers[None]) ** 2).sum(-1)
    np.testing.assert_array_equal(blob_fit.labels, d.argmin(1))
    # centres are the means of their members (a Lloyd fixed point)
    for s in range(4):
        np.testing.assert_allclose(blob_fit.centers[s], x[blob_fit.labels == s].mean(0),
                                   atol=1e-3)


def test_assign_new_frames(blobs, blob_fit):
    x, _ = blobs
    new = x[:500] + 0.05
    labels, inertia = cluster.assign(new, blob_fit.centers)
    d = ((new[:, None, :] - blob_fit.centers[None]) ** 2).sum(-1)
    np.testing.assert_array_equal(labels, d.argmin(1))
    assert inertia == pytest.approx(d.min(1).sum(), rel=1e-4)


def test_silhouette_matches_sklearn(blobs, blob_fit):
    from sklearn.metrics import silhouette_score
    x, _ = blobs
    ours = cluster.silhouette(x, blob_fit.labels, sample_size=None)
    assert ours == pytest.approx(silhouette_score(x, blob_fit.labels), abs=2e-3)
    assert ours > 0.7  # well separated


def test_minibatch_kmeans_on_memmap(tmp_path, blobs, blob_fit):
    from sklearn.metrics import adjusted_rand_score
    x, truth = blobs
    path = tmp_path / "feat.npy"
    np.save(path, x)
    mm = np.load(path, mmap_mode="r")
    res = cluster.minibatch_kmeans(mm, 4, batch_size=256, n_steps=50, seed=0)
    assert adjusted_rand_score(truth, res.labels) >= 0.99
    assert res.inertia == pytest.approx(blob_fit.inertia, rel=0.02)


def test_regspace_covers_and_spreads(blobs):
    x, _ = blobs
    dmin = 4.0
    c = cluster.regspace(x, dmin)
    d = np.sqrt(((x[:, None, :] - c[None]) ** 2).sum(-1))
    assert d.min(1).max() <= dmin + 1e-4  # every frame within dmin of a centre
    dc = np.sqrt(((c[:, None, :] - c[None]) ** 2).sum(-1)) + np.eye(len(c)) * 1e9
    assert dc.min() > dmin  # centres mutually farther than dmin
    with pytest.raises(AnalysisError, match="max_centers"):
        cluster.regspace(x, 0.01, max_centers=5)


def test_k_larger_than_frames_is_an_error(blobs):
    x, _ = blobs
    with pytest.raises(AnalysisError, match=r"k = 11 clusters is larger than the number "
                                            r"of frames \(10\)"):
        cluster.kmeans(x[:10], 11)
    with pytest.raises(AnalysisError, match="larger than the number of frames"):
        cluster.minibatch_kmeans(x[:10], 11)


# ------------------------------------------------------ dimensionality reduction


def test_pca_matches_numpy_svd():
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((2000, 6)) @ rng.standard_normal((6, 6))).astype(np.float32)
    p = decomposition.pca(x, 3)
    xc = x.astype(np.float64) - x.mean(0)
    _, s, vt = np.linalg.svd(xc, full_matrices=False)
    var = s ** 2 / len(x)
    np.testing.assert_allclose(p.eigenvalues, var[:3], rtol=1e-3)
    np.testing.assert_allclose(p.explained, (var / var.sum())[:3], rtol=1e-3)
    for i in range(3):
        assert abs(np.dot(p.components[:, i], vt[i])) == pytest.approx(1.0, abs=1e-4)
    y = p.transform(x)
    np.testing.assert_allclose(np.abs(y), np.abs(xc @ vt[:3].T), rtol=1e-3, atol=1e-3)


def test_tica_finds_slow_coordinate_and_its_timescale():
    rng = np.random.default_rng(0)
    n, a_slow, a_fast = 20000, 0.99, 0.5
    z = np.zeros((n, 2))
    for t in range(1, n):
        z[t] = [a_slow, a_fast] * z[t - 1] + rng.standard_normal(2) * [0.2, 1.0]
    mix = np.array([[1.0, 0.5], [0.3, 1.0]])
    x = (z @ mix).astype(np.float32)
    lag = 5
    t = decomposition.tica([x[:10000], x[10000:]], lag, 2)
    # the slow process of an AR(1) with coefficient a has timescale -1/ln a frames
    assert t.timescales[0] == pytest.approx(-1 / np.log(a_slow), rel=0.25)
    y = t.transform(x)
    assert abs(np.corrcoef(y[:, 0], z[:, 0])[0, 1]) > 0.95
    assert t.explained[0] > 0.9
    assert np.var(y[:, 0]) == pytest.approx(1.0, rel=0.1)  # unit-variance scaling


# --------------------------------------------------------------------- features


def test_dihedrals_match_mdtraj_on_alanine_dipeptide():
    md = pytest.importorskip("mdtraj")
    pdb = ALA2_PDB
    ref = md.load(pdb)
    rng = np.random.default_rng(0)
    xyz = ref.xyz[0][None] + 0.02 * rng.standard_normal((50,) + ref.xyz.shape[1:])
    traj = md.Trajectory(xyz.astype(np.float32), ref.topology)
    top = read_topology(pdb)
    for kind, fn in (("phi", md.compute_phi), ("psi", md.compute_psi)):
        quads, labels = selection.backbone_dihedrals(top, [kind])
        idx, expected = fn(traj)
        np.testing.assert_array_equal(quads, idx)
        ours = np.asarray(features.dihedrals(xyz * 10.0, quads))  # nm -> Å
        diff = np.angle(np.exp(1j * (ours - expected)))
        assert np.abs(diff).max() < 1e-4
        assert all(lbl.startswith(kind) for lbl in labels)


def test_cg_dihedrals_match_mdtraj_and_topology():
    md = pytest.importorskip("mdtraj")
    x = np.load(os.path.join(ALA2, "ala2_coordinates.npy"))[:2000]
    top = read_topology(os.path.join(ALA2, "ala2_cg.pdb"))
    quads, labels = selection.backbone_dihedrals(top)
    assert quads.tolist() == [[0, 1, 2, 3], [1, 2, 3, 4]]
    assert labels == ["phi_ALA2", "psi_ALA2"]
    ours = np.asarray(features.dihedrals(x, quads))
    theirs = md.compute_dihedrals(md.Trajectory(x / 10.0, None), quads)
    assert np.abs(np.angle(np.exp(1j * (ours - theirs)))).max() < 1e-4


def test_rmsd_and_alignment_match_mdtraj():
    md = pytest.importorskip("mdtraj")
    rng = np.random.default_rng(3)
    ref = rng.standard_normal((12, 3)).astype(np.float32) * 3
    frames = []
    for _ in range(20):
        q, _ = np.linalg.qr(rng.standard_normal((3, 3)))
        q *= np.sign(np.linalg.det(q))  # proper rotation
        frames.append((ref + 0.3 * rng.standard_normal(ref.shape)) @ q.T + rng.normal(0, 5, 3))
    pos = np.asarray(frames, np.float32)
    ours = np.asarray(features.rmsd(pos, ref))
    theirs = md.rmsd(md.Trajectory(pos / 10, None), md.Trajectory(ref[None] / 10, None)) * 10
    np.testing.assert_allclose(ours, theirs, atol=2e-3)
    # aligned coordinates do not depend on the frame's orientation
    a = np.asarray(features.aligned_coordinates(pos, ref, np.arange(12)))
    q, _ = np.linalg.qr(rng.standard_normal((3, 3)))
    q *= np.sign(np.linalg.det(q))
    b = np.asarray(features.aligned_coordinates(pos @ q.T + 1.0, ref, np.arange(12)))
    np.testing.assert_allclose(a, b, atol=2e-3)
    assert np.asarray(features.rmsd(ref[None], ref))[0] < 1e-3


def test_distances_contacts_sincos():
    pos = np.array([[[0, 0, 0], [3, 0, 0], [0, 4, 0]]], np.float32)
    pairs = features.all_pairs([0, 1, 2])
    np.testing.assert_allclose(np.asarray(features.distances(pos, pairs))[0], [3, 4, 5],
                               rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(features.contacts(pos, pairs, 4.5))[0],
                                  [1, 1, 0])
    enc = np.asarray(features.sincos(np.array([[np.pi, -np.pi]])))
    np.testing.assert_allclose(enc[0, :2], enc[0, :2][::-1], atol=1e-6)  # ±π coincide
    with pytest.raises(AnalysisError, match="atom indices"):
        features.distances(pos, [[0, 7]])


def test_selection_by_labels():
    top = read_topology(os.path.join(ALA2, "ala2_cg.pdb"))
    assert selection.select(top, 5, names=["CA"]).tolist() == [2]
    assert selection.select(top, 5, elements=["N"]).tolist() == [1, 4]
    assert selection.select(top, 5, resnames=["ALA"], names=["C"]).tolist() == [3]
    assert selection.select(top, 5, resids=[1, 3]).tolist() == [0, 4]
    with pytest.raises(AnalysisError, match=r"matches no atom"):
        selection.select(top, 5, names=["CB"])
    with pytest.raises(AnalysisError, match="out of range"):
        selection.select(top, 5, indices=[9])


# ------------------------------------------------------------------ trajectories


def test_readers_agree(tmp_path):
    import ase
    import ase.io
    rng = np.random.default_rng(0)
    pos = rng.standard_normal((4, 3, 3)).astype(np.float32)
    frames = [ase.Atoms("OHH", positions=p) for p in pos]
    ase.io.write(tmp_path / "t.extxyz", frames)
    np.savez(tmp_path / "t.npz", positions=pos)
    a = load_trajectory(tmp_path / "t.extxyz")
    b = load_trajectory(tmp_path / "t.npz")
    np.testing.assert_allclose(a.positions, pos, atol=1e-5)
    np.testing.assert_allclose(b.positions, pos)
    assert a.topology.elements == ("O", "H", "H")
    assert load_trajectory(tmp_path / "t.extxyz", stride=2).n_frames == 2


def test_atom_count_mismatch_is_an_error(tmp_path):
    np.save(tmp_path / "six.npy", np.zeros((3, 6, 3), np.float32))
    with pytest.raises(DataError, match=r"has 6 atoms per frame but topology .*ala2_cg"
                                        r"\.pdb has 5 atoms"):
        load_trajectory(tmp_path / "six.npy", os.path.join(ALA2, "ala2_cg.pdb"))
    with pytest.raises(DataError, match="not found"):
        load_trajectory(tmp_path / "missing.npy")


# ------------------------------------------------------------------------ kinetics


def _markov_chain(t, n, seed=0):
    rng = np.random.default_rng(seed)
    cum = np.cumsum(t, 1)
    u = rng.random(n)
    s = np.empty(n, np.int64)
    s[0] = 0
    for i in range(1, n):
        s[i] = min(np.searchsorted(cum[s[i - 1]], u[i]), len(t) - 1)
    return s


@pytest.fixture(scope="module")
def chain():
    pi = np.array([0.5, 0.2, 0.3])
    k = np.array([[0, 1, 0.5], [1, 0, 2], [0.5, 2, 0]]) * 0.01  # symmetric fluxes
    t = k / pi[:, None]
    t[np.diag_indices(3)] = 1 - t.sum(1)
    return t, pi, _markov_chain(t, 100_000)


def test_msm_stationary_matches_empirical_and_truth(chain):
    t_true, pi, s = chain
    m = msm.estimate_msm(s, lag=1)
    emp = np.bincount(s, minlength=3) / len(s)
    np.testing.assert_allclose(m.stationary, emp, atol=2e-3)
    np.testing.assert_allclose(m.stationary, pi, atol=0.03)
    np.testing.assert_allclose(m.transition_matrix.sum(1), 1, atol=1e-9)
    flux = m.stationary[:, None] * m.transition_matrix
    np.testing.assert_allclose(flux, flux.T, atol=1e-9)  # detailed balance
    np.testing.assert_allclose(m.transition_matrix, t_true, atol=0.005)


def test_implied_timescales_match_true_eigenvalues(chain):
    t_true, _, s = chain
    w = np.sort(np.abs(np.linalg.eigvals(t_true)))[::-1][1:]
    expected = -1 / np.log(w)
    its = msm.implied_timescales(s, [1, 5], k=2)
    np.testing.assert_allclose(its[0], expected, rtol=0.1)
    np.testing.assert_allclose(its[1], expected, rtol=0.15)  # Markovian: lag-independent
    c = msm.count_matrix(s, 1)
    assert c.sum() == len(s) - 1


def test_populations_with_block_bootstrap(chain):
    _, pi, s = chain
    p = msm.populations(s, n_blocks=20, n_bootstrap=300)
    assert p.populations.sum() == pytest.approx(1.0)
    assert np.all(p.errors > 0) and np.all(p.errors < 0.05)
    assert np.all(np.abs(p.populations - pi) < 4 * p.errors + 0.01)


# ------------------------------------------------------------------ free energies


def test_fes_of_gaussian_is_harmonic():
    rng = np.random.default_rng(0)
    sigma, temp = 0.5, 300.0
    x = rng.normal(0, sigma, 200_000)
    s = fes.free_energy_surface(x, 40, [(-1.0, 1.0)], temp, n_bootstrap=50)
    c = s.centers[0]
    kt = fes.kT(temp)
    expected = kt * c ** 2 / (2 * sigma ** 2)
    f = s.free_energy - s.free_energy[np.argmin(np.abs(c))]
    np.testing.assert_allclose(f, expected - expected[np.argmin(np.abs(c))], atol=0.1 * kt)
    assert np.all(np.isfinite(s.error)) and np.all(s.error < 0.2 * kt)
    assert s.probability.sum() == pytest.approx(1.0)


def test_fes_2d_and_state_free_energies():
    rng = np.random.default_rng(1)
    v = rng.normal(0, 1, (5000, 2))
    s = fes.free_energy_surface(v, [10, 12], [(-3, 3), (-3, 3)], n_bootstrap=20)
    assert s.free_energy.shape == (10, 12) and np.nanmin(s.free_energy) == 0
    f = fes.state_free_energies([0.5, 0.25, 0.0], 300.0)
    assert f[1] == pytest.approx(fes.kT(300.0) * np.log(2)) and np.isinf(f[2])


def test_kl_and_js_divergence_match_scipy():
    from scipy.spatial.distance import jensenshannon
    from scipy.special import rel_entr
    rng = np.random.default_rng(0)
    p, q = rng.random(50), rng.random(50)
    p, q = p / p.sum(), q / q.sum()
    assert fes.kl_divergence(p, q) == pytest.approx(rel_entr(p, q).sum(), rel=1e-4)
    assert fes.js_divergence(p, q) == pytest.approx(jensenshannon(p, q) ** 2, rel=1e-4)
    assert fes.js_divergence(p, q) == pytest.approx(fes.js_divergence(q, p), rel=1e-6)
    assert fes.js_divergence(p, p) == pytest.approx(0.0, abs=1e-7)
    disjoint = fes.js_divergence([1, 0], [0, 1])
    assert disjoint == pytest.approx(np.log(2), rel=1e-5)
    with pytest.raises(AnalysisError, match="same bins"):
        fes.kl_divergence(p, q[:10])


# --------------------------------------------------------------------------- CLI


def test_unknown_config_key_lists_valid_keys(tmp_path):
    from biojax.analysis.config import load_config
    text = open(EXAMPLE).read().replace("[cluster]\n", "[cluster]\nclusters = 3\n")
    bad = tmp_path / "bad.toml"
    bad.write_text(text)
    with pytest.raises(ConfigError, match=r"unknown key\(s\) 'clusters'.*valid keys are:.*"
                                          r"\bk\b"):
        load_config(bad)


def test_cli_bad_inputs_exit_cleanly(tmp_path, capsys):
    from biojax.cli import main
    np.save(tmp_path / "six.npy", np.zeros((3, 6, 3), np.float32))
    cfg = tmp_path / "a.toml"
    cfg.write_text(f'''[trajectory]
paths = ["six.npy"]
topology = "{os.path.join(ALA2, 'ala2_cg.pdb')}"
[[features]]
kind = "backbone_dihedrals"
''')
    assert main(["analyze", str(cfg)]) == 1
    assert "has 6 atoms per frame but topology" in capsys.readouterr().err
    cfg.write_text('''[trajectory]
paths = ["six.npy"]
[[features]]
kind = "distances"
selection = { names = ["CA"] }
''')
    assert main(["analyze", str(cfg)]) == 1
    assert "needs a topology" in capsys.readouterr().err


def test_analyze_cg_alanine_dipeptide(tmp_path, capsys):
    """The example config on the real CGnet data: three Ramachandran basins with the
    expected populations, MSM π ≈ frame populations, all outputs written."""
    from biojax.cli import main
    out = tmp_path / "out"
    assert main(["analyze", EXAMPLE, "--out", str(out)]) == 0
    for name in ("states.csv", "fes.npz", "summary.json", "fes.png", "populations.png",
                 "projection.png", "timescales.png"):
        assert (out / name).stat().st_size > 0, name
    s = json.loads((out / "summary.json").read_text())
    regions = {r["name"]: r for r in s["regions"]}
    assert 0.65 < regions["beta_C5_PII"]["population"] < 0.80
    assert 0.18 < regions["alpha_R"]["population"] < 0.32
    assert 0.005 < regions["alpha_L"]["population"] < 0.05
    assert regions["alpha_L"]["free_energy_kJmol"] > regions["alpha_R"]["free_energy_kJmol"] > 0
    # each basin holds a k-means state centre
    centres = np.array([[st["centre_fes"]["phi_ALA2"], st["centre_fes"]["psi_ALA2"]]
                        for st in s["states"]])
    assert np.any((centres[:, 0] < 0) & (centres[:, 1] > 100))           # beta / PII
    assert np.any((centres[:, 0] < 0) & (np.abs(centres[:, 1]) < 50))    # alpha_R
    assert np.any((centres[:, 0] > 0) & (np.abs(centres[:, 1]) < 90))    # alpha_L
    pops = np.array([st["population"] for st in s["states"]])
    np.testing.assert_allclose(s["msm"]["stationary"], pops, atol=0.01)
    z = np.load(out / "fes.npz")
    f = z["free_energy_eV"]
    assert f.shape == (40, 40) and np.nanmin(f) == 0
    assert np.isfinite(z["error_eV"][np.isfinite(f) & (f < 0.05)]).mean() > 0.9
    csv = np.loadtxt(out / "states.csv", delimiter=",", skiprows=1)
    assert csv.shape[0] == 10000 and set(np.unique(csv[:, 2])) == {0, 1, 2, 3}
    assert "region alpha_L" in capsys.readouterr().out
