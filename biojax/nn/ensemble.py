"""Ensembles of potentials: the mean energy and forces, and their spread.

Two kinds, both behind one model object (:class:`EnsembleModel`) whose ``apply`` returns
the members' *mean* per-atom energies, so a Potential holding an ensemble works unchanged
everywhere a Potential does (training validation, MD, the ASE calculator) and gives the
mean energy and the mean force (the gradient of the mean is the mean of the gradients):

- ``"full"``: K independent copies of one architecture (different seeds); the parameter
  pytree has a leading member axis (K, ...) and the members are evaluated by ``vmap``.
  Trained in one vmapped program (``biojax.train.loop``: ``[training] ensemble = K``) or
  assembled from separately trained models (:func:`make_ensemble`, :func:`load_ensemble`).
- ``"shallow"``: one trunk with K readout heads (``[model] heads = K`` for SchNet and
  PaiNN): K-fold cheaper, the heads only differ in their last layers.

The spread: :func:`batch_spread` on padded batches and :func:`spread_fn` for jax-md
positions give per-member energies and forces and their standard deviations over the
members (population std, ``ddof = 0``: identical members have exactly zero spread). The
per-atom force uncertainty is ``sqrt(mean over x, y, z of var_k F_k)`` (eV/Å), the RMS
spread of one force component, on the same scale as a force-component error; per structure
its maximum and mean over atoms are reported.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from biojax.core.errors import ModelError
from biojax.core.graph import batch_graph, neighbor_graph

KINDS = ("full", "shallow")


@dataclasses.dataclass(frozen=True)
class EnsembleModel:
    """K members behind one ``apply`` (mean per-atom energies, (N,), model units).

    Attributes:
      member: ``"full"``: one member's model (any object with ``init``/``apply``), the
        parameters carry a leading member axis; ``"shallow"``: the model with K heads,
        whose ``apply`` returns (N, K).
      size: the number of members K.
      kind: ``"full"`` or ``"shallow"``.
    """

    member: Any
    size: int
    kind: str = "full"

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ModelError(f"ensemble kind {self.kind!r}; valid: {', '.join(KINDS)}")
        if int(self.size) < 1:
            raise ModelError(f"an ensemble needs at least one member, got {self.size}")

    def init(self, key, graph):
        """Parameters of every member (full: stacked along a leading axis)."""
        if self.kind == "shallow":
            return self.member.init(key, graph)
        keys = jax.random.split(key, self.size)
        return jax.vmap(self.member.init, in_axes=(0, None))(keys, graph)

    def member_outputs(self, params, graph):
        """Per-member per-atom outputs (K, N) before the Potential's scale and shift."""
        if self.kind == "shallow":
            return jnp.transpose(self.member.apply(params, graph))
        return jax.vmap(self.member.apply, in_axes=(0, None))(params, graph)

    def apply(self, params, graph):
        """The members' mean per-atom outputs (N,)."""
        return jnp.mean(self.member_outputs(params, graph), axis=0)

    def describe(self) -> dict:
        """The ``ensemble`` record of potential.json."""
        return {"kind": self.kind, "members": int(self.size)}


@dataclasses.dataclass(frozen=True)
class _Head:
    """Head ``index`` of a shallow ensemble as a plain model (training member-wise)."""

    model: Any
    index: Any

    def apply(self, params, graph):
        return self.model.apply(params, graph)[:, self.index]


def is_ensemble(potential) -> bool:
    """Whether ``potential`` holds an ensemble (full or shallow)."""
    return isinstance(getattr(potential, "model", None), EnsembleModel)


def members(potential) -> int:
    """The number of members K (1 for a single model)."""
    return potential.model.size if is_ensemble(potential) else 1


def member_potential(potential, index=None):
    """A full ensemble's member as a plain Potential over one member's parameters
    (``params`` left as they are: pass a member's slice when evaluating); a shallow
    ensemble's head ``index`` (may be traced) over the shared parameters."""
    model = potential.model
    if model.kind == "full":
        return potential.replace(model=model.member)
    return potential.replace(model=_Head(model.member, index))


