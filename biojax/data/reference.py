"""Reference calculators that label ASE structures with energies, forces and stresses.

Three engines, all returned as ASE calculators in ASE units (energy eV, forces eV/Å,
stress eV/Å³):

- ``"gfn2-xtb"``: GFN2-xTB tight binding through ``tblite.ase.TBLite``.
- ``"emt"``: ASE's effective-medium theory (Al, Cu, Ag, Au, Ni, Pd, Pt; H, C, N, O roughly).
- ``"openmm"``: an OpenMM force field (AMBER prmtop, or PDB + force-field XML files),
  in vacuum or in implicit solvent, wrapped by :class:`OpenMMCalculator`, which converts
  OpenMM's kJ/mol and nm to eV and Å.

:func:`label` evaluates a calculator on a list of structures and returns copies that carry
the results as ``SinglePointCalculator`` data, ready for ``ase.io.write(format="extxyz")``;
:func:`label_iter` yields them one at a time (``biojax label`` writes each as it comes).
"""

from __future__ import annotations

import importlib.util
import os
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
from ase import Atoms
from ase.calculators.calculator import Calculator, all_changes
from ase.calculators.singlepoint import SinglePointCalculator

from biojax.core.errors import BiojaxError, ConfigError, DataError
from biojax.core.progress import progress as progress_bar
from biojax.core.registry import reference_engines, resolve
from biojax.core.units import KJ_PER_MOL, NM


#: OpenMM implicit-solvent names accepted by :class:`OpenMMCalculator`
IMPLICIT_SOLVENTS = ("none", "HCT", "OBC1", "OBC2", "GBn", "GBn2")
#: force-field XML that adds each implicit-solvent model to the amber14/charmm36 families
_IMPLICIT_XML = {"HCT": "implicit/hct.xml", "OBC1": "implicit/obc1.xml",
                 "OBC2": "implicit/obc2.xml", "GBn": "implicit/gbn.xml",
                 "GBn2": "implicit/gbn2.xml"}


# --------------------------------------------------------------------------- paths

def resolve_path(path: str, base_dir: str | os.PathLike | None = None,
                 where: str = "reference") -> str:
    """Resolve a structure/parameter file name to an existing absolute path.

    ``openmmtools:SUBPATH`` points into the installed openmmtools package's ``data/``
    folder (found with ``importlib.util.find_spec``, without importing openmmtools);
    a relative path is taken relative to ``base_dir`` (e.g. the recipe's folder) or the
    working directory. A missing file raises :class:`DataError` naming ``where``.
    """
    if not isinstance(path, str) or not path:
        raise ConfigError(f"{where}: expected a file name, got {path!r}")
    if path.startswith("openmmtools:"):
        spec = importlib.util.find_spec("openmmtools")
        if spec is None or not spec.submodule_search_locations:
            raise DataError(f"{where}: {path!r} needs the openmmtools package, "
                            "which is not installed")
        root = os.path.join(list(spec.submodule_search_locations)[0], "data")
        full = os.path.join(root, path[len("openmmtools:"):])
    elif os.path.isabs(path) or base_dir is None:
        full = os.path.abspath(path)
    else:
        full = os.path.abspath(os.path.join(os.fspath(base_dir), path))
    if not os.path.isfile(full):
        raise DataError(f"{where}: file not found: {path!r} (looked for {full})")
    return full


# --------------------------------------------------------------------------- OpenMM

