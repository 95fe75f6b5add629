"""Loss and error metrics on padded graph batches (ASE units; metrics reported in meV)."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from biojax.data.graphs import GraphBatch
from biojax.nn.potential import graph_energy_forces_stress


def predict(potential, params, batch: GraphBatch, compute_stress: bool):
    """Predicted interaction energies (G,), forces (N, 3) and stress (G, 3, 3) or None."""
    return graph_energy_forces_stress(
        potential, params, batch.positions, batch.species, batch.senders, batch.receivers,
        batch.shifts, batch.edge_mask, batch.node_mask, batch.graph_index,
        batch.graph_mask.shape[0], batch.volume, compute_stress)


def _masked_mean(x, mask):
    mask = mask.astype(x.dtype)
    return jnp.sum(x * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def weighted_loss(potential, params, batch: GraphBatch, energy_weight: float,
                  forces_weight: float, stress_weight: float):
    """w_E·⟨(ΔE/N)²⟩ + w_F·⟨ΔF²⟩ + w_S·⟨Δσ²⟩ over the real (labelled) entries."""
    compute_stress = stress_weight > 0
    energy, forces, stress = predict(potential, params, batch, compute_stress)
    n_atoms = jnp.maximum(batch.n_atoms, 1.0)
    e_mask = batch.graph_mask & batch.has_energy
    loss = energy_weight * _masked_mean(((energy - batch.energy) / n_atoms) ** 2, e_mask)
    if forces_weight > 0:
        f_err = jnp.mean((forces - batch.forces) ** 2, axis=-1)
        loss = loss + forces_weight * _masked_mean(f_err, batch.node_mask & batch.has_forces)
    if compute_stress:
        s_err = jnp.mean((stress - batch.stress) ** 2, axis=(-1, -2))
        loss = loss + stress_weight * _masked_mean(s_err, batch.graph_mask & batch.has_stress)
    return loss


class ErrorAccumulator:
    """Accumulates prediction errors over batches (float64, host) into MAE/RMSE metrics."""

    def __init__(self):
        self.e, self.e_atom, self.f, self.s = [], [], [], []

    def add(self, batch: GraphBatch, energy, forces, stress=None) -> None:
        energy, forces = np.asarray(energy, np.float64), np.asarray(forces, np.float64)
        g = batch.graph_mask & batch.has_energy
        de = energy[g] - batch.energy[g]
        self.e.append(de)
        self.e_atom.append(de / batch.n_atoms[g])
        n = batch.node_mask & batch.has_forces
        self.f.append((forces[n] - batch.forces[n]).reshape(-1))
        if stress is not None:
            sg = batch.graph_mask & batch.has_stress
            self.s.append((np.asarray(stress, np.float64)[sg] - batch.stress[sg]).reshape(-1))

    def metrics(self) -> dict:
        """energy_mae/rmse (meV per structure), energy_per_atom_mae/rmse (meV/atom),
        forces_mae/rmse (meV/Å), stress_mae/rmse (meV/Å³) where present."""
        out = {}
        for name, parts in (("energy", self.e), ("energy_per_atom", self.e_atom),
                            ("forces", self.f), ("stress", self.s)):
            values = np.concatenate(parts) if parts else np.zeros(0)
            if values.size:
                out[f"{name}_mae"] = float(np.mean(np.abs(values)) * 1000)
                out[f"{name}_rmse"] = float(np.sqrt(np.mean(values**2)) * 1000)
        return out
