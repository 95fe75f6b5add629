"""The simulation stage: ``biojax simulate CONFIG.toml [--model DIR] [--structure FILE]
[--ensemble ...] [--timestep FS] [--temperature K] [--steps N] [--replicas R] [--out DIR]
[--set KEY=VALUE] [--resume] [--overwrite]``.

This contract is used by scripts and external checks: keep it stable.
"""

from __future__ import annotations

import os
import sys

from biojax.core.config import add_override_option, cli_overrides
from biojax.core.errors import ConfigError, ModelError
from biojax.core.registry import stages
from biojax.md.config import SimulateConfig as Config

NAME = "simulate"


def load_config(path: str | os.PathLike, overrides=()) -> Config:
    """The simulate config in ``path`` (top level or ``[simulate]``) with ``"key=value"``
    overrides applied (``steps=10`` or ``simulate.steps=10``)."""
    from biojax.md.config import load_config as load

    return load(os.fspath(path), overrides)


def load_structure(path: str):
    """All frames of a structure file: PDB through ``openmm.app.PDBFile`` (positions nm →
    Å, elements from the topology, the box from CRYST1 if present; atom names, residue
    names and numbers kept as ``atoms.arrays`` "atomtypes", "residuenames",
    "residuenumbers", as ASE's PDB reader names them), anything else through ASE
    (extxyz, .traj, ...)."""
    from biojax.data.io import read_frames

    if os.fspath(path).lower().endswith((".pdb", ".ent")):
        return read_pdb(path)
    return read_frames(path)


def read_pdb(path: str):
    """The models of a PDB file as ASE Atoms via ``openmm.app.PDBFile`` (see
    :func:`load_structure`); a file openmm cannot parse raises DataError naming it."""
    import ase
    import numpy as np

    from biojax.core.errors import DataError

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise DataError(f"file not found: {path}")
    try:
        from openmm import app, unit

        pdb = app.PDBFile(path)
    except Exception as exc:  # noqa: BLE001 - openmm raises many types on bad input
        raise DataError(f"{path}: cannot be read as a PDB file ({type(exc).__name__}: "
                        f"{exc})") from None
    top = pdb.topology
    atoms_list = list(top.atoms())
    if not atoms_list:
        raise DataError(f"{path}: contains no atoms")
    missing = [a.index for a in atoms_list if a.element is None]
    if missing:
        raise DataError(f"{path}: no element for atom(s) {missing[:10]} (names "
                        f"{[atoms_list[i].name for i in missing[:10]]}); add the element "
                        "column (77-78)")
    numbers = [a.element.atomic_number for a in atoms_list]
    names = np.array([a.name for a in atoms_list])
    resnames = np.array([a.residue.name for a in atoms_list])
    resids = np.array([int(a.residue.id) if str(a.residue.id).lstrip("-").isdigit()
                       else a.residue.index + 1 for a in atoms_list])
    vectors = top.getPeriodicBoxVectors()
    cell = None if vectors is None else np.array(
        [[v.x, v.y, v.z] for v in vectors.value_in_unit(unit.nanometer)]) * 10.0
    frames = []
    for k in range(pdb.getNumFrames()):
        xyz = np.asarray(pdb.getPositions(asNumpy=True, frame=k).value_in_unit(
            unit.nanometer)) * 10.0
        atoms = ase.Atoms(numbers=numbers, positions=xyz, cell=cell,
                          pbc=cell is not None)
        atoms.set_array("atomtypes", names)
        atoms.set_array("residuenames", resnames)
        atoms.set_array("residuenumbers", resids)
        frames.append(atoms)
    return frames


def potential_from_config(cfg: Config, numbers):
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


def run(config: Config, workdir: str | os.PathLike | None = None, *, resume: bool = False,
        progress: bool = True) -> dict:
    """Load the structure and potential ``config`` names and run it, writing to ``workdir``
    (default ``config.out``). Returns the :meth:`Simulation.run` summary.

    The output folder is checked before any work starts: an existing file there, a folder
    that cannot be written, or (without ``resume``) an earlier run's results that
    ``config.overwrite`` does not allow to replace are errors."""
    from biojax.core.rundir import check_output_dir
    from biojax.md.simulation import Simulation

    out = os.fspath(workdir) if workdir is not None else config.out
    check_output_dir(out, "simulation output directory")
    if config.structure is None:
        raise ConfigError("simulate: no structure (set structure = FILE or --structure FILE)")
    frames = load_structure(config.structure)
    if config.multiscale is not None:  # hybrid FG-in-CG particles (biojax.cg.hybrid)
        from biojax.cg.hybrid import from_config

        frames, potential = from_config(config, frames)
    else:
        potential = potential_from_config(config, frames[0].get_atomic_numbers())
    sim = Simulation(frames, potential, config, progress=progress)
    if not resume:
        sim.check_no_results(out, config.overwrite)  # before minimisation and compiling
    return sim.run(out, resume=resume)


def _simulate(args) -> int:
    cfg = load_config(args.config, cli_overrides(args, {
        "model": "model", "structure": "structure", "ensemble": "ensemble",
        "timestep": "timestep_fs", "temperature": "temperature_K", "steps": "steps",
        "replicas": "replicas", "out": "out"}) + ([("overwrite", True)] if args.overwrite
                                                  else []))
    summary = run(cfg, cfg.out, resume=args.resume)
    print(f"biojax simulate: {summary['step']} steps × {cfg.replicas} replica(s) of "
          f"{summary['atoms']} atoms in {summary['wall_s']:.1f} s "
          f"({summary['steps_per_s']:.1f} steps/s) "
          f"({summary['ns_per_day']:.3f} ns/day per replica, "
          f"{summary['aggregate_ns_per_day']:.3f} aggregate); "
          f"{summary['compilations']} compilation(s), {summary['overflows']} neighbor-list "
          f"overflow(s); output in {cfg.out}", file=sys.stderr)
    return 0


def register(subparsers) -> None:
    """Add the ``simulate`` subcommand to the ``biojax`` parser."""
    p = subparsers.add_parser(
        "simulate", help="run molecular dynamics with a Potential",
        description="Run molecular dynamics (NVE, NVT, NPT; replicas) with a trained model "
                    "or a classical potential; writes observables, a trajectory and "
                    "checkpoints to the output directory.")
    p.add_argument("config", help="TOML config (see examples/md/)")
    add_override_option(p, "temperature_K=350")
    p.add_argument("--model", help="trained model directory (sets model)")
    p.add_argument("--structure", help="starting structure (PDB, extxyz, ...; sets structure)")
    p.add_argument("--ensemble", help="integrator: nve, nvt-langevin, nvt-nose-hoover, npt "
                   "or an import path module:factory")
    p.add_argument("--timestep", type=float, metavar="FS", help="time step (fs)")
    p.add_argument("--temperature", type=float, metavar="K", help="temperature (K)")
    p.add_argument("--steps", type=int, metavar="N", help="number of MD steps (sets steps)")
    p.add_argument("--replicas", type=int, metavar="R",
                   help="independent replicas run together (sets replicas)")
    p.add_argument("--out", metavar="DIR", help="output directory (sets out)")
    p.add_argument("--resume", action="store_true", help="continue a killed run in --out")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an earlier run's results in --out (sets overwrite)")
    p.set_defaults(func=_simulate)


stages.register(NAME, sys.modules[__name__])
