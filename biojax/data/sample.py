"""Sampling recipes: make conformations, label them with a reference engine, write extxyz.

A recipe is a TOML file mapped onto :class:`Recipe`::

    kind = "openmm-md"            # or "rattle-strain"
    frames = 2000                 # total frames written
    seed = 7                      # every random choice derives from it
    [reference]                   # who labels the frames (biojax.data.reference)
    name = "gfn2-xtb"             # "gfn2-xtb", "emt" or "openmm"
    [openmm_md]                   # settings of the chosen kind (see the dataclasses below)
    ...

Two kinds:

- ``openmm-md`` (:class:`OpenMMMDConfig`): Langevin MD of one molecule with OpenMM
  (AMBER prmtop or PDB + force-field XML; vacuum or implicit solvent). The frames are split
  over ``[[openmm_md.runs]]``; each run may first be equilibrated with harmonic dihedral
  restraints that hold named dihedrals (e.g. alanine dipeptide's phi/psi) in a chosen
  basin, then the restraints are switched off and only unrestrained MD is saved. This is
  how rare basins (alanine dipeptide's alpha_L) get populated honestly: the saved
  frames are ordinary Boltzmann dynamics started inside the basin.
- ``rattle-strain`` (:class:`RattleStrainConfig`): an ``ase.build.bulk`` supercell with a
  random symmetric strain and random Gaussian displacements per frame (periodic).

The written extxyz holds energy (eV), forces (eV/Å) and, with ``reference.stress``,
stress (eV/Å³) as calculator results; the first frame's ``info`` carries
``biojax_recipe`` (the recipe as JSON, CLI overrides applied) and ``biojax_provenance``
(biojax and tool versions, seed, date, command) so the file can be regenerated.
"""

from __future__ import annotations

import datetime
import json
import os
import platform as _platform
import time
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from ase import Atoms

from biojax.core.atomic import atomic_path
from biojax.core.config import from_dict, load, to_dict
from biojax.core.units import FS, KJ_PER_MOL, PS
from biojax.core.progress import progress as progress_bar
from biojax.data.io import check_output
from biojax.data.reference import (IMPLICIT_SOLVENTS, _build_pdb, _build_prmtop, label,
                                   make_calculator)
from biojax.core.errors import ConfigError, DataError, SimulationError

RECIPE_KINDS = ("openmm-md", "rattle-strain")


# --------------------------------------------------------------------------- configs

@dataclass(frozen=True)
class ReferenceConfig:
    """Which engine labels the frames (see ``biojax.data.reference.make_calculator``)."""

    name: str
    # engine options; the file names among them are relative to the recipe's folder
    options: dict[str, Any] = field(default_factory=dict,
                                    metadata={"path": ("prmtop", "coordinates", "pdb")})
    stress: bool = False  # also compute the stress (eV/Å³); periodic frames only


@dataclass(frozen=True)
class MDRun:
    """One MD run (or ``replicas`` independent runs) of an ``openmm-md`` recipe."""

    name: str
    # dihedral name (a key of openmm_md.dihedrals) -> target angle in degrees, held by a
    # harmonic restraint during equilibration only; never active while frames are saved
    restraints: dict[str, float] = field(default_factory=dict)
    temperature: float | None = None  # K; default: openmm_md.temperature
    replicas: int = 1  # independent copies (new velocities and noise seeds)


@dataclass(frozen=True)
class OpenMMMDConfig:
    """OpenMM Langevin MD of one molecule; give ``prmtop`` (+coordinates) or ``pdb``."""

    # file names are relative to the recipe's folder (see biojax.core.config)
    prmtop: str | None = field(  # AMBER topology; "openmmtools:..." = openmmtools data file
        default=None, metadata={"path": True})
    coordinates: str | None = field(  # inpcrd/crd or PDB with the prmtop's atom order
        default=None, metadata={"path": True})
    pdb: str | None = field(default=None, metadata={"path": True})  # PDB for ``forcefield``
    forcefield: list[str] = field(default_factory=lambda: ["amber14-all.xml"])
    implicit_solvent: str = "none"  # none, HCT, OBC1, OBC2, GBn, GBn2
    temperature: float = 300.0  # K
    timestep: float = 1.0  # fs
    friction: float = 1.0  # 1/ps
    constraints: Literal["none", "HBonds"] = "none"
    save_every: int = 500  # MD steps between saved frames
    minimize: bool = True  # energy-minimise (with restraints) before equilibration
    restrained_steps: int = 20000  # steps with dihedral restraints on
    release_steps: int = 5000  # unrestrained steps before the first saved frame
    restraint_k: float = 5.0  # eV/rad² harmonic dihedral restraint constant
    dihedrals: dict[str, list[int]] = field(default_factory=dict)  # name -> 4 atom indices
    platform: str = "Reference"  # OpenMM platform for the sampling MD: Reference is double
    # precision and fast for vacuum/prmtop-OBC systems; "CPU" is ~5x faster for the
    # CustomGBForce implicit solvents of the XML force fields (GBn2, implicit/obc2.xml)
    runs: list[MDRun] = field(default_factory=lambda: [MDRun(name="md")])


