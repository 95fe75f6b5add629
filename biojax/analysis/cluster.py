"""Clustering in JAX: k-means (k-means++ init, batched restarts), mini-batch k-means for
data that does not fit in memory, regular-space clustering, state assignment, inertia
and silhouette.

Data are (n_frames, n_features) float32 arrays in whatever unit the features carry;
inertia is the sum of squared Euclidean distances to the nearest centre (unit²).
Distance computations are chunked (``chunk`` rows at a time) so that 10⁶ × 30 inputs need
only a few chunk-sized buffers beyond the data itself. All restarts of k-means run
together in one jitted ``lax.while_loop``: each pass over the data serves every restart.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from biojax.core.errors import AnalysisError

DEFAULT_CHUNK = 16384


@dataclasses.dataclass(frozen=True)
class KMeansResult:
    """Best restart: ``centers`` (k, d), ``labels`` (n,), ``inertia`` (unit²), ``n_iter``
    Lloyd iterations, ``converged``; ``inertias`` holds every restart's final inertia."""

    centers: np.ndarray
    labels: np.ndarray
    inertia: float
    n_iter: int
    converged: bool
    inertias: np.ndarray


def _check_data(x, k: int, what: str = "k-means") -> None:
    if x.ndim != 2:
        raise AnalysisError(f"{what}: expected data of shape (n_frames, n_features), got "
                            f"{tuple(x.shape)}")
    n = x.shape[0]
    if not isinstance(k, (int, np.integer)) or k < 1:
        raise AnalysisError(f"{what}: number of clusters k must be a positive integer, "
                            f"got {k!r}")
    if k > n:
        raise AnalysisError(f"{what}: k = {k} clusters is larger than the number of "
                            f"frames ({n}); use k <= {n}")


def _sqdist(x, x2, c, c2):
    """Squared distances (rows of x) to (rows of c), clamped at 0."""
    return jnp.maximum(x2[:, None] - 2.0 * (x @ c.T) + c2[None, :], 0.0)


def _chunk_slice(x, i, chunk):
    """Rows [i*chunk, (i+1)*chunk) of x; the last chunk is shifted back to stay in range
    and ``fresh`` marks the rows not already covered by the previous chunk."""
    n = x.shape[0]
    start = jnp.minimum(i * chunk, n - chunk)
    rows = jax.lax.dynamic_slice_in_dim(x, start, chunk, axis=0)
    fresh = (start + jnp.arange(chunk)) >= i * chunk
    return start, rows, fresh