class OpenMMCalculator(Calculator):
    """ASE calculator wrapping an OpenMM ``System`` (non-periodic, no cutoff).

    Energies are returned in eV and forces in eV/Å (OpenMM works in kJ/mol and nm).
    The ASE atoms must be in the topology's atom order; element mismatches raise
    :class:`DataError`. Build one with :meth:`from_prmtop`, :meth:`from_pdb` or
    :func:`make_calculator` ("openmm", ...). The ``Reference`` platform (double
    precision) is the default, because labels should be accurate, not fast.
    """

    implemented_properties = ["energy", "free_energy", "forces"]

    def __init__(self, system, topology, positions_nm=None, platform: str = "Reference",
                 description: str = "openmm", **kwargs):
        super().__init__(**kwargs)
        import openmm

        self.system = system
        self.topology = topology
        self.description = description
        self._positions_nm = None if positions_nm is None else np.asarray(positions_nm)
        self._numbers = np.array([a.element.atomic_number if a.element is not None else 0
                                  for a in topology.atoms()])
        if len(self._numbers) != system.getNumParticles():
            raise DataError(f"{description}: topology has {len(self._numbers)} atoms but "
                            f"the System has {system.getNumParticles()} particles")
        try:
            plat = openmm.Platform.getPlatformByName(platform)
        except Exception:
            names = [openmm.Platform.getPlatform(i).getName()
                     for i in range(openmm.Platform.getNumPlatforms())]
            raise ConfigError(f"openmm reference: unknown platform {platform!r}; "
                              f"available: {', '.join(names)}") from None
        props = {"Threads": "1"} if platform == "CPU" else {}
        # the integrator is never stepped; it only exists because a Context needs one
        self._context = openmm.Context(system, openmm.VerletIntegrator(0.001), plat, props)

    # ---- constructors
    @classmethod
    def from_prmtop(cls, prmtop: str, coordinates: str | None = None,
                    implicit_solvent: str = "none", platform: str = "Reference",
                    base_dir=None) -> "OpenMMCalculator":
        """An AMBER prmtop (vacuum or implicit solvent) with optional inpcrd/crd/PDB coordinates."""
        system, topology, pos = _build_prmtop(prmtop, coordinates, implicit_solvent, base_dir)
        return cls(system, topology, pos, platform=platform,
                   description=f"openmm prmtop {os.path.basename(prmtop)} "
                               f"(implicit solvent {implicit_solvent})")

    @classmethod
    def from_pdb(cls, pdb: str, forcefield: Sequence[str] = ("amber14-all.xml",),
                 implicit_solvent: str = "none", platform: str = "Reference",
                 base_dir=None) -> "OpenMMCalculator":
        """A PDB file parametrised with OpenMM force-field XML files (e.g. amber14-all.xml)."""
        system, topology, pos = _build_pdb(pdb, forcefield, implicit_solvent, base_dir)
        return cls(system, topology, pos, platform=platform,
                   description=f"openmm {os.path.basename(pdb)} + {', '.join(forcefield)} "
                               f"(implicit solvent {implicit_solvent})")

    def template_atoms(self) -> Atoms:
        """The molecule as ASE Atoms (positions in Å from the structure file, no cell)."""
        if self._positions_nm is None:
            raise DataError(f"{self.description}: no coordinates were given")
        return Atoms(numbers=self._numbers, positions=self._positions_nm * NM)

    # ---- ASE interface
    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        """Energy (eV) and forces (eV/Å) of ``atoms`` from the wrapped OpenMM System."""
        super().calculate(atoms, properties, system_changes)
        import openmm.unit as u

        atoms = self.atoms
        if len(atoms) != len(self._numbers) or np.any(atoms.numbers != self._numbers):
            raise DataError(f"{self.description}: structure with {len(atoms)} atoms "
                            f"({atoms.get_chemical_formula()}) does not match the "
                            f"force-field topology ({len(self._numbers)} atoms); "
                            "expected the same atoms in the same order")
        if atoms.pbc.any():
            raise DataError(f"{self.description}: periodic structures are not supported "
                            "(the OpenMM reference is built without a box)")
        self._context.setPositions(atoms.positions / NM)  # Å -> nm
        state = self._context.getState(getEnergy=True, getForces=True)
        e = state.getPotentialEnergy().value_in_unit(u.kilojoule_per_mole)
        f = state.getForces(asNumpy=True).value_in_unit(u.kilojoule_per_mole / u.nanometer)
        self.results["energy"] = float(e) * KJ_PER_MOL
        self.results["free_energy"] = self.results["energy"]
        self.results["forces"] = np.asarray(f, dtype=float) * (KJ_PER_MOL / NM)


def _implicit(name: str, where: str):
    if name not in IMPLICIT_SOLVENTS:
        raise ConfigError(f"{where}: unknown implicit_solvent {name!r}; "
                          f"expected one of {', '.join(IMPLICIT_SOLVENTS)}")
    return name