@dataclass(frozen=True)
class RattleStrainConfig:
    """Random strains and displacements of a bulk crystal built by ``ase.build.bulk``."""

    element: str = "Cu"
    crystal: str = "fcc"  # ase.build.bulk crystal structure
    a: float = 3.61  # lattice constant, Å
    cubic: bool = True  # conventional cubic cell (4 atoms for fcc)
    repeat: list[int] = field(default_factory=lambda: [2, 2, 2])
    max_displacement_sigma: float = 0.1  # Å; each frame draws sigma uniformly in [0, this]
    max_strain: float = 0.03  # each symmetric strain component uniform in [-this, this]


@dataclass(frozen=True)
class Recipe:
    """A sampling + labelling recipe (one TOML file)."""

    kind: Literal["openmm-md", "rattle-strain"]
    frames: int
    reference: ReferenceConfig
    seed: int = 0
    description: str = ""
    openmm_md: OpenMMMDConfig | None = None
    rattle_strain: RattleStrainConfig | None = None


def load_recipe(path: str | os.PathLike, overrides=()) -> Recipe:
    """Read and check a recipe TOML with ``"section.key=value"`` overrides (e.g.
    ``"frames=10"``); relative file names in it are relative to its folder."""
    recipe = load(Recipe, path, overrides)
    check_recipe(recipe, where=os.fspath(path))
    return recipe


def check_recipe(recipe: Recipe, where: str = "recipe") -> None:
    """Raise :class:`ConfigError` naming the field if ``recipe`` cannot run."""
    if recipe.frames < 1:
        raise ConfigError(f"{where}: 'frames' must be at least 1, got {recipe.frames}")
    table = {"openmm-md": "openmm_md", "rattle-strain": "rattle_strain"}[recipe.kind]
    for other in ("openmm_md", "rattle_strain"):
        present = getattr(recipe, other) is not None
        if other == table and not present:
            raise ConfigError(f"{where}: kind {recipe.kind!r} needs a [{table}] table")
        if other != table and present:
            raise ConfigError(f"{where}: table [{other}] does not belong to kind "
                              f"{recipe.kind!r} (expected [{table}])")
    if recipe.kind == "openmm-md":
        _check_md(recipe.openmm_md, f"{where} [openmm_md]")
    else:
        _check_crystal(recipe.rattle_strain, f"{where} [rattle_strain]")
    try:
        _json(to_dict(recipe))
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _check_md(c: OpenMMMDConfig, where: str) -> None:
    if bool(c.prmtop) == bool(c.pdb):
        raise ConfigError(f"{where}: give exactly one of 'prmtop' (with 'coordinates') "
                          "or 'pdb' (with 'forcefield')")
    if c.prmtop and not c.coordinates:
        raise ConfigError(f"{where}: 'prmtop' needs 'coordinates' (inpcrd/crd or PDB file)")
    if c.implicit_solvent not in IMPLICIT_SOLVENTS:
        raise ConfigError(f"{where} 'implicit_solvent': expected one of "
                          f"{', '.join(IMPLICIT_SOLVENTS)}, got {c.implicit_solvent!r}")
    for name, value in (("temperature", c.temperature), ("timestep", c.timestep),
                        ("friction", c.friction), ("save_every", c.save_every)):
        if not value > 0:
            raise ConfigError(f"{where} {name!r}: expected a positive number, got {value!r}")
    for name in ("restrained_steps", "release_steps"):
        if getattr(c, name) < 0:
            raise ConfigError(f"{where} {name!r}: expected >= 0")
    for name, idx in c.dihedrals.items():
        if (not isinstance(idx, (list, tuple)) or len(idx) != 4
                or not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0
                           for i in idx) or len(set(idx)) != 4):
            raise ConfigError(f"{where} dihedrals {name!r}: expected 4 distinct 0-based atom "
                              f"indices, got {idx!r}")
    if not c.runs:
        raise ConfigError(f"{where} 'runs': expected at least one [[openmm_md.runs]] entry")
    for i, run in enumerate(c.runs):
        if run.replicas < 1:
            raise ConfigError(f"{where} runs[{i}] 'replicas': expected >= 1")
        if run.temperature is not None and not run.temperature > 0:
            raise ConfigError(f"{where} runs[{i}] 'temperature': expected > 0 K")
        for dname, target in run.restraints.items():
            if dname not in c.dihedrals:
                raise ConfigError(f"{where} runs[{i}] restraints: unknown dihedral {dname!r}; "
                                  f"defined in [openmm_md.dihedrals]: "
                                  f"{', '.join(sorted(c.dihedrals)) or '(none)'}")
            if isinstance(target, bool) or not isinstance(target, (int, float)):
                raise ConfigError(f"{where} runs[{i}] restraints {dname!r}: expected an angle "
                                  f"in degrees, got {target!r}")


