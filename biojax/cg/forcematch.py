"""Reference frames for coarse-graining, prior fitting, and force matching through the
training loop.

Force matching (multiscale coarse-graining, Noid et al. 2008; CGnet, Wang et al. 2019)
fits the CG forces to the mapped fine-grained forces; their mean given the CG coordinates
is the mean force of the potential of mean force. The prior is fitted first (Boltzmann
inversion) and the learned part is trained by ``biojax.train`` on the residual forces,
mapped forces − prior forces, with a forces-only loss; validation and test frames are held
out, so the test force error is the held-out force loss.
"""

from __future__ import annotations

import dataclasses
import os

import ase.units
import numpy as np

from biojax.cg import mapping as cgmap
from biojax.cg.config import CoarseGrainConfig
from biojax.cg.prior import Prior, chain_topology, fit_prior, nonbonded_pairs
from biojax.core.errors import ConfigError, DataError

_FORCE_UNITS = {"eV/A": 1.0, "kcal/mol/A": ase.units.kcal / ase.units.mol,
                "kJ/mol/nm": ase.units.kJ / ase.units.mol / 10.0}


@dataclasses.dataclass(frozen=True)
class BeadData:
    """Mapped reference frames: ``positions`` (F, B, 3) Å, ``forces`` (F, B, 3) eV/Å or
    None, and the mapping (bead numbers, masses, names) that produced them."""

    positions: np.ndarray
    forces: np.ndarray | None
    mapping: cgmap.Mapping
    source: str
    cell: np.ndarray | None = None  # (3, 3) Å of a periodic system (first frame)


def _load_npy(path: str, what: str) -> np.ndarray:
    if not os.path.isfile(path):
        raise DataError(f"{path}: {what} file not found")
    try:
        x = np.load(path, allow_pickle=False)
    except Exception as exc:  # numpy raises ValueError/OSError/... on a bad file
        raise DataError(f"{path}: cannot read {what} as a .npy array ({exc})") from None
    if x.ndim != 3 or x.shape[-1] != 3:
        raise DataError(f"{path}: {what} must have shape (frames, sites, 3), got {x.shape}")
    if not np.all(np.isfinite(x)):
        bad = int(np.argwhere(~np.isfinite(x))[0, 0])
        raise DataError(f"{path}: {what} hold NaN or inf (first in frame {bad})")
    return np.asarray(x, np.float64)


def _topology_atoms(path: str):
    """Elements, masses and names of the sites: a PDB (openmm.app) or any ASE-readable
    structure (GROMACS .gro, extxyz, ...)."""
    from biojax.md.stage import load_structure

    atoms = load_structure(path)[0]
    if "residuenames" not in atoms.arrays:
        return atoms, [f"{a.symbol}{a.index}" for a in atoms]
    names = [f"{r}{n}:{a}" for r, n, a in zip(atoms.arrays["residuenames"],
                                               atoms.arrays["residuenumbers"],
                                               atoms.arrays["atomtypes"])]
    return atoms, names


def load_bead_data(config: CoarseGrainConfig) -> BeadData:
    """The reference frames of ``config`` mapped to beads (forces in eV/Å)."""
    d = config.data
    if not d.coordinates:
        raise ConfigError("[data] coordinates is required (a .npy array or a trajectory)")
    cell = None
    if d.coordinates.endswith(".npy"):
        positions = _load_npy(d.coordinates, "coordinates")
        forces = _load_npy(d.forces, "forces") if d.forces else None
    else:
        from biojax.data.io import read_frames

        frames = read_frames(d.coordinates)
        positions = np.stack([a.positions for a in frames])
        if frames[0].pbc.any():
            cell = np.asarray(frames[0].cell, np.float64)
        forces = None
        if d.forces:
            forces = _load_npy(d.forces, "forces")
        elif frames[0].calc is not None and "forces" in frames[0].calc.results:
            forces = np.stack([a.get_forces() for a in frames])
    if forces is not None:
        if forces.shape != positions.shape:
            raise DataError(f"{d.forces or d.coordinates}: forces have shape {forces.shape} "
                            f"but the coordinates {positions.shape}: frame and site counts "
                            "must agree")
        forces = forces * _FORCE_UNITS[d.force_unit]
    positions, forces = positions[::d.stride], None if forces is None else forces[::d.stride]
    if d.n_frames:
        positions = positions[:d.n_frames]
        forces = None if forces is None else forces[:d.n_frames]
    mapping = _mapping(config, positions.shape[1])
    if config.mapping.scheme != "none":
        positions = cgmap.map_positions(mapping, positions)
        forces = None if forces is None else cgmap.map_forces(mapping, forces)
    if cell is not None and config.mapping.scheme != "none":
        raise ConfigError("[mapping]: mapping a periodic system is not supported (molecules "
                          "cut by the box); map the frames first and give bead frames")
    return BeadData(positions, forces, mapping, d.coordinates, cell)