def _build_prmtop(prmtop, coordinates, implicit_solvent, base_dir, constraints=None):
    """(System, Topology, positions in nm or None) from an AMBER prmtop."""
    from openmm import app

    _implicit(implicit_solvent, "openmm prmtop")
    path = resolve_path(prmtop, base_dir, "openmm 'prmtop'")
    try:
        top = app.AmberPrmtopFile(path)
    except Exception as exc:
        raise DataError(f"{path}: cannot read AMBER prmtop: {exc}") from None
    solvent = None if implicit_solvent == "none" else getattr(app, implicit_solvent)
    system = top.createSystem(nonbondedMethod=app.NoCutoff, constraints=constraints,
                              rigidWater=False, implicitSolvent=solvent)
    pos = None
    if coordinates:
        pos = _read_coordinates(coordinates, base_dir, top.topology.getNumAtoms())
    return system, top.topology, pos


def _build_pdb(pdb, forcefield, implicit_solvent, base_dir, constraints=None):
    """(System, Topology, positions in nm) from a PDB and force-field XML files."""
    from openmm import app

    _implicit(implicit_solvent, "openmm pdb")
    path = resolve_path(pdb, base_dir, "openmm 'pdb'")
    try:
        structure = app.PDBFile(path)
    except Exception as exc:
        raise DataError(f"{path}: cannot read PDB: {exc}") from None
    if isinstance(forcefield, str):
        forcefield = [forcefield]
    xmls = list(forcefield)
    if not xmls:
        raise ConfigError("openmm pdb: 'forcefield' needs at least one XML file, "
                          "e.g. ['amber14-all.xml']")
    if implicit_solvent != "none":
        xmls.append(_IMPLICIT_XML[implicit_solvent])
    try:
        ff = app.ForceField(*xmls)
        system = ff.createSystem(structure.topology, nonbondedMethod=app.NoCutoff,
                                 constraints=constraints, rigidWater=False)
    except Exception as exc:
        raise DataError(f"{path}: cannot parametrise with {xmls}: {exc}") from None
    pos = structure.getPositions(asNumpy=True).value_in_unit(_nm())
    return system, structure.topology, np.asarray(pos)


def _nm():
    import openmm.unit as u
    return u.nanometer


def _read_coordinates(coordinates, base_dir, n_atoms):
    from openmm import app

    path = resolve_path(coordinates, base_dir, "openmm 'coordinates'")
    try:
        if path.lower().endswith(".pdb"):
            pos = app.PDBFile(path).getPositions(asNumpy=True)
        else:
            pos = app.AmberInpcrdFile(path).getPositions(asNumpy=True)
    except Exception as exc:
        raise DataError(f"{path}: cannot read coordinates: {exc}") from None
    pos = np.asarray(pos.value_in_unit(_nm()))
    if len(pos) != n_atoms:
        raise DataError(f"{path}: has {len(pos)} atoms, expected {n_atoms} (the prmtop's)")
    return pos


# --------------------------------------------------------------------------- factory

def make_calculator(name: str, base_dir=None, **options: Any) -> Calculator:
    """An ASE calculator for reference engine ``name`` (eV, eV/Å, eV/Å³): a registered
    engine (``biojax.core.registry.reference_engines``) or an import path
    ``"module:factory"`` to a user's factory ``factory(base_dir=None, **options)``.

    - ``"gfn2-xtb"``: ``tblite.ase.TBLite(method="GFN2-xTB")``; options are TBLite keywords
      (charge, multiplicity, accuracy, electronic_temperature [K], max_iterations, ...).
    - ``"emt"``: ``ase.calculators.emt.EMT``; option ``asap_cutoff``.
    - ``"openmm"``: :class:`OpenMMCalculator`; options ``prmtop`` (+ ``coordinates``) or
      ``pdb`` + ``forcefield`` (list of XML files), ``implicit_solvent`` (one of
      ``IMPLICIT_SOLVENTS``), ``platform`` (default "Reference").

    File options are resolved with :func:`resolve_path` against ``base_dir``. An unknown
    name or option raises :class:`ConfigError` listing the valid ones.
    """
    return resolve(reference_engines, name)(base_dir=base_dir, **options)


@reference_engines.register("gfn2-xtb")
def _gfn2_xtb(base_dir=None, **options) -> Calculator:
    try:
        from tblite.ase import TBLite
    except ImportError:
        raise ConfigError("reference 'gfn2-xtb' needs the tblite package "
                          "(pip install tblite)") from None
    valid = set(TBLite.default_parameters) - {"method"}
    _check_options("gfn2-xtb", options, valid)
    options.setdefault("verbosity", 0)
    return TBLite(method="GFN2-xTB", **options)


