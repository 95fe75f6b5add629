"""Flax models: graph of edge vectors in, per-atom energies (eV) out.

Two architectures share the same building blocks (species embedding, radial basis,
smooth cutoff envelope, per-species scale/shift):

- ``schnet``: invariant continuous-filter convolutions (Schütt et al., 2018).
- ``painn``: equivariant message passing with scalar and vector features
  (Schütt, Unke & Gastegger, 2021).

Every model has the signature
``model.apply(params, vectors, species, senders, receivers, edge_mask, node_mask, pairs)``
where ``vectors`` are r_receiver − r_sender (Å) and messages flow sender → receiver.
With ``pairs=True`` each edge stands for an unordered pair and messages flow both ways:
everything that depends only on the distance (radial basis, envelope, filter networks) is
computed once per pair, which halves the dominant cost of a step in MD (jax-md
``OrderedSparse`` neighbor lists). The result is the same as with both directed edges.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from biojax.core.errors import ConfigError
from biojax.nn.potential import Potential


# ---------------------------------------------------------------- building blocks
def safe_norm(vectors, mask, axis=-1, keepdims=False):
    """|v| with a finite gradient at v = 0 (padding edges); 1 where masked out."""
    sq = jnp.sum(vectors**2, axis=axis, keepdims=keepdims)
    m = mask[..., None] if keepdims else mask
    return jnp.sqrt(jnp.where(m, sq, 1.0))


def cosine_cutoff(r, cutoff):
    """Smooth envelope 0.5 (cos(π r / rc) + 1) for r < rc, else 0 (unitless)."""
    return jnp.where(r < cutoff, 0.5 * (jnp.cos(jnp.pi * r / cutoff) + 1.0), 0.0)


def polynomial_cutoff(r, cutoff, p: int = 6):
    """Envelope of Klicpera et al. (2020): C² smooth at rc, equal to 1 at r = 0."""
    x = r / cutoff
    env = (1.0 - 0.5 * (p + 1) * (p + 2) * x**p + p * (p + 2) * x ** (p + 1)
           - 0.5 * p * (p + 1) * x ** (p + 2))
    return jnp.where(x < 1.0, env, 0.0)


def gaussian_basis(r, cutoff, n_basis):
    """Gaussians with centres evenly spaced on [0, rc] and width the spacing."""
    centres = jnp.linspace(0.0, cutoff, n_basis)
    width = cutoff / (n_basis - 1)
    return jnp.exp(-0.5 * ((r[..., None] - centres) / width) ** 2)


def bessel_basis(r, cutoff, n_basis):
    """sin(nπ r / rc) / r radial Bessel functions, n = 1..n_basis (1/Å)."""
    n = jnp.arange(1, n_basis + 1)
    return jnp.sqrt(2.0 / cutoff) * jnp.sin(n * jnp.pi * r[..., None] / cutoff) / r[..., None]


def shifted_softplus(x):
    return jax.nn.softplus(x) - jnp.log(2.0)


_ENVELOPES = {"cosine": cosine_cutoff, "polynomial": polynomial_cutoff}
_BASES = {"gaussian": gaussian_basis, "bessel": bessel_basis}


def radial_features(vectors, edge_mask, cutoff, basis, n_basis, envelope):
    """Edge lengths r (Å), radial basis (E, n_basis) and the smooth envelope (zero on padding)."""
    r = safe_norm(vectors, edge_mask)
    rbf = _BASES[basis](r, cutoff, n_basis)
    return r, rbf, _ENVELOPES[envelope](r, cutoff) * edge_mask


def directed(senders, receivers, pairs: bool):
    """Directed (senders, receivers) and ``both(x, sign)``, which repeats a per-edge array
    for the reverse direction of every pair (times ``sign``: −1 for vectors); with
    ``pairs=False`` the edges are already directed and ``both`` is the identity."""
    if not pairs:
        return senders, receivers, lambda x, sign=1.0: x
    return (jnp.concatenate([senders, receivers]), jnp.concatenate([receivers, senders]),
            lambda x, sign=1.0: jnp.concatenate([x, sign * x]))


def scale_shift(x, species, scale, shifts, node_mask):
    """Per-species affine map of per-atom outputs: e = scale · x + shift[species] (eV),
    zero on padding atoms; no shifts means zero shifts."""
    shift = jnp.asarray(shifts, x.dtype)[species] if shifts else 0.0
    return (scale * x + shift) * node_mask


# ---------------------------------------------------------------- SchNet
class SchNet(nn.Module):
    """Invariant continuous-filter convolution network (SchNet class)."""

    num_species: int
    cutoff: float
    features: int = 64
    n_interactions: int = 3
    n_basis: int = 32
    basis: str = "gaussian"
    envelope: str = "cosine"
    atomic_scale: float = 1.0
    atomic_shifts: tuple[float, ...] = ()

    @nn.compact
    def __call__(self, vectors, species, senders, receivers, edge_mask, node_mask,
                 pairs: bool = False):
        _, rbf, envelope = radial_features(vectors, edge_mask, self.cutoff, self.basis,
                                           self.n_basis, self.envelope)
        senders, receivers, both = directed(senders, receivers, pairs)
        h = nn.Embed(self.num_species, self.features, name="embedding")(species)
        n_nodes = species.shape[0]
        for t in range(self.n_interactions):
            w = nn.Dense(self.features, name=f"filter_{t}_0")(rbf)
            w = nn.Dense(self.features, name=f"filter_{t}_1")(shifted_softplus(w))
            w = both(w * envelope[:, None])
            x = nn.Dense(self.features, use_bias=False, name=f"in2f_{t}")(h)
            m = jax.ops.segment_sum(x[senders] * w, receivers, num_segments=n_nodes)
            v = nn.Dense(self.features, name=f"f2out_{t}")(m)
            v = nn.Dense(self.features, name=f"update_{t}")(shifted_softplus(v))
            h = h + v
        out = nn.Dense(self.features // 2, name="readout_0")(h)
        out = nn.Dense(1, name="readout_1")(shifted_softplus(out))[:, 0]
        return scale_shift(out, species, self.atomic_scale, self.atomic_shifts, node_mask)


# ---------------------------------------------------------------- PaiNN
class PaiNN(nn.Module):
    """Equivariant message passing with scalar and vector features (PaiNN class)."""

    num_species: int
    cutoff: float
    features: int = 64
    n_interactions: int = 3
    n_basis: int = 20
    basis: str = "bessel"
    envelope: str = "cosine"
    atomic_scale: float = 1.0
    atomic_shifts: tuple[float, ...] = ()

    @nn.compact
    def __call__(self, vectors, species, senders, receivers, edge_mask, node_mask,
                 pairs: bool = False):
        F = self.features
        n_nodes = species.shape[0]
        r, rbf, envelope = radial_features(vectors, edge_mask, self.cutoff, self.basis,
                                           self.n_basis, self.envelope)
        senders, receivers, both = directed(senders, receivers, pairs)
        unit = both(vectors / r[:, None] * edge_mask[:, None], -1.0)
        s = nn.Embed(self.num_species, F, name="embedding")(species)
        v = jnp.zeros((n_nodes, 3, F), s.dtype)
        for t in range(self.n_interactions):
            # message: filters from the radial basis gate the sender's features
            phi = nn.Dense(3 * F, name=f"msg_phi_{t}_1")(
                jax.nn.silu(nn.Dense(F, name=f"msg_phi_{t}_0")(s)))
            w = both(nn.Dense(3 * F, name=f"msg_filter_{t}")(rbf) * envelope[:, None])
            x = phi[senders] * w
            ds, dvv, dvs = jnp.split(x, 3, axis=-1)
            dv = v[senders] * dvv[:, None, :] + unit[:, :, None] * dvs[:, None, :]
            s = s + jax.ops.segment_sum(ds, receivers, num_segments=n_nodes)
            v = v + jax.ops.segment_sum(dv, receivers, num_segments=n_nodes)
            # update: mix channels, couple scalars and vector norms
            uv = nn.Dense(F, use_bias=False, name=f"upd_U_{t}")(v)
            vv = nn.Dense(F, use_bias=False, name=f"upd_V_{t}")(v)
            vv_norm = jnp.sqrt(jnp.sum(vv**2, axis=1) + 1e-8)
            a = nn.Dense(3 * F, name=f"upd_a_{t}_1")(
                jax.nn.silu(nn.Dense(F, name=f"upd_a_{t}_0")(jnp.concatenate([s, vv_norm], -1))))
            avv, asv, ass = jnp.split(a, 3, axis=-1)
            v = v + avv[:, None, :] * uv
            s = s + ass + asv * jnp.sum(uv * vv, axis=1)
        out = nn.Dense(F // 2, name="readout_0")(s)
        out = nn.Dense(1, name="readout_1")(jax.nn.silu(out))[:, 0]
        return scale_shift(out, species, self.atomic_scale, self.atomic_shifts, node_mask)


ARCHITECTURES = {"schnet": SchNet, "painn": PaiNN}


def build_model(architecture: dict, num_species: int, cutoff: float) -> nn.Module:
    """Instantiate the flax module named by ``architecture["name"]`` with its hyperparameters.

    Unknown names or hyperparameters raise ConfigError listing the valid ones.
    """
    arch = dict(architecture)
    name = arch.pop("name", None)
    if name not in ARCHITECTURES:
        raise ConfigError(f"model name {name!r} is not known; valid: {', '.join(ARCHITECTURES)}")
    cls = ARCHITECTURES[name]
    fields = {f.name for f in dataclasses.fields(cls)} - {"num_species", "cutoff", "parent", "name"}
    unknown = sorted(set(arch) - fields)
    if unknown:
        raise ConfigError(f"[model] {name}: unknown key(s) {', '.join(map(repr, unknown))}; "
                          f"valid keys are: name, {', '.join(sorted(fields))}")
    if "atomic_shifts" in arch:
        arch["atomic_shifts"] = tuple(float(x) for x in arch["atomic_shifts"])
    if arch.get("basis", "gaussian") not in _BASES:
        raise ConfigError(f"[model] basis {arch['basis']!r}; valid: {', '.join(_BASES)}")
    if arch.get("envelope", "cosine") not in _ENVELOPES:
        raise ConfigError(f"[model] envelope {arch['envelope']!r}; valid: {', '.join(_ENVELOPES)}")
    return cls(num_species=num_species, cutoff=float(cutoff), **arch)


def init_potential(architecture: dict, elements: Sequence[int], cutoff: float,
                   reference_energies: Sequence[float] | None = None, key=None,
                   dtype=jnp.float32) -> Potential:
    """A Potential with freshly initialised parameters (``key``: jax PRNG key, default 0)."""
    elements = tuple(int(z) for z in elements)
    model = build_model(architecture, len(elements), cutoff)
    key = jax.random.PRNGKey(0) if key is None else key
    # a tiny two-atom graph to trace shapes
    vectors = jnp.array([[1.0, 0.0, 0.0], [-1.0, 0.0, 0.0]], dtype)
    species = jnp.zeros(2, jnp.int32)
    senders, receivers = jnp.array([0, 1], jnp.int32), jnp.array([1, 0], jnp.int32)
    params = model.init(key, vectors, species, senders, receivers, jnp.ones(2, bool),
                        jnp.ones(2, bool))
    params = jax.tree_util.tree_map(lambda x: jnp.asarray(x, dtype), params)
    ref = (0.0,) * len(elements) if reference_energies is None else reference_energies
    return Potential(model=model, params=params, cutoff=float(cutoff), elements=elements,
                     reference_energies=tuple(float(e) for e in np.asarray(ref)),
                     architecture=dict(architecture))
