"""Trajectory and topology readers for analysis.

Positions are returned as float32 arrays of shape (n_frames, n_atoms, 3) in Å. Readers:
ASE-readable files (extxyz, .traj, multi-model PDB, ...), ``.npy``/``.npz`` coordinate arrays
(assumed to be in Å), and DCD/XTC through mdtraj (nm, converted to Å on read).
Topologies (atom names, elements, residue names and numbers) come from a PDB file via
``openmm.app`` or from any ASE-readable structure.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Sequence

import numpy as np

from biojax.data.io import read_frames
from biojax.core.errors import AnalysisError, DataError
from biojax.core.units import NM

_MDTRAJ_SUFFIXES = (".dcd", ".xtc", ".trr", ".nc", ".h5")


@dataclasses.dataclass(frozen=True)
class Topology:
    """Per-atom labels: ``names`` (PDB atom names), ``elements`` (symbols),
    ``resnames``, ``resids`` (residue sequence numbers) and ``chains`` (chain index)."""

    names: tuple[str, ...]
    elements: tuple[str, ...]
    resnames: tuple[str, ...]
    resids: tuple[int, ...]
    chains: tuple[int, ...]
    source: str = "<memory>"

    @property
    def n_atoms(self) -> int:
        return len(self.names)

    @staticmethod
    def from_symbols(symbols: Sequence[str], source: str = "<memory>") -> "Topology":
        """A topology that only knows elements (names = symbols, one residue)."""
        n = len(symbols)
        return Topology(tuple(symbols), tuple(symbols), ("UNK",) * n, (1,) * n, (0,) * n,
                        source)


@dataclasses.dataclass(frozen=True)
class Trajectory:
    """Positions (n_frames, n_atoms, 3) float32 in Å, with an optional topology."""

    positions: np.ndarray
    topology: Topology | None = None
    source: str = "<memory>"

    @property
    def n_frames(self) -> int:
        return int(self.positions.shape[0])

    @property
    def n_atoms(self) -> int:
        return int(self.positions.shape[1])


def read_topology(path: str | os.PathLike) -> Topology:
    """Read atom/residue labels from a PDB (via ``openmm.app``) or any ASE-readable file."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise DataError(f"topology file not found: {path}")
    if path.lower().endswith((".pdb", ".ent")):
        try:
            from openmm import app
            top = app.PDBFile(path).topology
        except Exception as exc:  # noqa: BLE001 - any parse failure is a data error
            raise DataError(f"{path}: cannot read PDB topology: {exc}") from None
        names, elements, resnames, resids, chains = [], [], [], [], []
        for atom in top.atoms():
            res = atom.residue
            names.append(atom.name)
            elements.append(atom.element.symbol if atom.element is not None else "X")
            resnames.append(res.name)
            resids.append(int(res.id) if str(res.id).lstrip("-").isdigit() else res.index)
            chains.append(res.chain.index)
        return Topology(tuple(names), tuple(elements), tuple(resnames), tuple(resids),
                        tuple(chains), path)
    atoms = _ase_read(path, index=0)
    return Topology.from_symbols(atoms.get_chemical_symbols(), path)


def _ase_read(path: str, index):
    frames = read_frames(path, index)
    return frames if index == ":" else frames[0]


