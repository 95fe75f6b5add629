"""States and kinetics: populations with block-bootstrap errors, transition counts at a
lag time, the maximum-likelihood reversible Markov state model and implied timescales.

State trajectories are int arrays (n_frames,) with labels in [0, n_states), or lists of
them (one per independent trajectory). Lag times and timescales are in frames.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from scipy.sparse.csgraph import connected_components

from biojax.core.errors import AnalysisError


def _as_dtrajs(dtrajs) -> list[np.ndarray]:
    if isinstance(dtrajs, np.ndarray) or not isinstance(dtrajs, (list, tuple)):
        dtrajs = [dtrajs]
    out = [np.asarray(d, dtype=np.int64).ravel() for d in dtrajs]
    if not out or any(d.size == 0 for d in out):
        raise AnalysisError("state trajectories must be non-empty")
    if any(d.min() < 0 for d in out):
        raise AnalysisError("state labels must be >= 0")
    return out


def _n_states(dtrajs, n_states: int | None) -> int:
    m = max(int(d.max()) for d in dtrajs) + 1
    if n_states is None:
        return m
    if n_states < m:
        raise AnalysisError(f"n_states = {n_states} but labels go up to {m - 1}")
    return n_states


@functools.partial(jax.jit, static_argnames=("n_boot", "n_blocks", "seed"))
def bootstrap_weights(n_boot: int, n_blocks: int, seed: int) -> jax.Array:
    """How often each of ``n_blocks`` blocks is drawn in each of ``n_boot`` resamples
    with replacement: (n_boot, n_blocks) float32, rows summing to n_blocks."""
    idx = jax.random.randint(jax.random.PRNGKey(seed), (n_boot, n_blocks), 0, n_blocks)
    return jnp.sum(jax.nn.one_hot(idx, n_blocks, dtype=jnp.float32), 1)


def _block_bootstrap(block_counts: jax.Array, n_boot: int, seed: int) -> jax.Array:
    """Resample blocks with replacement: (n_boot, ...) summed counts."""
    w = bootstrap_weights(n_boot, block_counts.shape[0], seed)
    return jnp.tensordot(w, block_counts, axes=(1, 0))


def block_counts(values: np.ndarray, n_bins: int, n_blocks: int) -> np.ndarray:
    """Histogram of integer ``values`` in each of ``n_blocks`` contiguous blocks:
    (n_blocks, n_bins) float32 counts (negative values are ignored)."""
    values = np.asarray(values)
    if n_blocks < 1 or n_blocks > values.size:
        raise AnalysisError(f"n_blocks must be in [1, {values.size}], got {n_blocks}")
    out = np.zeros((n_blocks, n_bins), np.float32)
    for b, chunk in enumerate(np.array_split(values, n_blocks)):
        chunk = chunk[chunk >= 0]
        out[b] = np.bincount(chunk, minlength=n_bins)[:n_bins]
    return out


@dataclasses.dataclass(frozen=True)
class Populations:
    """State populations (fractions of frames) and block-bootstrap standard errors."""

    populations: np.ndarray
    errors: np.ndarray
    counts: np.ndarray


def populations(dtrajs, n_states: int | None = None, n_blocks: int = 10,
                n_bootstrap: int = 200, seed: int = 0) -> Populations:
    """Fraction of frames in each state, with a standard error from resampling
    ``n_blocks`` contiguous blocks (which respects time correlation)."""
    d = np.concatenate(_as_dtrajs(dtrajs))
    n = _n_states([d], n_states)
    bc = block_counts(d, n, min(n_blocks, d.size))
    counts = bc.sum(0).astype(np.float64)
    w = bootstrap_weights(n_bootstrap, bc.shape[0], seed)
    err = _bootstrap_std(jnp.asarray(bc), w)
    return Populations(counts / counts.sum(), np.asarray(err, np.float64), counts)


@jax.jit
def _bootstrap_std(bc, w):
    boot = w @ bc
    return jnp.std(boot / jnp.sum(boot, -1, keepdims=True), 0)


def count_matrix(dtrajs, lag: int, n_states: int | None = None) -> np.ndarray:
    """Sliding-window transition counts C[i, j] = #(s_t = i, s_{t+lag} = j), summed over
    trajectories; (n_states, n_states) float64."""
    dt = _as_dtrajs(dtrajs)
    if lag < 1:
        raise AnalysisError(f"lag must be >= 1 frame, got {lag}")
    n = _n_states(dt, n_states)
    c = np.zeros((n, n))
    used = False
    for d in dt:
        if d.size > lag:
            np.add.at(c, (d[:-lag], d[lag:]), 1.0)
            used = True
    if not used:
        raise AnalysisError(f"lag {lag} is not shorter than any state trajectory "
                            f"(lengths {[d.size for d in dt]})")
    return c


def largest_connected_set(c: np.ndarray) -> np.ndarray:
    """Indices of the largest strongly connected set of the count matrix."""
    n_comp, lab = connected_components(c > 0, directed=True, connection="strong")
    sets = [np.flatnonzero(lab == i) for i in range(n_comp)]
    return max(sets, key=lambda s: (len(s), c[np.ix_(s, s)].sum()))


@jax.jit
def _reversible_mle(c, tol, max_iter):
    """Fixed-point iteration for the reversible MLE (Prinz et al. 2011, Eq. 15)."""
    cs = c + c.T
    ci = jnp.sum(c, 1)

    def body(state):
        x, _, it = state
        xi = jnp.sum(x, 1)
        denom = ci[:, None] / xi[:, None] + ci[None, :] / xi[None, :]
        new = jnp.where(cs > 0, cs / jnp.where(denom > 0, denom, 1.0), 0.0)
        new = new / jnp.sum(new)
        return new, jnp.max(jnp.abs(new - x)), it + 1

    def cond(state):
        _, err, it = state
        return (err > tol) & (it < max_iter)

    x0 = cs / jnp.sum(cs)
    x, err, it = jax.lax.while_loop(cond, body, (x0, jnp.inf, 0))
    xi = jnp.sum(x, 1)
    return x / xi[:, None], xi / jnp.sum(xi), it


@dataclasses.dataclass(frozen=True)
class MSM:
    """Reversible Markov state model at ``lag`` frames on the ``active_set`` states:
    transition matrix T (rows sum to 1), stationary distribution π (π T = π, π_i T_ij =
    π_j T_ji) and the count matrix it was estimated from."""

    lag: int
    transition_matrix: np.ndarray
    stationary: np.ndarray
    active_set: np.ndarray
    counts: np.ndarray
    n_states: int

    def eigenvalues(self) -> np.ndarray:
        """Eigenvalues of T, sorted by decreasing magnitude (real for a reversible T)."""
        s = np.sqrt(self.stationary)
        sym = s[:, None] * self.transition_matrix / s[None, :]
        w = np.asarray(jnp.linalg.eigvalsh(jnp.asarray(0.5 * (sym + sym.T))))
        return w[np.argsort(-np.abs(w))]

    def timescales(self, k: int | None = None) -> np.ndarray:
        """Implied timescales t_i = -lag / ln|λ_i| (frames) of the slowest ``k`` processes."""
        w = np.abs(self.eigenvalues()[1:])
        with np.errstate(divide="ignore"):
            ts = np.where(w < 1, -self.lag / np.log(np.maximum(w, 1e-300)), np.inf)
        return ts if k is None else ts[:k]

    def stationary_full(self) -> np.ndarray:
        """π on all ``n_states`` states (0 outside the active set)."""
        out = np.zeros(self.n_states)
        out[self.active_set] = self.stationary
        return out


def estimate_msm(dtrajs, lag: int, n_states: int | None = None, tol: float = 1e-10,
                 max_iter: int = 100000) -> MSM:
    """Maximum-likelihood reversible MSM at ``lag`` frames on the largest strongly
    connected set of states (float64 on the host for the small n_states × n_states
    fixed-point problem; JAX runs it)."""
    dt = _as_dtrajs(dtrajs)
    n = _n_states(dt, n_states)
    c = count_matrix(dt, lag, n)
    active = largest_connected_set(c)
    ca = c[np.ix_(active, active)]
    if ca.sum() == 0:
        raise AnalysisError(f"no transitions observed at lag {lag}")
    with jax.enable_x64(True):  # scoped: the small fixed point needs float64
        t, pi, _ = _reversible_mle(jnp.asarray(ca, jnp.float64), tol, max_iter)
        t, pi = np.asarray(t, np.float64), np.asarray(pi, np.float64)
    return MSM(lag, t, pi, active, c, n)


def implied_timescales(dtrajs, lags: Sequence[int], k: int = 3,
                       n_states: int | None = None) -> np.ndarray:
    """Implied timescales (frames), array (len(lags), k), NaN where a model has fewer
    than k + 1 states."""
    out = np.full((len(lags), k), np.nan)
    for i, lag in enumerate(lags):
        ts = estimate_msm(dtrajs, int(lag), n_states).timescales(k)
        out[i, :len(ts)] = ts
    return out
