"""The one Graph every model takes, and the two functions that build it.

A :class:`Graph` holds edge vectors rather than positions, so the same model serves
padded training batches (edges found on the host, periodic shifts included) and jax-md
neighbor lists (edges from ``neighbor.idx`` inside ``jit``). Field names are a contract
that code outside biojax relies on: keep them.

- ``vectors`` (E, 3) Å: r_receiver − r_sender (minimum image or periodic shift applied);
- ``species`` (N,) int32: species index of each atom (the Potential's element order);
- ``senders``, ``receivers`` (E,) int32: messages flow sender → receiver;
- ``edge_mask`` (E,) bool, ``node_mask`` (N,) bool: False on padding;
- ``pairs`` (static bool): each edge stands for one unordered pair and messages flow both
  ways (jax-md ``OrderedSparse`` lists; halves the per-edge work of message passing).

Padding edges point at a valid atom index (0 or the padding atom) and have ``edge_mask``
False; a model must give them no weight (the radial envelope times ``edge_mask`` does).
"""

from __future__ import annotations

from typing import Callable

import flax.struct
import jax
import jax.numpy as jnp


@flax.struct.dataclass
class Graph:
    """Edges and atoms of one or more structures, padded to static shapes (see module)."""

    vectors: jax.Array
    species: jax.Array
    senders: jax.Array
    receivers: jax.Array
    edge_mask: jax.Array
    node_mask: jax.Array
    pairs: bool = flax.struct.field(pytree_node=False, default=False)

    @property
    def n_nodes(self) -> int:
        return self.species.shape[0]

    def directed(self):
        """``(senders, receivers, both)`` with every pair expanded into its two directions
        when ``pairs`` is set; ``both(x, sign=1)`` repeats a per-edge array for the reverse
        directions (``sign=-1`` for vectors). Without ``pairs`` ``both`` is the identity."""
        if not self.pairs:
            return self.senders, self.receivers, lambda x, sign=1.0: x
        s, r = self.senders, self.receivers
        return (jnp.concatenate([s, r]), jnp.concatenate([r, s]),
                lambda x, sign=1.0: jnp.concatenate([x, sign * x]))


def batch_graph(positions: jax.Array, batch, strain: jax.Array | None = None) -> Graph:
    """The Graph of a padded batch (``biojax.data.graphs.GraphBatch`` or anything with its
    fields) at ``positions`` (N, 3) Å.

    Edge vectors are ``positions[receivers] − positions[senders] + shifts``. ``strain``
    (G, 3, 3), one homogeneous strain per graph, deforms every edge of a graph as
    v → v (1 + ε), which is how stress is obtained as (1/V) ∂E/∂ε.
    """
    vectors = positions[batch.receivers] - positions[batch.senders] + batch.shifts
    if strain is not None:
        edge_strain = strain[batch.graph_index[batch.senders]]
        vectors = vectors + jnp.einsum("ei,eij->ej", vectors, edge_strain)
    return Graph(vectors=vectors, species=batch.species, senders=batch.senders,
                 receivers=batch.receivers, edge_mask=batch.edge_mask,
                 node_mask=batch.node_mask, pairs=False)


def neighbor_graph(positions: jax.Array, neighbor, species: jax.Array,
                   displacement_fn: Callable, **kwargs) -> Graph:
    """The Graph of a jax-md neighbor list at ``positions`` (the space's coordinates).

    Sparse lists give directed edges, ``OrderedSparse`` lists give pairs (``pairs=True``)
    and Dense lists (N, M) are flattened into directed edges. Padding slots (index N) are
    masked and pointed at atom 0. ``kwargs`` go to ``displacement_fn`` (e.g. ``box=``).
    """
    n_atoms = species.shape[0]
    fmt = neighbor.format.name  # by name: importing jax_md costs seconds, MD has it loaded
    if fmt == "Dense":
        idx = neighbor.idx
        receivers = jnp.repeat(jnp.arange(n_atoms, dtype=idx.dtype), idx.shape[1])
        senders = idx.reshape(-1)
    else:
        senders, receivers = neighbor.idx[0], neighbor.idx[1]
    edge_mask = (senders < n_atoms) & (receivers < n_atoms)
    senders = jnp.where(edge_mask, senders, 0)
    receivers = jnp.where(edge_mask, receivers, 0)
    displacement = jax.vmap(lambda a, b: displacement_fn(a, b, **kwargs))
    vectors = displacement(positions[receivers], positions[senders])
    return Graph(vectors=vectors, species=species, senders=senders, receivers=receivers,
                 edge_mask=edge_mask, node_mask=jnp.ones((n_atoms,), dtype=bool),
                 pairs=fmt == "OrderedSparse")