def read_positions(path: str | os.PathLike, topology: str | None = None) -> np.ndarray:
    """Read all frames of ``path`` as float32 (n_frames, n_atoms, 3) positions in Å."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise DataError(f"trajectory file not found: {path}")
    low = path.lower()
    if low.endswith(".npy"):
        arr = np.load(path, mmap_mode="r")
    elif low.endswith(".npz"):
        with np.load(path) as z:
            keys = [k for k in ("positions", "coordinates", "xyz") if k in z]
            if not keys and len(z.files) != 1:
                raise DataError(f"{path}: expected an array named 'positions', "
                                f"'coordinates' or 'xyz', found {z.files}")
            arr = z[keys[0] if keys else z.files[0]]
    elif low.endswith(_MDTRAJ_SUFFIXES):
        if topology is None:
            raise DataError(f"{path}: reading {os.path.splitext(path)[1]} needs a topology "
                            "(a PDB: set trajectory.topology, or put topology.pdb beside it "
                            "as biojax simulate does)")
        import mdtraj
        arr = mdtraj.load(path, top=topology).xyz * NM  # nm -> Å
    else:
        frames = _ase_read(path, index=":")
        if not frames:
            raise DataError(f"{path}: no frames")
        n = {len(a) for a in frames}
        if len(n) != 1:
            raise DataError(f"{path}: frames have different atom counts {sorted(n)}")
        arr = np.stack([a.get_positions() for a in frames])
    arr = np.asarray(arr, dtype=np.float32)
    if arr.ndim == 2 and arr.shape[1] == 3:
        arr = arr[None]
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise DataError(f"{path}: expected positions of shape (n_frames, n_atoms, 3), "
                        f"got {arr.shape}")
    check_finite_positions(arr, path)
    return arr


def check_finite_positions(positions: np.ndarray, source: str, chunk: int = 4096) -> None:
    """Raise AnalysisError naming ``source``, the first frame (counting from 0 in the
    file) and its atoms whose coordinates are NaN or infinite: such a frame would
    otherwise surface much later as a misleading clustering or silhouette error."""
    for start in range(0, positions.shape[0], chunk):  # chunks: memory-mapped files stay lazy
        good = np.isfinite(np.asarray(positions[start:start + chunk])).all(axis=2)
        bad_frames = np.flatnonzero(~good.all(axis=1))
        if bad_frames.size:
            i = int(bad_frames[0])
            atoms = np.flatnonzero(~good[i])
            n_bad = int(bad_frames.size) + sum(
                int((~np.isfinite(np.asarray(positions[s:s + chunk])).all(axis=(1, 2))).sum())
                for s in range(start + chunk, positions.shape[0], chunk))
            shown = ", ".join(map(str, atoms[:10])) + (" ..." if atoms.size > 10 else "")
            raise AnalysisError(
                f"{source} frame {start + i}: coordinates of atom(s) {shown} are NaN or "
                f"infinite ({n_bad} such frame(s) in the file; frames count from 0); the "
                f"simulation that wrote it probably became unstable: analyse the frames "
                f"before it (e.g. truncate the file) or fix the run")


def load_trajectory(path: str | os.PathLike, topology: str | os.PathLike | None = None,
                    stride: int = 1) -> Trajectory:
    """Read a trajectory (Å) and optional topology file, checking their atom counts agree.

    A DCD/XTC file without a topology uses the ``topology.pdb`` beside it, which
    ``biojax simulate`` writes with those formats."""
    if stride < 1:
        raise DataError(f"{path}: stride must be >= 1, got {stride}")
    if topology is None and os.fspath(path).lower().endswith(_MDTRAJ_SUFFIXES):
        beside = os.path.join(os.path.dirname(os.fspath(path)), "topology.pdb")
        topology = beside if os.path.isfile(beside) else None
    top = read_topology(topology) if topology is not None else None
    pos = read_positions(path, None if topology is None else os.fspath(topology))[::stride]
    if top is not None and top.n_atoms != pos.shape[1]:
        raise DataError(
            f"trajectory {os.fspath(path)} has {pos.shape[1]} atoms per frame but topology "
            f"{os.fspath(topology)} has {top.n_atoms} atoms; they must describe the same "
            f"system")
    if top is None and not os.fspath(path).lower().endswith((".npy", ".npz")):
        top = _ase_topology(os.fspath(path), pos.shape[1])
    return Trajectory(np.ascontiguousarray(pos), top, os.fspath(path))


def _ase_topology(path: str, n_atoms: int) -> Topology | None:
    if path.lower().endswith((".pdb", ".ent")):
        return read_topology(path)
    try:
        atoms = _ase_read(path, index=0)
    except DataError:
        return None
    if len(atoms) != n_atoms:
        return None
    return Topology.from_symbols(atoms.get_chemical_symbols(), path)