def _sample_weighted(key, w, n_samples: int, block: int):
    """Indices drawn with probability ∝ w (two-level inverse CDF: pick a block of
    ``block`` rows by its summed weight, then a row inside it), so no length-n cumsum."""
    n = w.shape[0]
    n_blocks = -(-n // block)
    wp = jnp.pad(w, (0, n_blocks * block - n)).reshape(n_blocks, block)
    bcum = jnp.cumsum(jnp.sum(wp, 1))
    k1, k2 = jax.random.split(key)
    u = jax.random.uniform(k1, (n_samples,)) * bcum[-1]
    b = jnp.clip(jnp.searchsorted(bcum, u), 0, n_blocks - 1)
    rows = jnp.cumsum(wp[b], 1)  # (n_samples, block)
    v = jax.random.uniform(k2, (n_samples,)) * rows[:, -1]
    j = jax.vmap(jnp.searchsorted)(rows, v)
    return jnp.clip(b * block + jnp.clip(j, 0, block - 1), 0, n - 1)


def _col_chunk(xt, x2, i, chunk):
    """Columns [i*chunk, (i+1)*chunk) of the (d, n) data and their squared norms; the
    last chunk is shifted back to stay in range and ``fresh`` marks the columns not
    already covered by the previous chunk."""
    n = xt.shape[1]
    start = jnp.minimum(i * chunk, n - chunk)
    xs = jax.lax.dynamic_slice_in_dim(xt, start, chunk, axis=1)
    x2s = jax.lax.dynamic_slice_in_dim(x2, start, chunk)
    fresh = (start + jnp.arange(chunk)) >= i * chunk
    return start, xs, x2s, fresh


def _kmeanspp(keys, xt, x2, k: int, n_trials: int, chunk: int):
    """Greedy k-means++ seeding for len(keys) restarts at once: each step draws
    ``n_trials`` candidates ∝ D² per restart and keeps the one that lowers the potential
    most. Data are column-major (d, n); returns centres (r, k, d)."""
    d, n = xt.shape
    r = keys.shape[0]
    block = max(1, int(math.isqrt(n)))
    n_chunks = -(-n // chunk)

    def sqdist_all(c):  # c: (m, d) -> (m, n)
        return jnp.maximum(x2[None, :] - 2.0 * (c @ xt) + jnp.sum(c * c, -1)[:, None], 0.0)

    keys = jax.vmap(jax.random.split)(keys)
    first = jax.vmap(lambda kk: jax.random.randint(kk, (), 0, n))(keys[:, 0])
    c0 = xt[:, first].T  # (r, d)
    closest = sqdist_all(c0)  # (r, n)
    centers = jnp.zeros((r, k, d), xt.dtype).at[:, 0].set(c0)

    def potentials(closest, cand):  # cand (r*T, d) -> summed min distances (r, T)
        c2 = jnp.sum(cand * cand, -1)

        def body(i, acc):
            start, xs, x2s, fresh = _col_chunk(xt, x2, i, chunk)
            cl = jax.lax.dynamic_slice_in_dim(closest, start, chunk, axis=1)
            dist = jnp.maximum(x2s[None, :] - 2.0 * (cand @ xs) + c2[:, None], 0.0)
            dist = jnp.minimum(dist.reshape(r, n_trials, chunk), cl[:, None, :])
            return acc + jnp.sum(jnp.where(fresh, dist, 0.0), -1)

        return jax.lax.fori_loop(0, n_chunks, body, jnp.zeros((r, n_trials), xt.dtype))

    def step(j, carry):
        centers, closest, keys = carry
        split = jax.vmap(jax.random.split)(keys)
        keys, sub = split[:, 0], split[:, 1]
        cand = jax.vmap(lambda kk, w: _sample_weighted(kk, w, n_trials, block))(sub, closest)
        cx = jnp.transpose(xt[:, cand], (1, 2, 0))  # (r, T, d)
        pots = potentials(closest, cx.reshape(r * n_trials, d))
        cb = jnp.take_along_axis(cx, jnp.argmin(pots, -1)[:, None, None], 1)[:, 0]
        closest = jnp.minimum(closest, sqdist_all(cb))
        return centers.at[:, j].set(cb), closest, keys

    centers, _, _ = jax.lax.fori_loop(1, k, step, (centers, closest, keys[:, 1]))
    return centers


def _nearest(dist, axis):
    """First index of the minimum along ``axis`` and the minimum (two plain reductions,
    cheaper than argmin on CPU)."""
    m = jnp.min(dist, axis)
    k = dist.shape[axis]
    ids = jnp.expand_dims(jnp.arange(k, dtype=jnp.int32), [a for a in range(dist.ndim)
                                                             if a != axis % dist.ndim])
    lab = jnp.min(jnp.where(dist == jnp.expand_dims(m, axis), ids, k), axis)
    return lab, m


def _two_smallest(dist):
    """Index of the smallest entry along axis 0 (first on ties), the smallest and the
    second-smallest value; dist is (k, m)."""
    k = dist.shape[0]
    lab, m1 = _nearest(dist, 0)
    ids = jnp.arange(k, dtype=jnp.int32)[:, None]
    m2 = jnp.min(jnp.where(ids == lab[None, :], jnp.inf, dist), 0)
    return lab, m1, m2


def _lloyd_pass(xt, x2, centers, state, active, chunk: int):
    """One Lloyd assignment pass with Hamerly bounds, skipping chunks whose frames all
    provably keep their centre.

    ``state`` = (labels (r, n) int32, upper (r, n), lower (r, n), sums (r, k, d),
    counts (r, k), moved (r, k)): current labels, an upper bound on the distance to the
    assigned centre, a lower bound on the distance to any other centre, the running
    member sums and counts, and how far each centre moved in the last update. For every
    restart a chunk is recomputed (one small matrix product) only if some frame has
    upper > max(lower, half the distance from its centre to the nearest other centre);
    member sums are updated by the frames whose label changed. Chunks are the outer loop
    and restarts the inner one, so a chunk is read from memory once for all restarts.
    """
    d, n = xt.shape
    r, k, _ = centers.shape
    c2 = jnp.sum(centers * centers, -1)
    cc = jnp.sqrt(jnp.maximum(c2[:, :, None] - 2 * jnp.einsum("rkd,rjd->rkj", centers,
                                                               centers) + c2[:, None, :], 0))
    half = 0.5 * jnp.min(jnp.where(jnp.eye(k, dtype=bool), jnp.inf, cc), -1)  # (r, k)
    labels, upper, lower, sums, counts, moved = state
    max_moved = jnp.max(moved, -1)
    n_chunks = -(-n // chunk)
    ks = jnp.arange(k, dtype=jnp.int32)[:, None]
    n_few = max(1, chunk // 8)

    def chunk_body(i, acc):
        start, xs, x2s, fresh = _col_chunk(xt, x2, i, chunk)
        w = fresh.astype(xt.dtype)

        def restart_body(j, acc):
            labels, upper, lower, sums, counts = acc
            a = jax.lax.dynamic_slice(labels, (j, start), (1, chunk))[0]
            u = jax.lax.dynamic_slice(upper, (j, start), (1, chunk))[0]
            lo = jax.lax.dynamic_slice(lower, (j, start), (1, chunk))[0]
            ac = jnp.clip(a, 0, k - 1)
            u = u + moved[j][ac]
            lo = lo - max_moved[j]
            need = fresh & (u * (1.0 + 1e-4) > jnp.maximum(lo, half[j][ac]))

            def recompute(_):  # every frame of the chunk
                dist = c2[j][:, None] - 2.0 * (centers[j] @ xs)  # (k, chunk)
                lab, m1, m2 = _two_smallest(dist)
                nu = jnp.sqrt(jnp.maximum(m1 + x2s, 0.0))
                nl = jnp.sqrt(jnp.maximum(m2 + x2s, 0.0))
                changed = fresh & (lab != a)

                def delta_all(_):
                    delta = ((lab[None, :] == ks).astype(xt.dtype)
                             - (a[None, :] == ks).astype(xt.dtype)) * w
                    return jnp.einsum("kn,dn->kd", delta, xs), jnp.sum(delta, -1)

                def delta_few(_):  # usually only a few frames change state
                    idx = jnp.nonzero(changed, size=n_few, fill_value=chunk)[0]
                    ok = (idx < chunk).astype(xt.dtype)
                    idc = jnp.minimum(idx, chunk - 1)
                    delta = ((lab[idc][None, :] == ks).astype(xt.dtype)
                             - (a[idc][None, :] == ks).astype(xt.dtype)) * ok
                    return jnp.einsum("kn,dn->kd", delta, xs[:, idc]), jnp.sum(delta, -1)

                ds, dc = jax.lax.cond(jnp.sum(changed) <= n_few, delta_few, delta_all, None)
                return lab, nu, nl, ds, dc

            def recompute_few(_):  # only the (at most n_few) frames that need it
                idx = jnp.nonzero(need, size=n_few, fill_value=chunk)[0]
                ok = idx < chunk
                idc = jnp.minimum(idx, chunk - 1)
                xc = xs[:, idc]
                dist = c2[j][:, None] - 2.0 * (centers[j] @ xc)  # (k, n_few)
                lab, m1, m2 = _two_smallest(dist)
                x2c = x2s[idc]
                ac = a[idc]
                delta = ((lab[None, :] == ks).astype(xt.dtype)
                         - (ac[None, :] == ks).astype(xt.dtype)) * ok
                nu = u.at[idx].set(jnp.sqrt(jnp.maximum(m1 + x2c, 0.0)), mode="drop")
                nl = lo.at[idx].set(jnp.sqrt(jnp.maximum(m2 + x2c, 0.0)), mode="drop")
                return (a.at[idx].set(lab, mode="drop"), nu, nl,
                        jnp.einsum("kn,dn->kd", delta, xc), jnp.sum(delta, -1))

            def keep(_):
                return (a, u, lo, jnp.zeros((k, d), xt.dtype), jnp.zeros((k,), xt.dtype))

            n_need = jnp.sum(need)
            branch = jnp.where(~active[j] | (n_need == 0), 0,
                               jnp.where(n_need <= n_few, 1, 2))
            lab, nu, nl, ds, dc = jax.lax.switch(branch, (keep, recompute_few, recompute),
                                                 None)
            lab = jnp.where(active[j], lab, a)
            labels = jax.lax.dynamic_update_slice(labels, lab[None], (j, start))
            upper = jax.lax.dynamic_update_slice(upper, nu[None], (j, start))
            lower = jax.lax.dynamic_update_slice(lower, nl[None], (j, start))
            return labels, upper, lower, sums.at[j].add(ds), counts.at[j].add(dc)

        return jax.lax.fori_loop(0, r, restart_body, acc)

    return jax.lax.fori_loop(0, n_chunks, chunk_body, (labels, upper, lower, sums, counts))


def _label_pass(xt, x2, centers, chunk: int):
    """Nearest-centre labels (n,) int32 and squared distances (n,) for centres (k, d)."""
    d, n = xt.shape
    c2 = jnp.sum(centers * centers, -1)

    def body(i, acc):
        labels, mind = acc
        start, xs, x2s, _ = _col_chunk(xt, x2, i, chunk)
        lab, m = _nearest(c2[:, None] - 2.0 * (centers @ xs), 0)
        labels = jax.lax.dynamic_update_slice_in_dim(labels, lab, start, 0)
        mind = jax.lax.dynamic_update_slice_in_dim(mind, jnp.maximum(m + x2s, 0.0),
                                                   start, 0)
        return labels, mind

    init = (jnp.zeros((n,), jnp.int32), jnp.zeros((n,), xt.dtype))
    return jax.lax.fori_loop(0, -(-n // chunk), body, init)


@functools.partial(jax.jit, static_argnames=("k", "n_init", "chunk"))
def _kmeans_core(x, key, tol, max_iter, *, k: int, n_init: int, chunk: int):
    mean = jnp.mean(x, 0)
    xt = (x - mean).T  # centring keeps ‖x‖² - 2x·c + ‖c‖² accurate in float32
    x2 = jnp.sum(xt * xt, 0)
    tol_abs = tol * jnp.mean(jnp.var(xt, 1))
    n_trials = 2 + int(math.log(k))
    centers = _kmeanspp(jax.random.split(key, n_init), xt, x2, k, n_trials, chunk)

    d, n = xt.shape
    lloyd_state = (jnp.full((n_init, n), -1, jnp.int32),
                   jnp.full((n_init, n), jnp.inf, xt.dtype),
                   jnp.zeros((n_init, n), xt.dtype),
                   jnp.zeros((n_init, k, d), xt.dtype), jnp.zeros((n_init, k), xt.dtype),
                   jnp.zeros((n_init, k), xt.dtype))

    def cond(state):
        return ~state[-1]

    def step(state):
        it, centers, done, n_iter, ls, _ = state
        # after the last iteration, one more pass with every restart active gives exact
        # labels (hence member sums and counts) for the final centres
        final = jnp.all(done) | (it >= max_iter)
        active = final | ~done
        labels, upper, lower, sums, counts = _lloyd_pass(xt, x2, centers, ls, active, chunk)
        new = jnp.where(counts[..., None] > 0.5,
                        sums / jnp.maximum(counts, 1.0)[..., None],
                        centers)  # an empty cluster keeps its centre
        frozen = done | final
        new = jnp.where(frozen[:, None, None], centers, new)
        # a finished restart keeps the last movement: its bounds still need it
        moved = jnp.where(frozen[:, None], ls[5],
                          jnp.sqrt(jnp.sum((new - centers) ** 2, -1)))
        shift = jnp.sum(moved ** 2, -1)
        n_iter = n_iter + (~frozen).astype(jnp.int32)
        return (it + 1, new, done | (~final & (shift <= tol_abs)), n_iter,
                (labels, upper, lower, sums, counts, moved), final)

    zeros = jnp.zeros((n_init,), jnp.int32)
    _, centers, done, n_iter, ls, _ = jax.lax.while_loop(
        cond, step, (jnp.int32(0), centers, jnp.zeros((n_init,), bool), zeros, lloyd_state,
                     jnp.bool_(False)))
    # inertia Σ|x|² - 2 Σ_k c_k·S_k + Σ_k n_k |c_k|² from the exact member sums S_k
    sums, counts = ls[3], ls[4]
    inertia = (jnp.sum(x2) - 2.0 * jnp.einsum("rkd,rkd->r", centers, sums)
               + jnp.einsum("rk,rk->r", counts, jnp.sum(centers * centers, -1)))
    best = jnp.argmin(inertia)
    labels, mind = _label_pass(xt, x2, centers[best], chunk)
    inertia = inertia.at[best].set(jnp.sum(mind))  # the best one exactly, from distances
    return centers[best] + mean, labels, inertia, best, n_iter[best], done[best]


def kmeans(x, k: int, n_init: int = 10, max_iter: int = 300, tol: float = 1e-4,
           seed: int = 0, chunk: int = DEFAULT_CHUNK) -> KMeansResult:
    """k-means (Lloyd) with greedy k-means++ seeding and ``n_init`` restarts, keeping the
    restart with the lowest inertia.

    Convergence as in scikit-learn: a restart stops when the summed squared centre shift
    is ≤ ``tol`` × mean feature variance, or after ``max_iter`` iterations. Everything
    (seeding, iterations, all restarts) runs in one compiled call; the iterations use
    Hamerly's bounds to skip distance computations whose result cannot change, so they
    produce Lloyd's assignments at a fraction of the cost once clusters settle.
    """
    x = jnp.asarray(x, jnp.float32)
    _check_data(x, k)
    if n_init < 1 or max_iter < 1:
        raise AnalysisError(f"k-means: n_init and max_iter must be >= 1, got "
                            f"{n_init}, {max_iter}")
    chunk = int(min(chunk, x.shape[0]))
    centers, labels, inertias, best, n_iter, conv = _kmeans_core(
        x, jax.random.PRNGKey(seed), jnp.float32(tol), jnp.int32(max_iter), k=int(k),
        n_init=int(n_init), chunk=chunk)
    inertias = np.asarray(inertias, dtype=np.float64)
    return KMeansResult(np.asarray(centers), np.asarray(labels),
                        float(inertias[int(best)]), int(n_iter), bool(conv), inertias)


@functools.partial(jax.jit, static_argnames=("chunk",))
def _assign_core(x, centers, chunk: int):
    xt = x.T
    labels, mind = _label_pass(xt, jnp.sum(xt * xt, 0), centers, chunk)
    return labels, jnp.sum(mind)


def assign(x, centers, chunk: int = DEFAULT_CHUNK) -> tuple[np.ndarray, float]:
    """Nearest-centre state of each frame: labels (n,) int32 and inertia (unit²)."""
    x = jnp.asarray(x, jnp.float32)
    centers = jnp.asarray(centers, jnp.float32)
    if x.ndim != 2 or centers.ndim != 2 or x.shape[1] != centers.shape[1]:
        raise AnalysisError(f"assign: data {tuple(x.shape)} and centres "
                            f"{tuple(centers.shape)} must be 2-D with equal feature counts")
    labels, inertia = _assign_core(x, centers, int(min(chunk, x.shape[0])))
    return np.asarray(labels), float(inertia)


def inertia(x, centers) -> float:
    """Sum over frames of squared distance to the nearest centre, in float64 (unit²)."""
    x = np.asarray(x, np.float64)
    c = np.asarray(centers, np.float64)
    total = 0.0
    for s in range(0, x.shape[0], 65536):
        xs = x[s:s + 65536]
        d = (xs * xs).sum(1)[:, None] - 2 * xs @ c.T + (c * c).sum(1)[None]
        total += float(np.maximum(d.min(1), 0).sum())
    return total


# ----------------------------------------------------------------------- mini-batch


@functools.partial(jax.jit, static_argnames=("k", "n_init"))
def _seed_subset(xs, key, *, k: int, n_init: int):
    """k-means++ seeds on a subset (n_init tries), keeping the lowest-inertia one."""
    mean = jnp.mean(xs, 0)
    xt = (xs - mean).T
    x2 = jnp.sum(xt * xt, 0)
    cents = _kmeanspp(jax.random.split(key, n_init), xt, x2, k, 2 + int(math.log(k)),
                      xt.shape[1])
    c2 = jnp.sum(cents * cents, -1)
    dist = c2[:, :, None] - 2.0 * jnp.einsum("rkd,dn->rkn", cents, xt) + x2
    best = jnp.argmin(jnp.sum(jnp.min(dist, 1), -1))
    return cents[best] + mean


@jax.jit
def _minibatch_step(centers, counts, xb):
    d = _sqdist(xb, jnp.sum(xb * xb, -1), centers, jnp.sum(centers * centers, -1))
    lab = jnp.argmin(d, -1)
    onehot = (lab[:, None] == jnp.arange(centers.shape[0])).astype(xb.dtype)
    bc = jnp.sum(onehot, 0)
    bs = onehot.T @ xb
    new_counts = counts + bc
    upd = (centers * counts[:, None] + bs) / jnp.maximum(new_counts, 1)[:, None]
    return jnp.where(bc[:, None] > 0, upd, centers), new_counts


def minibatch_kmeans(x, k: int, batch_size: int = 4096, n_steps: int = 300,
                     init_size: int | None = None, n_init: int = 3, seed: int = 0,
                     chunk: int = 65536) -> KMeansResult:
    """Mini-batch k-means for data that does not fit in memory.

    ``x`` may be any array-like indexable by rows, e.g. ``np.load(path, mmap_mode="r")``;
    only ``batch_size`` rows (and, for the final labelling, ``chunk`` rows) are in memory
    at a time. Seeding: k-means++ (``n_init`` tries) on a random subset of ``init_size``
    rows; then ``n_steps`` updates with per-centre learning rate 1 / count.
    """
    n = int(x.shape[0])
    if len(x.shape) != 2:
        raise AnalysisError(f"mini-batch k-means: expected (n_frames, n_features), got "
                            f"{tuple(x.shape)}")
    _check_data(np.empty((n, 0)), k, "mini-batch k-means")
    rng = np.random.default_rng(seed)
    init_size = int(min(n, init_size or max(3 * batch_size, 3 * k)))
    sub = np.sort(rng.choice(n, init_size, replace=False))
    centers = _seed_subset(jnp.asarray(np.asarray(x[sub], np.float32)),
                           jax.random.PRNGKey(seed), k=int(k), n_init=int(n_init))
    counts = jnp.zeros((k,), jnp.float32)
    batch_size = int(min(batch_size, n))
    for _ in range(n_steps):
        idx = np.sort(rng.choice(n, batch_size, replace=False))
        centers, counts = _minibatch_step(centers, counts,
                                          jnp.asarray(np.asarray(x[idx], np.float32)))
    labels = np.empty(n, np.int32)
    total = 0.0
    for s in range(0, n, chunk):
        lab, ine = assign(np.asarray(x[s:s + chunk], np.float32), centers)
        labels[s:s + chunk] = lab
        total += ine
    return KMeansResult(np.asarray(centers), labels, total, n_steps, True,
                        np.array([total]))


# ---------------------------------------------------------------------- regular space


@jax.jit
def _min_dist(xs, centers):
    d = _sqdist(xs, jnp.sum(xs * xs, -1), centers, jnp.sum(centers * centers, -1))
    return jnp.sqrt(jnp.min(d, -1))


def regspace(x, dmin: float, max_centers: int = 1000, chunk: int = 8192) -> np.ndarray:
    """Regular-space clustering: scan frames in order; a frame farther than ``dmin``
    (feature units, Euclidean) from every centre so far becomes a new centre.

    Returns centres (m, d). Raises AnalysisError if more than ``max_centers`` would be
    needed (increase ``dmin``).
    """
    x = np.asarray(x, np.float32)
    if x.ndim != 2 or x.shape[0] == 0:
        raise AnalysisError(f"regspace: expected non-empty (n_frames, n_features) data, "
                            f"got {x.shape}")
    if not dmin > 0:
        raise AnalysisError(f"regspace: dmin must be > 0, got {dmin}")
    # centres live in a fixed-size buffer (far-away padding) so one compiled shape serves
    buf = np.full((max_centers, x.shape[1]), 1e15, np.float32)
    buf[0] = x[0]
    m = 1
    for s in range(0, x.shape[0], chunk):
        xs = x[s:s + chunk]
        far = np.flatnonzero(np.asarray(_min_dist(jnp.asarray(_pad_rows(xs, chunk)),
                                                  jnp.asarray(buf)))[:len(xs)] > dmin)
        start_m = m
        for i in far:  # few candidates: check against centres added in this chunk
            if m > start_m:
                dd = np.sqrt(((buf[start_m:m] - xs[i]) ** 2).sum(1)).min()
                if dd <= dmin:
                    continue
            if m >= max_centers:
                raise AnalysisError(f"regspace: more than max_centers = {max_centers} "
                                    f"centres needed at dmin = {dmin}; increase dmin")
            buf[m] = xs[i]
            m += 1
    return buf[:m].copy()


def _pad_rows(a: np.ndarray, n: int) -> np.ndarray:
    if a.shape[0] == n:
        return a
    return np.concatenate([a, np.repeat(a[-1:], n - a.shape[0], 0)], 0)


# ------------------------------------------------------------------------- silhouette


@functools.partial(jax.jit, static_argnames=("k", "chunk"))
def _silhouette_core(x, labels, k: int, chunk: int):
    n = x.shape[0]
    x2 = jnp.sum(x * x, -1)
    onehot = (labels[:, None] == jnp.arange(k)).astype(x.dtype)
    sizes = jnp.sum(onehot, 0)

    def body(i, out):
        start, xs, _ = _chunk_slice(x, i, chunk)
        x2s = jax.lax.dynamic_slice_in_dim(x2, start, chunk)
        ls = jax.lax.dynamic_slice_in_dim(labels, start, chunk)
        dist = jnp.sqrt(_sqdist(xs, x2s, x, x2))
        per = dist @ onehot  # (chunk, k) summed distance to each cluster
        own = ls[:, None] == jnp.arange(k)
        own_size = sizes[ls]
        a = jnp.sum(jnp.where(own, per, 0), -1) / jnp.maximum(own_size - 1, 1)
        b = jnp.min(jnp.where(own | (sizes == 0), jnp.inf, per / jnp.maximum(sizes, 1)), -1)
        s = jnp.where(own_size > 1, (b - a) / jnp.maximum(jnp.maximum(a, b), 1e-30), 0.0)
        return jax.lax.dynamic_update_slice_in_dim(out, s, start, 0)

    return jax.lax.fori_loop(0, -(-n // chunk), body, jnp.zeros((n,), x.dtype))


def silhouette(x, labels, sample_size: int | None = 10000, seed: int = 0) -> float:
    """Mean silhouette coefficient (in [-1, 1], higher = better separated) with Euclidean
    distances, on a random subsample of ``sample_size`` frames (None = all)."""
    x = np.asarray(x, np.float32)
    labels = np.asarray(labels)
    if x.ndim != 2 or labels.shape != (x.shape[0],):
        raise AnalysisError(f"silhouette: data {x.shape} and labels {labels.shape} "
                            f"do not match")
    if sample_size is not None and x.shape[0] > sample_size:
        idx = np.random.default_rng(seed).choice(x.shape[0], sample_size, replace=False)
        x, labels = x[idx], labels[idx]
    uniq, lab = np.unique(labels, return_inverse=True)
    if not 2 <= len(uniq) <= x.shape[0] - 1:
        raise AnalysisError(f"silhouette needs 2 <= number of clusters <= n_frames - 1, "
                            f"got {len(uniq)} clusters for {x.shape[0]} frames")
    s = _silhouette_core(jnp.asarray(x), jnp.asarray(lab, jnp.int32), len(uniq),
                         int(min(1024, x.shape[0])))
    return float(jnp.mean(s))


def scan_k(x, ks, n_init: int = 3, seed: int = 0, sample_size: int = 5000) -> list[dict]:
    """Inertia and silhouette for each k in ``ks`` to help choose the number of states."""
    out = []
    for k in ks:
        res = kmeans(x, int(k), n_init=n_init, seed=seed)
        sil = silhouette(x, res.labels, sample_size, seed) if k > 1 else float("nan")
        out.append({"k": int(k), "inertia": res.inertia, "silhouette": sil})
    return out
