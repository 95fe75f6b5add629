"""Reading and writing reference datasets; per-species reference energies; splits.

Every reader returns a list of ``Structure`` records in ASE units (Å, eV, eV/Å, eV/Å³).
Files in other units are converted when read and the reader says so on stderr.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
from typing import Iterable, Sequence

import numpy as np

from biojax.core.atomic import atomic_path
from biojax.core.errors import ConfigError, DataError
from biojax.core.units import KCAL_PER_MOL


@dataclasses.dataclass(frozen=True)
class Structure:
    """One labelled configuration. Arrays are float64 numpy; labels may be None."""

    numbers: np.ndarray  # (N,) atomic numbers
    positions: np.ndarray  # (N, 3) Å
    cell: np.ndarray  # (3, 3) Å, rows are lattice vectors
    pbc: np.ndarray  # (3,) bool
    energy: float | None = None  # eV
    forces: np.ndarray | None = None  # (N, 3) eV/Å
    stress: np.ndarray | None = None  # (3, 3) eV/Å³ (ASE sign: positive = tensile)
    labels: dict = dataclasses.field(default_factory=dict)  # extra per-structure labels
    atom_labels: dict = dataclasses.field(default_factory=dict)  # extra per-atom labels

    @property
    def n_atoms(self) -> int:
        return int(self.numbers.shape[0])

    @property
    def periodic(self) -> bool:
        return bool(np.any(self.pbc))

    @property
    def volume(self) -> float:
        return float(abs(np.linalg.det(self.cell))) if self.periodic else 0.0

    def to_atoms(self):
        """The ASE Atoms form, with labels attached as a SinglePointCalculator."""
        from ase import Atoms
        from ase.calculators.singlepoint import SinglePointCalculator

        atoms = Atoms(numbers=self.numbers, positions=self.positions, cell=self.cell,
                      pbc=self.pbc)
        results = {}
        if self.energy is not None:
            results["energy"] = self.energy
        if self.forces is not None:
            results["forces"] = self.forces
        if self.stress is not None:
            s = self.stress
            results["stress"] = np.array([s[0, 0], s[1, 1], s[2, 2], s[1, 2], s[0, 2], s[0, 1]])
        if results:
            atoms.calc = SinglePointCalculator(atoms, **results)
        return atoms


_ENERGY_KEYS = ("energy", "REF_energy", "Energy", "free_energy", "DFT_energy")
_FORCE_KEYS = ("forces", "REF_forces", "force", "DFT_forces")
_STRESS_KEYS = ("stress", "REF_stress", "virial_stress", "DFT_stress")


def _voigt_to_matrix(s) -> np.ndarray:
    s = np.asarray(s, dtype=np.float64).reshape(-1)
    if s.size == 9:
        return s.reshape(3, 3)
    if s.size == 6:
        xx, yy, zz, yz, xz, xy = s
        return np.array([[xx, xy, xz], [xy, yy, yz], [xz, yz, zz]])
    raise ValueError(f"stress must have 6 or 9 components, got {s.size}")


def structure_from_atoms(atoms, where: str = "structure") -> Structure:
    """Convert an ASE Atoms (labels from its calculator, info or arrays) to a Structure."""
    results = dict(getattr(atoms.calc, "results", {}) or {}) if atoms.calc is not None else {}
    energy = results.get("energy")
    forces = results.get("forces")
    stress = results.get("stress")
    for key in _ENERGY_KEYS:
        if energy is None and key in atoms.info:
            energy = atoms.info[key]
    for key in _FORCE_KEYS:
        if forces is None and key in atoms.arrays:
            forces = atoms.arrays[key]
    for key in _STRESS_KEYS:
        if stress is None and key in atoms.info:
            stress = atoms.info[key]
    positions = np.asarray(atoms.get_positions(), dtype=np.float64)
    if not np.all(np.isfinite(positions)):
        raise DataError(f"{where}: coordinates contain NaN or infinite values")
    try:
        energy = None if energy is None else float(energy)
        forces = None if forces is None else np.asarray(forces, dtype=np.float64).reshape(-1, 3)
        stress = None if stress is None else _voigt_to_matrix(stress)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{where}: malformed label: {exc}") from None
    if forces is not None and forces.shape[0] != len(atoms):
        raise DataError(f"{where}: {forces.shape[0]} force rows for {len(atoms)} atoms")
    check_finite_labels(where, energy, forces, stress)
    pbc = np.asarray(atoms.get_pbc(), dtype=bool)
    labels, atom_labels = _extra_labels(atoms)
    return Structure(
        numbers=np.asarray(atoms.get_atomic_numbers(), dtype=np.int64),
        positions=positions,
        cell=np.asarray(atoms.get_cell().array, dtype=np.float64),
        pbc=pbc,
        energy=energy,
        forces=forces,
        stress=stress if pbc.any() else None,
        labels=labels,
        atom_labels=atom_labels,
    )


def check_finite_labels(where: str, energy=None, forces=None, stress=None) -> None:
    """Raise DataError naming ``where`` (file and frame) if a label is NaN or infinite:
    such a frame would make training diverge with a misleading message."""
    if energy is not None and not np.isfinite(energy):
        raise DataError(f"{where}: energy label is {energy} (not finite); fix or remove "
                        "this frame")
    if forces is not None and not np.all(np.isfinite(forces)):
        atoms = np.flatnonzero(~np.all(np.isfinite(forces), axis=1))
        raise DataError(f"{where}: force label of atom(s) "
                        f"{', '.join(map(str, atoms[:10]))}{' ...' if atoms.size > 10 else ''} "
                        "is NaN or infinite; fix or remove this frame")
    if stress is not None and not np.all(np.isfinite(stress)):
        raise DataError(f"{where}: stress label is NaN or infinite; fix or remove this frame")


_NOT_LABELS = {"numbers", "positions", "momenta", "masses", "initial_charges",
               "initial_magmoms", "tags", "spacegroup_kinds", *_ENERGY_KEYS, *_FORCE_KEYS,
               *_STRESS_KEYS}


def _extra_labels(atoms) -> tuple[dict, dict]:
    """Numeric entries of ``atoms.info`` (per structure) and ``atoms.arrays`` (per atom)
    other than the standard ones: the labels user loss terms can train on."""
    def numeric(x):
        a = np.asarray(x)
        return a.dtype.kind in "fiu" and a.dtype != bool

    info = {k: np.asarray(v, np.float64) for k, v in atoms.info.items()
            if k not in _NOT_LABELS and not isinstance(v, (bool, str)) and numeric(v)}
    arrays = {k: np.asarray(v, np.float64) for k, v in atoms.arrays.items()
              if k not in _NOT_LABELS and numeric(v)}
    # ASE's extxyz reader moves known properties (dipole, charges, magmoms, ...) into
    # the calculator's results: they are labels too
    results = getattr(atoms.calc, "results", None) or {}
    for k, v in results.items():
        if k in _NOT_LABELS or isinstance(v, (bool, str)) or not numeric(v):
            continue
        v = np.asarray(v, np.float64)
        if v.ndim >= 1 and v.shape[0] == len(atoms) and k != "dipole":
            arrays.setdefault(k, v)
        else:
            info.setdefault(k, v)
    return info, arrays


_COMPRESSED = {".gz": "gzip", ".bz2": "bz2", ".xz": "lzma"}


def _read_compressed(path: str, index):
    """Frames of a .gz/.bz2/.xz file, decompressed into memory first (ASE seeks in the
    compressed stream, which restarts decompression for every frame: quadratic time);
    None for other files."""
    import importlib
    import io

    import ase.io
    from ase.io.formats import filetype

    stem, suffix = os.path.splitext(path)
    if suffix.lower() not in _COMPRESSED:
        return None
    with importlib.import_module(_COMPRESSED[suffix.lower()]).open(path, "rt") as f:
        text = io.StringIO(f.read())
    return ase.io.read(text, index=index, format=filetype(stem, read=False))


def read_frames(path: str | os.PathLike, index: str | int = ":") -> list:
    """ASE Atoms frames of any ASE-readable file; a missing, unreadable or empty file
    raises DataError naming it."""
    import ase.io

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise DataError(f"file not found: {path}")
    try:
        frames = _read_compressed(path, index) or ase.io.read(path, index=index)
    except Exception as exc:  # ASE raises many types on malformed input
        raise DataError(f"{path}: cannot be read as a structure file "
                        f"({type(exc).__name__}: {exc})") from None
    frames = frames if isinstance(frames, list) else [frames]
    if not frames:
        raise DataError(f"{path}: contains no structures")
    return frames


def read_dataset(path: str | os.PathLike, index: str = ":") -> list[Structure]:
    """Read labelled structures from any ASE-readable file or an sGDML/MD17 ``.npz``.

    ``.npz`` files hold R (Å), z, E and F in kcal/mol and kcal/mol/Å; they are converted
    to eV and eV/Å (and a note says so on stderr).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise DataError(f"data file not found: {path}")
    if path.endswith(".npz"):
        return _read_npz(path)
    frames = read_frames(path, index)
    return [structure_from_atoms(a, f"{path} frame {i}") for i, a in enumerate(frames)]


