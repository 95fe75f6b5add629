"""Physical priors of coarse-grained models, fitted by Boltzmann inversion.

A :class:`Prior` holds fixed (not trained) energy terms on beads:

- harmonic bonds ``½ k (r − r0)²`` (k in eV/Å², r0 in Å);
- harmonic angles ``½ k (θ − θ0)²`` (k in eV/rad², θ0 in rad);
- dihedrals as a Fourier series ``Σ_n a_n cos(nφ) + b_n sin(nφ)`` (eV), optional;
- an excluded-volume repulsion ``ε (σ/r)^p`` on listed non-bonded pairs (σ Å, ε eV).

Boltzmann inversion turns the distribution of each internal coordinate in the mapped
reference data into a free energy, ``−kT ln(p(x)/J(x))`` with the Jacobian ``J = r²`` for
distances and ``sin θ`` for angles, and fits the functional form by least squares weighted
by the counts. The learned part of a CG model then fits what the prior leaves over.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from biojax.core import geometry
from biojax.core.errors import ConfigError, DataError


@dataclasses.dataclass(frozen=True)
class Prior:
    """Fixed bead energy terms (see module). Index arrays are int (n, 2|3|4) bead indices."""

    bonds: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros((0, 2), int))
    bond_r0: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0))
    bond_k: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0))
    angles: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros((0, 3), int))
    angle_theta0: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0))
    angle_k: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0))
    dihedrals: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros((0, 4), int))
    dihedral_cos: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros((0, 0)))
    dihedral_sin: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros((0, 0)))
    repulsive_pairs: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros((0, 2), int))
    repulsion_sigma: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0))
    repulsion_epsilon: float = 0.0
    repulsion_power: int = 12

    @property
    def empty(self) -> bool:
        return not (len(self.bonds) or len(self.angles) or len(self.dihedrals)
                    or len(self.repulsive_pairs))

    def energy_fn(self, displacement_fn: Callable) -> Callable:
        """``energy(R, **kw)`` (eV) of the prior at bead positions R (B, 3); ``kw`` (e.g.
        ``box=``) go to ``displacement_fn``; other keywords (``neighbor``) are ignored."""
        terms = [(np.asarray(getattr(self, f), np.int32), f) for f in
                 ("bonds", "angles", "dihedrals", "repulsive_pairs")]
        p = {k: jnp.asarray(np.asarray(getattr(self, k), np.float32)) for k in
             ("bond_r0", "bond_k", "angle_theta0", "angle_k", "dihedral_cos",
              "dihedral_sin", "repulsion_sigma")}
        eps, power = float(self.repulsion_epsilon), int(self.repulsion_power)
        n_fourier = int(np.asarray(self.dihedral_cos).shape[-1]) if len(self.dihedrals) else 0

        def energy(R, **kw):
            kw = {k: v for k, v in kw.items() if k not in ("neighbor", "term_states")}
            e = jnp.zeros((), R.dtype)
            for idx, what in terms:
                if not len(idx):
                    continue
                local = _local(R, idx, displacement_fn, kw)
                if what == "bonds":
                    r = geometry.distances(local, np.array([[0, 1]]))[:, 0]
                    e = e + 0.5 * jnp.sum(p["bond_k"] * (r - p["bond_r0"]) ** 2)
                elif what == "angles":
                    t = geometry.angles(local, np.array([[0, 1, 2]]))[:, 0]
                    e = e + 0.5 * jnp.sum(p["angle_k"] * (t - p["angle_theta0"]) ** 2)
                elif what == "dihedrals":
                    phi = geometry.dihedrals(local, np.array([[0, 1, 2, 3]]))[:, 0]
                    n = jnp.arange(1, n_fourier + 1)
                    e = e + jnp.sum(p["dihedral_cos"] * jnp.cos(n * phi[:, None])
                                    + p["dihedral_sin"] * jnp.sin(n * phi[:, None]))
                else:
                    r = geometry.distances(local, np.array([[0, 1]]))[:, 0]
                    e = e + eps * jnp.sum((p["repulsion_sigma"] / jnp.maximum(r, 1e-3))
                                          ** power)
            return e

        return energy

    def to_dict(self) -> dict:
        """JSON-ready form (lists)."""
        return {f.name: (np.asarray(getattr(self, f.name)).tolist()
                         if isinstance(getattr(self, f.name), np.ndarray)
                         else getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, d: dict) -> "Prior":
        unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise DataError(f"prior: unknown field(s) {sorted(unknown)}")
        template, out = cls(), {}
        for name, v in d.items():
            ref = getattr(template, name)
            if isinstance(ref, np.ndarray):
                v = np.asarray(v, ref.dtype)
                if v.size == 0:
                    v = v.reshape(ref.shape)
            out[name] = v
        return cls(**out)


def _local(R, idx, displacement_fn, kw):
    """Positions of each term's beads relative to its first bead (n, k, 3), so periodic
    images are resolved by ``displacement_fn``."""
    disp = jax.vmap(lambda a, b: displacement_fn(a, b, **kw))
    first = R[idx[:, 0]]
    cols = [jnp.zeros_like(first)] + [disp(R[idx[:, c]], first) for c in range(1, idx.shape[1])]
    return jnp.stack(cols, axis=1)


# ---------------------------------------------------------------------- topology helpers
def chain_topology(n_beads: int) -> dict:
    """Bonds, angles and dihedrals of a linear chain of beads 0-1-2-…"""
    b = np.arange(n_beads)
    return {"bonds": np.stack([b[:-1], b[1:]], 1),
            "angles": np.stack([b[:-2], b[1:-1], b[2:]], 1),
            "dihedrals": np.stack([b[:-3], b[1:-2], b[2:-1], b[3:]], 1)}


def nonbonded_pairs(n_beads: int, bonds: np.ndarray, exclusion: int = 3) -> np.ndarray:
    """Bead pairs more than ``exclusion − 1`` bonds apart (``exclusion`` = 3: not 1-2 or
    1-3 neighbours), the pairs that get the excluded-volume repulsion."""
    hops = np.full((n_beads, n_beads), np.inf)
    np.fill_diagonal(hops, 0)
    for i, j in np.asarray(bonds, int).reshape(-1, 2):
        hops[i, j] = hops[j, i] = 1
    for k in range(n_beads):  # Floyd–Warshall: few beads per molecule
        hops = np.minimum(hops, hops[:, [k]] + hops[[k], :])
    i, j = np.triu_indices(n_beads, 1)
    keep = hops[i, j] >= exclusion
    return np.stack([i[keep], j[keep]], 1)


# ---------------------------------------------------------------------- Boltzmann inversion
def boltzmann_inversion(values: np.ndarray, kT: float, kind: str, bins: int = 60,
                        weights: np.ndarray | None = None) -> tuple[float, float]:
    """(x0, k) of the harmonic free energy ½ k (x − x0)² that best fits −kT ln(p(x)/J(x))
    of samples ``values`` (J = x² for "bond", sin x for "angle"), least squares weighted
    by the counts. Units: x in Å or rad, kT and the result's k in eV per x²."""
    values = np.asarray(values, np.float64).ravel()
    if values.size < 10 or not np.all(np.isfinite(values)):
        raise DataError(f"Boltzmann inversion of a {kind} needs ≥ 10 finite samples, got "
                        f"{values.size}")
    counts, edges = np.histogram(values, bins=bins, weights=weights)
    x = 0.5 * (edges[1:] + edges[:-1])
    jac = x ** 2 if kind == "bond" else np.sin(x) if kind == "angle" else np.ones_like(x)
    ok = (counts > 0) & (jac > 0)
    if ok.sum() < 3:
        raise DataError(f"Boltzmann inversion of a {kind}: its samples are too narrow to fit")
    u = -kT * np.log(counts[ok] / jac[ok])
    c2, c1, _ = np.polyfit(x[ok], u, 2, w=np.sqrt(counts[ok]))
    if c2 <= 0:  # a flat or inverted distribution: fall back to the moments
        return float(values.mean()), float(kT / max(values.var(), 1e-12))
    return float(-c1 / (2 * c2)), float(2 * c2)


