"""The Potential: a model (any flax module mapping a graph of edge vectors to per-atom
energies) coupled with its parameters, cutoff, element mapping and reference energies.

A Potential is the one object that training produces and that MD, the ASE calculator and
analysis consume. Its graph form works on edges so that the same model serves padded
training batches (edges precomputed on the host) and jax-md neighbor lists (edges from
``neighbor.idx`` inside ``jit``).

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
from jax_md import partition

from biojax.core.errors import ModelError

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class Potential:
    """A model with everything needed to evaluate it on atoms.

    Attributes:
      model: flax module; ``model.apply(params, vectors, species, senders, receivers,
        edge_mask, node_mask, pairs)`` returns per-atom interaction energies (eV), shape
        (N,). ``vectors[e] = position[receivers[e]] - position[senders[e]]`` (Å); with
        ``pairs=True`` each edge is one unordered pair standing for both directions.
      params: the model's parameter pytree.
      cutoff: interaction cutoff (Å); edges beyond it contribute nothing.
      elements: atomic numbers, in species-index order.
      reference_energies: per-element reference energies (eV), same order as elements.
      architecture: name and hyperparameters, enough to rebuild ``model`` (see nn.models).
    """

    model: Any
    params: Any
    cutoff: float
    elements: tuple[int, ...]
    reference_energies: tuple[float, ...]
    architecture: dict = dataclasses.field(default_factory=dict)
    # the jax-md neighbor list format MD uses: "ordered-sparse" (each pair once) or "dense"
    neighbor_format: str = "ordered-sparse"

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
    def atomic_energies(self, params, vectors, species, senders, receivers, edge_mask,
                        node_mask, pairs: bool = False) -> Array:
        """Per-atom interaction energies (eV), zero on padding atoms; ``pairs``: each edge
        is an unordered pair (see ``model``)."""
        energies = self.model.apply(params, vectors, species, senders, receivers,
                                    edge_mask, node_mask, pairs)
        return jnp.where(node_mask, energies, 0.0)

    # ---------------------------------------------------------------- jax-md form
    def energy_fn(self, displacement_fn: Callable, numbers: Sequence[int], params=None,
                  per_atom: bool = False) -> Callable:
        """An ``energy(positions, neighbor, **kwargs)`` function for jax-md (eV).

        ``neighbor`` is a jax-md NeighborList in Sparse format (``idx`` of shape (2, E),
        padded with N) or OrderedSparse (each pair once: the cheaper form for MD, see
        ``neighbor_format``). ``kwargs`` are passed to ``displacement_fn`` (e.g. ``box=`` for
        ``space.periodic_general``). With ``per_atom=True`` the per-atom energies are
        returned instead of their sum. ``params`` overrides the stored parameters.
        """
        species = jnp.asarray(self.species_of(numbers))
        n_atoms = species.shape[0]

        def energy(positions, neighbor, params=params, **kwargs):
            p = self.params if params is None else params
            pairs = neighbor.format is partition.NeighborListFormat.OrderedSparse
            senders, receivers = neighbor.idx[0], neighbor.idx[1]
            edge_mask = (senders < n_atoms) & (receivers < n_atoms)
            senders = jnp.where(edge_mask, senders, 0)
            receivers = jnp.where(edge_mask, receivers, 0)
            displacement = jax.vmap(lambda a, b: displacement_fn(a, b, **kwargs))
            vectors = displacement(positions[receivers], positions[senders])
            node_mask = jnp.ones((n_atoms,), dtype=bool)
            e = self.atomic_energies(p, vectors, species, senders, receivers, edge_mask,
                                     node_mask, pairs)
            return e if per_atom else jnp.sum(e)

        return energy

    def replace(self, **changes) -> "Potential":
        return dataclasses.replace(self, **changes)


def edge_vectors(positions: Array, senders: Array, receivers: Array,
                 shifts: Array | None = None) -> Array:
    """Edge vectors r_receiver - r_sender (+ periodic shift, Cartesian Å)."""
    vectors = positions[receivers] - positions[senders]
    if shifts is not None:
        vectors = vectors + shifts
    return vectors


def graph_energy_forces_stress(potential: Potential, params, positions, species, senders,
                               receivers, shifts, edge_mask, node_mask, graph_index,
                               n_graphs: int, volumes=None, compute_stress: bool = False):
    """Energies per graph (eV), forces (eV/Å) and optionally stress per graph (eV/Å³).

    Forces are -dE/dpositions; stress is (1/V) dE/dε for a homogeneous strain ε applied
    to every edge vector (the virial form, valid for periodic cells). All inputs are padded
    arrays; ``graph_index`` maps each atom to its graph.
    """

    def energy_with_graph_strain(pos, graph_strain):
        # each edge sees the strain of the graph its sender belongs to
        edge_strain = graph_strain[graph_index[senders]]
        vectors = edge_vectors(pos, senders, receivers, shifts)
        vectors = vectors + jnp.einsum("ei,eij->ej", vectors, edge_strain)
        e_atoms = potential.atomic_energies(params, vectors, species, senders, receivers,
                                            edge_mask, node_mask)
        per_graph = jax.ops.segment_sum(e_atoms, graph_index, num_segments=n_graphs)
        return jnp.sum(per_graph), per_graph

    strain = jnp.zeros((n_graphs, 3, 3), dtype=positions.dtype)
    if not compute_stress:
        (_, energies), grad_pos = jax.value_and_grad(
            energy_with_graph_strain, has_aux=True)(positions, strain)
        return energies, -grad_pos, None

    (_, energies), (grad_pos, grad_strain) = jax.value_and_grad(
        energy_with_graph_strain, argnums=(0, 1), has_aux=True)(positions, strain)
    safe_volumes = jnp.where(volumes > 0, volumes, 1.0)
    stress = grad_strain / safe_volumes[:, None, None]
    return energies, -grad_pos, stress
