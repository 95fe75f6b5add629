"""The Potential: a model (any flax module mapping a Graph to per-atom energies) coupled
with its parameters, cutoff, element mapping, output scale/shift and reference energies.

A Potential is the one object that training produces and that MD, the ASE calculator and
analysis consume. Every evaluation goes through one path: a
:class:`~biojax.core.graph.Graph` (built by ``batch_graph`` from padded training batches
or by ``neighbor_graph`` from jax-md neighbor lists) → ``model.apply(params, graph)`` →
``scale · e + shift[species]``.

Energies returned by the JAX functions here are *interaction* energies: the per-species
reference energies (isolated atoms, or a least-squares fit) are left out so that float32
keeps its significant digits. ``Potential.reference_energy(numbers)`` gives that constant in
float64; the ASE calculator and evaluation add it back.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from biojax.core.errors import ModelError
from biojax.core.graph import Graph, batch_graph, neighbor_graph

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class Potential:
    """A model with everything needed to evaluate it on atoms.

    Attributes:
      model: flax module (or any object with ``apply``); ``model.apply(params, graph)``
        returns per-atom outputs (N,) in eV for a :class:`~biojax.core.graph.Graph`.
      params: the model's parameter pytree.
      cutoff: interaction cutoff (Å); edges beyond it contribute nothing.
      elements: atomic numbers, in species-index order.
      reference_energies: per-element reference energies (eV), same order as elements.
      architecture: name (registered or ``"module:Name"``) and hyperparameters, enough to
        rebuild ``model`` (see ``biojax.nn.models.build_model``).
      scale: multiplies the model's per-atom outputs (eV; fitted from the training data).
      shifts: per-species energy added to each atom (eV/atom); empty means zero.
    """

    model: Any
    params: Any
    cutoff: float
    elements: tuple[int, ...]
    reference_energies: tuple[float, ...]
    architecture: dict = dataclasses.field(default_factory=dict)
    scale: float = 1.0
    shifts: tuple[float, ...] = ()

    # ---------------------------------------------------------------- species
    def species_of(self, numbers: Sequence[int]) -> np.ndarray:
        """Map atomic numbers to species indices (int32); unknown elements raise ModelError."""
        from ase.data import chemical_symbols

        numbers = np.asarray(numbers, dtype=int)
        lookup = {z: i for i, z in enumerate(self.elements)}
        unknown = sorted({int(z) for z in numbers if int(z) not in lookup})
        if unknown:
            names = ", ".join(chemical_symbols[z] if 0 < z < len(chemical_symbols) else str(z)
                              for z in unknown)
            known = ", ".join(chemical_symbols[z] for z in self.elements)
            raise ModelError(
                f"element(s) {names} not known to this model (it was trained on {known})")
        return np.array([lookup[int(z)] for z in numbers], dtype=np.int32)

    def reference_energy(self, numbers: Sequence[int]) -> float:
        """Sum of per-species reference energies (eV, float64) for these atoms."""
        species = self.species_of(numbers)
        return float(np.asarray(self.reference_energies, dtype=np.float64)[species].sum())

    # ---------------------------------------------------------------- graph form
    def _scaled(self, outputs, species, node_mask):
        """scale · outputs + shift[species] (eV), zero on padding atoms."""
        shift = jnp.asarray(self.shifts, outputs.dtype)[species] if self.shifts else 0.0
        return jnp.where(node_mask, self.scale * outputs + shift, 0.0)

    def atomic_energies(self, params, graph: Graph) -> Array:
        """Per-atom interaction energies (eV) of a Graph, zero on padding atoms."""
        return self._scaled(self.model.apply(params, graph), graph.species, graph.node_mask)

    # ---------------------------------------------------------------- jax-md form
    def energy_fn(self, displacement_fn: Callable, numbers: Sequence[int], params=None,
                  per_atom: bool = False) -> Callable:
        """An ``energy(positions, neighbor, **kwargs)`` function for jax-md (eV).

        ``neighbor`` is a jax-md NeighborList in any format (OrderedSparse, each pair once,
        is the cheaper form for message passing). ``kwargs`` are passed to
        ``displacement_fn`` (e.g. ``box=`` for ``space.periodic_general``). With
        ``per_atom=True`` the per-atom energies are returned instead of their sum.
        ``params`` overrides the stored parameters. A model with its own neighbor-list
        energy (``model.neighbor_energy_fn``, e.g. pair potentials on Dense lists) is
        used through it; scale and shifts apply either way.
        """
        species = jnp.asarray(self.species_of(numbers))
        node_mask = jnp.ones(species.shape, bool)

        def graph_energy(positions, neighbor, p, **kwargs):
            graph = neighbor_graph(positions, neighbor, species, displacement_fn, **kwargs)
            return self.model.apply(p, graph)

        custom = getattr(self.model, "neighbor_energy_fn", None)
        model_energy = (custom(displacement_fn, species, graph_energy)
                        if custom is not None else None)

        def energy(positions, neighbor, params=params, **kwargs):
            p = self.params if params is None else params
            if per_atom or model_energy is None:
                e = self._scaled(graph_energy(positions, neighbor, p, **kwargs), species,
                                 node_mask)
                return e if per_atom else jnp.sum(e)
            shift = jnp.sum(jnp.asarray(self.shifts)[species]) if self.shifts else 0.0
            return self.scale * model_energy(positions, neighbor, p, **kwargs) + shift

        return energy

    def replace(self, **changes) -> "Potential":
        return dataclasses.replace(self, **changes)

    # ---------------------------------------------------------------- ensembles
    @property
    def members(self) -> int:
        """Number of ensemble members K (1 for a single model; biojax.nn.ensemble)."""
        from biojax.nn.ensemble import members

        return members(self)

    def spread_fn(self, displacement_fn: Callable, numbers: Sequence[int]) -> Callable:
        """An ensemble's ``spread(positions, neighbor, **kw)``: energy std (eV) and
        per-atom force std (eV/Å) with its max and mean over atoms (see
        ``biojax.nn.ensemble.spread_fn``); the energy and forces of ``energy_fn`` are the
        members' means. ModelError for a single model."""
        from biojax.nn.ensemble import spread_fn

        return spread_fn(self, displacement_fn, numbers)