def fourier_inversion(phi: np.ndarray, kT: float, n_terms: int = 3, bins: int = 36
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Fourier coefficients (cos, sin) (eV) of −kT ln p(φ), fitted by least squares
    weighted by the counts on a periodic histogram over (−π, π]. When more than half of
    the bins are empty (a narrow distribution, e.g. a helix), the empty bins join the fit
    as a wall 2 kT above the highest sampled free energy, weighted like the least-visited
    bin, so the series cannot swing freely where the data say nothing."""
    counts, edges = np.histogram(np.asarray(phi).ravel(), bins=bins, range=(-np.pi, np.pi))
    x = 0.5 * (edges[1:] + edges[:-1])
    ok = counts > 0
    u = np.full(bins, np.nan)
    u[ok] = -kT * np.log(counts[ok] / counts.sum())
    w = counts.astype(float)
    if (~ok).sum() > bins // 2:
        u[~ok] = np.max(u[ok]) + 2 * kT
        w[~ok] = counts[ok].min()
        ok = np.ones(bins, bool)
    n = np.arange(1, n_terms + 1)
    basis = np.concatenate([np.ones((ok.sum(), 1)), np.cos(np.outer(x[ok], n)),
                            np.sin(np.outer(x[ok], n))], 1)
    sw = np.sqrt(w[ok])
    coef, *_ = np.linalg.lstsq(basis * sw[:, None], u[ok] * sw, rcond=None)
    return coef[1:1 + n_terms], coef[1 + n_terms:]


def fit_prior(frames: np.ndarray, kT: float, bonds=(), angles=(), dihedrals=(),
              repulsive_pairs=(), repulsion_epsilon: float | None = None,
              repulsion_percentile: float = 0.5, repulsion_power: int = 12,
              dihedral_terms: int = 3, repulsion_max_sigma: float = 4.5) -> Prior:
    """A Prior fitted to bead frames (F, B, 3) Å at temperature ``kT`` (eV).

    Bonds and angles by Boltzmann inversion; dihedrals (if listed) as a Fourier series;
    repulsive pairs get σ = the ``repulsion_percentile`` percentile of their observed
    distance, at most ``repulsion_max_sigma`` Å (an excluded volume, not a restraint that
    holds distant beads at their observed separation), and ε = kT unless given, so the
    wall only acts where the data never goes. Non-periodic frames (proteins, peptides)."""
    frames = np.asarray(frames, np.float64)
    if frames.ndim != 3 or frames.shape[-1] != 3:
        raise DataError(f"bead frames must have shape (frames, beads, 3), got {frames.shape}")
    n_beads = frames.shape[1]

    def check(idx, width, what):
        idx = np.asarray(idx, int).reshape(-1, width)
        if idx.size and (idx.min() < 0 or idx.max() >= n_beads):
            raise ConfigError(f"prior {what}: bead indices must be in [0, {n_beads}), got "
                              f"{idx.tolist()}")
        return idx

    bonds, angles = check(bonds, 2, "bonds"), check(angles, 3, "angles")
    dihedrals, pairs = check(dihedrals, 4, "dihedrals"), check(repulsive_pairs, 2, "pairs")
    fr = jnp.asarray(frames, jnp.float32)
    r = np.asarray(geometry.distances(fr, bonds)) if len(bonds) else np.zeros((0, 0))
    t = np.asarray(geometry.angles(fr, angles)) if len(angles) else np.zeros((0, 0))
    bond_fit = [boltzmann_inversion(r[:, i], kT, "bond") for i in range(len(bonds))]
    angle_fit = [boltzmann_inversion(t[:, i], kT, "angle") for i in range(len(angles))]
    cos = np.zeros((len(dihedrals), dihedral_terms))
    sin = np.zeros((len(dihedrals), dihedral_terms))
    if len(dihedrals):
        phi = geometry.dihedrals_float64(frames, dihedrals)
        for i in range(len(dihedrals)):
            cos[i], sin[i] = fourier_inversion(phi[:, i], kT, dihedral_terms)
    sigma = (np.minimum(np.percentile(np.asarray(geometry.distances(fr, pairs)),
                                      repulsion_percentile, axis=0), repulsion_max_sigma)
             if len(pairs) else np.zeros(0))
    return Prior(bonds, np.array([b[0] for b in bond_fit]), np.array([b[1] for b in bond_fit]),
                 angles, np.array([a[0] for a in angle_fit]),
                 np.array([a[1] for a in angle_fit]), dihedrals, cos, sin, pairs,
                 np.asarray(sigma, np.float64),
                 float(kT if repulsion_epsilon is None else repulsion_epsilon),
                 int(repulsion_power))
