"""Molecular dynamics on jax-md integrators with any biojax Potential.

``Simulation(atoms, potential, SimulateConfig(...)).run(out_dir)`` runs NVE (velocity
Verlet), NVT (BAOAB Langevin, Nosé–Hoover chain) or NPT (MTK Nosé–Hoover) in jitted
chunks with neighbor-list overflow reruns, observables, trajectories, atomic checkpoints,
resume, blow-up detection and vmapped replicas. ``biojax simulate`` is the CLI.
"""

from biojax.md.config import SimulateConfig, default_config, load_config  # noqa: F401