@reference_engines.register("emt")
def _emt(base_dir=None, **options) -> Calculator:
    from ase.calculators.emt import EMT

    _check_options("emt", options, set(EMT.default_parameters))
    return EMT(**options)


@reference_engines.register("openmm")
def _openmm(base_dir=None, **options) -> Calculator:
    valid = {"prmtop", "coordinates", "pdb", "forcefield", "implicit_solvent", "platform"}
    _check_options("openmm", options, valid)
    solvent = options.get("implicit_solvent", "none")
    platform = options.get("platform", "Reference")
    if options.get("prmtop"):
        if options.get("pdb") or options.get("forcefield"):
            raise ConfigError("reference 'openmm': give either 'prmtop' (with optional "
                              "'coordinates') or 'pdb' + 'forcefield', not both")
        return OpenMMCalculator.from_prmtop(options["prmtop"], options.get("coordinates"),
                                            solvent, platform, base_dir)
    if options.get("pdb"):
        return OpenMMCalculator.from_pdb(options["pdb"],
                                         options.get("forcefield", ("amber14-all.xml",)),
                                         solvent, platform, base_dir)
    raise ConfigError("reference 'openmm': expected option 'prmtop' (AMBER topology) "
                      "or 'pdb' (with 'forcefield' XML files)")


def _check_options(name, options, valid):
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ConfigError(f"reference {name!r}: unknown option(s) "
                          f"{', '.join(map(repr, unknown))}; valid options are: "
                          f"{', '.join(sorted(valid))}")


# --------------------------------------------------------------------------- labelling

def label_iter(frames: Sequence[Atoms], calculator: Calculator, compute_stress: bool = False,
               what: str = "label", first: int = 0) -> Iterator[Atoms]:
    """Label ``frames[first:]`` one at a time (see :func:`label`), yielding each labelled
    copy as soon as it is computed, so a caller can write it before the next one starts;
    errors name the frame by its index in ``frames``."""
    for i in range(first, len(frames)):
        atoms = frames[i]
        if compute_stress and not atoms.pbc.all():
            raise DataError(f"{what}: frame {i} is not periodic in all directions; "
                            "stress needs a periodic cell (drop compute_stress/--stress)")
        work = atoms.copy()
        work.calc = calculator
        try:
            energy = float(work.get_potential_energy())
            forces = np.array(work.get_forces(), dtype=float)
            stress = np.array(work.get_stress(voigt=True), dtype=float) if compute_stress else None
        except BiojaxError:
            raise
        except Exception as exc:  # engine failures (SCF not converged, bad geometry, ...)
            raise DataError(f"{what}: frame {i}: reference calculation failed: "
                            f"{type(exc).__name__}: {exc}") from exc
        if not np.isfinite(energy) or not np.all(np.isfinite(forces)):
            raise DataError(f"{what}: frame {i}: reference returned non-finite energy/forces")
        result = atoms.copy()
        results = {"energy": energy, "forces": forces}
        if stress is not None:
            results["stress"] = stress
        result.calc = SinglePointCalculator(result, **results)
        yield result


def label(atoms_list: Iterable[Atoms], calculator: Calculator, compute_stress: bool = False,
          progress: bool = True, what: str = "label") -> list[Atoms]:
    """Label structures with ``calculator``: energy (eV), forces (eV/Å), stress (eV/Å³).

    Returns copies of the input (``info`` and per-atom arrays kept) whose results are
    stored in a ``SinglePointCalculator``, so ``ase.io.write(..., format="extxyz")``
    records them and ``ase.io.read`` gives them back. With ``compute_stress`` every
    structure must be periodic in all three directions (else :class:`DataError`).
    A calculator failure raises :class:`DataError` naming the frame. ``progress``: a
    progress bar on stderr (``biojax.core.progress``).
    """
    frames = list(atoms_list)
    out = []
    with progress_bar(len(frames), what, progress, unit="frame") as bar:
        for result in label_iter(frames, calculator, compute_stress, what):
            out.append(result)
            bar.update(len(out))
    return out


# --------------------------------------------------------------------------- label a file

PARTIAL_SUFFIX = ".partial"


