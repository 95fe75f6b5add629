"""TinyNet: a small user-defined model for biojax, kept outside the package.

Each atom i gets a neighbour density per radial shell k and per learned neighbour
"kind" c: d_ikc = Σ_j g_k(r_ij) f_cut(r_ij) e_c(species_j), with Gaussian shells g_k on
[0, cutoff], the cosine envelope f_cut (value and slope both reach zero at the cutoff,
so energies and forces are continuous) and a learned species embedding e. The density,
concatenated with the atom's own embedding, goes through an MLP to one energy per atom
(eV; biojax's Potential applies the fitted scale and shift). The interface biojax
expects: constructor fields ``num_species`` and ``cutoff`` (Å) plus any hyperparameters,
and ``__call__(graph) -> (N,)`` per-atom energies.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from biojax.core.graph import Graph  # type hints only


class TinyNet(nn.Module):
    num_species: int
    cutoff: float          # Å
    features: int = 64     # MLP width
    n_basis: int = 16      # Gaussian radial shells
    n_kinds: int = 8       # size of the species embedding that weights neighbours

    @nn.compact
    def __call__(self, graph: Graph) -> jax.Array:
        # padding edges have zero vectors: give them r = cutoff so sqrt's gradient stays finite
        sq = jnp.sum(graph.vectors**2, axis=-1)
        r = jnp.sqrt(jnp.where(graph.edge_mask, sq, self.cutoff**2))
        envelope = jnp.where(r < self.cutoff, 0.5 * (jnp.cos(jnp.pi * r / self.cutoff) + 1), 0.0)
        envelope = envelope * graph.edge_mask  # padding edges contribute nothing
        centres = jnp.linspace(0.0, self.cutoff, self.n_basis)
        width = self.cutoff / self.n_basis
        radial = jnp.exp(-0.5 * ((r[:, None] - centres) / width) ** 2) * envelope[:, None]
        # with graph.pairs each edge is one unordered pair: expand it into both directions
        senders, receivers, both = graph.directed()
        radial = both(radial)
        kinds = nn.Embed(self.num_species, self.n_kinds, name="kinds")(graph.species)
        density = jax.ops.segment_sum(radial[:, :, None] * kinds[senders][:, None, :],
                                      receivers, num_segments=graph.n_nodes)
        own = nn.Embed(self.num_species, self.features, name="embedding")(graph.species)
        h = jnp.concatenate([density.reshape(graph.n_nodes, -1), own], axis=-1)
        h = nn.silu(nn.Dense(self.features, name="hidden_0")(h))
        h = nn.silu(nn.Dense(self.features, name="hidden_1")(h))
        return nn.Dense(1, name="energy")(h)[:, 0]