def graph_energy_forces_stress(potential: Potential, params, batch,
                               compute_stress: bool = False) -> dict:
    """Predictions on a padded batch (``biojax.data.graphs.GraphBatch``): ``energy`` per
    graph (G,) eV, ``forces`` (N, 3) eV/Å, ``atomic_energies`` (N,) eV and, with
    ``compute_stress``, ``stress`` per graph (G, 3, 3) eV/Å³ (else None).

    Forces are −∂E/∂positions; stress is (1/V) ∂E/∂ε for a homogeneous strain ε of every
    edge vector of a graph (the virial form, valid for periodic cells).
    """
    n_graphs = batch.graph_mask.shape[0]

    def total_energy(positions, strain):
        e_atoms = potential.atomic_energies(params, batch_graph(positions, batch, strain))
        per_graph = jax.ops.segment_sum(e_atoms, batch.graph_index, num_segments=n_graphs)
        return jnp.sum(per_graph), (per_graph, e_atoms)

    strain = jnp.zeros((n_graphs, 3, 3), dtype=batch.positions.dtype)
    argnums = (0, 1) if compute_stress else 0
    (_, (energies, e_atoms)), grads = jax.value_and_grad(
        total_energy, argnums=argnums, has_aux=True)(batch.positions, strain)
    out = {"energy": energies, "atomic_energies": e_atoms, "stress": None}
    if compute_stress:
        grad_pos, grad_strain = grads
        volumes = batch.volume
        out["stress"] = grad_strain / jnp.where(volumes > 0, volumes, 1.0)[:, None, None]
    else:
        grad_pos = grads
    out["forces"] = -grad_pos
    return out