def _read_npz(path: str) -> list[Structure]:
    try:
        data = np.load(path)
        R, z = np.asarray(data["R"], np.float64), np.asarray(data["z"], np.int64)
    except KeyError as exc:
        raise DataError(f"{path}: missing array {exc} (sGDML/MD17 files have R, z, E, F)") from None
    except Exception as exc:
        raise DataError(f"{path}: cannot be read as .npz ({exc})") from None
    if R.ndim != 3 or R.shape[1:] != (z.shape[0], 3):
        raise DataError(f"{path}: R has shape {R.shape}, expected (frames, {z.shape[0]}, 3)")
    E = np.asarray(data["E"], np.float64).reshape(-1) * KCAL_PER_MOL if "E" in data else None
    F = np.asarray(data["F"], np.float64) * KCAL_PER_MOL if "F" in data else None
    if E is not None and E.shape[0] != R.shape[0]:
        raise DataError(f"{path}: E has {E.shape[0]} values for {R.shape[0]} frames of R")
    if F is not None and F.shape != R.shape:
        raise DataError(f"{path}: F has shape {F.shape}, expected R's shape {R.shape}")
    print(f"biojax: {path}: energies and forces converted from kcal/mol to eV "
          f"(1 kcal/mol = {KCAL_PER_MOL} eV)", file=sys.stderr)
    out = []
    for i in range(R.shape[0]):
        if not np.all(np.isfinite(R[i])):
            raise DataError(f"{path} frame {i}: coordinates contain NaN or infinite values")
        check_finite_labels(f"{path} frame {i}", None if E is None else E[i],
                            None if F is None else F[i])
        out.append(Structure(numbers=z, positions=R[i], cell=np.zeros((3, 3)),
                             pbc=np.zeros(3, bool),
                             energy=None if E is None else float(E[i]),
                             forces=None if F is None else F[i]))
    return out