def _mapping(config: CoarseGrainConfig, n_sites: int) -> cgmap.Mapping:
    m, top = config.mapping, config.data.topology
    if not top:
        raise ConfigError("[data] topology (a PDB of the sites) is required: it names the "
                          "beads' elements and masses")
    if m.scheme in ("ca", "backbone", "water"):
        mapping = cgmap.from_topology(top, m.scheme, m.center)
    else:
        atoms, names = _topology_atoms(top)
        masses, numbers = atoms.get_masses(), atoms.get_atomic_numbers()
        if m.scheme == "none":
            groups = [(i,) for i in range(len(atoms))]
            mapping = cgmap.from_groups(groups, masses, numbers, names)
        else:
            if not m.groups:
                raise ConfigError("[mapping] scheme = 'groups' needs groups (atom indices "
                                  "per bead)")
            mapping = cgmap.from_groups(m.groups, masses, numbers, center=m.center,
                                        allow_unassigned=m.allow_unassigned,
                                        atom_names=names)
    if m.bead_masses:
        masses = (m.bead_masses * mapping.n_beads if len(m.bead_masses) == 1
                  else m.bead_masses)
        if len(masses) != mapping.n_beads:
            raise ConfigError(f"[mapping] bead_masses lists {len(m.bead_masses)} masses for "
                              f"{mapping.n_beads} beads (give one, or one per bead)")
        mapping = dataclasses.replace(mapping, bead_masses=tuple(float(x) for x in masses))
    if m.bead_types == "index":
        mapping = dataclasses.replace(mapping,
                                      bead_numbers=tuple(range(1, mapping.n_beads + 1)))
    if mapping.n_atoms != n_sites:
        raise DataError(f"{top}: the topology has {mapping.n_atoms} atoms but the frames in "
                        f"{config.data.coordinates} have {n_sites} sites")
    return mapping


def split(n_frames: int, config: CoarseGrainConfig):
    """Train / validation / test frame indices (seeded, as ``biojax train`` splits)."""
    from biojax.data.io import split_indices

    return split_indices(n_frames, config.data.n_valid, config.data.n_test, config.data.seed)


def prior_from_config(config: CoarseGrainConfig, positions: np.ndarray, kT: float) -> Prior:
    """The Prior ``[prior]`` asks for, fitted to bead frames (F, B, 3) Å at ``kT`` eV."""
    p, n_beads = config.prior, positions.shape[1]
    if p.topology == "none":
        return Prior()
    if p.topology == "chain":
        top = chain_topology(n_beads)
        bonds, angles = top["bonds"], top["angles"]
        dihedrals = top["dihedrals"] if p.dihedrals else np.zeros((0, 4), int)
    else:
        bonds = np.asarray(p.bonds, int).reshape(-1, 2)
        angles = np.asarray(p.angles, int).reshape(-1, 3)
        dihedrals = np.asarray(p.dihedral_list, int).reshape(-1, 4)
    pairs = nonbonded_pairs(n_beads, bonds, p.exclusion) if p.repulsion else ()
    return fit_prior(positions, kT, bonds, angles, dihedrals, pairs,
                     repulsion_percentile=p.repulsion_percentile,
                     dihedral_terms=p.dihedral_terms,
                     repulsion_max_sigma=p.repulsion_max_sigma)


def residual_structures(positions, forces, mapping: cgmap.Mapping, prior_forces):
    """biojax Structures of the beads labelled with the forces the learned part must fit
    (mapped − prior, eV/Å) and no energy."""
    from biojax.data.io import Structure

    numbers = np.asarray(mapping.bead_numbers)
    return [Structure(numbers, x, np.zeros((3, 3)), np.zeros(3, bool), None, f - fp)
            for x, f, fp in zip(positions, forces, prior_forces)]
