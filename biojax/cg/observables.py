"""Observables for training by reweighting, and their target files.

Two kinds, as DiffTRe needs them (see :mod:`biojax.cg.reweight`):

- *structural* observables depend on the positions only: the radial distribution
  function (:class:`RDF`), the angular distribution within a shell (:class:`ADF`) and
  dihedral distributions (:class:`DihedralDistribution`, :class:`Ramachandran`). They are
  computed once per frame when a trajectory is sampled (``over_frames``) and enter the
  gradient only through the reweighting weights ("differentiable by weights"); the
  per-frame functions are JAX and differentiable in the positions as well.
- *parameter-dependent* observables such as the virial pressure
  (:func:`make_pressure`) are recomputed from the frames inside the loss, so their
  explicit dependence on θ is differentiated too.

Smearing: every distribution is a sum of Gaussians (width ``sigma``) centred on the
instantaneous values, evaluated at the bin centres; for pair distances this is done by
linear binning on a grid of spacing σ/4 followed by a Gaussian convolution, which costs
O(pairs) instead of O(pairs × bins) and differs from the direct sum by ≪ 1 % of the
peak (the tests compare both).

Target files (:func:`read_target`): two columns, x and y, whitespace- or
comma-separated, ``#`` comments allowed. RDF files give r in nm (the DiffTRe/GROMACS
convention of the shipped water data) and are converted to Å when read; ADF files give
the angle in radians. Wrong column counts, non-numbers, NaN/inf and non-increasing x
are errors naming the file and line.
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from biojax.core.errors import DataError
from biojax.core.geometry import dihedrals
from biojax.core.units import BAR, NM


# ====================================================================== helpers
def _mic(d, box):
    """Minimum-image vectors for an orthorhombic box (3,) Å; ``box=None``: free space."""
    if box is None:
        return d
    box = jnp.asarray(box, d.dtype)
    return d - box * jnp.round(d / box)


def _gauss_matrix(grid: np.ndarray, centers: np.ndarray, sigma: float,
                  period: float | None = None) -> np.ndarray:
    """(len(grid), len(centers)) normalised Gaussian weights G(center − x; σ)."""
    diff = centers[None, :] - grid[:, None]
    if period is not None:
        diff = (diff + 0.5 * period) % period - 0.5 * period
    return np.exp(-0.5 * (diff / sigma) ** 2) / (math.sqrt(2.0 * math.pi) * sigma)


def _linear_binning(x, weights, x0: float, dx: float, n: int):
    """Histogram on the grid x0 + i·dx (n points) with each value split linearly between
    its two grid points (differentiable in x almost everywhere); values off the grid
    are dropped."""
    u = (x - x0) / dx
    i = jnp.floor(u)
    f = u - i
    i = i.astype(jnp.int32)
    ok0 = (i >= 0) & (i < n)
    ok1 = (i + 1 >= 0) & (i + 1 < n)
    h = jax.ops.segment_sum(jnp.where(ok0, weights * (1.0 - f), 0.0),
                            jnp.clip(i, 0, n - 1), num_segments=n)
    h = h + jax.ops.segment_sum(jnp.where(ok1, weights * f, 0.0),
                                jnp.clip(i + 1, 0, n - 1), num_segments=n)
    return h


def frames_fn(fn: Callable, batch_size: int = 8) -> Callable:
    """``fn`` (one frame → array or tuple) as a jitted function of frames (F, N, 3) →
    NumPy (F, ...), in batches of ``batch_size`` frames (``lax.map``); build it once and
    call it for every new trajectory (no recompilation while F stays the same)."""
    mapped = jax.jit(lambda f: jax.lax.map(fn, f, batch_size=batch_size))

    def run(frames):
        out = mapped(jnp.asarray(np.asarray(frames, np.float32)))
        return jax.tree_util.tree_map(np.asarray, out)

    return run


def over_frames(fn: Callable, frames, batch_size: int = 8) -> np.ndarray:
    """``fn`` (one frame (N, 3) → array) applied to frames (F, N, 3), jitted, in batches
    of ``batch_size`` frames (``lax.map``); returns NumPy (F, ...) (a tuple of them when
    ``fn`` returns a tuple)."""
    frames = jnp.asarray(np.asarray(frames, np.float32))
    out = jax.jit(lambda f: jax.lax.map(fn, f, batch_size=batch_size))(frames)
    return jax.tree_util.tree_map(np.asarray, out)


# ====================================================================== RDF
@dataclasses.dataclass(frozen=True)
class RDF:
    """Radial distribution function g(r) between groups A and B (default: all atoms),
    Gaussian-smeared (σ Å, default the bin width) at ``n_bins`` bin centres on
    [``r_min``, ``r_max``] Å, in a periodic orthorhombic ``box`` (3,) Å (minimum image;
    needs r_max ≤ half the shortest side) or free space (``box=None``; then g is
    normalised by the given ``volume``)."""

    box: tuple | None
    r_max: float
    n_bins: int = 100
    r_min: float = 0.0
    sigma: float | None = None
    group_a: tuple | None = None
    group_b: tuple | None = None
    volume: float | None = None

    def __post_init__(self):
        if not 0 <= self.r_min < self.r_max:
            raise DataError(f"RDF: need 0 <= r_min < r_max, got {self.r_min}, {self.r_max} Å")
        if self.n_bins < 2:
            raise DataError(f"RDF: n_bins must be >= 2, got {self.n_bins}")
        if self.box is not None and self.r_max > 0.5 * min(self.box) + 1e-6:
            raise DataError(f"RDF: r_max = {self.r_max} Å exceeds half the box "
                            f"({0.5 * min(self.box):.3f} Å); the minimum image would "
                            "miss pairs")
        if self.box is None and not self.volume:
            raise DataError("RDF in free space needs a volume (Å³) to normalise g(r)")

    @property
    def width(self) -> float:
        return (self.r_max - self.r_min) / self.n_bins

    @property
    def centers(self) -> np.ndarray:
        """Bin centres (Å)."""
        return self.r_min + self.width * (np.arange(self.n_bins) + 0.5)

    def per_frame(self, n_atoms: int) -> Callable:
        """fn(R (N, 3) Å) → g(r) (n_bins,) for one frame."""
        sigma = self.width if self.sigma is None else float(self.sigma)
        if self.group_a is None and self.group_b is None:
            ia, ib = np.triu_indices(n_atoms, 1)
            n_pairs = n_atoms * (n_atoms - 1) / 2
        else:
            a = np.arange(n_atoms) if self.group_a is None else np.asarray(self.group_a)
            b = a if self.group_b is None else np.asarray(self.group_b)
            ia, ib = np.meshgrid(a, b, indexing="ij")
            keep = ia != ib
            if self.group_b is None or set(a.tolist()) == set(b.tolist()):
                keep &= ia < ib
            ia, ib = ia[keep], ib[keep]
            n_pairs = float(len(ia))
        dx = sigma / 4.0
        lo = max(0.0, self.r_min - 5.0 * sigma)
        n_grid = int(math.ceil((self.r_max + 5.0 * sigma - lo) / dx)) + 1
        grid = lo + dx * np.arange(n_grid)
        kernel = jnp.asarray(_gauss_matrix(grid, self.centers, sigma), jnp.float32)
        volume = float(np.prod(self.box)) if self.box is not None else float(self.volume)
        norm = jnp.asarray(volume / (n_pairs * 4.0 * np.pi * self.centers ** 2), jnp.float32)
        ia, ib = jnp.asarray(ia, jnp.int32), jnp.asarray(ib, jnp.int32)
        box = None if self.box is None else np.asarray(self.box, np.float32)

        def g(R):
            d = _mic(R[ia] - R[ib], box)
            r = jnp.sqrt(jnp.maximum(jnp.sum(d * d, axis=-1), 1e-12))
            h = _linear_binning(r, jnp.ones_like(r), lo, dx, n_grid)
            return (h @ kernel) * norm

        return g

    def over_frames(self, frames, batch_size: int = 4) -> np.ndarray:
        """g(r) of every frame (F, N, 3) → (F, n_bins)."""
        frames = np.asarray(frames)
        return over_frames(self.per_frame(frames.shape[-2]), frames, batch_size)


# ====================================================================== ADF
@dataclasses.dataclass(frozen=True)
class ADF:
    """Angular distribution p(θ) of triplets i–j–k with both i and k within ``r_outer``
    (Å) of the centre j (the O–O–O ADF of water uses 3.18 Å), Gaussian-smeared (σ rad,
    default the bin width) at ``n_bins`` centres on [0, π], normalised to unit
    integral (trapezoid rule over the centres). ``max_neighbors`` bounds the neighbours
    within the shell per atom; more is an error that names the count."""

    box: tuple | None
    r_outer: float = 3.18
    n_bins: int = 90
    sigma: float | None = None
    max_neighbors: int = 16

    @property
    def width(self) -> float:
        return np.pi / self.n_bins

    @property
    def centers(self) -> np.ndarray:
        """Bin centres (rad)."""
        return self.width * (np.arange(self.n_bins) + 0.5)

    def per_frame(self, n_atoms: int) -> Callable:
        """fn(R) → (p(θ) (n_bins,), most neighbours any atom has within r_outer)."""
        sigma = self.width if self.sigma is None else float(self.sigma)
        M = min(self.max_neighbors, n_atoms - 1)
        box = None if self.box is None else np.asarray(self.box, np.float32)
        ii, kk = np.meshgrid(np.arange(M), np.arange(M), indexing="ij")
        off = ii != kk
        ii, kk = jnp.asarray(ii[off]), jnp.asarray(kk[off])
        trapz_w = np.full(self.n_bins, self.width)
        trapz_w[[0, -1]] *= 0.5
        trapz_w = jnp.asarray(trapz_w, jnp.float32)
        dx = sigma / 4.0
        grid = -5.0 * sigma + dx * np.arange(int(math.ceil((np.pi + 10 * sigma) / dx)) + 1)
        kernel = jnp.asarray(_gauss_matrix(grid, self.centers, sigma), jnp.float32)

        def p(R):
            d = _mic(R[None, :, :] - R[:, None, :], box)                # (N, N, 3): j - i
            r2 = jnp.sum(d * d, axis=-1)
            inside = (r2 < self.r_outer ** 2) & ~jnp.eye(n_atoms, dtype=bool)
            count = jnp.sum(inside, axis=1)
            # each centre's neighbours packed into M slots (slot M collects the rest)
            slot = jnp.where(inside, jnp.cumsum(inside, axis=1) - 1, M)
            slot = jnp.minimum(slot, M)
            rows = jnp.broadcast_to(jnp.arange(n_atoms)[:, None], slot.shape)
            cols = jnp.broadcast_to(jnp.arange(n_atoms)[None, :], slot.shape)
            idx = jnp.full((n_atoms, M + 1), 0, jnp.int32).at[rows, slot].set(cols)[:, :M]
            filled = jnp.arange(M)[None, :] < count[:, None]
            v = jnp.take_along_axis(d, idx[:, :, None], axis=1)          # (N, M, 3)
            a, b = v[:, ii], v[:, kk]
            cross = jnp.cross(a, b)
            s = jnp.sqrt(jnp.sum(cross * cross, axis=-1) + 1e-20)
            theta = jnp.arctan2(s, jnp.sum(a * b, axis=-1)).reshape(-1)
            w = (filled[:, ii] & filled[:, kk]).astype(jnp.float32).reshape(-1)
            h = _linear_binning(theta, w, float(grid[0]), dx, len(grid)) @ kernel
            return h / jnp.maximum(jnp.sum(h * trapz_w), 1e-30), jnp.max(count)

        return p

    def over_frames(self, frames, batch_size: int = 2) -> np.ndarray:
        """p(θ) of every frame (F, N, 3) → (F, n_bins); an atom with more than
        ``max_neighbors`` neighbours inside the shell is an error."""
        frames = np.asarray(frames)
        p, count = over_frames(self.per_frame(frames.shape[-2]), frames, batch_size)
        most = int(np.max(count))
        if most > self.max_neighbors:
            raise DataError(f"ADF: an atom has {most} neighbours within r_outer = "
                            f"{self.r_outer} Å but max_neighbors = {self.max_neighbors}; "
                            "raise max_neighbors")
        return p


# ====================================================================== dihedrals
def _dihedrals_mic(R, quads, box):
    """Dihedrals (rad) of quads (n, 4) with bond vectors taken by minimum image."""
    x1 = R[quads[:, 1]]
    p0 = x1 + _mic(R[quads[:, 0]] - x1, box)
    p2 = x1 + _mic(R[quads[:, 2]] - x1, box)
    p3 = p2 + _mic(R[quads[:, 3]] - R[quads[:, 2]], box)
    pos = jnp.stack([p0, x1, p2, p3], axis=1).reshape(-1, 3)
    q = jnp.arange(4 * quads.shape[0], dtype=jnp.int32).reshape(-1, 4)
    return dihedrals(pos, q)


@dataclasses.dataclass(frozen=True)
class DihedralDistribution:
    """Distribution over (−π, π] of each dihedral in ``quads`` (atom index quadruples,
    e.g. the φ and ψ of a CG peptide), periodic-Gaussian-smeared (σ rad, default the
    bin width), normalised to unit integral per dihedral: per frame (n_quads, n_bins)."""

    quads: tuple
    n_bins: int = 36
    sigma: float | None = None
    box: tuple | None = None

    @property
    def centers(self) -> np.ndarray:
        w = 2 * np.pi / self.n_bins
        return -np.pi + w * (np.arange(self.n_bins) + 0.5)

    def per_frame(self, n_atoms: int) -> Callable:
        w = 2 * np.pi / self.n_bins
        sigma = w if self.sigma is None else float(self.sigma)
        quads = jnp.asarray(np.asarray(self.quads, np.int32).reshape(-1, 4))
        centers = jnp.asarray(self.centers, jnp.float32)
        box = None if self.box is None else np.asarray(self.box, np.float32)

        def p(R):
            phi = _dihedrals_mic(R, quads, box)
            dev = jnp.mod(phi[:, None] - centers[None, :] + jnp.pi, 2 * jnp.pi) - jnp.pi
            g = jnp.exp(-0.5 * (dev / sigma) ** 2)
            return g / (jnp.sum(g, axis=1, keepdims=True) * w)

        return p

    def over_frames(self, frames, batch_size: int = 16) -> np.ndarray:
        frames = np.asarray(frames)
        return over_frames(self.per_frame(frames.shape[-2]), frames, batch_size)


@dataclasses.dataclass(frozen=True)
class Ramachandran:
    """Joint φ/ψ distribution on (−π, π]², averaged over the residues (pairs of quads
    ``phi_quads[i]``, ``psi_quads[i]``), periodic-Gaussian-smeared, unit integral:
    per frame (n_bins, n_bins), axis 0 φ, axis 1 ψ."""

    phi_quads: tuple
    psi_quads: tuple
    n_bins: int = 24
    sigma: float | None = None
    box: tuple | None = None

    def per_frame(self, n_atoms: int) -> Callable:
        w = 2 * np.pi / self.n_bins
        sigma = w if self.sigma is None else float(self.sigma)
        phi_q = jnp.asarray(np.asarray(self.phi_quads, np.int32).reshape(-1, 4))
        psi_q = jnp.asarray(np.asarray(self.psi_quads, np.int32).reshape(-1, 4))
        if phi_q.shape != psi_q.shape:
            raise DataError("Ramachandran: need as many psi as phi quadruples")
        centers = jnp.asarray(-np.pi + w * (np.arange(self.n_bins) + 0.5), jnp.float32)
        box = None if self.box is None else np.asarray(self.box, np.float32)

        def smear(x):
            dev = jnp.mod(x[:, None] - centers[None, :] + jnp.pi, 2 * jnp.pi) - jnp.pi
            return jnp.exp(-0.5 * (dev / sigma) ** 2)

        def p(R):
            a = smear(_dihedrals_mic(R, phi_q, box))
            b = smear(_dihedrals_mic(R, psi_q, box))
            h = jnp.einsum("ri,rj->ij", a, b)
            return h / (jnp.sum(h) * w * w)

        return p

    def over_frames(self, frames, batch_size: int = 16) -> np.ndarray:
        frames = np.asarray(frames)
        return over_frames(self.per_frame(frames.shape[-2]), frames, batch_size)


# ====================================================================== pressure
def make_pressure(energy_fn: Callable, box, n_atoms: int, kT: float,
                  dof: int | None = None) -> Callable:
    """pressure(R, neighbor, params) (bar) of one frame by the virial theorem,
    P = (dof·kT − ∂U/∂ε) / (3V), with the kinetic part from the temperature (kT eV;
    ``dof`` default 3N) and ∂U/∂ε the derivative of the energy under a uniform scaling
    (1 + ε) of every displacement (jax-md's ``perturbation``; the model's
    ``displacement_fn`` must accept it, as biojax's spaces do). Differentiable in
    ``params``: the pressure target's explicit θ dependence enters the gradient."""
    volume = float(np.prod(np.asarray(box, np.float64)))
    dof = 3 * n_atoms if dof is None else int(dof)

    def pressure(R, neighbor, params):
        dU = jax.grad(lambda eps: energy_fn(R, neighbor, params,
                                            perturbation=1.0 + eps))(0.0)
        return (dof * kT - dU) / (3.0 * volume) / BAR

    return pressure


# ====================================================================== targets
@dataclasses.dataclass(frozen=True)
class TargetData:
    """A target curve read from a file: ``x`` (Å for RDFs, rad for ADFs), ``y``, and
    a note on what was converted."""

    path: str
    kind: str
    x: np.ndarray
    y: np.ndarray
    note: str = ""

    def on(self, centers: np.ndarray) -> np.ndarray:
        """The target interpolated (linearly) at ``centers``; centres outside the file's
        range are an error."""
        centers = np.asarray(centers, np.float64)
        lo, hi = self.x[0], self.x[-1]
        if centers.min() < lo - 1e-9 or centers.max() > hi + 1e-9:
            raise DataError(f"{self.path}: the target covers x in [{lo:.4g}, {hi:.4g}] but "
                            f"the observable needs [{centers.min():.4g}, "
                            f"{centers.max():.4g}] (units: {_X_UNITS[self.kind]})")
        return np.interp(centers, self.x, self.y)


_X_UNITS = {"rdf": "Å", "adf": "rad", "dihedral": "rad"}


def read_target(path: str | os.PathLike, kind: str = "rdf", length_unit: str = "nm"
                ) -> TargetData:
    """Read a two-column target file (see module doc). ``kind`` "rdf": x is r in
    ``length_unit`` ("nm", the default, or "angstrom"), converted to Å here; "adf"/"
    dihedral": x is an angle in radians (ADF within [0, π]). y must be finite; x
    strictly increasing."""
    path = os.fspath(path)
    if kind not in _X_UNITS:
        raise DataError(f"{path}: unknown target kind {kind!r}; expected one of "
                        f"{sorted(_X_UNITS)}")
    if not os.path.isfile(path):
        raise DataError(f"target file not found: {path}")
    rows = []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            text = line.split("#", 1)[0].replace(",", " ").split()
            if not text:
                continue
            if len(text) != 2:
                raise DataError(f"{path}, line {n}: {len(text)} column(s) but a {kind} "
                                f"target needs exactly two (x in {_unit_text(kind, length_unit)}"
                                f", y)")
            try:
                x, y = float(text[0]), float(text[1])
            except ValueError:
                raise DataError(f"{path}, line {n}: not a number in {line.strip()!r}") from None
            if not (math.isfinite(x) and math.isfinite(y)):
                raise DataError(f"{path}, line {n}: non-finite value (NaN or inf) in "
                                f"{line.strip()!r}")
            rows.append((x, y, n))
    if len(rows) < 2:
        raise DataError(f"{path}: needs at least two rows of data, found {len(rows)}")
    data = np.array([(x, y) for x, y, _ in rows], np.float64)
    steps = np.diff(data[:, 0])
    if np.any(steps <= 0):
        k = int(np.argmax(steps <= 0)) + 1
        raise DataError(f"{path}, line {rows[k][2]}: x = {data[k, 0]:.6g} does not increase "
                        f"(previous {data[k - 1, 0]:.6g}); x must be strictly increasing")
    x, y, note = data[:, 0], data[:, 1], ""
    if kind == "rdf":
        if length_unit == "nm":
            x, note = x * NM, "r converted from nm to Å"
        elif length_unit not in ("angstrom", "Å"):
            raise DataError(f"{path}: length_unit must be 'nm' or 'angstrom', got "
                            f"{length_unit!r}")
        if x[0] < 0:
            raise DataError(f"{path}: negative distance {x[0]:.6g}")
    elif kind == "adf" and (x[0] < -1e-6 or x[-1] > np.pi + 1e-6):
        raise DataError(f"{path}: ADF angles must lie in [0, π] rad, got [{x[0]:.4g}, "
                        f"{x[-1]:.4g}] (degrees? convert to radians)")
    return TargetData(path, kind, x, y, note)


def _unit_text(kind: str, length_unit: str) -> str:
    return length_unit if kind == "rdf" else "rad"
