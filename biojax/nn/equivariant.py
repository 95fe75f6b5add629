"""A higher-order equivariant model of the MACE class (registered as ``"mace"``).

Batatia et al. (2022) build each atom's messages in two steps, and so does this module:

1. **Atomic basis A** (two-body). Each edge j → i carries spherical harmonics
   Y_l(r̂_ij), l ≤ ``l_max``, and a learned radial function of |r_ij| (an MLP of a
   Bessel basis times a smooth polynomial envelope). The sender's features h_j (irreps
   l ≤ ``hidden_l``, ``features`` channels each) are coupled to Y by a channel-wise
   tensor product (Clebsch–Gordan coefficients, only the paths l1 + l2 + l3 even, so
   every feature is a true tensor of parity (-1)^l), weighted per path and channel by
   the radial function, summed over neighbours and mixed across channels: A_i has
   irreps 0e + 1o + 2e (+ 3o) per channel.
2. **Product basis B** (many-body). Symmetric products of A_i with itself up to
   ``correlation`` factors (ν = 1, 2, 3 gives 2-, 3- and 4-body terms), projected onto
   the irreps of the next layer's features with the reduced symmetric basis of
   e3nn-jax (so no linearly dependent couplings are computed), then weighted per atom
   species and channel: the "symmetric contraction". The new features are a linear
   mix of B plus a species-dependent linear skip of the old ones.

Each layer adds a readout of its scalar features to the per-atom energy (linear for
inner layers, a small MLP for the last); the last layer keeps scalars only.

CPU-friendly float32 choices: all coupling tensors (Clebsch–Gordan, reduced symmetric
bases) are numpy constants built once per hyperparameter set (cached) and applied as
dense matrix products (no index gathers, whose scatter transposes are slow on CPU);
radial quantities are computed once
per unordered pair when the Graph holds pairs (jax-md ``OrderedSparse`` lists, where the
reverse direction's harmonics are Y_l(−r̂) = (−1)^l Y_l(r̂)). The code is ours; the
design follows the MACE paper and e3nn's conventions (its real spherical-harmonic
basis, in which the Clebsch–Gordan coefficients of ``e3nn_jax.clebsch_gordan`` are
given).
"""

from __future__ import annotations

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from biojax.core.graph import Graph
from biojax.core.registry import models
from biojax.nn.models import radial_features


def _dim(l_max: int) -> int:
    return (l_max + 1) ** 2


def _irrep(l: int) -> str:
    """e3nn's name of the natural-parity irrep l (0e, 1o, 2e, 3o)."""
    return f"{l}{'e' if l % 2 == 0 else 'o'}"


def _block(l: int) -> slice:
    """Components of irrep l in a stacked 0 + 1 + ... array."""
    return slice(l * l, (l + 1) ** 2)


@functools.lru_cache(maxsize=None)
def edge_paths(l_in: int, l_max: int) -> tuple[tuple[int, int, int], ...]:
    """Tensor-product paths (l1 of the sender's features, l2 of Y, l3 out) with
    |l1 − l2| ≤ l3 ≤ l1 + l2, l3 ≤ l_max and l1 + l2 + l3 even (parity-preserving)."""
    return tuple((l1, l2, l3) for l1 in range(l_in + 1) for l2 in range(l_max + 1)
                 for l3 in range(abs(l1 - l2), min(l1 + l2, l_max) + 1)
                 if (l1 + l2 + l3) % 2 == 0)


@functools.lru_cache(maxsize=None)
def edge_coupling(l_in: int, l_max: int) -> tuple[np.ndarray, np.ndarray]:
    """``(U, expand)``: U (D_in, D_Y, Q) stacks each path's Clebsch–Gordan block
    (scaled by √(2 l3 + 1), so unit-norm inputs give unit-norm outputs per component);
    ``expand`` (P, Q) is 1 where column q belongs to path p (a matmul, not a gather:
    gathers and their scatter transposes are slow on CPU)."""
    import e3nn_jax as e3nn

    paths = edge_paths(l_in, l_max)
    width = sum(2 * l3 + 1 for _, _, l3 in paths)
    u = np.zeros((_dim(l_in), _dim(l_max), width), np.float32)
    expand = np.zeros((len(paths), width), np.float32)
    q = 0
    for p, (l1, l2, l3) in enumerate(paths):
        cg = np.asarray(e3nn.clebsch_gordan(l1, l2, l3)) * math.sqrt(2 * l3 + 1)
        u[_block(l1), _block(l2), q:q + 2 * l3 + 1] = cg
        expand[p, q:q + 2 * l3 + 1] = 1.0
        q += 2 * l3 + 1
    return u, expand


