"""Free-energy surfaces F = -kT ln p on one or two features, with block-bootstrap
errors; free energies of states; KL and Jensen–Shannon divergences between surfaces.

Energies are in eV (ASE units; kT = k_B T with k_B from ``biojax.core.units``). Angles
are in radians; surfaces on periodic features use the range [-π, π). Bins that were never
visited have F = +inf and probability 0.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from biojax.analysis.msm import bootstrap_weights
from biojax.core.errors import AnalysisError
from biojax.core.units import KB


def kT(temperature: float) -> float:
    """Thermal energy k_B T in eV for a temperature in K."""
    if not temperature > 0:
        raise AnalysisError(f"temperature must be > 0 K, got {temperature}")
    return float(KB * temperature)


@dataclasses.dataclass(frozen=True)
class FES:
    """A 1-D or 2-D free-energy surface.

    ``edges``: one array of bin edges per dimension; ``probability`` (bins...) sums to 1;
    ``free_energy`` (eV) with its minimum at 0; ``error`` (eV) the block-bootstrap
    standard error of F per bin (NaN where too few resamples visit the bin)."""

    edges: tuple[np.ndarray, ...]
    probability: np.ndarray
    free_energy: np.ndarray
    error: np.ndarray
    temperature: float
    names: tuple[str, ...] = ()

    @property
    def centers(self) -> tuple[np.ndarray, ...]:
        return tuple(0.5 * (e[1:] + e[:-1]) for e in self.edges)


def _bin_index(values: np.ndarray, edges: Sequence[np.ndarray]) -> np.ndarray:
    """Flat bin index per frame (-1 outside the range)."""
    shape = [len(e) - 1 for e in edges]
    flat = np.zeros(values.shape[0], np.int64)
    inside = np.ones(values.shape[0], bool)
    for dim, e in enumerate(edges):
        i = np.searchsorted(e, values[:, dim], side="right") - 1
        i = np.where(values[:, dim] == e[-1], len(e) - 2, i)  # include right edge
        inside &= (i >= 0) & (i < shape[dim])
        flat = flat * shape[dim] + np.clip(i, 0, shape[dim] - 1)
    return np.where(inside, flat, -1)


@jax.jit
def _free_energy(counts, kt):
    p = counts / jnp.sum(counts, -1, keepdims=True)
    f = jnp.where(p > 0, -kt * jnp.log(jnp.where(p > 0, p, 1.0)), jnp.inf)
    return p, f - jnp.min(f, -1, keepdims=True)


@jax.jit
def _fes_core(bc, kt, w):
    """Probability, F and block-bootstrap error of F from block histograms (blocks, bins)
    and bootstrap block weights w (n_boot, blocks)."""
    n_boot = w.shape[0]
    p, f = _free_energy(jnp.sum(bc, 0), kt)
    _, fb = _free_energy(w @ bc, kt)
    finite = jnp.isfinite(fb)
    n_ok = jnp.sum(finite, 0)
    mean = jnp.sum(jnp.where(finite, fb, 0.0), 0) / jnp.maximum(n_ok, 1)
    var = jnp.sum(jnp.where(finite, (fb - mean) ** 2, 0.0), 0) / jnp.maximum(n_ok - 1, 1)
    err = jnp.where(n_ok >= max(2, n_boot // 2), jnp.sqrt(var), jnp.nan)
    return p, f, err


def free_energy_surface(values, bins: int | Sequence[int] = 50, ranges=None,
                        temperature: float = 300.0, n_blocks: int = 10,
                        n_bootstrap: int = 200, seed: int = 0,
                        names: Sequence[str] = (), weights=None) -> FES:
    """F = -kT ln p on features ``values`` (n_frames,) or (n_frames, 1 or 2).

    ``ranges``: [(lo, hi), ...] per dimension (default: data min/max). Errors: the
    trajectory is cut into ``n_blocks`` contiguous blocks which are resampled with
    replacement ``n_bootstrap`` times; the error is the standard deviation of F over the
    resamples that visit the bin (both shifted so the global minimum is 0).
    """
    v = np.asarray(values, np.float64)
    if v.ndim == 1:
        v = v[:, None]
    if v.ndim != 2 or v.shape[1] not in (1, 2) or v.shape[0] < 2:
        raise AnalysisError(f"free-energy surface needs (n_frames,) or (n_frames, 1|2) "
                            f"values with n_frames >= 2, got shape {v.shape}")
    dims = v.shape[1]
    bins = [bins] * dims if isinstance(bins, (int, np.integer)) else list(bins)
    if len(bins) != dims or any(b < 1 for b in bins):
        raise AnalysisError(f"bins must be a positive integer or one per dimension, "
                            f"got {bins}")
    if ranges is None:
        ranges = [(float(v[:, i].min()), float(v[:, i].max())) for i in range(dims)]
    if len(ranges) != dims or any(not hi > lo for lo, hi in ranges):
        raise AnalysisError(f"ranges must be one (lo, hi) with hi > lo per dimension, "
                            f"got {ranges}")
    edges = tuple(np.linspace(lo, hi, b + 1) for (lo, hi), b in zip(ranges, bins))
    flat = _bin_index(v, edges)
    n_bins = int(np.prod(bins))
    n_blocks = int(min(n_blocks, v.shape[0]))
    bc = np.zeros((n_blocks, n_bins), np.float32)
    w = np.ones(v.shape[0]) if weights is None else np.asarray(weights, np.float64)
    for b, idx in enumerate(np.array_split(np.arange(v.shape[0]), n_blocks)):
        ok = flat[idx] >= 0
        bc[b] = np.bincount(flat[idx][ok], weights=w[idx][ok], minlength=n_bins)
    total = bc.sum(0)
    if total.sum() == 0:
        raise AnalysisError(f"no frame falls inside the histogram range {ranges}")
    w = bootstrap_weights(n_bootstrap, n_blocks, seed)
    p, f, err = _fes_core(jnp.asarray(bc), kT(temperature), w)
    shape = tuple(bins)
    return FES(edges, np.asarray(p).reshape(shape), np.asarray(f).reshape(shape),
               np.asarray(err).reshape(shape), float(temperature), tuple(names))


def state_free_energies(populations, temperature: float = 300.0) -> np.ndarray:
    """Free energy of each state, F_i = -kT ln p_i (eV), shifted so the most populated
    state has 0; empty states get +inf."""
    p = np.asarray(populations, np.float64)
    with np.errstate(divide="ignore"):
        f = -kT(temperature) * np.log(p)
    return f - np.min(f)


def _check_pair(p, q):
    p = np.asarray(p, np.float64).ravel()
    q = np.asarray(q, np.float64).ravel()
    if p.shape != q.shape:
        raise AnalysisError(f"surfaces must have the same bins: {p.size} vs {q.size}")
    if p.sum() <= 0 or q.sum() <= 0 or (p < 0).any() or (q < 0).any():
        raise AnalysisError("probabilities must be non-negative and not all zero")
    return jnp.asarray(p / p.sum()), jnp.asarray(q / q.sum())


def _as_prob(x):
    return x.probability if isinstance(x, FES) else x


def kl_divergence(p, q, eps: float = 1e-12) -> float:
    """KL(p‖q) = Σ p ln(p/q) in nats, for probabilities or FES objects on the same bins.
    Bins with p > 0 and q = 0 are regularised by ``eps`` (a finite but large value)."""
    p, q = _check_pair(_as_prob(p), _as_prob(q))
    return float(jnp.sum(jnp.where(p > 0, p * (jnp.log(p) - jnp.log(jnp.maximum(q, eps))),
                                   0.0)))


def js_divergence(p, q) -> float:
    """Jensen–Shannon divergence (nats, in [0, ln 2]) between two distributions/FES."""
    p, q = _check_pair(_as_prob(p), _as_prob(q))
    m = 0.5 * (p + q)

    def kl(a):
        return jnp.sum(jnp.where(a > 0, a * (jnp.log(a) - jnp.log(jnp.maximum(m, 1e-300))),
                                 0.0))

    return float(0.5 * kl(p) + 0.5 * kl(q))


PERIODIC_RANGE = (-math.pi, math.pi)
