"""``biojax simulate CONFIG.toml [--model DIR] [--structure FILE] [--ensemble ...]
[--timestep FS] [--temperature K] [--steps N] [--replicas R] [--out DIR] [--resume]``.

This contract is used by scripts and external checks: keep it stable.
"""

from __future__ import annotations

import argparse
import os
import sys

from biojax.core.config import replace
from biojax.core.errors import ConfigError, ModelError
from biojax.md.config import ENSEMBLES, SimulateConfig, load_config


def load_structure(path: str):
    """All frames of an ASE-readable structure file (PDB, extxyz, .traj, ...)."""
    from biojax.data.io import read_frames

    return read_frames(path)


def potential_from_config(cfg: SimulateConfig, numbers):
    """The Potential a config names: a trained model directory or a classical table."""
    if cfg.model is not None:
        if not os.path.isdir(cfg.model):
            raise ModelError(f"model directory not found: {cfg.model}")
        from biojax.nn.io import load_potential

        return load_potential(cfg.model)
    if cfg.classical is not None:
        from biojax.nn import classical

        c = cfg.classical
        elements = sorted(set(int(z) for z in numbers))
        if c.kind == "lennard-jones":
            return classical.lennard_jones(elements, c.sigma, c.epsilon, c.cutoff, c.r_onset)
        return classical.morse(elements, c.D, c.alpha, c.r0, c.cutoff, c.r_onset)
    raise ConfigError("simulate: give a trained model (model = DIR or --model DIR) or a "
                      "[classical] table")


def simulate(args: argparse.Namespace) -> int:
    """Entry point of ``biojax simulate``."""
    from biojax.md.simulation import Simulation

    cfg = load_config(args.config)
    cfg = replace(cfg, where=f"{args.config} (command-line overrides)", model=args.model,
                  structure=args.structure, ensemble=args.ensemble,
                  timestep_fs=args.timestep, temperature_K=args.temperature,
                  steps=args.steps, replicas=args.replicas, out=args.out)
    if cfg.structure is None:
        raise ConfigError(f"{args.config}: no structure (set structure = FILE or "
                          "--structure FILE)")
    base = os.path.dirname(os.path.abspath(args.config))
    structure = cfg.structure if os.path.isabs(cfg.structure) or os.path.exists(
        cfg.structure) else os.path.join(base, cfg.structure)
    frames = load_structure(structure)
    potential = potential_from_config(cfg, frames[0].get_atomic_numbers())
    sim = Simulation(frames, potential, cfg, progress=True)
    summary = sim.run(cfg.out, resume=args.resume)
    print(f"biojax simulate: {summary['step']} steps × {cfg.replicas} replica(s) of "
          f"{summary['atoms']} atoms in {summary['wall_s']:.1f} s "
          f"({summary['ns_per_day']:.3f} ns/day per replica, "
          f"{summary['aggregate_ns_per_day']:.3f} aggregate); "
          f"{summary['compilations']} compilation(s), {summary['overflows']} neighbor-list "
          f"overflow(s); output in {cfg.out}", file=sys.stderr)
    return 0


def register(subparsers) -> None:
    """Add the ``simulate`` subcommand."""
    p = subparsers.add_parser("simulate", help="run molecular dynamics with a Potential",
                              description=__doc__.splitlines()[0])
    p.add_argument("config", help="TOML config (see examples/md/)")
    p.add_argument("--model", help="trained model directory")
    p.add_argument("--structure", help="starting structure (PDB, extxyz, ...)")
    p.add_argument("--ensemble", choices=ENSEMBLES)
    p.add_argument("--timestep", type=float, metavar="FS", help="time step (fs)")
    p.add_argument("--temperature", type=float, metavar="K", help="temperature (K)")
    p.add_argument("--steps", type=int, metavar="N")
    p.add_argument("--replicas", type=int, metavar="R")
    p.add_argument("--out", metavar="DIR", help="output directory")
    p.add_argument("--resume", action="store_true", help="continue a killed run in --out")
    p.set_defaults(func=simulate)
