"""Flax models: a Graph in, per-atom energies (eV) out.

Every model is a ``flax.linen.Module`` registered in ``biojax.core.registry.models`` and
called as ``model.apply(params, graph)`` with a :class:`~biojax.core.graph.Graph`; it
returns per-atom energies (N,) in eV. The per-species scale and shift fitted from the
training data are applied by the :class:`~biojax.nn.potential.Potential`, not here, so a
model never needs to know about them. Two architectures share the building blocks below
(species embedding, radial basis, smooth cutoff envelope):

- ``schnet``: invariant continuous-filter convolutions (Schütt et al., 2018).
- ``painn``: equivariant message passing with scalar and vector features
  (Schütt, Unke & Gastegger, 2021).

With ``graph.pairs`` each edge stands for an unordered pair and messages flow both ways:
everything that depends only on the distance (radial basis, envelope, filter networks) is
computed once per pair, which halves the dominant cost of a step in MD (jax-md
``OrderedSparse`` neighbor lists). The result is the same as with both directed edges.

A user model is any Flax module (or factory) whose constructor takes ``num_species`` and
``cutoff`` (Å) plus its own hyperparameters, named in a config by import path
(``[model] name = "mymodule:MyNet"``).
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from biojax.core.errors import ConfigError
from biojax.core.graph import Graph
from biojax.core.registry import models, resolve
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


# ---------------------------------------------------------------- SchNet
@models.register("schnet")
class SchNet(nn.Module):
    """Invariant continuous-filter convolution network (SchNet class)."""

    num_species: int
    cutoff: float
    features: int = 64
    n_interactions: int = 3
    n_basis: int = 32
    basis: str = "gaussian"
    envelope: str = "cosine"
    heads: int = 1  # > 1: a shallow ensemble, K readout heads (biojax.nn.ensemble)

    @nn.compact
    def __call__(self, graph: Graph):
        _, rbf, envelope = radial_features(graph.vectors, graph.edge_mask, self.cutoff,
                                           self.basis, self.n_basis, self.envelope)
        senders, receivers, both = graph.directed()
        h = nn.Embed(self.num_species, self.features, name="embedding")(graph.species)
        n_nodes = graph.n_nodes
        for t in range(self.n_interactions):
            w = nn.Dense(self.features, name=f"filter_{t}_0")(rbf)
            w = nn.Dense(self.features, name=f"filter_{t}_1")(shifted_softplus(w))
            w = both(w * envelope[:, None])
            x = nn.Dense(self.features, use_bias=False, name=f"in2f_{t}")(h)
            m = jax.ops.segment_sum(x[senders] * w, receivers, num_segments=n_nodes)
            v = nn.Dense(self.features, name=f"f2out_{t}")(m)
            v = nn.Dense(self.features, name=f"update_{t}")(shifted_softplus(v))
            h = h + v
        if not self.is_initializing():  # per-atom features (biojax.learn.select)
            self.sow("intermediates", "features", h)
        out = nn.Dense(self.features // 2, name="readout_0")(h)
        out = nn.Dense(self.heads, name="readout_1")(shifted_softplus(out))
        return out[:, 0] if self.heads == 1 else out


# ---------------------------------------------------------------- PaiNN
@models.register("painn")
class PaiNN(nn.Module):
    """Equivariant message passing with scalar and vector features (PaiNN class).

    ``chiral``: the readout also sees pseudo-scalars a·(b×c) of three learned mixtures of
    each atom's vector features, which change sign under reflection, so the energy can
    tell a structure from its mirror image (e.g. the αR and αL basins of a coarse-grained
    peptide); plain PaiNN, like SchNet, is blind to chirality."""

    num_species: int
    cutoff: float
    features: int = 64
    n_interactions: int = 3
    n_basis: int = 20
    basis: str = "bessel"
    envelope: str = "cosine"
    chiral: bool = False
    heads: int = 1  # > 1: a shallow ensemble, K readout heads (biojax.nn.ensemble)

    @nn.compact
    def __call__(self, graph: Graph):
        F = self.features
        n_nodes = graph.n_nodes
        r, rbf, envelope = radial_features(graph.vectors, graph.edge_mask, self.cutoff,
                                           self.basis, self.n_basis, self.envelope)
        senders, receivers, both = graph.directed()
        unit = both(graph.vectors / r[:, None] * graph.edge_mask[:, None], -1.0)
        s = nn.Embed(self.num_species, F, name="embedding")(graph.species)
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
        if self.chiral:
            a, b, c = (nn.Dense(F, use_bias=False, name=f"chiral_{k}")(v) for k in "abc")
            triple = jnp.sum(a * jnp.cross(b, c, axisa=1, axisb=1, axisc=1), axis=1)
            s = jnp.concatenate([s, triple], -1)
        if not self.is_initializing():  # per-atom features (biojax.learn.select)
            self.sow("intermediates", "features", s)
        out = nn.Dense(F // 2, name="readout_0")(s)
        out = nn.Dense(self.heads, name="readout_1")(jax.nn.silu(out))
        return out[:, 0] if self.heads == 1 else out


def model_keys(factory) -> list[str] | None:
    """The hyperparameters a model factory accepts (besides num_species and cutoff), or
    None when it takes arbitrary keywords."""
    if dataclasses.is_dataclass(factory):
        return sorted(f.name for f in dataclasses.fields(factory)
                      if f.init and f.name not in ("num_species", "cutoff", "parent", "name"))
    params = inspect.signature(factory).parameters.values()
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return None
    return sorted(p.name for p in params if p.name not in ("num_species", "cutoff"))


def build_model(architecture: dict, num_species: int, cutoff: float):
    """The model ``architecture["name"]`` (registered name or ``"module:Name"``) built with
    ``num_species``, ``cutoff`` (Å) and the remaining keys as hyperparameters.

    Unknown names or hyperparameters raise ConfigError listing the valid ones.
    """
    arch = dict(architecture)
    name = arch.pop("name", None)
    if name is None:
        raise ConfigError("[model] needs a name: a registered model "
                          f"({', '.join(resolve_names())}) or an import path 'module:Name'")
    factory = resolve(models, name)
    valid = model_keys(factory)
    unknown = sorted(set(arch) - set(valid)) if valid is not None else []
    if unknown:
        raise ConfigError(f"[model] {name}: unknown key(s) {', '.join(map(repr, unknown))}; "
                          f"valid keys are: name, cutoff, {', '.join(valid)}")
    if factory in (SchNet, PaiNN) and arch.get("basis", "gaussian") not in _BASES:
        raise ConfigError(f"[model] basis {arch['basis']!r}; valid: {', '.join(_BASES)}")
    if factory in (SchNet, PaiNN) and arch.get("envelope", "cosine") not in _ENVELOPES:
        raise ConfigError(f"[model] envelope {arch['envelope']!r}; valid: {', '.join(_ENVELOPES)}")
    if int(arch.get("heads", 1)) < 1:
        raise ConfigError(f"[model] heads must be >= 1 (readout heads), got {arch['heads']}")
    try:
        model = factory(num_species=num_species, cutoff=float(cutoff), **arch)
    except TypeError as exc:
        raise ConfigError(f"[model] {name}: {exc}") from None
    if factory in (SchNet, PaiNN) and model.heads > 1:  # a shallow ensemble
        from biojax.nn.ensemble import EnsembleModel

        return EnsembleModel(model, model.heads, "shallow")
    return model


def resolve_names() -> list[str]:
    """Registered model names (built-ins included)."""
    from biojax.core.registry import load

    return load(models).names()


def init_potential(architecture: dict, elements: Sequence[int], cutoff: float,
                   reference_energies: Sequence[float] | None = None, key=None,
                   dtype=jnp.float32, scale: float = 1.0,
                   shifts: Sequence[float] = ()) -> Potential:
    """A Potential with freshly initialised parameters (``key``: jax PRNG key, default 0);
    ``scale`` (eV) and ``shifts`` (eV/atom, per species) map model outputs to energies."""
    elements = tuple(int(z) for z in elements)
    model = build_model(architecture, len(elements), cutoff)
    key = jax.random.PRNGKey(0) if key is None else key
    # a tiny two-atom graph to trace shapes
    graph = Graph(vectors=jnp.array([[1.0, 0.0, 0.0], [-1.0, 0.0, 0.0]], dtype),
                  species=jnp.zeros(2, jnp.int32), senders=jnp.array([0, 1], jnp.int32),
                  receivers=jnp.array([1, 0], jnp.int32), edge_mask=jnp.ones(2, bool),
                  node_mask=jnp.ones(2, bool))
    params = model.init(key, graph)
    params = jax.tree_util.tree_map(lambda x: jnp.asarray(x, dtype), params)
    ref = (0.0,) * len(elements) if reference_energies is None else reference_energies
    return Potential(model=model, params=params, cutoff=float(cutoff), elements=elements,
                     reference_energies=tuple(float(e) for e in np.asarray(ref)),
                     architecture=dict(architecture), scale=float(scale),
                     shifts=tuple(float(x) for x in shifts))


# the higher-order equivariant model registers itself ("mace"); imported last, it uses
# the building blocks above
from biojax.nn import equivariant as _equivariant  # noqa: E402

MACE = _equivariant.MACE