@contextlib.contextmanager
def os_errors(command: str):
    """Turn an OSError (disk full, permission denied, a path that cannot be created) into
    a DataError naming the file, so the CLI reports it in one line."""
    try:
        yield
    except OSError as exc:
        where = exc.filename or "a file"
        raise DataError(f"{command}: cannot write or read {where}: "
                        f"{exc.strerror or exc}") from None


def check_output(path: str | os.PathLike, what: str = "output file", overwrite: bool = False,
                 flag: str = "--overwrite") -> None:
    """``biojax.core.rundir.check_output_file`` for a command with an ``--overwrite``
    flag: an existing file is refused with a message that names the flag."""
    from biojax.core.rundir import check_output_file

    path = os.fspath(path)
    if os.path.isfile(path) and not overwrite:
        raise ConfigError(f"{what} {path} already exists; pass {flag} to replace it, or "
                        "choose another name (biojax never overwrites results you did not "
                        "ask it to)")
    check_output_file(path, what, overwrite=overwrite)


def write_extxyz(structures: Iterable[Structure], path: str | os.PathLike) -> None:
    """Write structures (with their labels) to extended XYZ, atomically."""
    import ase.io

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with atomic_path(path) as tmp:
        ase.io.write(tmp, [s.to_atoms() for s in structures], format="extxyz")


