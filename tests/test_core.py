"""biojax.core.geometry: values against NumPy and mdtraj, gradients against finite
differences, finite values and gradients at degenerate geometry, batching, Kabsch."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from biojax.core import geometry as geo

PAIRS = np.array([[0, 1], [2, 5], [4, 3], [5, 0]])
TRIPLES = np.array([[0, 1, 2], [1, 2, 3], [5, 3, 4], [2, 0, 5]])
QUADS = np.array([[0, 1, 2, 3], [3, 2, 1, 0], [1, 2, 3, 4], [5, 0, 2, 4]])


def _frames(shape=(7,), n_atoms=6, seed=0):
    return np.random.default_rng(seed).normal(scale=2.0, size=(*shape, n_atoms, 3))


def _random_rotation(rng):
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] *= -1
    return q


# ---- NumPy references (float64, written independently of the JAX code)

def _np_distances(x, pairs):
    return np.linalg.norm(x[..., pairs[:, 0], :] - x[..., pairs[:, 1], :], axis=-1)


def _np_angles(x, triples):
    a = x[..., triples[:, 0], :] - x[..., triples[:, 1], :]
    b = x[..., triples[:, 2], :] - x[..., triples[:, 1], :]
    cos = np.sum(a * b, -1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))
    return np.arccos(np.clip(cos, -1.0, 1.0))


def _np_dihedrals(x, quads):
    # projection form (the one biojax.analysis.features used before core.geometry)
    p0, p1, p2, p3 = (x[..., quads[:, c], :] for c in range(4))
    b0, b1, b2 = p0 - p1, p2 - p1, p3 - p2
    b1 = b1 / np.linalg.norm(b1, axis=-1, keepdims=True)
    v = b0 - np.sum(b0 * b1, -1, keepdims=True) * b1
    w = b2 - np.sum(b2 * b1, -1, keepdims=True) * b1
    return np.arctan2(np.sum(np.cross(b1, v) * w, -1), np.sum(v * w, -1))


def test_values_match_numpy():
    x = _frames()
    np.testing.assert_allclose(geo.distances(x, PAIRS), _np_distances(x, PAIRS), atol=1e-5)
    np.testing.assert_allclose(geo.angles(x, TRIPLES), _np_angles(x, TRIPLES), atol=1e-5)
    np.testing.assert_allclose(geo.dihedrals(x, QUADS), _np_dihedrals(x, QUADS), atol=1e-5)


def test_values_match_mdtraj():
    md = pytest.importorskip("mdtraj")
    x = _frames(seed=1)
    traj = md.Trajectory(x / 10.0, None)  # mdtraj works in nm
    np.testing.assert_allclose(geo.distances(x, PAIRS),
                               md.compute_distances(traj, PAIRS) * 10, atol=1e-4)
    np.testing.assert_allclose(geo.angles(x, TRIPLES), md.compute_angles(traj, TRIPLES),
                               atol=1e-5)
    ours = np.asarray(geo.dihedrals(x, QUADS))
    theirs = md.compute_dihedrals(traj, QUADS)
    # same sign convention: compare on the circle, and both signs occur in this sample
    np.testing.assert_allclose(np.angle(np.exp(1j * (ours - theirs))), 0.0, atol=1e-5)
    assert (ours > 0.1).any() and (ours < -0.1).any()
    ref = x[0]
    ours = np.asarray(geo.rmsd(x, ref))
    theirs = md.rmsd(traj, md.Trajectory(ref[None] / 10.0, None)) * 10
    # frame 0 is the reference: mdtraj's float32 QCP leaves ~1e-3 Å of rounding there
    np.testing.assert_allclose(ours[1:], theirs[1:], atol=1e-4)
    assert ours[0] < 1e-5


def test_ranges_and_the_trans_dihedral_is_plus_pi():
    x = _frames((200,), seed=2)
    a = np.asarray(geo.angles(x, TRIPLES))
    d = np.asarray(geo.dihedrals(x, QUADS))
    assert a.min() >= 0.0 and a.max() <= np.pi
    assert d.min() > -np.pi and d.max() <= np.pi
    trans = np.array([[0.0, 1.0, 0.0], [0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [1.0, -1.0, 0.0]])
    assert float(geo.dihedrals(trans, QUADS[:1])[0]) == pytest.approx(np.pi, abs=1e-6)
    # rotated trans quadruples: float32 atan2 lands on exactly -π for about a third of
    # them; the range is (-π, π], so those must come back as +π
    rng = np.random.default_rng(9)
    rotated = np.stack([trans @ _random_rotation(rng).T for _ in range(100)])
    d = np.asarray(geo.dihedrals(rotated, QUADS[:1]))[:, 0]
    assert (d > np.float32(-np.pi)).all()
    np.testing.assert_allclose(np.angle(np.exp(1j * (d - np.pi))), 0.0, atol=1e-5)
    cis = trans.copy()
    cis[3] = [1.0, 1.0, 0.0]
    assert float(geo.dihedrals(cis, QUADS[:1])[0]) == pytest.approx(0.0, abs=1e-6)
    gauche = trans.copy()
    gauche[3] = [1.0, 0.0, 1.0]  # l turned clockwise from i, looking along j→k: +90°
    assert float(geo.dihedrals(gauche, QUADS[:1])[0]) == pytest.approx(np.pi / 2, abs=1e-6)


def _fd_check(fn, x, rtol=1e-6, atol=1e-7, h=1e-6):
    """jax.grad of a scalar fn against central differences, in float64."""
    with jax.enable_x64(True):
        x = np.asarray(x, np.float64)
        g = np.asarray(jax.grad(lambda y: fn(y))(jnp.asarray(x)))
        assert g.dtype == np.float64
        fd = np.zeros_like(x)
        for k in np.ndindex(x.shape):
            xp, xm = x.copy(), x.copy()
            xp[k] += h
            xm[k] -= h
            fd[k] = (float(fn(jnp.asarray(xp))) - float(fn(jnp.asarray(xm)))) / (2 * h)
    assert np.abs(g).max() > 1e-3  # a zero gradient would pass trivially
    np.testing.assert_allclose(g, fd, rtol=rtol, atol=atol)


@pytest.mark.parametrize("name", ["distances", "angles", "dihedrals", "rmsd", "align"])
def test_gradients_match_finite_differences(name):
    x = _frames((), seed=3)
    ref = _frames((), seed=4)
    w = np.random.default_rng(5).normal(size=(6, 3))
    fns = {
        "distances": lambda y: jnp.sum(jnp.arange(1.0, 5.0) * geo.distances(y, PAIRS)),
        "angles": lambda y: jnp.sum(jnp.arange(1.0, 5.0) * geo.angles(y, TRIPLES)),
        "dihedrals": lambda y: jnp.sum(jnp.arange(1.0, 5.0) * geo.dihedrals(y, QUADS)),
        "rmsd": lambda y: geo.rmsd(y, ref),
        "align": lambda y: jnp.sum(w * geo.align(y, ref, np.arange(5))),
    }
    _fd_check(fns[name], x)


def _value_and_grad(fn, x, idx):
    x = jnp.asarray(x, jnp.float32)
    v = fn(x, idx)
    g = jax.jit(jax.grad(lambda y: jnp.sum(fn(y, idx))))(x)
    jf = jax.jit(jax.jacfwd(lambda y: fn(y, idx)))(x)
    return np.asarray(v), np.asarray(g), np.asarray(jf)


def test_degenerate_geometry_has_finite_values_and_gradients():
    line = np.array([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [2.5, 0.0, 0.0], [2.5, 1.0, 0.3],
                     [1.0, 0.0, 0.0]])  # atoms 0-1-2 collinear, atom 4 on atom 1
    cases = [
        (geo.distances, np.array([[1, 4], [0, 1]]), [0.0, 1.0]),
        (geo.angles, np.array([[0, 1, 2], [1, 0, 1], [0, 1, 4], [2, 1, 0]]),
         [np.pi, 0.0, 0.0, np.pi]),
        # i-j-k collinear, j-k-l collinear, j on k (zero-length bond): all undefined -> 0
        (geo.dihedrals, np.array([[0, 1, 2, 3], [3, 2, 1, 0], [0, 1, 4, 3]]),
         [0.0, 0.0, 0.0]),
    ]
    for fn, idx, expected in cases:
        v, g, jf = _value_and_grad(fn, line, idx)
        np.testing.assert_allclose(v, expected, atol=1e-6, err_msg=fn.__name__)
        assert np.isfinite(g).all() and np.isfinite(jf).all(), fn.__name__
    # all atoms on one point, and a frame equal to its reference
    v, g, jf = _value_and_grad(geo.angles, np.zeros((5, 3)), np.array([[0, 1, 2]]))
    assert np.isfinite(v).all() and np.isfinite(g).all() and np.isfinite(jf).all()
    for ref in (line, np.zeros((5, 3))):
        x = jnp.asarray(ref, jnp.float32)
        v, g = jax.value_and_grad(lambda y: geo.rmsd(y, ref))(x)
        assert float(v) == pytest.approx(0.0, abs=1e-5) and np.isfinite(np.asarray(g)).all()


def test_batching_over_two_leading_axes():
    x = _frames((2, 3), seed=6)
    ref = x[0, 0]
    flat = x.reshape(6, 6, 3)
    for fn, idx in ((geo.distances, PAIRS), (geo.angles, TRIPLES), (geo.dihedrals, QUADS)):
        out = np.asarray(fn(x, idx))
        assert out.shape == (2, 3, len(idx))
        per_frame = np.stack([np.asarray(fn(f, idx)) for f in flat])
        np.testing.assert_allclose(out.reshape(6, -1), per_frame, atol=1e-6)
    r = np.asarray(geo.rmsd(x, ref, np.arange(4)))
    assert r.shape == (2, 3) and r[0, 0] < 1e-3 and (r.reshape(-1)[1:] > 0.1).all()
    np.testing.assert_allclose(r.reshape(-1), [float(geo.rmsd(f, ref, np.arange(4)))
                                               for f in flat], atol=1e-6)
    a = np.asarray(geo.align(x, ref))
    assert a.shape == x.shape
    np.testing.assert_allclose(a.reshape(6, 6, 3)[4], np.asarray(geo.align(flat[4], ref)),
                               atol=1e-5)


def test_kabsch_recovers_a_known_rotation():
    rng = np.random.default_rng(7)
    for _ in range(5):
        rot = _random_rotation(rng)
        p = rng.normal(size=(10, 3))
        p -= p.mean(0)
        r = np.asarray(geo.kabsch_rotation(p, p @ rot))
        np.testing.assert_allclose(r, rot, atol=1e-5)
        moved = p @ rot.T + rng.normal(size=3) * 5.0  # rotated and translated copy
        assert float(geo.rmsd(moved, p)) < 1e-4
        np.testing.assert_allclose(geo.align(moved, p), p, atol=1e-4)
        # only the fit atoms decide the superposition; the others move with them
        other = moved.copy()
        other[7:] += 3.0
        aligned = np.asarray(geo.align(other, p, np.arange(7)))
        np.testing.assert_allclose(aligned[:7], p[:7], atol=1e-4)
        assert np.abs(aligned[7:] - p[7:]).max() > 1.0


def test_kabsch_never_returns_a_reflection():
    md = pytest.importorskip("mdtraj")
    rng = np.random.default_rng(8)
    for _ in range(5):
        p = rng.normal(size=(8, 3))
        p -= p.mean(0)
        mirror = p @ (_random_rotation(rng) @ np.diag([1.0, 1.0, -1.0]))  # improper map
        r = np.asarray(geo.kabsch_rotation(p, mirror))
        assert np.linalg.det(r) == pytest.approx(1.0, abs=1e-5)
        np.testing.assert_allclose(r @ r.T, np.eye(3), atol=1e-5)
        # a chiral point set cannot be rotated onto its mirror image: RMSD stays > 0 and
        # equals the best proper superposition (mdtraj's QCP)
        ours = float(geo.rmsd(p, mirror))
        theirs = md.rmsd(md.Trajectory(p[None] / 10, None),
                         md.Trajectory(mirror[None] / 10, None))[0] * 10
        assert ours > 0.1 and ours == pytest.approx(theirs, abs=1e-4)


def test_run_lock_names_its_holder_and_clears_a_killed_runs_litter(tmp_path):
    """A second lock on a held folder is refused naming the holder; a temporary lock file
    left by a dead process (killed between writing and linking it) is removed."""
    import os
    import socket

    from biojax.core.errors import ConfigError
    from biojax.core.rundir import LOCK_FILE, RunLock

    litter = tmp_path / f"{LOCK_FILE}.{socket.gethostname()}.999999999.tmp"
    litter.write_text("{}")
    with RunLock(tmp_path):
        assert not litter.exists()
        with pytest.raises(ConfigError, match=f"process {os.getpid()} on"):
            RunLock(tmp_path).acquire()
    assert os.listdir(tmp_path) == []
