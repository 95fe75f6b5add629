"""Molecular dynamics on jax-md integrators with any biojax Potential.

``Simulation(atoms, potential, SimulateConfig(...)).run(out_dir)`` runs NVE (velocity
Verlet), NVT (BAOAB Langevin, Nosé–Hoover chain), NPT (MTK Nosé–Hoover) or a user
integrator in jitted chunks with neighbor-list overflow reruns, extra energy terms and
observables, trajectories, atomic checkpoints, resume, blow-up detection and replicas.
``biojax simulate`` is the CLI.
"""

from biojax.md.config import SimulateConfig, default_config, load_config
from biojax.md.integrators import Integrator
from biojax.md.simulation import Simulation
from biojax.md.terms import EnergyTerm, System

__all__ = ["SimulateConfig", "default_config", "load_config", "Integrator", "Simulation",
           "EnergyTerm", "System"]