def _complete_frames(path: str) -> tuple[int, int]:
    """(number of complete extxyz frames at the start of ``path``, their length in bytes):
    a frame cut short by a kill is not counted."""
    with open(path, "rb") as f:
        lines = f.read().split(b"\n")
    i = count = offset = pos = 0
    while i < len(lines) - 1:  # lines[-1] is what follows the last newline
        try:
            n = int(lines[i].strip())
        except ValueError:
            break
        if n < 0 or i + 2 + n > len(lines) - 1:
            break
        pos += sum(len(line) + 1 for line in lines[i:i + 2 + n])
        i, count, offset = i + 2 + n, count + 1, pos
    return count, offset


def _resume_partial(partial: str, frames: Sequence[Atoms], reference: str) -> int:
    """Frames already labelled in ``partial`` (a torn last frame is cut off), after
    checking that they are the first frames of the input, labelled by ``reference``."""
    import io

    import ase.io

    count, offset = _complete_frames(partial)
    done = []
    try:
        if count:
            with open(partial, "rb") as f:
                text = f.read(offset).decode()
            done = ase.io.read(io.StringIO(text), index=":", format="extxyz")
    except Exception as exc:
        raise DataError(f"{partial}: cannot be read to resume from ({type(exc).__name__}: "
                        f"{exc}); remove it to label from the start") from None
    if len(done) > len(frames):
        raise DataError(f"{partial}: holds {len(done)} frames but the input has only "
                        f"{len(frames)}; it belongs to another input")
    for i, (a, b) in enumerate(zip(done, frames)):
        if (len(a) != len(b) or np.any(a.numbers != b.numbers)
                or not np.allclose(a.positions, b.positions, atol=1e-5)):
            raise DataError(f"{partial}: frame {i} is not frame {i} of the input; it "
                            "belongs to another input (remove it to label from the start)")
        if a.info.get("reference", reference) != reference:
            raise DataError(f"{partial}: frames were labelled with reference "
                            f"{a.info['reference']!r}, not {reference!r}")
    with open(partial, "rb+") as f:  # checked: drop a frame cut short, it is redone
        f.truncate(offset)
    return len(done)


def label_file(frames: Sequence[Atoms], out: str | os.PathLike, calculator: Calculator,
               reference: str, compute_stress: bool = False, resume: bool = False,
               overwrite: bool = False, progress: bool = True) -> dict:
    """Label ``frames`` into the extxyz file ``out``, writing each frame as it is done.

    Frames are appended (and flushed) one by one to ``OUT.partial``, which is renamed to
    ``out`` when all are labelled; a failure or a kill loses no finished frame. A
    ``OUT.partial`` left by an interrupted run is continued with ``resume`` (its frames
    must be the first frames of ``frames``; a frame cut short is redone) and refused
    without it. ``out`` is checked before any work (existing file: only with
    ``overwrite``). Returns ``{"frames", "resumed_from", "out"}``.
    """
    import io

    import ase.io

    from biojax.data.io import check_output

    out = os.fspath(out)
    partial = out + PARTIAL_SUFFIX
    check_output(out, "output file", overwrite=overwrite)
    check_output(partial, "partial output file", overwrite=True)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    first = 0
    if os.path.exists(partial):
        if not resume:
            n, _ = _complete_frames(partial)
            raise ConfigError(f"{partial} holds {n} frames labelled by an interrupted run; "
                              "pass --resume to continue after them, or remove it to start "
                              "again")
        first = _resume_partial(partial, frames, reference)
    what = f"label {reference}"
    with open(partial, "a") as f, progress_bar(len(frames), what, progress, unit="frame") as bar:
        bar.update(first)
        done = first
        try:
            for result in label_iter(frames, calculator, compute_stress, what, first):
                result.info["reference"] = reference
                text = io.StringIO()
                ase.io.write(text, result, format="extxyz")
                f.write(text.getvalue())  # one write per frame
                f.flush()
                done += 1
                bar.update(done)
        except BiojaxError as exc:
            f.flush()
            raise type(exc)(f"{exc}; the {done} frames labelled before it are kept in "
                            f"{partial} (rerun with --resume to continue after them)") from None
        os.fsync(f.fileno())
    os.replace(partial, out)
    return {"frames": len(frames), "resumed_from": first, "out": out}