@functools.lru_cache(maxsize=None)
def symmetric_basis(l_max: int, order: int, l_out: int):
    """The reduced symmetric basis of order ``order`` for A with irreps 0e + 1o + ...
    up to ``l_max``, keeping outputs l ≤ ``l_out`` of natural parity, flattened over its
    ``order`` input indices: ``(U (D^order, K) float32, irreps [(mul, l)])`` with the
    columns laid out as e3nn's IrrepsArray (for each irrep: mul copies × 2l+1)."""
    import e3nn_jax as e3nn

    dim = _dim(l_max)
    if order == 1:  # A itself: one copy of each kept irrep
        u = np.zeros((dim, _dim(l_out)), np.float32)
        u[np.arange(_dim(l_out)), np.arange(_dim(l_out))] = 1.0
        return u, [(1, l) for l in range(l_out + 1)]
    irreps_a = "+".join(_irrep(l) for l in range(l_max + 1))
    keep = [_irrep(l) for l in range(l_out + 1)]
    basis = e3nn.reduced_symmetric_tensor_product_basis(irreps_a, order, keep_ir=keep)
    u = np.asarray(basis.array, np.float32).reshape(dim**order, -1)
    return u, [(mul, ir.l) for mul, ir in basis.irreps]


def _lecun(fan_in: int):
    return nn.initializers.normal(stddev=1.0 / math.sqrt(max(fan_in, 1)))


class SymmetricContraction(nn.Module):
    """Species-weighted symmetric products of A (N, F, D) up to ``correlation``,
    projected onto irreps l ≤ ``l_out``: returns (N, F, (l_out + 1)²). ``species`` is
    one-hot (N, num_species): per-species weights are picked by a matmul."""

    num_species: int
    l_max: int
    l_out: int
    correlation: int

    @nn.compact
    def __call__(self, a, species):
        n, f, _ = a.shape
        out = [[] for _ in range(self.l_out + 1)]  # per output l: (N, F, copies, 2l+1)
        power = a  # (N, F, D^order): the order-fold outer product of A, flattened
        for order in range(1, self.correlation + 1):
            if order > 1:
                power = (power[:, :, :, None] * a[:, :, None, :]).reshape(n, f, -1)
            u, irreps = symmetric_basis(self.l_max, order, self.l_out)
            b = power @ jnp.asarray(u, a.dtype)  # (N, F, K)
            start = 0
            for mul, l in irreps:
                width = mul * (2 * l + 1)
                out[l].append(b[:, :, start:start + width].reshape(n, f, mul, 2 * l + 1))
                start += width
        result = []
        for l, parts in enumerate(out):
            stacked = jnp.concatenate(parts, axis=2)  # (N, F, copies, 2l+1)
            copies = stacked.shape[2]
            w = self.param(f"weights_{l}", _lecun(copies),
                           (self.num_species, f, copies), a.dtype)
            w_atom = (species @ w.reshape(self.num_species, -1)).reshape(n, f, copies)
            result.append(jnp.einsum("nfkm,nfk->nfm", stacked, w_atom))
        return jnp.concatenate(result, axis=-1)


def _mix(x, weight):
    """Channel mixing of (N, F_in, M) features with weight (F_in, F_out)."""
    return jnp.einsum("nfm,fg->ngm", x, weight)