def require_labels(structures: Sequence[Structure], path: str, energy: bool, forces: bool,
                   stress: bool, extra: Sequence[str] = (),
                   frame_numbers: Sequence[int] | None = None) -> None:
    """Raise DataError naming the first frame that lacks a label the loss weights
    (``extra``: names of further per-structure or per-atom labels). ``frame_numbers``:
    each structure's index in ``path`` (default: its position in ``structures``), so a
    frame of a shuffled split is reported where the user can find it."""
    numbers = range(len(structures)) if frame_numbers is None else frame_numbers
    for i, s in zip(numbers, structures):
        i = int(i)
        for name in extra:
            if name not in s.labels and name not in s.atom_labels:
                raise DataError(f"{path} frame {i}: no label {name!r} (a loss term reads it; "
                                f"labels found: {', '.join(sorted({**s.labels, **s.atom_labels})) or 'none'})")
            value = s.labels.get(name, s.atom_labels.get(name))
            if not np.all(np.isfinite(value)):
                raise DataError(f"{path} frame {i}: label {name!r} is NaN or infinite (a loss "
                                "term reads it); fix or remove this frame")
        if energy and s.energy is None:
            raise DataError(f"{path} frame {i}: no energy, but the energy loss weight is > 0")
        if forces and s.forces is None:
            raise DataError(f"{path} frame {i}: no forces, but the force loss weight is > 0 "
                            "(set forces_weight = 0 to train on energies only)")
        if stress and s.periodic and s.stress is None:
            raise DataError(f"{path} frame {i}: periodic frame without stress, but the "
                            "stress loss weight is > 0")


def elements_of(structures: Iterable[Structure]) -> tuple[int, ...]:
    """Sorted atomic numbers present in the structures."""
    return tuple(sorted({int(z) for s in structures for z in s.numbers}))


def read_isolated_atoms(path: str | os.PathLike) -> dict[int, float]:
    """Per-element reference energies (eV) from a file of single-atom labelled frames."""
    out = {}
    for i, s in enumerate(read_dataset(path)):
        if s.n_atoms != 1 or s.energy is None:
            raise DataError(f"{path} frame {i}: expected one atom with an energy")
        out[int(s.numbers[0])] = s.energy
    return out


def fit_reference_energies(structures: Sequence[Structure],
                           elements: Sequence[int]) -> np.ndarray:
    """Least-squares per-element energies (eV) so that E ≈ Σ_atoms e[element], over the
    structures that have an energy (zeros when none has: a forces-only dataset, e.g.
    coarse-grained force matching)."""
    structures = [s for s in structures if s.energy is not None]
    if not structures:
        return np.zeros(len(elements))
    counts = np.array([[np.sum(s.numbers == z) for z in elements] for s in structures], float)
    energies = np.array([s.energy for s in structures], float)
    solution, *_ = np.linalg.lstsq(counts, energies, rcond=None)
    return solution


def reference_energies_for(structures: Sequence[Structure], elements: Sequence[int],
                           isolated_atoms: str | None = None) -> np.ndarray:
    """Per-element reference energies: from an isolated-atoms file if given, else fitted."""
    if isolated_atoms is None:
        return fit_reference_energies(structures, elements)
    table = read_isolated_atoms(isolated_atoms)
    missing = [z for z in elements if z not in table]
    if missing:
        from ase.data import chemical_symbols
        raise DataError(f"{isolated_atoms}: no isolated-atom energy for "
                        f"{', '.join(chemical_symbols[z] for z in missing)}")
    return np.array([table[z] for z in elements], float)


def split_indices(n: int, n_valid: int | float, n_test: int | float = 0,
                  seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Random train/validation/test index split; sizes as counts or fractions of n."""
    def count(x):
        return int(round(x * n)) if isinstance(x, float) and x < 1 else int(x)

    n_valid, n_test = count(n_valid), count(n_test)
    if n_valid + n_test >= n:
        raise DataError(f"cannot hold out {n_valid} validation and {n_test} test frames "
                        f"from {n} frames")
    order = np.random.default_rng(seed).permutation(n)
    return order[n_valid + n_test:], order[:n_valid], order[n_valid:n_valid + n_test]
