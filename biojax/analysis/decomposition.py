"""Linear dimensionality reduction in JAX: PCA and TICA (time-lagged independent
component analysis).

Inputs are feature arrays (n_frames, n_features) — or, for TICA, a list of them, one per
independent trajectory, so that no time-lagged pair spans two trajectories. Results are
plain frozen dataclasses; ``transform`` projects new frames.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from biojax.core.errors import AnalysisError


@dataclasses.dataclass(frozen=True)
class Projection:
    """A linear projection y = (x - mean) @ components.

    ``components`` (n_features, n_components); ``eigenvalues`` (variances for PCA,
    time-lagged autocorrelations for TICA); ``explained`` the fraction of total variance
    (PCA) or of kinetic variance Σλ² (TICA) captured by each component; ``timescales``
    (TICA only, in frames): -lag / ln|λ|."""

    kind: str
    mean: np.ndarray
    components: np.ndarray
    eigenvalues: np.ndarray
    explained: np.ndarray
    lag: int = 0
    timescales: np.ndarray | None = None

    def transform(self, x) -> np.ndarray:
        """Project frames (n_frames, n_features) onto the components."""
        x = np.asarray(x, np.float32)
        if x.ndim != 2 or x.shape[1] != self.mean.shape[0]:
            raise AnalysisError(f"{self.kind}: expected (n_frames, {self.mean.shape[0]}) "
                                f"features, got {x.shape}")
        return np.asarray(_project(jnp.asarray(x), jnp.asarray(self.mean),
                                   jnp.asarray(self.components)))


@jax.jit
def _project(x, mean, comps):
    return (x - mean) @ comps


def _as_list(x) -> list[np.ndarray]:
    if isinstance(x, (list, tuple)):
        arrs = [np.asarray(a, np.float32) for a in x]
    else:
        arrs = [np.asarray(x, np.float32)]
    if not arrs or any(a.ndim != 2 for a in arrs):
        raise AnalysisError("expected feature arrays of shape (n_frames, n_features)")
    if len({a.shape[1] for a in arrs}) != 1:
        raise AnalysisError(f"trajectories have different feature counts "
                            f"{sorted({a.shape[1] for a in arrs})}")
    return arrs


@jax.jit
def _moments(x):
    mean = jnp.mean(x, 0)
    xc = x - mean
    return mean, xc.T @ xc / x.shape[0]


def pca(x, n_components: int | None = None) -> Projection:
    """Principal components of frames (n_frames, n_features), sorted by variance
    (eigenvalues in feature units²). ``explained`` = variance fraction per component."""
    x = np.concatenate(_as_list(x), 0)
    if x.shape[0] < 2:
        raise AnalysisError(f"PCA needs at least 2 frames, got {x.shape[0]}")
    n_components = _check_components(n_components, x.shape[1], "PCA")
    mean, cov = _moments(jnp.asarray(x))
    w, v = jnp.linalg.eigh(cov)
    w, v = w[::-1], v[:, ::-1]
    v = _fix_signs(v)
    w = jnp.maximum(w, 0.0)
    explained = w / jnp.sum(w)
    return Projection("pca", np.asarray(mean), np.asarray(v[:, :n_components]),
                      np.asarray(w[:n_components]), np.asarray(explained[:n_components]))


def _check_components(n: int | None, d: int, what: str) -> int:
    if n is None:
        return d
    if not 1 <= n <= d:
        raise AnalysisError(f"{what}: n_components must be in [1, {d}], got {n}")
    return int(n)


def _fix_signs(v):
    """Deterministic eigenvector signs: largest-magnitude entry positive."""
    idx = jnp.argmax(jnp.abs(v), 0)
    s = jnp.sign(v[idx, jnp.arange(v.shape[1])])
    return v * jnp.where(s == 0, 1.0, s)


def tica(x, lag: int, n_components: int | None = None, eps: float = 1e-6) -> Projection:
    """TICA at ``lag`` frames for one trajectory or a list of trajectories.

    Uses the symmetrised (reversible) estimator: C0 and Cτ from the pooled, mean-free
    pairs (x_t, x_{t+τ}); solves Cτ v = λ C0 v after whitening C0 (directions with
    relative variance < ``eps`` are dropped). Components are scaled to unit variance.
    """
    arrs = _as_list(x)
    if lag < 1:
        raise AnalysisError(f"TICA lag must be >= 1 frame, got {lag}")
    pairs = [(a[:-lag], a[lag:]) for a in arrs if a.shape[0] > lag]
    if not pairs:
        raise AnalysisError(f"TICA lag {lag} is not shorter than any trajectory "
                            f"(lengths {[a.shape[0] for a in arrs]})")
    x0 = jnp.asarray(np.concatenate([p[0] for p in pairs]))
    xt = jnp.asarray(np.concatenate([p[1] for p in pairs]))
    mean, c0, ct = _lagged_moments(x0, xt)
    w0, v0 = jnp.linalg.eigh(c0)
    keep = np.asarray(w0 > eps * jnp.max(w0))
    w0, v0 = w0[keep], v0[:, keep]
    whiten = v0 / jnp.sqrt(w0)
    lam, u = jnp.linalg.eigh(whiten.T @ ct @ whiten)
    order = jnp.argsort(-jnp.abs(lam))
    lam, u = lam[order], u[:, order]
    comps = _fix_signs(whiten @ u)
    n_components = _check_components(n_components, comps.shape[1], "TICA")
    kin = lam ** 2
    lam_np = np.asarray(lam)
    with np.errstate(divide="ignore"):
        ts = np.where(np.abs(lam_np) < 1, -lag / np.log(np.abs(lam_np)), np.inf)
    return Projection("tica", np.asarray(mean), np.asarray(comps[:, :n_components]),
                      lam_np[:n_components], np.asarray(kin / jnp.sum(kin))[:n_components],
                      lag, ts[:n_components])


@jax.jit
def _lagged_moments(x0, xt):
    mean = 0.5 * (jnp.mean(x0, 0) + jnp.mean(xt, 0))
    a, b = x0 - mean, xt - mean
    n = x0.shape[0]
    c0 = (a.T @ a + b.T @ b) / (2 * n)
    ct = (a.T @ b + b.T @ a) / (2 * n)
    return mean, c0, ct


def split_frames(x: np.ndarray, lengths: Sequence[int]) -> list[np.ndarray]:
    """Split stacked frames back into per-trajectory arrays of the given lengths."""
    return np.split(np.asarray(x), np.cumsum(lengths)[:-1])
