"""Molecular dynamics on jax-md integrators with any biojax Potential.

``Simulation(atoms, potential, SimulateConfig(...)).run(out_dir)`` runs NVE (velocity
Verlet), NVT (BAOAB Langevin, Nosé–Hoover chain), NPT (MTK Nosé–Hoover) or a user
integrator in jitted chunks with neighbor-list overflow reruns, extra energy terms and
observables, trajectories, atomic checkpoints, resume, blow-up detection and replicas.
``biojax simulate`` is the CLI.

The names below are imported on first use: importing jax-md takes seconds, and commands
that only read a simulate config (``biojax --help``) should not pay for it.
"""

import importlib

_EXPORTS = {"SimulateConfig": "biojax.md.config", "default_config": "biojax.md.config",
            "load_config": "biojax.md.config", "Integrator": "biojax.md.integrators",
            "Simulation": "biojax.md.simulation", "EnergyTerm": "biojax.md.terms",
            "System": "biojax.md.terms"}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'biojax.md' has no attribute {name!r}")
