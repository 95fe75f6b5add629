"""A user loss term on a non-standard label: the dipole moment ``atoms.info["dipole"]``.

A plumbing demo, not a dipole model: the "charges" are the model's per-atom energies times
``charge_per_eV``, neutralised per structure (so the dipole does not depend on the origin),
and the predicted dipole is Σ_i q_i r_i (e·Å). It shows how a term reads a dataset label
(``batch.labels``, ``batch.has_label``) and a prediction (``pred``) and returns
(sum of squared errors, count). ``label`` names the ``atoms.info`` key; in extxyz files
store it under a name such as ``ref_dipole``, since ASE reads ``dipole`` as a calculator
result rather than an info entry. Use it in a config by import path::

    [[training.loss]]
    name = "dipole_loss:dipole"
    weight = 1.0
    label = "ref_dipole"
"""

import jax
import jax.numpy as jnp

from biojax.train.losses import LossTerm, masked_squares


def dipole(weight: float = 1.0, charge_per_eV: float = 1.0, label: str = "dipole") -> LossTerm:
    """Squared dipole error per Cartesian component over structures with the label, (e·Å)²."""
    def errors(pred, batch):
        n_graphs = batch.graph_mask.shape[0]
        q = charge_per_eV * pred["atomic_energies"]
        mean = jax.ops.segment_sum(q, batch.graph_index, n_graphs) / jnp.maximum(batch.n_atoms, 1)
        q = jnp.where(batch.node_mask, q - mean[batch.graph_index], 0.0)
        mu = jax.ops.segment_sum(q[:, None] * pred["positions"], batch.graph_index, n_graphs)
        return masked_squares(mu - batch.labels[label], batch.graph_mask & batch.has_label[label])

    return LossTerm(label, float(weight), errors, labels=(label,))
