"""Mappings from atoms to coarse-grained beads.

A :class:`Mapping` is a linear operator: bead ``b`` sits at ``Σ_i M[b, i] r_i`` with the
weights of its group (centre of mass or of geometry; each row sums to 1). Forces map by
summing over each group (``F_b = Σ_{i in group b} f_i``), the aggregation that makes
force matching converge to the potential of mean force for non-overlapping groups (Noid
et al., J. Chem. Phys. 128, 244114, 2008). Atoms outside every group are dropped
(a slice mapping, e.g. Cα per residue), which builders must ask for explicitly.

Beads are atoms to the rest of biojax: each has an atomic number (``bead_numbers``, the
element of its central atom unless given) that models use as its species, a mass (the
group's total mass) and a name.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Sequence

import numpy as np

from biojax.core.errors import ConfigError, DataError


@dataclasses.dataclass(frozen=True)
class Mapping:
    """Atoms → beads. ``matrix`` (B, N) weights; ``groups`` the atom indices of each bead."""

    matrix: np.ndarray
    groups: tuple[tuple[int, ...], ...]
    bead_names: tuple[str, ...]
    bead_numbers: tuple[int, ...]
    bead_masses: tuple[float, ...]  # amu

    @property
    def n_beads(self) -> int:
        return int(self.matrix.shape[0])

    @property
    def n_atoms(self) -> int:
        return int(self.matrix.shape[1])

    def to_dict(self) -> dict:
        """A JSON-ready description (weights are rebuilt from groups and weights)."""
        return {"n_atoms": self.n_atoms, "groups": [list(g) for g in self.groups],
                "weights": [[float(self.matrix[b, i]) for i in g]
                            for b, g in enumerate(self.groups)],
                "bead_names": list(self.bead_names), "bead_numbers": list(self.bead_numbers),
                "bead_masses": list(self.bead_masses)}

    @classmethod
    def from_dict(cls, d: dict) -> "Mapping":
        matrix = np.zeros((len(d["groups"]), int(d["n_atoms"])))
        for b, (g, w) in enumerate(zip(d["groups"], d["weights"])):
            matrix[b, list(g)] = w
        return cls(matrix, tuple(tuple(int(i) for i in g) for g in d["groups"]),
                   tuple(d["bead_names"]), tuple(int(z) for z in d["bead_numbers"]),
                   tuple(float(m) for m in d["bead_masses"]))


def from_groups(groups: Sequence[Sequence[int]], masses: Sequence[float],
                numbers: Sequence[int] | None = None, names: Sequence[str] | None = None,
                center: str = "mass", bead_numbers: Sequence[int] | None = None,
                allow_unassigned: bool = False, atom_names: Sequence[str] | None = None
                ) -> Mapping:
    """A mapping from atom-index groups (one per bead) of a system of ``len(masses)`` atoms.

    ``center``: "mass" (weights m_i / M) or "geometry" (1 / n). ``numbers``: the atoms'
    atomic numbers; a bead's number is that of its heaviest atom unless ``bead_numbers``
    is given. Groups must not overlap or name atoms outside the system; atoms in no group
    are an error unless ``allow_unassigned`` (a slice mapping). ``atom_names`` only make
    error messages clearer.
    """
    masses = np.asarray(masses, dtype=np.float64)
    n_atoms = masses.shape[0]
    label = (lambda i: f"{i} ({atom_names[i]})") if atom_names is not None else str
    if center not in ("mass", "geometry"):
        raise ConfigError(f"mapping center must be 'mass' or 'geometry', got {center!r}")
    if not groups:
        raise ConfigError("the mapping has no beads")
    owner: dict[int, int] = {}
    clean = []
    for b, g in enumerate(groups):
        g = [int(i) for i in g]
        if not g:
            raise ConfigError(f"bead {b} of the mapping has no atoms")
        bad = [i for i in g if not 0 <= i < n_atoms]
        if bad:
            raise ConfigError(f"bead {b} of the mapping names atom(s) {bad} that do not exist "
                              f"(the system has {n_atoms} atoms, indices 0..{n_atoms - 1})")
        for i in g:
            if i in owner:
                raise ConfigError(f"atom {label(i)} is in bead {owner[i]} and bead {b}; "
                                  "mapping groups must not overlap")
            owner[i] = b
        clean.append(tuple(g))
    unassigned = [i for i in range(n_atoms) if i not in owner]
    if unassigned and not allow_unassigned:
        shown = ", ".join(label(i) for i in unassigned[:8])
        raise ConfigError(f"the mapping leaves {len(unassigned)} atom(s) unassigned "
                          f"({shown}{' ...' if len(unassigned) > 8 else ''}); put them in a "
                          "bead or allow a slice mapping (allow_unassigned = true)")
    matrix = np.zeros((len(clean), n_atoms))
    for b, g in enumerate(clean):
        w = masses[list(g)] if center == "mass" else np.ones(len(g))
        if w.sum() <= 0:
            raise ConfigError(f"bead {b}: its atoms have zero total mass")
        matrix[b, list(g)] = w / w.sum()
    if bead_numbers is None:
        if numbers is None:
            raise ConfigError("give the atoms' atomic numbers or the beads' bead_numbers")
        numbers = np.asarray(numbers)
        bead_numbers = [int(numbers[list(g)][np.argmax(masses[list(g)])]) for g in clean]
    if len(bead_numbers) != len(clean):
        raise ConfigError(f"bead_numbers lists {len(bead_numbers)} values for "
                          f"{len(clean)} beads")
    names = tuple(names) if names is not None else tuple(f"B{b}" for b in range(len(clean)))
    if len(names) != len(clean):
        raise ConfigError(f"the mapping names {len(names)} beads but has {len(clean)}")
    return Mapping(matrix, tuple(clean), names, tuple(int(z) for z in bead_numbers),
                   tuple(float(masses[list(g)].sum()) for g in clean))


def map_positions(mapping: Mapping, positions) -> np.ndarray:
    """Bead positions (..., B, 3) Å from atom positions (..., N, 3) Å."""
    positions = _check_atoms_axis(mapping, positions, "positions")
    return np.einsum("bn,...nk->...bk", mapping.matrix, positions)


def map_forces(mapping: Mapping, forces) -> np.ndarray:
    """Bead forces (..., B, 3) from atom forces (..., N, 3): the sum over each group (same
    units as the input)."""
    forces = _check_atoms_axis(mapping, forces, "forces")
    indicator = (mapping.matrix > 0).astype(forces.dtype)
    return np.einsum("bn,...nk->...bk", indicator, forces)


def _check_atoms_axis(mapping: Mapping, x, what: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim < 2 or x.shape[-2:] != (mapping.n_atoms, 3):
        raise DataError(f"{what} have shape {x.shape}; the mapping expects (..., "
                        f"{mapping.n_atoms}, 3)")
    return x


# ---------------------------------------------------------------------- topology builders
_BACKBONE = ("N", "CA", "C")
_WATER = ("HOH", "WAT", "SOL", "TIP3", "TIP4", "SPC")


def from_topology(path: str | os.PathLike, scheme: str = "ca", center: str = "mass"
                  ) -> Mapping:
    """A mapping of the structure in a PDB file (read with ``openmm.app.PDBFile``).

    ``scheme``: "ca" (one bead per residue at its Cα, moving with the residue's mass),
    "backbone" (beads at N, CA, C of each residue) or "water" (one bead per water
    molecule, at its centre of ``center``; every non-water atom is then an error). Slice
    schemes drop the other atoms.
    """
    from openmm.app import PDBFile

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise DataError(f"{path}: topology file not found")
    try:
        pdb = PDBFile(path)
    except Exception as exc:  # openmm raises plain Exceptions on malformed files
        raise DataError(f"{path}: cannot read as PDB ({exc})") from None
    atoms = list(pdb.topology.atoms())
    masses = [a.element.mass._value if a.element is not None else 0.0 for a in atoms]
    numbers = [a.element.atomic_number if a.element is not None else 0 for a in atoms]
    atom_names = [f"{a.residue.name}{a.residue.id}:{a.name}" for a in atoms]
    groups, names = [], []
    if scheme in ("ca", "backbone"):
        wanted = ("CA",) if scheme == "ca" else _BACKBONE
        for res in pdb.topology.residues():
            if res.name in _WATER:
                continue
            found = {a.name: a.index for a in res.atoms()}
            for name in wanted:
                if name in found:
                    groups.append((found[name],))
                    names.append(f"{res.name}{res.id}:{name}")
        if not groups:
            raise DataError(f"{path}: no {'/'.join(wanted)} atoms found for the "
                            f"{scheme!r} mapping")
        mapping = from_groups(groups, masses, numbers, names, center,
                              allow_unassigned=True, atom_names=atom_names)
        if scheme == "ca":  # a Cα bead moves with its residue's mass
            residue_mass = [sum(masses[a.index] for a in res.atoms())
                            for res in pdb.topology.residues() if res.name not in _WATER
                            and any(a.name == "CA" for a in res.atoms())]
            mapping = dataclasses.replace(mapping, bead_masses=tuple(residue_mass))
        return mapping
    if scheme == "water":
        for res in pdb.topology.residues():
            if res.name not in _WATER:
                raise DataError(f"{path}: residue {res.name}{res.id} is not water; the "
                                "'water' mapping takes a water-only system")
            groups.append(tuple(a.index for a in res.atoms()))
            names.append(f"{res.name}{res.id}")
        return from_groups(groups, masses, numbers, names, center, atom_names=atom_names)
    raise ConfigError(f"unknown mapping scheme {scheme!r}; known: 'ca', 'backbone', 'water'")


def to_atoms(mapping: Mapping, positions, cell=None, pbc=False):
    """ASE Atoms of the beads at ``positions`` (B, 3) Å, with the beads' masses."""
    import ase

    atoms = ase.Atoms(numbers=list(mapping.bead_numbers), positions=np.asarray(positions),
                      cell=cell, pbc=pbc)
    atoms.set_masses(list(mapping.bead_masses))
    return atoms