# ---------------------------------------------------------------- building
def _check_same(potentials: Sequence, where: Sequence[str]) -> None:
    first = potentials[0]
    for k, p in enumerate(potentials[1:], start=1):
        checks = [
            ("elements", tuple(first.elements), tuple(p.elements)),
            ("cutoff (Å)", float(first.cutoff), float(p.cutoff)),
            ("architecture", first.architecture, p.architecture),
            ("reference energies (eV)", tuple(first.reference_energies),
             tuple(p.reference_energies)),
            ("output scale (eV)", float(first.scale), float(p.scale)),
            ("per-species shifts (eV/atom)", tuple(first.shifts), tuple(p.shifts)),
        ]
        for what, a, b in checks:
            if a != b:
                raise ModelError(
                    f"cannot make an ensemble: member {k} ({where[k]}) has {what} {b} but "
                    f"member 0 ({where[0]}) has {a}; every member must share elements, "
                    "cutoff, architecture, reference energies, scale and shifts (train them "
                    "on the same data with the same [model] table)")
        if is_ensemble(p):
            raise ModelError(f"cannot make an ensemble: member {k} ({where[k]}) is itself "
                             "an ensemble")
        shapes_a = jax.tree_util.tree_map(np.shape, first.params)
        shapes_b = jax.tree_util.tree_map(np.shape, p.params)
        if shapes_a != shapes_b:
            raise ModelError(f"cannot make an ensemble: member {k} ({where[k]}) has other "
                             f"parameter names or shapes than member 0 ({where[0]})")


def make_ensemble(potentials: Sequence, where: Sequence[str] | None = None):
    """A full-ensemble Potential from K ≥ 1 single Potentials of one architecture (their
    parameters stacked along a new leading axis). Members with different elements,
    cutoffs, architectures, reference energies or output scale/shift raise ModelError
    naming the member (``where``: a label per member, e.g. its directory)."""
    potentials = list(potentials)
    if not potentials:
        raise ModelError("cannot make an ensemble of no models")
    where = list(where) if where is not None else [f"model {k}" for k in range(len(potentials))]
    if is_ensemble(potentials[0]):
        raise ModelError(f"cannot make an ensemble: member 0 ({where[0]}) is itself an "
                         "ensemble")
    _check_same(potentials, where)
    params = jax.tree_util.tree_map(lambda *x: jnp.stack([jnp.asarray(a) for a in x]),
                                    *[p.params for p in potentials])
    first = potentials[0]
    return first.replace(model=EnsembleModel(first.model, len(potentials), "full"),
                         params=params)


def load_ensemble(directories: Sequence[str | os.PathLike]):
    """A full ensemble from model directories written by ``save_potential`` (each a
    single model); see :func:`make_ensemble` for what must agree."""
    from biojax.nn.io import load_potential

    dirs = [os.fspath(d) for d in directories]
    return make_ensemble([load_potential(d) for d in dirs], dirs)


def init_ensemble(architecture: dict, elements, cutoff: float, reference_energies,
                  seeds: Sequence[int], dtype=jnp.float32, scale: float = 1.0,
                  shifts: Sequence[float] = ()):
    """A full ensemble of freshly initialised members, member k from
    ``jax.random.PRNGKey(seeds[k])`` (the same parameters ``init_potential`` gives for
    that key)."""
    from biojax.nn.models import init_potential

    return make_ensemble([init_potential(architecture, elements, cutoff, reference_energies,
                                         key=jax.random.PRNGKey(int(s)), dtype=dtype,
                                         scale=scale, shifts=shifts) for s in seeds])


# ---------------------------------------------------------------- spread
def _require(potential):
    if not is_ensemble(potential):
        raise ModelError("this potential is a single model, not an ensemble: it has no "
                         "spread (train with [training] ensemble = K or [model] heads = K, "
                         "or combine models with biojax.nn.ensemble.load_ensemble)")


def _member_atomic(potential, params, graph):
    """Per-member per-atom energies (K, N) in eV, zero on padding."""
    outs = potential.model.member_outputs(params, graph)
    return jax.vmap(lambda o: potential._scaled(o, graph.species, graph.node_mask))(outs)


