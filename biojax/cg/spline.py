"""A tabulated cubic-spline pair potential ("spline-pair"), the usual learnable model of
coarse-grained liquids (Thaler & Zavadlav 2021 train one by DiffTRe for CG water).

For every unordered species pair the pair energy φ(r) (eV) is a cubic spline through
``n_knots`` knots evenly spaced on [``r_min``, ``cutoff``] (Å). The parameters are the
energies at the first ``n_knots − 1`` knots; the last knot (at the cutoff) is held at 0
and the spline's slope there is 0 (a clamped end), so φ and the force go to zero
continuously at the cutoff. The left end is natural (φ'' = 0); below ``r_min`` φ is
continued linearly with its slope there (no data reaches so close; a repulsive prior
takes over). The spline is *linear* in the knot energies: the operator that maps them
to the cubic coefficients of each interval is precomputed with NumPy (float64) once,
so evaluation is a gather and a cubic, and gradients with respect to the parameters
are exact.

An optional fixed repulsion ε·(σ/r)^n (hyperparameters ``prior_epsilon`` eV,
``prior_sigma`` Å, ``prior_exponent``), force-shifted so that it too vanishes with its
slope at the cutoff, is added to every pair; it is not a parameter and is not trained.

The model follows :class:`biojax.nn.classical.PairModel`: ``apply(params, graph)``
gives per-atom energies (half of each pair to each atom), a Dense neighbor list is
preferred by the MD engine and used through the same fast row-wise force rule.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from biojax.core.errors import ModelError
from biojax.core.graph import Graph
from biojax.core.registry import models
from biojax.nn.classical import PairModel, pair_energies_per_atom
from biojax.nn.potential import Potential


def spline_operator(n_knots: int, r_min: float, cutoff: float) -> np.ndarray:
    """The linear map (n_knots − 1 intervals, 4, n_knots − 1 values) from the knot
    energies (the last knot fixed at 0) to the coefficients c0..c3 of the cubic
    c0 + c1 t + c2 t² + c3 t³ on each interval, t = (r − r_k)/h ∈ [0, 1]; natural left
    end (φ'' = 0), clamped right end (φ' = 0 at the cutoff). float64."""
    if n_knots < 3:
        raise ModelError(f"spline-pair: n_knots must be >= 3, got {n_knots}")
    if not 0.0 <= r_min < cutoff:
        raise ModelError(f"spline-pair: need 0 <= r_min < cutoff, got r_min = {r_min} Å, "
                         f"cutoff = {cutoff} Å")
    K = n_knots - 1                       # intervals; knots 0..K, value K fixed at 0
    h = (cutoff - r_min) / K
    # second derivatives M (K+1) from A M = B y, y the K+1 knot values
    A = np.zeros((K + 1, K + 1))
    B = np.zeros((K + 1, K + 1))
    A[0, 0] = 1.0                          # natural: M_0 = 0
    for i in range(1, K):
        A[i, i - 1], A[i, i], A[i, i + 1] = h, 4.0 * h, h
        B[i, i - 1], B[i, i], B[i, i + 1] = 6.0 / h, -12.0 / h, 6.0 / h
    # clamped at the cutoff: S'(x_K) = (y_K - y_{K-1})/h + h (M_{K-1} + 2 M_K)/6 = 0
    A[K, K - 1], A[K, K] = h, 2.0 * h
    B[K, K - 1], B[K, K] = 6.0 / h, -6.0 / h
    G = np.linalg.solve(A, B)              # M = G y
    Y = np.eye(K + 1)                      # y = Y y
    # S(t) on interval k: (1-t) y_k + t y_{k+1} + h²/6 [((1-t)³-(1-t)) M_k + (t³-t) M_{k+1}]
    # expanded: (1-t)³-(1-t) = -2t + 3t² - t³ ;  t³ - t
    c = h * h / 6.0
    ops = np.zeros((K, 4, K + 1))
    for k in range(K):
        yk, yk1, Mk, Mk1 = Y[k], Y[k + 1], G[k], G[k + 1]
        ops[k, 0] = yk
        ops[k, 1] = yk1 - yk + c * (-2.0 * Mk - Mk1)
        ops[k, 2] = c * 3.0 * Mk
        ops[k, 3] = c * (Mk1 - Mk)
    return ops[:, :, :K]                   # drop the fixed (zero) value at the cutoff


def pair_index(num_species: int) -> np.ndarray:
    """(S, S) int32: the index of each unordered species pair (a ≤ b, row-major)."""
    idx = np.zeros((num_species, num_species), np.int32)
    k = 0
    for a in range(num_species):
        for b in range(a, num_species):
            idx[a, b] = idx[b, a] = k
            k += 1
    return idx


@dataclasses.dataclass(frozen=True)
class SplinePairModel:
    """Cubic-spline pair potential (see module): ``apply(params, graph)`` → per-atom
    energies (eV); ``params = {"energies": (n_pairs, n_knots − 1)}`` eV at the knots."""

    num_species: int
    cutoff: float
    n_knots: int = 40
    r_min: float = 2.0
    prior_epsilon: float = 0.0
    prior_sigma: float = 1.0
    prior_exponent: int = 12
    neighbor_format = "dense"  # a preference for the MD engine, as PairModel's

    def __post_init__(self):
        if self.num_species < 1:
            raise ModelError(f"spline-pair: num_species must be >= 1, got {self.num_species}")
        if self.prior_epsilon < 0 or self.prior_sigma <= 0:
            raise ModelError("spline-pair: prior_epsilon must be >= 0 eV and prior_sigma "
                             f"> 0 Å, got {self.prior_epsilon}, {self.prior_sigma}")
        spline_operator(self.n_knots, self.r_min, self.cutoff)  # validates the grid

    # ------------------------------------------------------------- tables
    @property
    def n_pairs(self) -> int:
        return self.num_species * (self.num_species + 1) // 2

    @property
    def knots(self) -> np.ndarray:
        """Knot positions (Å), the last one at the cutoff."""
        return np.linspace(self.r_min, self.cutoff, self.n_knots)

    @property
    def spacing(self) -> float:
        return (self.cutoff - self.r_min) / (self.n_knots - 1)

    def init(self, key, graph: Graph | None = None) -> dict:
        """Zero knot energies (a model that is the prior alone)."""
        return {"energies": jnp.zeros((self.n_pairs, self.n_knots - 1), jnp.float32)}

    def _prior(self, r):
        """Force-shifted ε(σ/r)^n (eV): zero with zero slope at the cutoff."""
        if self.prior_epsilon == 0.0:
            return jnp.zeros_like(r)
        n, rc = float(self.prior_exponent), self.cutoff
        s = self.prior_sigma
        at_rc = (s / rc) ** n
        slope_rc = -n * at_rc / rc
        return self.prior_epsilon * ((s / r) ** n - at_rc - slope_rc * (r - rc))

    def pair_energy(self, r2, params, species_a, species_b):
        """Pair energies (eV) at squared distances r2 (Å²) for species pairs (a, b); zero
        at r ≥ cutoff and for r2 ≈ 0 (padding)."""
        ops = jnp.asarray(spline_operator(self.n_knots, self.r_min, self.cutoff),
                          dtype=params["energies"].dtype)
        coef = jnp.einsum("kpj,sj->skp", ops, params["energies"])      # (pairs, K, 4)
        pidx = jnp.asarray(pair_index(self.num_species))[species_a, species_b]
        valid = (r2 > 1e-6) & (r2 < self.cutoff * self.cutoff)
        r = jnp.sqrt(jnp.where(valid, r2, 1.0))
        x = (r - self.r_min) / self.spacing
        k = jnp.clip(jnp.floor(x), 0, self.n_knots - 2).astype(jnp.int32)
        t = x - k
        c = coef[pidx, k]                                              # (..., 4)
        cubic = jnp.where(t < 0.0, 0.0, c[..., 2] * t * t + c[..., 3] * t * t * t)
        e = c[..., 0] + c[..., 1] * t + cubic + self._prior(r)
        return jnp.where(valid, e, 0.0)

    def apply(self, params, graph: Graph):
        """Per-atom energies (eV): each directed edge gives half its pair energy to its
        receiver; with ``graph.pairs`` each edge is a pair and gives half to each atom;
        masked edges and atoms give nothing."""
        per_atom = pair_energies_per_atom(
            graph, lambda r2, a, b: self.pair_energy(r2, params, a, b))
        return jnp.where(graph.node_mask, per_atom, 0.0)

    def neighbor_energy_fn(self, displacement_fn: Callable, species, graph_energy: Callable
                           ) -> Callable:
        """``energy(positions, neighbor, params, **kwargs)`` on a jax-md list: the same
        row-wise force rule as :meth:`biojax.nn.classical.PairModel.neighbor_energy_fn`
        on Dense lists (it only needs ``pair_energy``), the Graph otherwise."""
        return PairModel.neighbor_energy_fn(self, displacement_fn, species, graph_energy)

    def table(self, params, r: np.ndarray, pair: int = 0) -> np.ndarray:
        """φ(r) (eV) of species pair index ``pair`` at distances ``r`` (Å), prior included,
        on the host (for plots and tables)."""
        a, b = [(i, j) for i in range(self.num_species)
                for j in range(i, self.num_species)][pair]
        r = jnp.asarray(np.asarray(r, np.float32))
        sa = jnp.full(r.shape, a, jnp.int32)
        sb = jnp.full(r.shape, b, jnp.int32)
        p = jax.tree_util.tree_map(jnp.asarray, params)
        return np.asarray(self.pair_energy(r * r, p, sa, sb))


@models.register("spline-pair")
def spline_pair(num_species: int, cutoff: float, n_knots: int = 40, r_min: float = 2.0,
                prior_epsilon: float = 0.0, prior_sigma: float = 1.0,
                prior_exponent: int = 12) -> SplinePairModel:
    """The spline-pair model: ``n_knots`` knots on [``r_min``, ``cutoff``] (Å), optional
    fixed repulsion ``prior_epsilon`` (eV) · (``prior_sigma`` (Å) / r)^``prior_exponent``."""
    return SplinePairModel(int(num_species), float(cutoff), int(n_knots), float(r_min),
                           float(prior_epsilon), float(prior_sigma), int(prior_exponent))


def spline_pair_potential(elements: Sequence[int], cutoff: float, n_knots: int = 40,
                          r_min: float = 2.0, prior_epsilon: float = 0.0,
                          prior_sigma: float = 1.0, prior_exponent: int = 12,
                          energies=None) -> Potential:
    """A :class:`~biojax.nn.potential.Potential` of the spline-pair model for these
    elements (atomic numbers; CG beads use the numbers their mapping gives them).
    ``energies`` (n_pairs, n_knots − 1) eV sets the knot energies (default 0: the prior
    alone). Saved and loaded by ``biojax.nn.io`` like any model."""
    elements = tuple(int(z) for z in elements)
    model = spline_pair(len(elements), cutoff, n_knots, r_min, prior_epsilon, prior_sigma,
                        prior_exponent)
    params = model.init(None)
    if energies is not None:
        energies = jnp.asarray(np.asarray(energies, np.float32))
        if energies.shape != params["energies"].shape:
            raise ModelError(f"spline_pair_potential: energies must have shape "
                             f"{params['energies'].shape} (species pairs, n_knots − 1), "
                             f"got {energies.shape}")
        params = {"energies": energies}
    arch = {"name": "spline-pair", "n_knots": model.n_knots, "r_min": model.r_min,
            "prior_epsilon": model.prior_epsilon, "prior_sigma": model.prior_sigma,
            "prior_exponent": model.prior_exponent}
    return Potential(model=model, params=params, cutoff=float(cutoff), elements=elements,
                     reference_energies=(0.0,) * len(elements), architecture=arch)
