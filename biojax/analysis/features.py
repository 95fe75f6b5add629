"""Structural features of trajectories, in JAX (jit, batched over frames).

Positions are (n_frames, n_atoms, 3) in Å. Dihedrals are in radians in (-π, π];
distances and RMSD in Å. ``sincos`` encodes angles for clustering and dimensionality
reduction so that -π and π are the same point.
"""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np

from biojax.core import geometry
from biojax.core.errors import AnalysisError


def _check_indices(n_atoms: int, idx: np.ndarray, width: int, what: str) -> np.ndarray:
    idx = np.asarray(idx, dtype=np.int32)
    if idx.ndim != 2 or idx.shape[1] != width or idx.shape[0] == 0:
        raise AnalysisError(f"{what}: expected a non-empty list of {width}-atom index "
                            f"tuples, got shape {idx.shape}")
    if idx.min() < 0 or idx.max() >= n_atoms:
        raise AnalysisError(f"{what}: atom indices must be in [0, {n_atoms}), got "
                            f"min {idx.min()}, max {idx.max()}")
    return idx


def dihedrals(positions, quads) -> jax.Array:
    """Dihedral angles (radians, (n_frames, n_quads)) for atom quadruples (n_quads, 4)."""
    positions = jnp.asarray(positions, jnp.float32)
    quads = _check_indices(positions.shape[1], quads, 4, "dihedrals")
    return geometry.dihedrals(positions, jnp.asarray(quads))


def distances(positions, pairs) -> jax.Array:
    """Interatomic distances (Å, (n_frames, n_pairs)) for index pairs (n_pairs, 2)."""
    positions = jnp.asarray(positions, jnp.float32)
    pairs = _check_indices(positions.shape[1], pairs, 2, "distances")
    return geometry.distances(positions, jnp.asarray(pairs))


def all_pairs(indices) -> np.ndarray:
    """All unordered pairs (i < j) of the given atom indices, shape (n*(n-1)/2, 2)."""
    indices = np.asarray(indices, dtype=np.int32)
    if indices.size < 2:
        raise AnalysisError(f"pairwise distances need at least 2 atoms, got {indices.size}")
    return np.asarray(list(itertools.combinations(indices.tolist(), 2)), dtype=np.int32)


def contacts(positions, pairs, cutoff: float, smooth: float = 0.0) -> jax.Array:
    """Contact map entries (n_frames, n_pairs) for pairs closer than ``cutoff`` Å.

    With ``smooth`` = 0 a hard 0/1 indicator; otherwise a sigmoid of width ``smooth`` Å,
    1 / (1 + exp((d - cutoff) / smooth)), which is differentiable.
    """
    d = distances(positions, pairs)
    if smooth > 0:
        return jax.nn.sigmoid((cutoff - d) / smooth)
    return (d < cutoff).astype(jnp.float32)


def align(positions, reference, fit_indices=None) -> jax.Array:
    """Frames optimally superimposed (Kabsch) on ``reference`` (n_atoms, 3), in Å.

    The fit uses ``fit_indices`` (default all atoms); every atom is moved with the fitted
    rotation and translation, so the fit atoms' centroid lands on the reference's.
    """
    positions = jnp.asarray(positions, jnp.float32)
    reference = jnp.asarray(reference, jnp.float32)
    if reference.shape != positions.shape[1:]:
        raise AnalysisError(f"reference has shape {tuple(reference.shape)} but frames have "
                            f"{tuple(positions.shape[1:])}")
    fit = None if fit_indices is None else jnp.asarray(np.asarray(fit_indices), jnp.int32)
    return geometry.align(positions, reference, fit)


def aligned_coordinates(positions, reference, indices) -> jax.Array:
    """Flattened Cartesian coordinates (n_frames, 3 * n_sel) of the selected atoms after
    Kabsch alignment of those atoms to the reference, in Å."""
    idx = np.asarray(indices, dtype=np.int32)
    positions = jnp.asarray(positions, jnp.float32)[:, idx]
    aligned = align(positions, jnp.asarray(reference, jnp.float32)[idx])
    return aligned.reshape(aligned.shape[0], -1)


def rmsd(positions, reference, indices=None) -> jax.Array:
    """Minimal RMSD (Å, (n_frames,)) to ``reference`` after Kabsch alignment of the
    selected atoms (default all)."""
    positions = jnp.asarray(positions, jnp.float32)
    idx = None if indices is None else jnp.asarray(np.asarray(indices), jnp.int32)
    reference = jnp.asarray(reference, jnp.float32)
    if reference.shape != positions.shape[1:]:
        raise AnalysisError(f"reference has shape {tuple(reference.shape)} but frames have "
                            f"{tuple(positions.shape[1:])}")
    return geometry.rmsd(positions, reference, idx)


def sincos(angles) -> jax.Array:
    """Encode angles (radians, (n_frames, n)) as (n_frames, 2n): [sin..., cos...]."""
    angles = jnp.asarray(angles)
    return jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=-1)


def circular_mean(angles, axis=0) -> jax.Array:
    """Mean direction (radians) of angles along ``axis``."""
    angles = jnp.asarray(angles)
    return jnp.arctan2(jnp.mean(jnp.sin(angles), axis), jnp.mean(jnp.cos(angles), axis))
