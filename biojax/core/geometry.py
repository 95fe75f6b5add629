"""Internal coordinates and optimal superposition, in pure JAX.

Positions are (..., N, 3) in Å with any leading (batch) axes; index arrays are plain
integer arrays of shape (n, 2), (n, 3) or (n, 4) and are not checked here (callers that
take user input check them first, e.g. ``biojax.analysis.features``). Every function is
jitted and differentiable, and stays finite at degenerate geometry: coincident atoms give
distance 0, an undefined angle or dihedral (collinear atoms, zero-length bond) gives 0,
and the gradient there is a finite value (0 for the undefined part), never NaN.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def _float(x) -> jax.Array:
    x = jnp.asarray(x)
    return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def _tiny(x) -> float:
    return float(jnp.finfo(x.dtype).tiny)


def _safe_norm(v, xp=jnp) -> jax.Array:
    """|v| over the last axis; 0 with gradient 0 where v = 0 (plain sqrt gives NaN)."""
    n2 = xp.sum(v * v, axis=-1)
    ok = n2 > _tiny(n2)
    return xp.where(ok, xp.sqrt(xp.where(ok, n2, 1.0)), 0.0)


def _safe_sqrt(x) -> jax.Array:
    ok = x > _tiny(x)
    return jnp.where(ok, jnp.sqrt(jnp.where(ok, x, 1.0)), 0.0)


def _safe_atan2(y, x, xp=jnp) -> jax.Array:
    """atan2(y, x); 0 with gradient 0 where x = y = 0 (plain atan2 has a NaN gradient)."""
    ok = x * x + y * y > _tiny(x)
    return xp.where(ok, xp.arctan2(xp.where(ok, y, 0.0), xp.where(ok, x, 1.0)), 0.0)


@jax.jit
def distances(positions, pairs) -> jax.Array:
    """Distances |r_i - r_j| (Å, shape (..., n_pairs)) for index pairs (n_pairs, 2)."""
    x = _float(positions)
    return _safe_norm(x[..., pairs[:, 0], :] - x[..., pairs[:, 1], :])


@jax.jit
def angles(positions, triples) -> jax.Array:
    """Bond angles i-j-k at the middle atom j (radians in [0, π], shape (..., n)) for
    index triples (n, 3). Coincident atoms give 0."""
    x = _float(positions)
    a = x[..., triples[:, 0], :] - x[..., triples[:, 1], :]
    b = x[..., triples[:, 2], :] - x[..., triples[:, 1], :]
    # atan2(|a×b|, a·b) keeps full precision near 0 and π, where arccos does not
    return _safe_atan2(_safe_norm(jnp.cross(a, b)), jnp.sum(a * b, axis=-1))


def _dihedrals(x, quads, xp):
    p0, p1, p2, p3 = (x[..., quads[:, c], :] for c in range(4))
    b0, b1, b2 = p1 - p0, p2 - p1, p3 - p2
    n2 = xp.cross(b1, b2)
    # atan2(|b1| b0·(b1×b2), (b0×b1)·(b1×b2)): no normalisation that could divide by 0
    y = _safe_norm(b1, xp) * xp.sum(b0 * n2, axis=-1)
    x_ = xp.sum(xp.cross(b0, b1) * n2, axis=-1)
    phi = _safe_atan2(y, x_, xp)
    return xp.where(phi <= -xp.pi, phi + 2.0 * xp.pi, phi)


@jax.jit
def dihedrals(positions, quads) -> jax.Array:
    """Dihedral (torsion) angles of i-j-k-l (radians in (-π, π], shape (..., n)) for index
    quadruples (n, 4), IUPAC sign convention (as mdtraj.compute_dihedrals): looking
    along j→k, positive when l is turned clockwise from i. Undefined dihedrals (i, j, k
    or j, k, l collinear) give 0."""
    return _dihedrals(_float(positions), quads, jnp)


def dihedrals_float64(positions, quads) -> np.ndarray:
    """:func:`dihedrals` computed in NumPy float64 on the host (the same formula), for
    labels written to files, in a process that computes in float32."""
    return _dihedrals(np.asarray(positions, np.float64), np.asarray(quads), np)


@jax.jit
def kabsch_rotation(p, q) -> jax.Array:
    """Proper rotation R (..., 3, 3), det R = +1, minimising |p R - q|² for centred point
    sets p, q (..., n, 3) (rows are points; ``p @ R`` is p rotated onto q). Never a
    reflection: where the best orthogonal map would reflect, the smallest singular
    direction is flipped (Kabsch 1976). Its gradient (through the SVD) is undefined
    where the fit is ambiguous (fewer than three non-collinear points)."""
    p, q = _float(p), _float(q)
    h = jnp.swapaxes(p, -1, -2) @ q
    u, _, vt = jnp.linalg.svd(h)
    d = jnp.sign(jnp.linalg.det(u @ vt))
    d = jnp.where(d == 0, 1.0, d).astype(u.dtype)
    u = u.at[..., :, 2].multiply(d[..., None])  # u @ diag(1, 1, d)
    return u @ vt


def _fit(x, ref, idx):
    """Centroids of the fit atoms and the rotation taking x's fit atoms onto ref's."""
    xf = x if idx is None else x[..., idx, :]
    rf = ref if idx is None else ref[..., idx, :]
    cx = jnp.mean(xf, axis=-2, keepdims=True)
    cr = jnp.mean(rf, axis=-2, keepdims=True)
    return cx, cr, kabsch_rotation(xf - cx, rf - cr)


@jax.jit
def align(positions, reference, fit_indices=None) -> jax.Array:
    """``positions`` (..., N, 3) moved rigidly onto ``reference`` (N, 3) or broadcastable,
    in Å: the rotation and translation that best superimpose the atoms ``fit_indices``
    (default all) are applied to every atom, so the fit atoms' centroid lands on the
    reference's."""
    x, ref = _float(positions), _float(reference)
    cx, cr, r = _fit(x, ref, fit_indices)
    return (x - cx) @ r + cr


@jax.jit
def rmsd(positions, reference, indices=None) -> jax.Array:
    """Minimal RMSD (Å, shape (...)) of the atoms ``indices`` (default all) of
    ``positions`` (..., N, 3) to the same atoms of ``reference`` after optimal
    superposition. The gradient holds the optimal rotation fixed, which is exact at the
    optimum and stays finite where the rotation itself is ambiguous (and at RMSD 0)."""
    x, ref = _float(positions), _float(reference)
    if indices is not None:
        x, ref = x[..., indices, :], ref[..., indices, :]
    cx, cr, r = _fit(x, ref, None)
    diff = (x - cx) @ jax.lax.stop_gradient(r) - (ref - cr)
    return _safe_sqrt(jnp.mean(jnp.sum(diff * diff, axis=-1), axis=-1))