@models.register("mace")
class MACE(nn.Module):
    """Higher-order equivariant message passing (MACE class; see the module docstring).

    Hyperparameters: ``features`` channels per irrep; ``n_interactions`` layers;
    ``l_max`` (2 or 3) of the edge harmonics and of A; ``hidden_l`` (0–2) of the node
    features between layers; ``correlation`` (1–3) the body order of messages minus one;
    ``n_basis`` Bessel functions and ``radial_features`` hidden units of the radial MLP;
    ``avg_neighbors`` divides the neighbour sums (about the mean neighbour count of the
    data; 8 for ethanol with a 5 Å cutoff)."""

    num_species: int
    cutoff: float
    features: int = 32
    n_interactions: int = 2
    l_max: int = 2
    hidden_l: int = 1
    correlation: int = 3
    n_basis: int = 8
    radial_features: int = 64
    avg_neighbors: float = 8.0

    def setup_checks(self):
        from biojax.core.errors import ConfigError

        for name, lo, hi in (("l_max", 1, 3), ("hidden_l", 0, 2), ("correlation", 1, 3),
                             ("n_interactions", 1, 6)):
            value = getattr(self, name)
            if not lo <= value <= hi:
                raise ConfigError(f"[model] mace: {name} must be in {lo}..{hi}, got {value}")
        if self.hidden_l > self.l_max:
            raise ConfigError(f"[model] mace: hidden_l ({self.hidden_l}) must be ≤ l_max "
                              f"({self.l_max})")
        if self.features < 1 or self.avg_neighbors <= 0:
            raise ConfigError("[model] mace: features must be ≥ 1 and avg_neighbors > 0")

    @nn.compact
    def __call__(self, graph: Graph):
        import e3nn_jax as e3nn

        self.setup_checks()
        F, n_nodes = self.features, graph.n_nodes
        r, rbf, envelope = radial_features(graph.vectors, graph.edge_mask, self.cutoff,
                                           "bessel", self.n_basis, "polynomial")
        senders, receivers, both = graph.directed()
        unit = graph.vectors / r[:, None] * graph.edge_mask[:, None]
        irreps_y = "+".join(_irrep(l) for l in range(self.l_max + 1))
        y = e3nn.spherical_harmonics(irreps_y, e3nn.IrrepsArray("1o", unit), normalize=False,
                                     normalization="component").array
        if graph.pairs:  # Y_l(−r̂) = (−1)^l Y_l(r̂)
            parity = np.concatenate([np.full(2 * l + 1, (-1.0) ** l)
                                     for l in range(self.l_max + 1)])
            y = jnp.concatenate([y, y * jnp.asarray(parity, y.dtype)])
        species = graph.species
        h = nn.Embed(self.num_species, F, name="embedding")(species)[:, :, None]  # (N, F, 1)
        onehot = jax.nn.one_hot(species, self.num_species, dtype=h.dtype)
        l_in = 0
        energy = jnp.zeros((n_nodes,), h.dtype)
        for t in range(self.n_interactions):
            last = t == self.n_interactions - 1
            l_out = 0 if last else self.hidden_l
            # ---- atomic basis A: channel-wise tensor product of h_j with Y(r̂_ij)
            u, expand = edge_coupling(l_in, self.l_max)
            paths = edge_paths(l_in, self.l_max)
            h_up = jnp.concatenate(
                [_mix(h[:, :, _block(l)], self.param(f"up_{t}_{l}", _lecun(F), (F, F), h.dtype))
                 for l in range(l_in + 1)], axis=-1)
            radial = rbf
            for k in range(2):
                radial = jax.nn.silu(nn.Dense(self.radial_features, name=f"radial_{t}_{k}")(radial))
            radial = nn.Dense(len(paths) * F, name=f"radial_{t}_out")(radial)
            radial = both(radial * envelope[:, None]).reshape(-1, len(paths), F)
            coupling = jnp.einsum("eb,abq->eaq", y, jnp.asarray(u, h.dtype))  # (E, D_in, Q)
            msg = jnp.einsum("efa,eaq->efq", h_up[senders], coupling)  # (E, F, Q)
            msg = msg * (jnp.swapaxes(radial, 1, 2) @ jnp.asarray(expand, h.dtype))
            a_raw = jax.ops.segment_sum(msg, receivers, num_segments=n_nodes) / self.avg_neighbors
            # mix paths and channels per output l
            a_parts, q = {}, 0
            for (l1, l2, l3) in paths:
                a_parts.setdefault(l3, []).append(a_raw[:, :, q:q + 2 * l3 + 1])
                q += 2 * l3 + 1
            a = []
            for l3 in range(self.l_max + 1):
                x = jnp.concatenate(a_parts[l3], axis=1)  # (N, P_l3 F, 2 l3 + 1)
                w = self.param(f"a_mix_{t}_{l3}", _lecun(x.shape[1]), (x.shape[1], F), h.dtype)
                a.append(_mix(x, w))
            a = jnp.concatenate(a, axis=-1)  # (N, F, D)
            # ---- product basis B and the update
            b = SymmetricContraction(self.num_species, self.l_max, l_out, self.correlation,
                                     name=f"product_{t}")(a, onehot)
            new = []
            for l in range(l_out + 1):
                x = _mix(b[:, :, _block(l)],
                         self.param(f"b_mix_{t}_{l}", _lecun(F), (F, F), h.dtype))
                if l <= l_in:  # species-dependent skip of the old features
                    skip = self.param(f"skip_{t}_{l}", _lecun(F), (self.num_species, F, F),
                                      h.dtype)
                    skip = (onehot @ skip.reshape(self.num_species, -1)).reshape(-1, F, F)
                    x = x + jnp.einsum("nfm,nfg->ngm", h[:, :, _block(l)], skip)
                new.append(x)
            h, l_in = jnp.concatenate(new, axis=-1), l_out
            scalars = h[:, :, 0]
            if last:
                if not self.is_initializing():  # per-atom features (biojax.learn.select)
                    self.sow("intermediates", "features", scalars)
                hidden = jax.nn.silu(nn.Dense(16, name=f"readout_{t}_0")(scalars))
                energy = energy + nn.Dense(1, name=f"readout_{t}_1")(hidden)[:, 0]
            else:
                energy = energy + nn.Dense(1, use_bias=False, name=f"readout_{t}")(scalars)[:, 0]
        return energy