def _member_atomic_and_forces(potential, params, graph_of: Callable, positions):
    """Per-member per-atom energies (K, N) eV and forces (K, N, 3) eV/Å at ``positions``
    (``graph_of(positions)`` builds the graph). A full ensemble differentiates each member
    on its own (vmap of one member's gradient: K member passes); the reverse-mode Jacobian
    of the K member energies would push each of K cotangents back through all K members
    (K² member passes). A shallow one shares its trunk, so its Jacobian costs K passes."""
    model = potential.model
    if model.kind == "full":
        def one(p, x):
            graph = graph_of(x)
            atomic = potential._scaled(model.member.apply(p, graph), graph.species,
                                       graph.node_mask)
            return jnp.sum(atomic), atomic

        grad = jax.vmap(jax.grad(one, argnums=1, has_aux=True), in_axes=(0, None))
        g, atomic = grad(params, positions)
        return atomic, -g
    def members(x):
        atomic = _member_atomic(potential, params, graph_of(x))
        return jnp.sum(atomic, axis=1), atomic

    g, atomic = jax.jacrev(members, has_aux=True)(positions)  # one forward pass
    return atomic, -g


def _var(x):
    """Variance over the member axis 0 (ddof = 0), from deviations to member 0: exactly
    zero for identical members (the plain mean of K equal float32 numbers need not be
    that number)."""
    d = x - x[0]
    return jnp.maximum(jnp.mean(d * d, axis=0) - jnp.mean(d, axis=0) ** 2, 0.0)


def _std(x):
    return jnp.sqrt(_var(x))


def _force_std(forces):
    """(K, N, 3) → per-atom RMS over components of the std over members (N,) eV/Å."""
    return jnp.sqrt(jnp.mean(_var(forces), axis=-1))


def batch_spread(potential, params, batch) -> dict:
    """Ensemble predictions on a padded batch (``GraphBatch``): ``energy`` (G,) and
    ``forces`` (N, 3), the members' means (eV, eV/Å); ``member_energy`` (K, G),
    ``member_forces`` (K, N, 3); ``energy_std`` (G,) eV; ``force_std`` (N,) eV/Å per atom
    (zero on padding); ``force_std_max`` and ``force_std_mean`` (G,) over each
    structure's atoms."""
    _require(potential)
    n_graphs = batch.graph_mask.shape[0]

    atomic, member_f = _member_atomic_and_forces(
        potential, params, lambda x: batch_graph(x, batch), batch.positions)
    member_e = jax.vmap(lambda x: jax.ops.segment_sum(x, batch.graph_index,
                                                      num_segments=n_graphs))(atomic)
    f_std = jnp.where(batch.node_mask, _force_std(member_f), 0.0)
    n = jax.ops.segment_sum(batch.node_mask.astype(f_std.dtype), batch.graph_index,
                            num_segments=n_graphs)
    f_max = jax.ops.segment_max(jnp.where(batch.node_mask, f_std, -jnp.inf),
                                batch.graph_index, num_segments=n_graphs)
    return {"energy": jnp.mean(member_e, 0), "forces": jnp.mean(member_f, 0),
            "member_energy": member_e, "member_forces": member_f,
            "energy_std": _std(member_e), "force_std": f_std,
            "force_std_max": jnp.where(n > 0, f_max, 0.0),
            "force_std_mean": jax.ops.segment_sum(f_std, batch.graph_index,
                                                  num_segments=n_graphs) / jnp.maximum(n, 1)}


def spread_fn(potential, displacement_fn: Callable, numbers: Sequence[int],
              params=None) -> Callable:
    """``spread(positions, neighbor, **kw) -> dict`` for jax-md positions of one system:
    ``energy_std`` (eV), ``force_std`` (N,) eV/Å per atom, ``force_std_max`` and
    ``force_std_mean`` (eV/Å); ``kw`` goes to ``displacement_fn`` (``box=`` under NPT).
    ``params`` overrides the stored parameters."""
    _require(potential)
    species = jnp.asarray(potential.species_of(numbers))

    def spread(positions, neighbor, **kw):
        p = potential.params if params is None else params
        atomic, f = _member_atomic_and_forces(
            potential, p, lambda x: neighbor_graph(x, neighbor, species, displacement_fn, **kw),
            positions)
        f_std = _force_std(f)
        return {"energy_std": _std(jnp.sum(atomic, axis=1)), "force_std": f_std,
                "force_std_max": jnp.max(f_std), "force_std_mean": jnp.mean(f_std)}

    return spread