def _check_crystal(c: RattleStrainConfig, where: str) -> None:
    if len(c.repeat) != 3 or any(r < 1 for r in c.repeat):
        raise ConfigError(f"{where} 'repeat': expected 3 positive integers, got {c.repeat!r}")
    if not c.a > 0:
        raise ConfigError(f"{where} 'a': expected a positive lattice constant in Å")
    if c.max_displacement_sigma < 0 or not 0 <= c.max_strain < 0.5:
        raise ConfigError(f"{where}: expected max_displacement_sigma >= 0 Å and "
                          "0 <= max_strain < 0.5")


# --------------------------------------------------------------------------- helpers

def dihedral_degrees(positions: np.ndarray, idx) -> float:
    """Dihedral angle (degrees, in [-180, 180)) of atoms ``idx`` (4 indices)."""
    # a label written to the dataset: float64 on the host, so it agrees with ASE's
    # get_dihedral to 1e-6 degrees
    from biojax.core.geometry import dihedrals_float64

    rad = dihedrals_float64(positions, [idx])
    angle = float(np.degrees(rad[0]))
    return ((angle + 180.0) % 360.0) - 180.0


def _json(obj) -> str:
    """JSON that survives an extxyz comment line (which cannot hold backslashes)."""
    text = json.dumps(obj, ensure_ascii=False, sort_keys=True)
    if "\\" in text:
        raise ValueError("strings in the recipe must not contain '\"', '\\' or control "
                         "characters (the extxyz metadata line cannot store them)")
    return text


