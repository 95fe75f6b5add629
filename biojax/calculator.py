"""An ASE Calculator for any biojax Potential (energy, forces, stress)."""

from __future__ import annotations

import jax
import numpy as np
from ase.calculators.calculator import Calculator, all_changes

from biojax.data.graphs import batch_graphs, find_edges
from biojax.data.io import structure_from_atoms
from biojax.nn.potential import Potential, graph_energy_forces_stress


def _voigt(s: np.ndarray) -> np.ndarray:
    return np.array([s[0, 0], s[1, 1], s[2, 2], s[1, 2], s[0, 2], s[0, 1]])


class BiojaxCalculator(Calculator):
    """ASE calculator: energy (eV, reference energies included), forces (eV/Å), stress
    (eV/Å³, periodic cells only). Padded shapes are bucketed and never shrink, so MD with
    ASE compiles again only when the number of edges grows past every size seen so far."""

    implemented_properties = ["energy", "free_energy", "forces", "stress"]
    #: extra results of an ensemble potential (biojax.nn.ensemble): ``energy_std`` (eV),
    #: ``forces_std`` (N,) per-atom force std (eV/Å), ``forces_std_max``/``_mean`` (eV/Å)
    ensemble_properties = ["energy_std", "forces_std", "forces_std_max", "forces_std_mean"]

    def __init__(self, potential: Potential, **kwargs):
        super().__init__(**kwargs)
        self.potential = potential
        leaves = jax.tree_util.tree_leaves(potential.params)
        self._dtype = np.asarray(leaves[0]).dtype if leaves else np.float32

        self._evaluate = jax.jit(
            lambda params, batch, compute_stress: graph_energy_forces_stress(
                potential, params, batch, compute_stress), static_argnums=2)
        self._padded = (0, 0)  # largest (atoms, edges) padding so far
        from biojax.nn.ensemble import batch_spread, is_ensemble

        self._spread = (jax.jit(lambda params, batch: batch_spread(potential, params, batch))
                        if is_ensemble(potential) else None)

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        structure = structure_from_atoms(self.atoms, "atoms")
        species = self.potential.species_of(structure.numbers)
        edges = find_edges(structure, self.potential.cutoff)
        batch = batch_graphs([structure], [edges], [species], [0.0], n_graphs=2,
                             dtype=self._dtype, min_atoms=self._padded[0],
                             min_edges=self._padded[1])
        self._padded = (len(batch.positions), len(batch.senders))
        compute_stress = "stress" in properties and structure.periodic
        pred = self._evaluate(self.potential.params, batch, compute_stress)
        energies, forces, stress = pred["energy"], pred["forces"], pred["stress"]
        energy = float(energies[0]) + self.potential.reference_energy(structure.numbers)
        self.results["energy"] = energy
        self.results["free_energy"] = energy
        self.results["forces"] = np.asarray(forces[:structure.n_atoms], dtype=np.float64)
        if compute_stress:
            self.results["stress"] = _voigt(np.asarray(stress[0], dtype=np.float64))
        if self._spread is not None:
            spread = jax.device_get(self._spread(self.potential.params, batch))
            self.results["energy_std"] = float(spread["energy_std"][0])
            self.results["forces_std"] = np.asarray(spread["force_std"][:structure.n_atoms],
                                                    np.float64)
            self.results["forces_std_max"] = float(spread["force_std_max"][0])
            self.results["forces_std_mean"] = float(spread["force_std_mean"][0])