def _versions() -> dict[str, str]:
    from importlib import metadata

    import biojax

    out = {"biojax": biojax.__version__, "python": _platform.python_version()}
    for pkg in ("numpy", "ase", "openmm", "tblite", "openmmtools"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return out


def _split(total: int, parts: int) -> list[int]:
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


# --------------------------------------------------------------------------- samplers

def sample_structures(recipe: Recipe, base_dir: str | os.PathLike | None = None,
                      progress: bool = True) -> list[Atoms]:
    """The recipe's unlabelled structures (positions in Å), ``recipe.frames`` of them."""
    if recipe.kind == "openmm-md":
        return _sample_openmm_md(recipe, base_dir, progress)
    return _sample_rattle_strain(recipe, progress)


def _sample_rattle_strain(recipe: Recipe, progress: bool) -> list[Atoms]:
    from ase.build import bulk

    c = recipe.rattle_strain
    try:
        base = bulk(c.element, c.crystal, a=c.a, cubic=c.cubic) * tuple(c.repeat)
    except Exception as exc:
        raise ConfigError(f"[rattle_strain]: ase.build.bulk({c.element!r}, {c.crystal!r}, "
                          f"a={c.a}, cubic={c.cubic}) failed: {exc}") from None
    rng = np.random.default_rng(recipe.seed)
    frames = []
    for i in range(recipe.frames):
        eps = np.zeros((3, 3))
        iu = np.triu_indices(3)
        eps[iu] = rng.uniform(-c.max_strain, c.max_strain, size=6)
        eps = np.triu(eps) + np.triu(eps, 1).T  # symmetric
        sigma = float(rng.uniform(0.0, c.max_displacement_sigma))
        atoms = base.copy()
        atoms.set_cell(np.asarray(base.cell) @ (np.eye(3) + eps), scale_atoms=True)
        atoms.positions = atoms.positions + rng.normal(0.0, sigma, size=atoms.positions.shape)
        atoms.info["sample_index"] = i
        atoms.info["sample_sigma"] = sigma  # Å
        # Voigt order xx yy zz yz xz xy (tensor components, not engineering shear)
        atoms.info["sample_strain"] = np.array([eps[0, 0], eps[1, 1], eps[2, 2],
                                                eps[1, 2], eps[0, 2], eps[0, 1]])
        frames.append(atoms)
    return frames


def _restraint_force(targets: dict[str, float], dihedrals: dict[str, list[int]], k_ev: float):
    import openmm

    force = openmm.CustomTorsionForce(
        "restraint_scale*0.5*k*d^2; d = dtheta - 2*pi*floor((dtheta + pi)/(2*pi)); "
        "dtheta = theta - theta0; pi = 3.141592653589793")
    force.addGlobalParameter("restraint_scale", 1.0)
    force.addPerTorsionParameter("k")
    force.addPerTorsionParameter("theta0")
    k_kj = k_ev / KJ_PER_MOL  # eV/rad² -> kJ/mol/rad²
    for name, target in targets.items():
        i, j, k, l = dihedrals[name]
        force.addTorsion(i, j, k, l, [k_kj, np.radians(float(target))])
    return force


def _sample_openmm_md(recipe: Recipe, base_dir, progress: bool) -> list[Atoms]:
    import openmm
    import openmm.unit as u
    from openmm import app

    c = recipe.openmm_md
    constraints = None if c.constraints == "none" else app.HBonds
    if c.prmtop:
        system, topology, pos0 = _build_prmtop(c.prmtop, c.coordinates, c.implicit_solvent,
                                               base_dir, constraints)
    else:
        system, topology, pos0 = _build_pdb(c.pdb, c.forcefield, c.implicit_solvent,
                                            base_dir, constraints)
    numbers = np.array([a.element.atomic_number for a in topology.atoms()])
    masses = np.array([system.getParticleMass(i).value_in_unit(u.dalton)
                       for i in range(system.getNumParticles())])
    for name, idx in c.dihedrals.items():
        if max(idx) >= len(numbers):
            raise ConfigError(f"[openmm_md] dihedrals {name!r}: atom index {max(idx)} out of "
                              f"range for a molecule of {len(numbers)} atoms")
    try:
        plat = openmm.Platform.getPlatformByName(c.platform)
    except Exception:
        raise ConfigError(f"[openmm_md] 'platform': unknown OpenMM platform {c.platform!r}") \
            from None
    props = {"Threads": "1"} if c.platform == "CPU" else {}

    jobs = [(run, rep) for run in c.runs for rep in range(run.replicas)]
    counts = _split(recipe.frames, len(jobs))
    rng = np.random.default_rng(recipe.seed)
    bar = progress_bar(recipe.frames, "sample openmm-md", progress, unit="frame")
    serialized = openmm.XmlSerializer.serialize(system)
    frames: list[Atoms] = []
    for (run, rep), n_frames in zip(jobs, counts):
        noise_seed, velocity_seed = (int(s) for s in rng.integers(1, 2**31 - 1, size=2))
        if n_frames == 0:
            continue
        temperature = run.temperature or c.temperature
        sys_run = openmm.XmlSerializer.deserialize(serialized)
        if run.restraints:
            sys_run.addForce(_restraint_force(run.restraints, c.dihedrals, c.restraint_k))
        integrator = openmm.LangevinMiddleIntegrator(temperature * u.kelvin,
                                                     c.friction / u.picosecond,
                                                     c.timestep * u.femtosecond)
        integrator.setRandomNumberSeed(noise_seed)
        context = openmm.Context(sys_run, integrator, plat, props)
        context.setPositions(pos0 * u.nanometer)
        if c.minimize:
            openmm.LocalEnergyMinimizer.minimize(context, 1.0, 2000)
        context.setVelocitiesToTemperature(temperature * u.kelvin, velocity_seed)
        if run.restraints and c.restrained_steps:
            integrator.step(c.restrained_steps)
        if run.restraints:
            context.setParameter("restraint_scale", 0.0)
        if c.release_steps:
            integrator.step(c.release_steps)
        for k in range(n_frames):
            integrator.step(c.save_every)
            state = context.getState(getPositions=True, getEnergy=True)
            pos = state.getPositions(asNumpy=True).value_in_unit(u.angstrom)
            pos = np.asarray(pos, dtype=float)
            if not np.all(np.isfinite(pos)):
                raise SimulationError(f"openmm-md run {run.name!r} replica {rep}: positions "
                                      f"became non-finite at frame {k}; lower 'timestep'")
            pos = pos - (masses[:, None] * pos).sum(0) / masses.sum()  # centre of mass at 0
            atoms = Atoms(numbers=numbers, positions=pos)
            atoms.info["sample_run"] = run.name
            atoms.info["sample_replica"] = rep
            atoms.info["sample_time_ps"] = round((k + 1) * c.save_every * c.timestep * FS / PS, 6)
            atoms.info["sample_temperature_K"] = float(temperature)
            atoms.info["sampler_energy"] = float(
                state.getPotentialEnergy().value_in_unit(u.kilojoule_per_mole) * KJ_PER_MOL)
            for name, idx in c.dihedrals.items():
                atoms.info[name] = round(dihedral_degrees(pos, idx), 3)
            frames.append(atoms)
            bar.update(len(frames))
        del context, integrator
    bar.close()
    return frames


# --------------------------------------------------------------------------- pipeline

def write_extxyz_atomic(frames: list[Atoms], path: str | os.PathLike) -> None:
    """Write ``frames`` to ``path`` as extxyz via a temporary file and an atomic rename.

    On any failure the temporary file is removed and an existing ``path`` is untouched.
    """
    import ase.io

    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise DataError(f"{path}: output folder {folder} does not exist")
    with atomic_path(path) as tmp:
        ase.io.write(tmp, frames, format="extxyz")


def run_recipe(recipe: Recipe, out: str | os.PathLike, base_dir=None, progress: bool = True,
               command: str | None = None, overwrite: bool = True) -> dict:
    """Sample, label and write ``recipe``'s dataset to ``out`` (extxyz, atomic write).

    Relative file names in the recipe are resolved against ``base_dir`` (the recipe's
    folder). ``out`` is checked before any work: a folder or an unwritable location is a
    ConfigError, and so is an existing file unless ``overwrite`` (this function, like
    ``open(out, "w")``, replaces it by default; ``biojax sample`` and the stage's
    ``run`` refuse unless asked). Returns a summary: frames, atoms per frame, energy
    range (eV), seconds spent.
    """
    check_output(out, "output file", overwrite=overwrite)
    check_recipe(recipe)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    t0 = time.perf_counter()
    ref = recipe.reference
    calc = make_calculator(ref.name, base_dir=base_dir, **ref.options)
    structures = sample_structures(recipe, base_dir, progress)
    t_sample = time.perf_counter() - t0
    labelled = label(structures, calc, compute_stress=ref.stress, progress=progress,
                     what=f"label {ref.name}")
    t_label = time.perf_counter() - t0 - t_sample
    for atoms in labelled:
        atoms.info["reference"] = ref.name
    provenance = {
        "versions": _versions(),
        "seed": recipe.seed,
        "frames": recipe.frames,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": command or "biojax.data.sample.run_recipe",
        "host": f"{_platform.system()} {_platform.machine()}",
        "seconds": {"sample": round(t_sample, 1), "label": round(t_label, 1)},
    }
    labelled[0].info["biojax_recipe"] = _json(to_dict(recipe))
    labelled[0].info["biojax_provenance"] = _json(provenance)
    write_extxyz_atomic(labelled, out)
    energies = np.array([a.get_potential_energy() for a in labelled])
    return {"frames": len(labelled), "atoms": len(labelled[0]),
            "energy_min": float(energies.min()), "energy_max": float(energies.max()),
            "seconds": round(time.perf_counter() - t0, 1), "out": os.fspath(out)}


def recipe_from_dataset(path: str | os.PathLike) -> tuple[Recipe, dict]:
    """The :class:`Recipe` and provenance dict recorded in a dataset written by ``run_recipe``."""
    import ase.io

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise DataError(f"{path}: file not found")
    try:
        first = ase.io.read(path, index=0, format="extxyz")
    except Exception as exc:
        raise DataError(f"{path}: cannot read as extxyz: {exc}") from None
    if "biojax_recipe" not in first.info:
        raise DataError(f"{path}: first frame has no 'biojax_recipe' metadata "
                        "(not written by biojax sample)")
    recipe = from_dict(Recipe, json.loads(first.info["biojax_recipe"]),
                       where=f"{path} biojax_recipe")
    prov = json.loads(first.info.get("biojax_provenance", "{}"))
    return recipe, prov
