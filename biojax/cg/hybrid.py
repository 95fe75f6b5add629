"""Hybrid systems: a fine-grained (atomistic) region inside a coarse-grained environment.

A hybrid system is simulated as ONE particle array ``P = [region atoms (n_r) | environment
beads (n_env)]`` held in an ``ase.Atoms`` (the "hybrid atoms", explicit masses; atoms carry
their atomic numbers, beads the CG model's bead numbers — the two sets may share numbers,
each sub-model only ever sees its own particles). Its energy is the subtractive
(ONIOM-style) form of issue #11 (eV)::

    E(P) = E_FG(x) + E_CG(B_all) − E_CG(B_reg) + E_c(x, y)

with ``x = P[:n_r]`` the region atoms (Å), ``y = P[n_r:]`` the environment beads,
``B_reg = M·x`` the region's own beads (a :class:`~biojax.cg.mapping.Mapping` of the region
atoms, possibly empty — alanine dipeptide fully atomistic in CG water has none) and
``B_all = [B_reg | y]``:

- ``E_FG``: any biojax :class:`~biojax.nn.potential.Potential` (trained or classical) on
  the region atoms, through a dense all-pairs graph (the region is small);
- ``E_CG``: a :class:`~biojax.cg.potential.CGPotential` (learned part + prior) on beads.
  Environment–environment edges come from the MD neighbor list, region-bead edges are
  dense; for pair models the subtraction removes exactly the region-internal terms, for
  many-body ones it is the ONIOM subtraction. Prior terms wholly inside the region beads
  cancel and are left out;
- ``E_c``: :class:`CouplingModel`, a cubic-spline pair energy per (region element, bead
  number) on region-atom–bead pairs within its cutoff (from the neighbor list) plus a
  fixed, force-shifted repulsion ``ε (σ_Z / r)^n``; linear in its knot energies and
  learned by force matching (:func:`fit_coupling`).

Forces are ``−∇_P E`` by autodiff, through the mapping for region atoms.
:class:`HybridPotential` duck-types a Potential, so :class:`biojax.md.Simulation` runs a
hybrid system unchanged (NVE/NVT, replicas, checkpoints and resume, blow-up checks); its
trajectory frames hold the hybrid particles (region atoms, then beads). Positions must be
Cartesian: free space or a fixed orthorhombic box (no NPT, no triclinic cells).

Building from an atomistic structure: :func:`select_region` (atom indices, residues, or
residues within a distance of a site), :func:`check_region` (a region that cuts a covalent
bond is an error unless a capping rule extends it), :func:`build_hybrid` (region kept,
everything else mapped to beads), :func:`map_reference` (reference frames of the full
system to hybrid positions and target forces). ``[multiscale]`` in the simulate config
(:class:`biojax.md.config.MultiscaleConfig`) does all of it from ``biojax simulate``.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Callable, Sequence

import numpy as np

from biojax.cg.mapping import Mapping, from_groups
from biojax.core.errors import ConfigError, DataError, ModelError
from biojax.core.units import COULOMB

COUPLING_FORMAT = "biojax-hybrid-coupling"
COUPLING_VERSION = 2          # 2: optional solvent screening of the region's Coulomb pairs
_WATER = ("HOH", "WAT", "SOL", "TIP3", "TIP4", "SPC", "H2O")


def _symbol(z: int) -> str:
    from ase.data import chemical_symbols

    return chemical_symbols[z] if 0 < z < len(chemical_symbols) else str(z)


# ====================================================================== region selection
@dataclasses.dataclass(frozen=True)
class RegionSpec:
    """Which atoms form the fine-grained region (fixed for the run).

    ``atoms``: atom indices (0-based); ``residues``: residue numbers (int) or names (str);
    their union is the region. With ``within`` (Å) the region is instead every residue
    (every molecule when the structure has no residue information) having an atom within
    ``within`` of a site atom; the site is ``site_atoms`` ∪ the atoms of ``site_residues``.
    """

    atoms: tuple[int, ...] = ()
    residues: tuple[int | str, ...] = ()
    within: float | None = None
    site_atoms: tuple[int, ...] = ()
    site_residues: tuple[int | str, ...] = ()


def _residue_ids(atoms) -> tuple[np.ndarray, np.ndarray] | None:
    if "residuenumbers" not in atoms.arrays:
        return None
    nums = np.asarray(atoms.arrays["residuenumbers"]).astype(int)
    names = (np.asarray(atoms.arrays["residuenames"]).astype(str)
             if "residuenames" in atoms.arrays else np.array([""] * len(atoms)))
    return nums, np.char.strip(names)


def _residue_key(atoms) -> np.ndarray:
    """One integer label per atom: its residue (number + name change = new residue)."""
    ids = _residue_ids(atoms)
    if ids is None:
        raise ConfigError("the structure has no residue information (residue numbers and "
                          "names, as a PDB gives them); select the region by atom indices")
    nums, names = ids
    key = np.zeros(len(atoms), int)
    for i in range(1, len(atoms)):
        key[i] = key[i - 1] + int(nums[i] != nums[i - 1] or names[i] != names[i - 1])
    return key


def _residue_atoms(atoms, residues: Sequence[int | str], what: str) -> np.ndarray:
    ids = _residue_ids(atoms)
    if ids is None:
        raise ConfigError(f"{what}: the structure has no residue information (residue "
                          "numbers and names, as a PDB gives them); select by atom indices")
    nums, names = ids
    mask = np.zeros(len(atoms), bool)
    for r in residues:
        hit = (names == r.strip()) if isinstance(r, str) else (nums == int(r))
        if not hit.any():
            known = sorted({f"{n}{k}" for n, k in zip(names, nums)})[:12]
            raise ConfigError(f"{what}: residue {r!r} matches no atom of the structure "
                              f"(residues include {', '.join(known)} ...)")
        mask |= hit
    return np.flatnonzero(mask)


def molecules(atoms) -> np.ndarray:
    """Molecule label per atom: connected components of the covalent bonds
    (:func:`biojax.md.system.covalent_bonds`, minimum image in periodic cells)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    from biojax.md.system import covalent_bonds

    bonds, _ = covalent_bonds(atoms)
    n = len(atoms)
    graph = coo_matrix((np.ones(len(bonds)), (bonds[:, 0], bonds[:, 1])), shape=(n, n))
    return connected_components(graph, directed=False)[1]


def select_region(atoms, spec: RegionSpec | dict | Sequence[int]) -> np.ndarray:
    """Sorted atom indices of the region ``spec`` selects in ``atoms`` (see
    :class:`RegionSpec`; a plain list is atom indices). A selection matching no atom, an
    index out of range or an unknown residue is a ConfigError naming it."""
    if isinstance(spec, dict):
        unknown = set(spec) - {f.name for f in dataclasses.fields(RegionSpec)}
        if unknown:
            raise ConfigError(f"region selection: unknown key(s) {sorted(unknown)}")
        spec = RegionSpec(**{k: (tuple(v) if isinstance(v, (list, tuple)) else v)
                             for k, v in spec.items()})
    elif not isinstance(spec, RegionSpec):
        spec = RegionSpec(atoms=tuple(int(i) for i in spec))
    n = len(atoms)

    def check_indices(idx, what):
        bad = [int(i) for i in idx if not 0 <= int(i) < n]
        if bad:
            raise ConfigError(f"{what}: atom index(es) {bad[:8]} out of range (the structure "
                              f"has {n} atoms, 0..{n - 1})")
        return np.asarray(idx, int)

    if spec.within is not None:
        if spec.within <= 0:
            raise ConfigError(f"region selection: within must be > 0 Å, got {spec.within}")
        site = list(check_indices(spec.site_atoms, "region site_atoms"))
        if spec.site_residues:
            site += list(_residue_atoms(atoms, spec.site_residues, "region site_residues"))
        if not site:
            raise ConfigError("region selection: 'within' needs a site (site_atoms or "
                              "site_residues)")
        from ase.geometry import get_distances

        _, d = get_distances(atoms.positions[sorted(set(site))], atoms.positions,
                             cell=atoms.cell, pbc=atoms.pbc)
        near = np.min(d, axis=0) <= spec.within
        label = _residue_key(atoms) if "residuenumbers" in atoms.arrays else molecules(atoms)
        chosen = np.isin(label, np.unique(label[near]))
        region = np.flatnonzero(chosen)
    else:
        region = set(check_indices(spec.atoms, "region atoms").tolist())
        if spec.residues:
            region |= set(_residue_atoms(atoms, spec.residues, "region residues").tolist())
        region = np.array(sorted(region), int)
    if len(region) == 0:
        raise ConfigError(f"region selection {dataclasses.asdict(spec)} matches no atom of "
                          f"the structure ({n} atoms)")
    if len(region) == n:
        raise ConfigError(f"region selection {dataclasses.asdict(spec)} selects all {n} "
                          "atoms: nothing is left for the coarse-grained environment")
    return region


def _atom_label(atoms, i: int) -> str:
    label = f"{i} ({atoms[i].symbol}"
    ids = _residue_ids(atoms)
    if ids is not None:
        name = (f":{atoms.arrays['atomtypes'][i]}" if "atomtypes" in atoms.arrays else "")
        label += f", {ids[1][i]}{ids[0][i]}{name}"
    return label + ")"


def check_region(atoms, region: Sequence[int], capping: str = "none") -> np.ndarray:
    """The region after the capping rule, checked for cut covalent bonds.

    ``capping``: "none" (a covalent bond between a region atom and an environment atom
    is a ConfigError naming it), "residues" (the region is extended to whole residues;
    bonds *between* residues may then be cut: the CG model's terms between the region's
    beads and the environment's carry them, so use it with region beads), or
    "molecules" (extended to whole molecules; nothing is cut). Returns sorted indices."""
    region = np.asarray(sorted(set(int(i) for i in region)), int)
    if capping not in ("none", "residues", "molecules"):
        raise ConfigError(f"capping must be 'none', 'residues' or 'molecules', got "
                          f"{capping!r}")
    if capping == "residues":
        key = _residue_key(atoms)
        region = np.flatnonzero(np.isin(key, np.unique(key[region])))
    elif capping == "molecules":
        mol = molecules(atoms)
        region = np.flatnonzero(np.isin(mol, np.unique(mol[region])))
    if len(region) == len(atoms):
        raise ConfigError(f"capping = {capping!r} extends the region to all {len(atoms)} "
                          "atoms: nothing is left for the coarse-grained environment")
    if capping == "none":
        from biojax.md.system import covalent_bonds

        bonds, _ = covalent_bonds(atoms)
        inside = np.zeros(len(atoms), bool)
        inside[region] = True
        cut = bonds[inside[bonds[:, 0]] != inside[bonds[:, 1]]]
        if len(cut):
            i, j = (int(k) for k in cut[0])
            raise ConfigError(
                f"the region cuts {len(cut)} covalent bond(s), e.g. between atoms "
                f"{_atom_label(atoms, i)} and {_atom_label(atoms, j)}; select whole "
                "molecules or give a capping rule (capping = 'residues' or 'molecules')")
    return region


# ====================================================================== building
@dataclasses.dataclass(frozen=True)
class HybridSystem:
    """The layout of a hybrid particle array (see module).

    ``region_numbers``: atomic numbers of the n_r region atoms; ``bead_numbers``: numbers
    of the n_env environment beads; ``region_mapping``: the region atoms (local indices
    0..n_r−1) → region beads, or None (no region beads); ``region_indices`` and
    ``env_mapping`` (groups of atom indices of the atomistic structure, one per
    environment bead) say where the particles came from, when built from one;
    ``bead_masses`` (amu) are the beads' masses.

    Built by :func:`build_hybrid` from an atomistic structure, or directly from
    already-mapped data, e.g. alanine dipeptide in one-bead water::

        system = HybridSystem(region_numbers=tuple(numbers), bead_numbers=(8,) * W,
                              bead_masses=(18.015,) * W)
        atoms = hybrid_atoms(system, np.concatenate([solute_xyz, water_com]), cell=box)
    """

    region_numbers: tuple[int, ...]
    bead_numbers: tuple[int, ...]
    region_mapping: Mapping | None = None
    region_indices: tuple[int, ...] = ()
    env_mapping: Mapping | None = None
    n_full_atoms: int = 0
    bead_masses: tuple[float, ...] = ()   # amu, one per environment bead (for hybrid_atoms)

    @property
    def n_region(self) -> int:
        return len(self.region_numbers)

    @property
    def n_env(self) -> int:
        return len(self.bead_numbers)

    @property
    def n_particles(self) -> int:
        return self.n_region + self.n_env

    @property
    def n_region_beads(self) -> int:
        return 0 if self.region_mapping is None else self.region_mapping.n_beads

    @property
    def numbers(self) -> np.ndarray:
        return np.asarray(self.region_numbers + self.bead_numbers, int)

    @property
    def region_bead_numbers(self) -> tuple[int, ...]:
        return () if self.region_mapping is None else tuple(self.region_mapping.bead_numbers)

    def describe(self) -> dict:
        """JSON-ready summary (part of the model identity of a run)."""
        return {"region_numbers": list(self.region_numbers),
                "bead_numbers": list(self.bead_numbers),
                "region_mapping": (None if self.region_mapping is None
                                   else self.region_mapping.to_dict())}


def _group_positions(positions: np.ndarray, groups, matrix: np.ndarray, cell, pbc
                     ) -> np.ndarray:
    """Weighted centres (B, 3) Å of ``groups`` of ``positions`` (..., N, 3), each group
    unwrapped around its first atom by the minimum image in a periodic cell."""
    positions = np.asarray(positions, np.float64)
    out = np.zeros(positions.shape[:-2] + (len(groups), 3))
    periodic = pbc is not None and np.all(pbc)
    inv = np.linalg.inv(np.asarray(cell, np.float64)) if periodic else None
    for b, g in enumerate(groups):
        g = list(g)
        x = positions[..., g, :]
        d = x - x[..., :1, :]
        if periodic:
            frac = d @ inv
            d = (frac - np.round(frac)) @ np.asarray(cell, np.float64)
        out[..., b, :] = x[..., 0, :] + np.einsum("n,...nk->...k", matrix[b, g], d)
    return out


def environment_mapping(atoms, region: Sequence[int], scheme: str = "water",
                        center: str = "mass", bead_number: int | None = None,
                        atom_subset: Sequence[int] | None = None) -> Mapping:
    """A mapping of the atoms outside ``region`` (or of ``atom_subset``) to beads over the
    whole structure's atom indices. ``scheme``: "water" (one bead per water molecule,
    found as covalently bonded O + 2 H; any other molecule is an error), "molecule" (one
    bead per molecule) or "residue" (one bead per residue; needs residue information).
    Beads sit at the centre of ``center`` ("mass" or "geometry") of their atoms; their
    number is ``bead_number`` or their heaviest atom's atomic number, their mass the
    group's."""
    n = len(atoms)
    if atom_subset is None:
        inside = np.zeros(n, bool)
        inside[np.asarray(region, int)] = True
        atom_subset = np.flatnonzero(~inside)
    atom_subset = np.asarray(atom_subset, int)
    if scheme == "residue":
        label = _residue_key(atoms)
    elif scheme in ("water", "molecule"):
        label = molecules(atoms)
    else:
        raise ConfigError(f"environment mapping scheme must be 'water', 'molecule' or "
                          f"'residue', got {scheme!r}")
    groups: dict[int, list[int]] = {}
    for i in atom_subset:
        groups.setdefault(int(label[i]), []).append(int(i))
    members = list(groups.values())
    numbers = atoms.get_atomic_numbers()
    if scheme == "water":
        for g in members:
            if sorted(numbers[g].tolist()) != [1, 1, 8]:
                formula = "".join(f"{_symbol(z)}" for z in sorted(numbers[g], reverse=True))
                raise ConfigError(
                    f"environment mapping 'water': the molecule of atom "
                    f"{_atom_label(atoms, g[0])} is {formula} ({len(g)} atoms), not water; "
                    "use scheme 'molecule' or 'residue', or put it in the region")
    ids = _residue_ids(atoms)
    names = [(f"{ids[1][g[0]]}{ids[0][g[0]]}" if ids is not None else f"M{k}")
             for k, g in enumerate(members)]
    return from_groups(members, atoms.get_masses(), numbers, names, center,
                       bead_numbers=(None if bead_number is None
                                     else [int(bead_number)] * len(members)),
                       allow_unassigned=True)


def build_hybrid(atoms, region: Sequence[int], environment: str | Mapping = "water",
                 region_beads: str | Mapping | None = None, center: str = "mass",
                 bead_number: int | None = None):
    """Hybrid atoms and their :class:`HybridSystem` from an atomistic structure ``atoms``.

    ``region``: atom indices kept atomistic (see :func:`select_region`,
    :func:`check_region`); ``environment``: a scheme for :func:`environment_mapping` or a
    Mapping over all atoms of ``atoms`` whose groups cover every non-region atom and no
    region atom. ``region_beads``: None (no region beads), "same" (the region mapped by
    the environment's scheme: what those atoms would be in the all-CG system) or a
    Mapping over the region atoms (local indices). Beads get ``bead_number`` (default:
    the heaviest atom's number) and their group's mass (amu); region atoms keep their
    element masses. Momenta, when ``atoms`` has them, are kept (beads: the group's total).
    Returns ``(hybrid ase.Atoms, HybridSystem)``; positions in Å, beads unwrapped to the
    centre of their molecule (minimum image)."""
    import ase

    region = np.asarray(sorted(set(int(i) for i in region)), int)
    n = len(atoms)
    if len(region) == 0:
        raise ConfigError("the region is empty")
    if region[0] < 0 or region[-1] >= n:
        raise ConfigError(f"region atom index out of range (the structure has {n} atoms)")
    if isinstance(environment, Mapping):
        env = environment
        if env.n_atoms != n:
            raise ConfigError(f"the environment mapping is over {env.n_atoms} atoms but the "
                              f"structure has {n}")
        used = np.zeros(n, int)
        for g in env.groups:
            used[list(g)] += 1
        if used[region].any():
            i = int(region[np.flatnonzero(used[region])[0]])
            raise ConfigError(f"the environment mapping puts region atom "
                              f"{_atom_label(atoms, i)} in a bead")
        free = np.flatnonzero(used == 0)
        free = free[~np.isin(free, region)]
        if len(free):
            raise ConfigError(f"{len(free)} atom(s) are neither in the region nor in an "
                              f"environment bead, e.g. {_atom_label(atoms, int(free[0]))}")
    else:
        env = environment_mapping(atoms, region, environment, center, bead_number)
    if env.n_beads == 0:
        raise ConfigError("the environment has no beads")
    rmap = None
    if isinstance(region_beads, Mapping):
        rmap = region_beads
        if rmap.n_atoms != len(region):
            raise ConfigError(f"the region mapping is over {rmap.n_atoms} atoms but the "
                              f"region has {len(region)}")
    elif region_beads == "same":
        if isinstance(environment, Mapping):
            raise ConfigError("region_beads = 'same' needs an environment scheme, not a "
                              "Mapping; give the region mapping itself")
        full = environment_mapping(atoms, region, environment, center, bead_number,
                                   atom_subset=region)
        local = {int(a): k for k, a in enumerate(region)}
        rmap = from_groups([[local[i] for i in g] for g in full.groups],
                           atoms.get_masses()[region], atoms.get_atomic_numbers()[region],
                           full.bead_names, center, bead_numbers=full.bead_numbers)
    elif region_beads not in (None, "none"):
        raise ConfigError(f"region_beads must be None/'none', 'same' or a Mapping, got "
                          f"{region_beads!r}")
    pbc = np.asarray(atoms.pbc, bool)
    bead_pos = _group_positions(atoms.positions, env.groups, env.matrix,
                                atoms.cell, pbc)
    numbers = np.concatenate([atoms.get_atomic_numbers()[region],
                              np.asarray(env.bead_numbers, int)])
    masses = np.concatenate([atoms.get_masses()[region], np.asarray(env.bead_masses)])
    hybrid = ase.Atoms(numbers=numbers, positions=np.concatenate(
        [atoms.positions[region], bead_pos]), cell=atoms.cell, pbc=atoms.pbc)
    hybrid.set_masses(masses)
    if atoms.has("momenta"):
        p = atoms.get_momenta()
        indicator = (env.matrix > 0).astype(float)
        hybrid.set_momenta(np.concatenate([p[region], indicator @ p]))
    system = HybridSystem(tuple(int(z) for z in atoms.get_atomic_numbers()[region]),
                          tuple(int(z) for z in env.bead_numbers), rmap,
                          tuple(int(i) for i in region), env, n,
                          tuple(float(m) for m in env.bead_masses))
    return hybrid, system


def hybrid_atoms(system: HybridSystem, positions, cell=None, pbc=None, momenta=None):
    """An ``ase.Atoms`` of the hybrid particles at ``positions`` (n_r + n_env, 3) Å: region
    atoms with their element masses, beads with ``system.bead_masses`` (amu). ``cell``
    (3,) or (3, 3) Å makes it periodic (unless ``pbc`` says otherwise); ``momenta``
    (amu·Å/ASE time) optional (for ``velocities = "structure"``)."""
    import ase
    from ase.data import atomic_masses

    positions = np.asarray(positions, np.float64)
    if positions.shape != (system.n_particles, 3):
        raise DataError(f"hybrid_atoms: positions have shape {positions.shape}, expected "
                        f"({system.n_particles}, 3): {system.n_region} region atoms, then "
                        f"{system.n_env} beads")
    if len(system.bead_masses) != system.n_env:
        raise DataError(f"hybrid_atoms: the system lists {len(system.bead_masses)} bead "
                        f"masses for {system.n_env} beads")
    if pbc is None:
        pbc = cell is not None
    atoms = ase.Atoms(numbers=system.numbers, positions=positions, cell=cell, pbc=pbc)
    atoms.set_masses(np.concatenate([atomic_masses[list(system.region_numbers)],
                                     np.asarray(system.bead_masses, np.float64)]))
    if momenta is not None:
        atoms.set_momenta(np.asarray(momenta, np.float64))
    return atoms


def map_reference(system: HybridSystem, positions, forces=None, cell=None, pbc=None):
    """Atomistic reference frames (F, N, 3) Å (and forces eV/Å) of the structure the
    system was built from → hybrid positions (F, n_r + n_env, 3) and target forces:
    region atoms keep theirs, beads get their group's centre (unwrapped, minimum image)
    and the sum of its atoms' forces. ``cell``: (3, 3) or (3,) Å of a periodic structure
    (molecules cut by the box are made whole). Returns ``(positions, forces or None)``."""
    if system.env_mapping is None:
        raise DataError("map_reference: the hybrid system was not built from an atomistic "
                        "structure (no environment mapping)")
    positions = np.asarray(positions, np.float64)
    if positions.ndim == 2:
        positions = positions[None]
    if positions.shape[1:] != (system.n_full_atoms, 3):
        raise DataError(f"map_reference: frames have shape {positions.shape}; the system was "
                        f"built from {system.n_full_atoms} atoms")
    region = list(system.region_indices)
    env = system.env_mapping
    if cell is not None:
        cell = np.asarray(cell, np.float64)
        cell = np.diag(cell) if cell.ndim == 1 else cell
        pbc = np.ones(3, bool) if pbc is None else np.asarray(pbc, bool)
    beads = _group_positions(positions, env.groups, env.matrix, cell, pbc)
    out_pos = np.concatenate([positions[:, region], beads], axis=1)
    if forces is None:
        return out_pos, None
    forces = np.asarray(forces, np.float64).reshape(positions.shape)
    indicator = (env.matrix > 0).astype(np.float64)
    return out_pos, np.concatenate([forces[:, region],
                                    np.einsum("bn,fnk->fbk", indicator, forces)], axis=1)


# ====================================================================== coupling model
@dataclasses.dataclass(frozen=True)
class CouplingModel:
    """Region-atom–bead pair energies: a cubic spline per (region element, bead number)
    through ``n_knots`` knots on [``r_min``, ``cutoff``] Å (the spline-pair model's
    operator, :func:`biojax.cg.spline.spline_operator`: last knot 0 with zero slope, linear
    below ``r_min``), plus the fixed repulsion ``prior_epsilon`` (eV) ·
    (σ_Z/r)^``prior_exponent``, force-shifted to vanish with its slope at the cutoff;
    σ_Z = ``prior_sigma`` per region element (Å). Parameters ``{"energies": (n_elements,
    n_bead_types, n_knots − 1)}`` eV.

    Optional **solvent screening** of the region's own electrostatics: with
    ``screening_pairs`` ((i, j, q_i q_j) over region atoms in region order, charge products
    in e² with the force field's exclusions and 1-4 scaling already applied), the energy
    gains λ · k_e Σ q_i q_j / r_ij with a fitted λ (``params["screening"]``; λ = −1 would
    switch those Coulomb pairs off, λ ≈ −0.3 says the solvent cancels about a third of
    them). A pair coupling between atoms and orientation-averaged beads cannot screen the
    region's own charges; this one number can, and it is linear in λ like the splines,
    so the same least-squares force matching fits it."""

    elements: tuple[int, ...]
    bead_numbers: tuple[int, ...]
    cutoff: float = 6.0
    n_knots: int = 20
    r_min: float = 1.5
    prior_epsilon: float = 0.01
    prior_sigma: tuple[float, ...] = ()
    prior_exponent: int = 12
    screening_pairs: tuple[tuple[int, int, float], ...] = ()

    def __post_init__(self):
        from biojax.cg.spline import spline_operator

        if not self.elements or not self.bead_numbers:
            raise ModelError("coupling model: needs at least one region element and one "
                             "bead number")
        if len(set(self.elements)) != len(self.elements) or \
                len(set(self.bead_numbers)) != len(self.bead_numbers):
            raise ModelError("coupling model: elements and bead numbers must not repeat")
        if len(self.prior_sigma) not in (0, len(self.elements)):
            raise ModelError(f"coupling model: prior_sigma lists {len(self.prior_sigma)} "
                             f"values for {len(self.elements)} elements")
        if self.prior_epsilon < 0 or any(s <= 0 for s in self.prior_sigma):
            raise ModelError("coupling model: prior_epsilon must be >= 0 eV and prior_sigma "
                             "> 0 Å")
        for pair in self.screening_pairs:
            if len(pair) != 3 or int(pair[0]) == int(pair[1]) or min(pair[:2]) < 0:
                raise ModelError(f"coupling model: a screening pair must be (i, j, q_i q_j) "
                                 f"with two distinct region atoms i, j >= 0, got {pair}")
        spline_operator(self.n_knots, self.r_min, self.cutoff)

    @property
    def sigmas(self) -> np.ndarray:
        """σ per element (Å); default 2.0 for H, 2.8 for heavier atoms."""
        if self.prior_sigma:
            return np.asarray(self.prior_sigma, np.float64)
        return np.array([2.0 if z == 1 else 2.8 for z in self.elements])

    @property
    def spacing(self) -> float:
        return (self.cutoff - self.r_min) / (self.n_knots - 1)

    def init(self) -> dict:
        """Zero knot energies: the repulsion alone."""
        import jax.numpy as jnp

        params = {"energies": jnp.zeros((len(self.elements), len(self.bead_numbers),
                                         self.n_knots - 1), jnp.float32)}
        if self.screening_pairs:
            params["screening"] = jnp.zeros((), jnp.float32)
        return params

    def check_region_size(self, n_region: int) -> None:
        """ModelError when a screening pair names an atom beyond the region."""
        if self.screening_pairs:
            top = max(max(int(i), int(j)) for i, j, _ in self.screening_pairs)
            if top >= n_region:
                raise ModelError(f"coupling model: a screening pair names region atom {top}, "
                                 f"but the region has {n_region} atoms")

    def screening_energy(self, params, x, displacement: Callable):
        """λ · k_e Σ q_i q_j / r_ij (eV) over the screening pairs of region positions ``x``
        (Å); ``displacement(a, b)`` handles the box. Zero without screening pairs."""
        import jax
        import jax.numpy as jnp

        if not self.screening_pairs:
            return jnp.zeros((), x.dtype)
        pairs = np.asarray(self.screening_pairs, np.float64)
        i, j = pairs[:, 0].astype(np.int32), pairs[:, 1].astype(np.int32)
        qq = jnp.asarray(pairs[:, 2] * COULOMB, x.dtype)
        d = jax.vmap(displacement)(x[i], x[j])
        return params["screening"] * jnp.sum(qq / jnp.sqrt(jnp.sum(d * d, -1)))

    def element_index(self, numbers: Sequence[int], what: str = "region") -> np.ndarray:
        lookup = {z: i for i, z in enumerate(self.elements)}
        missing = sorted({int(z) for z in numbers} - set(lookup))
        if missing:
            raise ModelError(f"the coupling model lacks {what} element(s) "
                             f"{', '.join(_symbol(z) for z in missing)} (it has "
                             f"{', '.join(_symbol(z) for z in self.elements)})")
        return np.array([lookup[int(z)] for z in numbers], np.int32)

    def bead_index(self, numbers: Sequence[int]) -> np.ndarray:
        lookup = {z: i for i, z in enumerate(self.bead_numbers)}
        missing = sorted({int(z) for z in numbers} - set(lookup))
        if missing:
            raise ModelError(f"the coupling model lacks bead number(s) {missing} of the "
                             f"environment (it has {list(self.bead_numbers)})")
        return np.array([lookup[int(z)] for z in numbers], np.int32)

    def pair_energy(self, params, r2, element, bead):
        """Pair energies (eV) at squared distances r2 (Å²) for element indices ``element``
        and bead-type indices ``bead``; zero at r ≥ cutoff and r2 ≈ 0."""
        import jax.numpy as jnp

        from biojax.cg.spline import spline_operator

        e_knots = params["energies"]
        ops = jnp.asarray(spline_operator(self.n_knots, self.r_min, self.cutoff),
                          e_knots.dtype)
        coef = jnp.einsum("kpj,abj->abkp", ops, e_knots)      # (A, B, K, 4)
        valid = (r2 > 1e-6) & (r2 < self.cutoff ** 2)
        r = jnp.sqrt(jnp.where(valid, r2, 1.0))
        x = (r - self.r_min) / self.spacing
        k = jnp.clip(jnp.floor(x), 0, self.n_knots - 2).astype(jnp.int32)
        t = x - k
        c = coef[element, bead, k]
        cubic = jnp.where(t < 0.0, 0.0, c[..., 2] * t * t + c[..., 3] * t * t * t)
        e = c[..., 0] + c[..., 1] * t + cubic
        if self.prior_epsilon > 0:
            n, rc = float(self.prior_exponent), self.cutoff
            s = jnp.asarray(self.sigmas, e_knots.dtype)[element]
            at_rc = (s / rc) ** n
            e = e + self.prior_epsilon * ((s / r) ** n - at_rc + n * at_rc / rc * (r - rc))
        return jnp.where(valid, e, 0.0)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["elements"], d["bead_numbers"] = list(self.elements), list(self.bead_numbers)
        d["prior_sigma"] = list(self.prior_sigma)
        d["screening_pairs"] = [[int(i), int(j), float(q)] for i, j, q in self.screening_pairs]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "CouplingModel":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ModelError(f"coupling model: unknown field(s) {sorted(unknown)}")
        d = dict(d)
        for key in ("elements", "bead_numbers"):
            d[key] = tuple(int(z) for z in d[key])
        d["prior_sigma"] = tuple(float(s) for s in d.get("prior_sigma", ()))
        d["screening_pairs"] = tuple((int(i), int(j), float(q))
                                     for i, j, q in d.get("screening_pairs", ()))
        return cls(**d)


@dataclasses.dataclass(frozen=True)
class Coupling:
    """A :class:`CouplingModel` with its parameters (a plain pytree)."""

    model: CouplingModel
    params: Any

    @classmethod
    def create(cls, elements: Sequence[int], bead_numbers: Sequence[int], cutoff: float = 6.0,
               n_knots: int = 20, r_min: float = 1.5, prior_epsilon: float = 0.01,
               prior_sigma: Sequence[float] | float | None = None, prior_exponent: int = 12,
               energies=None, screening_pairs: Sequence | None = None,
               screening: float = 0.0) -> "Coupling":
        """A coupling for these region elements and bead numbers (sorted); ``energies``
        (n_elements, n_bead_types, n_knots − 1) eV, default 0 (repulsion only);
        ``prior_sigma`` one σ (Å) for all elements or one per element;
        ``screening_pairs`` (i, j, q_i q_j e²) over region atoms with ``screening`` its λ
        (see :class:`CouplingModel`; :func:`coulomb_pairs` builds them from charges)."""
        import jax.numpy as jnp

        elements = tuple(sorted({int(z) for z in elements}))
        bead_numbers = tuple(sorted({int(z) for z in bead_numbers}))
        if prior_sigma is None:
            sig = ()
        elif np.ndim(prior_sigma) == 0:
            sig = (float(prior_sigma),) * len(elements)
        else:
            sig = tuple(float(s) for s in prior_sigma)
        pairs = tuple((int(i), int(j), float(q)) for i, j, q in (screening_pairs or ()))
        model = CouplingModel(elements, bead_numbers, float(cutoff), int(n_knots),
                              float(r_min), float(prior_epsilon), sig, int(prior_exponent),
                              pairs)
        params = model.init()
        if pairs:
            params["screening"] = jnp.asarray(screening, jnp.float32)
        if energies is not None:
            energies = np.asarray(energies, np.float32)
            if energies.shape != params["energies"].shape:
                raise ModelError(f"coupling energies must have shape "
                                 f"{params['energies'].shape}, got {energies.shape}")
            params = {**params, "energies": jnp.asarray(energies)}
        return cls(model, params)

    def replace(self, **changes) -> "Coupling":
        return dataclasses.replace(self, **changes)


def save_coupling(coupling: Coupling, path: str | os.PathLike) -> None:
    """Write a coupling to ``path`` (JSON, atomically): format name and version, the
    model's hyperparameters and the knot energies (eV)."""
    from biojax import __version__
    from biojax.core.atomic import atomic_write_text

    e = np.asarray(coupling.params["energies"], np.float64)
    doc = {"format": COUPLING_FORMAT, "format_version": COUPLING_VERSION,
           "biojax_version": __version__, "model": coupling.model.to_dict(),
           "energies_eV": e.tolist(),
           "screening_lambda": (float(coupling.params["screening"])
                                if "screening" in coupling.params else None),
           "units": {"energy": "eV", "length": "Angstrom"}}
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    atomic_write_text(path, json.dumps(doc, indent=1))


def load_coupling(path: str | os.PathLike) -> Coupling:
    """Read a coupling written by :func:`save_coupling` (a file, or a folder holding
    ``coupling.json``); a missing or malformed file raises ModelError naming it."""
    import jax.numpy as jnp

    path = os.fspath(path)
    if os.path.isdir(path):
        path = os.path.join(path, "coupling.json")
    if not os.path.isfile(path):
        raise ModelError(f"coupling file not found: {path}")
    try:
        with open(path) as f:
            doc = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelError(f"{path}: malformed coupling file ({exc})") from None
    if not isinstance(doc, dict) or doc.get("format") != COUPLING_FORMAT:
        raise ModelError(f"{path}: not a biojax hybrid coupling (format "
                         f"{doc.get('format') if isinstance(doc, dict) else None!r})")
    if int(doc.get("format_version", 0)) > COUPLING_VERSION:
        raise ModelError(f"{path}: coupling format {doc.get('format_version')} is newer than "
                         f"this biojax reads ({COUPLING_VERSION})")
    try:
        model = CouplingModel.from_dict(doc["model"])
        e = np.asarray(doc["energies_eV"], np.float32)
    except ModelError as exc:
        raise ModelError(f"{path}: {exc}") from None
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelError(f"{path}: malformed coupling ({type(exc).__name__}: {exc})") from None
    want = (len(model.elements), len(model.bead_numbers), model.n_knots - 1)
    if e.shape != want or not np.all(np.isfinite(e)):
        raise ModelError(f"{path}: energies_eV must be finite with shape {want}, got "
                         f"{e.shape}")
    params = {"energies": jnp.asarray(e)}
    if model.screening_pairs:
        lam = doc.get("screening_lambda")
        if not isinstance(lam, (int, float)) or not np.isfinite(lam):
            raise ModelError(f"{path}: screening_pairs given but screening_lambda is "
                             f"{lam!r}, not a finite number")
        params["screening"] = jnp.asarray(lam, jnp.float32)
    return Coupling(model, params)


def coulomb_pairs(charges: Sequence[float], exceptions: dict | None = None,
                  ) -> list[tuple[int, int, float]]:
    """Screening pairs (i, j, q_i q_j) in e² from per-atom ``charges`` (e, region order):
    every pair, except that ``exceptions`` ``{(i, j): q_i q_j}`` replaces a pair's product
    (0 for excluded 1-2/1-3 pairs, the scaled product for 1-4 pairs, as a force field
    defines them); pairs with a zero product are left out."""
    q = np.asarray(charges, np.float64)
    table = {(min(a, b), max(a, b)): float(v) for (a, b), v in (exceptions or {}).items()}
    out = []
    for i in range(len(q)):
        for j in range(i + 1, len(q)):
            v = table.get((i, j), q[i] * q[j])
            if v != 0.0:
                out.append((i, j, v))
    return out


# ====================================================================== the potential
@dataclasses.dataclass(frozen=True)
class _HybridModel:
    """What the MD engine reads of ``potential.model``: the neighbor-list preference."""

    neighbor_format: str = "dense"


@dataclasses.dataclass(frozen=True)
class _AllPairs:
    """A Dense 'neighbor list' holding every pair (for evaluation without MD)."""

    idx: Any
    format: Any = dataclasses.field(default_factory=lambda: _Fmt("Dense"))


@dataclasses.dataclass(frozen=True)
class _Fmt:
    name: str


def all_pairs(n: int):
    """A Dense neighbor stand-in with every pair of ``n`` particles (tests, fitting)."""
    import jax.numpy as jnp

    idx = np.array([[j for j in range(n) if j != i] for i in range(n)], np.int32)
    return _AllPairs(jnp.asarray(idx.reshape(n, max(n - 1, 0))))


def _directed(neighbor, n: int):
    """(senders, receivers, valid) of every directed edge of a jax-md neighbor list in any
    format (OrderedSparse pairs expanded into both directions)."""
    import jax.numpy as jnp

    fmt = neighbor.format.name
    idx = neighbor.idx
    if fmt == "Dense":
        r = jnp.repeat(jnp.arange(n, dtype=idx.dtype), idx.shape[1])
        s = idx.reshape(-1)
    else:
        s, r = idx[0], idx[1]
        if fmt == "OrderedSparse":
            s, r = jnp.concatenate([s, r]), jnp.concatenate([r, s])
    valid = (s < n) & (r < n) & (s != r)
    return jnp.where(valid, s, 0), jnp.where(valid, r, 0), valid


def _mapped_positions(x, matrix: np.ndarray, first: np.ndarray, displacement: Callable):
    """Bead positions M·x (B, 3), each group unwrapped around its first atom:
    ``anchor_b + Σ_i M[b, i] · displacement(x_i, anchor_b)``."""
    import jax
    import jax.numpy as jnp

    anchor = x[first]                                          # (B, 3)
    pair = jax.vmap(jax.vmap(displacement, (0, None)), (None, 0))
    d = pair(x, anchor)                                        # (B, n, 3)
    return anchor + jnp.einsum("bn,bnk->bk", jnp.asarray(matrix, x.dtype), d)


@dataclasses.dataclass(frozen=True)
class HybridPotential:
    """FG region + CG environment + coupling (see module), a duck-typed
    :class:`~biojax.nn.potential.Potential` for :class:`biojax.md.Simulation`.

    ``fg``: Potential of the region atoms; ``cg``: CGPotential of the beads or None (no
    bead–bead interactions); ``coupling``: :class:`Coupling` or None (switched off);
    ``system``: the particle layout. ``params`` is ``{"fg", "cg", "coupling"}``, so a
    run's model identity (checkpoint) changes when any sub-model's parameters do.
    Raises ModelError when a sub-model lacks an element or bead number it must handle."""

    fg: Any
    cg: Any
    coupling: Coupling | None
    system: HybridSystem
    model: _HybridModel = dataclasses.field(default_factory=_HybridModel)
    scale: float = 1.0
    shifts: tuple = ()

    def __post_init__(self):
        s = self.system
        try:
            self.fg.species_of(s.region_numbers)
        except ModelError as exc:
            raise ModelError(f"the fine-grained (FG) model cannot handle the region: {exc}; "
                             "train it on these elements or choose another region") from None
        if self.cg is not None:
            try:
                self.cg.learned.species_of(s.region_bead_numbers + s.bead_numbers)
            except ModelError as exc:
                raise ModelError(f"the coarse-grained (CG) model cannot handle the beads: "
                                 f"{exc}") from None
            n_all = s.n_region_beads + s.n_env
            prior = self.cg.prior
            for name in ("bonds", "angles", "dihedrals", "repulsive_pairs"):
                idx = np.asarray(getattr(prior, name))
                if idx.size and idx.max() >= n_all:
                    raise ModelError(f"the CG model's prior {name} name bead {int(idx.max())} "
                                     f"but the hybrid system has {n_all} beads")
        if self.coupling is not None:
            self.coupling.model.element_index(s.region_numbers)
            self.coupling.model.bead_index(s.bead_numbers)

    # ------------------------------------------------------------ Potential duck type
    @property
    def params(self) -> dict:
        return {"fg": self.fg.params, "cg": {} if self.cg is None else self.cg.params,
                "coupling": {} if self.coupling is None else self.coupling.params}

    @property
    def cutoff(self) -> float:
        """The MD neighbor list's cutoff (Å): the CG model's and the coupling's larger."""
        cuts = [1.0]
        if self.cg is not None:
            cuts.append(float(self.cg.learned.cutoff))
        if self.coupling is not None:
            cuts.append(float(self.coupling.model.cutoff))
        return max(cuts)

    @property
    def elements(self) -> tuple[int, ...]:
        return tuple(sorted(set(self.system.numbers.tolist())))

    @property
    def reference_energies(self) -> tuple[float, ...]:
        return (0.0,) * len(self.elements)

    @property
    def architecture(self) -> dict:
        def pot(p):
            return {"architecture": p.architecture, "cutoff": float(p.cutoff),
                    "elements": [int(z) for z in p.elements], "scale": float(p.scale),
                    "shifts": [float(x) for x in p.shifts],
                    "reference_energies": [float(x) for x in p.reference_energies]}

        return {"name": "hybrid", "fg": pot(self.fg),
                "cg": None if self.cg is None else {"learned": pot(self.cg.learned),
                                                    "prior": self.cg.prior.to_dict()},
                "coupling": None if self.coupling is None else self.coupling.model.to_dict(),
                "system": self.system.describe()}

    def species_of(self, numbers: Sequence[int]) -> np.ndarray:
        """Checks that ``numbers`` are the hybrid particles' (ModelError otherwise);
        returns their indices in ``elements``."""
        numbers = np.asarray(numbers, int)
        if numbers.shape != self.system.numbers.shape or \
                not np.array_equal(numbers, self.system.numbers):
            raise ModelError(f"this hybrid potential is for {self.system.n_region} region "
                             f"atoms followed by {self.system.n_env} beads (numbers "
                             f"{self.system.numbers.tolist()[:8]} ...); got "
                             f"{len(numbers)} particles with other numbers")
        lookup = {z: i for i, z in enumerate(self.elements)}
        return np.array([lookup[int(z)] for z in numbers], np.int32)

    def reference_energy(self, numbers: Sequence[int]) -> float:
        """The FG model's reference energy of the region atoms (eV)."""
        self.species_of(numbers)
        return self.fg.reference_energy(self.system.region_numbers)

    def replace(self, **changes) -> "HybridPotential":
        return dataclasses.replace(self, **changes)

    def with_params(self, params: dict) -> "HybridPotential":
        """A copy with ``params`` (``{"fg", "cg", "coupling"}``) as the sub-models'."""
        return self.replace(
            fg=self.fg.replace(params=params["fg"]),
            cg=None if self.cg is None else self.cg.with_params(params["cg"]),
            coupling=None if self.coupling is None else self.coupling.replace(
                params=params["coupling"]))

    # ------------------------------------------------------------ energy
    def energy_parts_fn(self, displacement_fn: Callable) -> Callable:
        """``parts(P, neighbor, params=None, **kw) -> {"fg", "cg_all", "cg_region",
        "coupling"}`` (eV); ``neighbor`` is a jax-md list over all particles (None:
        every pair); ``kw`` (``box=``, ``perturbation=``) go to ``displacement_fn``."""
        import jax
        import jax.numpy as jnp

        from biojax.core.graph import Graph

        s = self.system
        nr, ne, nrb = s.n_region, s.n_env, s.n_region_beads
        N = nr + ne
        fg_species = jnp.asarray(self.fg.species_of(s.region_numbers))
        rs, rr = np.nonzero(~np.eye(nr, dtype=bool))
        fg_s, fg_r = jnp.asarray(rs, jnp.int32), jnp.asarray(rr, jnp.int32)
        fg_cut2 = float(self.fg.cutoff) ** 2
        cg = self.cg
        if cg is not None:
            cg_species = jnp.asarray(cg.learned.species_of(s.region_bead_numbers
                                                           + s.bead_numbers))
            # dense region-bead edges: region bead ↔ env bead (both ways) and within
            a, b = np.meshgrid(np.arange(nrb), np.arange(nrb, nrb + ne), indexing="ij")
            a, b = a.reshape(-1), b.reshape(-1)
            ws, wr = np.nonzero(~np.eye(nrb, dtype=bool))
            dense_s = jnp.asarray(np.concatenate([a, b, ws]), jnp.int32)
            dense_r = jnp.asarray(np.concatenate([b, a, wr]), jnp.int32)
            reg_s, reg_r = jnp.asarray(ws, jnp.int32), jnp.asarray(wr, jnp.int32)
            prior_all = self._env_prior()
            prior_fn = None if prior_all is None else prior_all.energy_fn(displacement_fn)
        if nrb:
            rm = s.region_mapping
            matrix = np.asarray(rm.matrix)
            first = np.array([g[0] for g in rm.groups], np.int32)
        if self.coupling is not None:
            cm = self.coupling.model
            cm.check_region_size(nr)
            elem = jnp.asarray(cm.element_index(s.region_numbers))
            btype = jnp.asarray(cm.bead_index(s.bead_numbers))

        def parts(P, neighbor=None, params=None, **kw):
            p = self.params if params is None else params
            kw = {k: v for k, v in kw.items() if k not in ("neighbor", "term_states")}
            disp = jax.vmap(lambda u, v: displacement_fn(u, v, **kw))
            x, y = P[:nr], P[nr:]
            zero = jnp.zeros((), P.dtype)
            out = {}
            # E_FG: dense graph of the region atoms
            v = disp(x[fg_r], x[fg_s])
            graph = Graph(vectors=v, species=fg_species, senders=fg_s, receivers=fg_r,
                          edge_mask=jnp.sum(v * v, -1) < fg_cut2,
                          node_mask=jnp.ones((nr,), bool))
            out["fg"] = jnp.sum(self.fg.atomic_energies(p["fg"], graph))
            nbr = all_pairs(N) if neighbor is None else neighbor
            if nbr.format.name == "Dense":
                # rows of the region atoms hold the coupling pairs, the others the
                # environment's: each directed edge is looked at once
                idx = nbr.idx
                M = idx.shape[1]
                s_env = idx[nr:].reshape(-1)
                r_env = jnp.repeat(jnp.arange(nr, N, dtype=idx.dtype), M)
                env = (s_env >= nr) & (s_env < N) & (s_env != r_env)
                s_x = idx[:nr].reshape(-1)
                r_x = jnp.repeat(jnp.arange(nr, dtype=idx.dtype), M)
                cross = (s_x >= nr) & (s_x < N)
            else:
                s_, r_, valid = _directed(nbr, N)
                s_env, r_env, env = s_, r_, valid & (s_ >= nr) & (r_ >= nr)
                s_x, r_x, cross = s_, r_, valid & (r_ < nr) & (s_ >= nr)
            if cg is not None:
                if nrb:
                    breg = _mapped_positions(x, matrix, first,
                                             lambda u, w: displacement_fn(u, w, **kw))
                    B = jnp.concatenate([breg, y])
                else:
                    B = y
                bs = jnp.where(env, s_env - nr + nrb, 0)
                br = jnp.where(env, r_env - nr + nrb, 0)
                snd = jnp.concatenate([bs, dense_s])
                rcv = jnp.concatenate([br, dense_r])
                mask = jnp.concatenate([env, jnp.ones(dense_s.shape, bool)])
                graph = Graph(vectors=disp(B[rcv], B[snd]), species=cg_species, senders=snd,
                              receivers=rcv, edge_mask=mask,
                              node_mask=jnp.ones((nrb + ne,), bool))
                e_all = jnp.sum(cg.learned.atomic_energies(p["cg"], graph))
                if prior_fn is not None:
                    e_all = e_all + prior_fn(B, **kw)
                out["cg_all"] = e_all
                if nrb:
                    g_reg = Graph(vectors=disp(breg[reg_r], breg[reg_s]),
                                  species=cg_species[:nrb], senders=reg_s, receivers=reg_r,
                                  edge_mask=jnp.ones(reg_s.shape, bool),
                                  node_mask=jnp.ones((nrb,), bool))
                    out["cg_region"] = jnp.sum(cg.learned.atomic_energies(p["cg"], g_reg))
                else:
                    out["cg_region"] = zero
            else:
                out["cg_all"] = out["cg_region"] = zero
            if self.coupling is not None:
                atom = jnp.where(cross, r_x, 0)
                bead = jnp.where(cross, s_x - nr, 0)
                d = disp(P[atom], P[jnp.where(cross, s_x, nr)])
                r2 = jnp.where(cross, jnp.sum(d * d, -1), 0.0)
                e = self.coupling.model.pair_energy(p["coupling"], r2, elem[atom],
                                                    btype[bead])
                out["coupling"] = jnp.sum(jnp.where(cross, e, 0.0)) + cm.screening_energy(
                    p["coupling"], x, lambda u, w: displacement_fn(u, w, **kw))
            else:
                out["coupling"] = zero
            return out

        return parts

    def _env_prior(self):
        """The CG prior without the terms wholly inside the region beads (they cancel in
        E_CG(B_all) − E_CG(B_reg)); None when nothing is left."""
        prior = self.cg.prior
        if prior.empty:
            return None
        nrb = self.system.n_region_beads
        if nrb == 0:
            return prior
        changes = {}
        for name, extra in (("bonds", ("bond_r0", "bond_k")),
                            ("angles", ("angle_theta0", "angle_k")),
                            ("dihedrals", ("dihedral_cos", "dihedral_sin")),
                            ("repulsive_pairs", ("repulsion_sigma",))):
            idx = np.asarray(getattr(prior, name))
            keep = (np.any(idx >= nrb, axis=1) if idx.size
                    else np.zeros(len(idx), bool))
            changes[name] = idx[keep]
            for e in extra:
                changes[e] = np.asarray(getattr(prior, e))[keep]
        out = dataclasses.replace(prior, **changes)
        return None if out.empty else out

    def energy_fn(self, displacement_fn: Callable, numbers: Sequence[int], params=None,
                  per_atom: bool = False) -> Callable:
        """``energy(P, neighbor=None, params=None, **kw)`` (eV) of the hybrid particles
        (see module); the signature :class:`biojax.md.Simulation` uses."""
        if per_atom:
            raise ModelError("a hybrid potential has no per-atom energies (the CG terms "
                             "belong to beads, the coupling to pairs)")
        self.species_of(numbers)
        parts = self.energy_parts_fn(displacement_fn)
        default = params

        def energy(P, neighbor=None, params=None, **kw):
            out = parts(P, neighbor, default if params is None else params, **kw)
            return out["fg"] + out["cg_all"] - out["cg_region"] + out["coupling"]

        return energy


def check_space(atoms, ensemble: str = "nve") -> None:
    """Raise ConfigError unless the hybrid atoms can run: free space or a fixed
    orthorhombic box (bead centres are computed in Cartesian coordinates)."""
    if ensemble == "npt":
        raise ConfigError("[multiscale]: hybrid systems run at fixed volume (NVE or NVT); "
                          "NPT is not supported")
    if np.all(atoms.pbc):
        cell = np.asarray(atoms.cell)
        if not np.allclose(cell - np.diag(np.diag(cell)), 0.0):
            raise ConfigError("[multiscale]: hybrid systems need a free or an orthorhombic "
                              "periodic box; this cell is triclinic")


# ====================================================================== force matching
@dataclasses.dataclass
class FitResult:
    """What :func:`fit_coupling` returns: the fitted potential, its coupling (and CG
    model), and metrics (force RMSE in eV/Å on train and validation frames, before and
    after; per region atoms and beads)."""

    potential: HybridPotential
    coupling: Coupling | None
    cg: Any
    metrics: dict


def _host_neighbors(positions: np.ndarray, cutoff: float, box) -> np.ndarray:
    """Dense neighbor indices (F, N, M) within ``cutoff`` Å, padded with N (cKDTree,
    periodic orthorhombic ``box`` (3,) or free)."""
    from scipy.spatial import cKDTree

    F, N, _ = positions.shape
    rows = []
    for f in range(F):
        x = positions[f]
        if box is not None:
            x = np.mod(x, box)
            tree = cKDTree(x, boxsize=np.asarray(box, np.float64) * (1 + 1e-12))
        else:
            tree = cKDTree(x)
        rows.append([[j for j in nb if j != i] for i, nb in
                     enumerate(tree.query_ball_point(x, cutoff))])
    M = max(1, max(len(r) for fr in rows for r in fr))
    idx = np.full((F, N, M), N, np.int32)
    for f, fr in enumerate(rows):
        for i, r in enumerate(fr):
            idx[f, i, :len(r)] = r
    return idx


def fit_coupling(potential: HybridPotential, positions, forces, *, box=None,
                 fit: Sequence[str] = ("coupling",), fg_forces=None, n_valid: int | float = 0.2,
                 seed: int = 0, epochs: int | None = None, learning_rate: float = 1e-3,
                 batch_size: int = 8, ridge: float = 1e-6, region_weight: float = 1.0,
                 bead_weight: float = 1.0, progress: bool = True) -> FitResult:
    """Force matching of the coupling (and, with ``"cg"`` in ``fit``, the CG model's
    learned part) with the FG model fixed.

    ``positions`` (F, N, 3) Å and ``forces`` (F, N, 3) eV/Å are hybrid-particle frames of
    the reference (:func:`map_reference`): region atoms with their atomistic forces,
    beads with their mapped (summed) forces. The predicted forces are the hybrid model's
    ``−∇E``; fitting them to the targets makes the coupling explain F_ref − F_FG on the
    region atoms and the CG model (with the coupling) the mapped forces on the beads.
    ``fg_forces`` (F, n_r, 3): if given, the region targets become F_ref − fg_forces
    (e.g. the same force field's vacuum forces) instead of F_ref − (FG model).
    ``box`` (3,) Å: orthorhombic periodic box (None: free). ``n_valid``: held-out frames
    (count, or fraction), chosen by ``seed``. The loss is the mean squared force error
    with the region atoms' rows weighted by ``region_weight`` and the beads' by
    ``bead_weight`` (the reported RMSEs are unweighted).

    The spline models are linear in their knot energies, so the fit starts with the
    least-squares solution (ridge ``ridge`` × the mean diagonal); ``epochs`` of Adam
    (``learning_rate`` eV per step, mini-batches of ``batch_size`` frames) follow
    (default: 0 when every fitted part is linear, else 200), keeping the parameters of
    the lowest validation error. Returns a :class:`FitResult`."""
    import jax
    import jax.numpy as jnp
    import optax
    from jax.flatten_util import ravel_pytree

    from biojax.cg.spline import SplinePairModel
    from biojax.core.progress import progress as progress_bar
    from biojax.md.system import orthorhombic_displacement

    fit = tuple(fit)
    if not fit or set(fit) - {"coupling", "cg"}:
        raise ConfigError(f"fit must name 'coupling' and/or 'cg', got {list(fit)}")
    if "coupling" in fit and potential.coupling is None:
        raise ConfigError("fit 'coupling': the hybrid potential has no coupling; create one "
                          "with Coupling.create(...)")
    if "cg" in fit and potential.cg is None:
        raise ConfigError("fit 'cg': the hybrid potential has no CG model")
    s = potential.system
    P = np.asarray(positions, np.float32)
    T = np.asarray(forces, np.float32)
    if P.ndim != 3 or P.shape[1:] != (s.n_particles, 3) or T.shape != P.shape:
        raise DataError(f"fit_coupling: positions {P.shape} and forces {T.shape} must both "
                        f"be (frames, {s.n_particles}, 3)")
    if not (np.all(np.isfinite(P)) and np.all(np.isfinite(T))):
        raise DataError("fit_coupling: positions or forces hold NaN or inf")
    F = len(P)
    n_val = int(round(n_valid * F)) if isinstance(n_valid, float) else int(n_valid)
    if F - n_val < 1 or n_val < 0:
        raise DataError(f"fit_coupling: {F} frames leave none to train on with n_valid = "
                        f"{n_valid}")
    order = np.random.default_rng(seed).permutation(F)
    val_idx, train_idx = np.sort(order[:n_val]), np.sort(order[n_val:])
    displacement = (orthorhombic_displacement(np.asarray(box, np.float32)) if box is not None
                    else (lambda a, b, **kw: a - b))
    nbr_idx = _host_neighbors(P.astype(np.float64), potential.cutoff,
                              None if box is None else np.asarray(box, np.float64))
    energy = potential.energy_fn(displacement, s.numbers)
    base = potential.params
    trainable = {k: base[k] for k in fit}
    flat0, unravel = ravel_pytree(trainable)

    def merged(theta):
        return {**base, **unravel(theta)}

    def pred(theta, R, idx):
        nbr = _AllPairs(idx)
        return -jax.grad(energy)(R, neighbor=nbr, params=merged(theta))

    if fg_forces is not None:
        fgf = np.asarray(fg_forces, np.float32)
        if fgf.shape != (F, s.n_region, 3):
            raise DataError(f"fit_coupling: fg_forces must be ({F}, {s.n_region}, 3), got "
                            f"{fgf.shape}")
        only_fg = potential.replace(cg=None, coupling=None)
        e_fg = only_fg.energy_fn(displacement, s.numbers)
        fg_model = jax.jit(jax.vmap(lambda R, idx: -jax.grad(e_fg)(R, _AllPairs(idx))))
        model_fg = np.concatenate([np.asarray(fg_model(P[k:k + 16], nbr_idx[k:k + 16]))
                                   for k in range(0, F, 16)])[:, :s.n_region]
        T = T.copy()
        T[:, :s.n_region] += model_fg - fgf
    pred_batch = jax.jit(jax.vmap(pred, (None, 0, 0)))
    if region_weight < 0 or bead_weight < 0 or region_weight + bead_weight == 0:
        raise ConfigError("fit_coupling: region_weight and bead_weight must be >= 0, not "
                          "both 0")
    row_w = np.sqrt(np.concatenate([np.full(s.n_region, region_weight),
                                    np.full(s.n_env, bead_weight)]))[:, None]
    row_w = np.broadcast_to(row_w, (s.n_particles, 3)).astype(np.float32)

    def rmse(theta, idx_set):
        if len(idx_set) == 0:
            return {"all": float("nan"), "region": float("nan"), "beads": float("nan")}
        se = np.zeros(2)
        cnt = np.zeros(2)
        for k in range(0, len(idx_set), batch_size):
            b = idx_set[k:k + batch_size]
            err = np.asarray(pred_batch(theta, P[b], nbr_idx[b])) - T[b]
            se += [np.sum(err[:, :s.n_region] ** 2), np.sum(err[:, s.n_region:] ** 2)]
            cnt += [err[:, :s.n_region].size, err[:, s.n_region:].size]
        return {"all": float(np.sqrt(se.sum() / cnt.sum())),
                "region": float(np.sqrt(se[0] / cnt[0])),
                "beads": float(np.sqrt(se[1] / cnt[1])) if cnt[1] else float("nan")}

    linear = all(k == "coupling" or isinstance(potential.cg.learned.model, SplinePairModel)
                 for k in fit)
    if epochs is None:
        epochs = 0 if linear else 200
    n_batches = -(-len(train_idx) // batch_size)
    bar = progress_bar((n_batches if linear else 0) + epochs * n_batches, "fit coupling",
                       enabled=progress, unit="batch")
    metrics: dict = {"frames_train": int(len(train_idx)), "frames_valid": int(len(val_idx)),
                     "fit": list(fit), "parameters": int(flat0.size), "seed": seed}
    theta = jnp.asarray(flat0)
    metrics["before"] = {"train": rmse(theta, train_idx), "valid": rmse(theta, val_idx)}
    done = 0
    try:
        if linear:
            zero = jnp.zeros_like(theta)
            jac = jax.jit(jax.vmap(jax.jacfwd(pred), (None, 0, 0)))
            A = np.zeros((flat0.size, flat0.size))
            rhs = np.zeros(flat0.size)
            for k in range(0, len(train_idx), batch_size):
                b = train_idx[k:k + batch_size]
                w = np.tile(row_w.reshape(-1), len(b)).astype(np.float64)
                J = np.asarray(jac(zero, P[b], nbr_idx[b]), np.float64).reshape(
                    -1, flat0.size) * w[:, None]
                f0 = np.asarray(pred_batch(zero, P[b], nbr_idx[b]), np.float64).reshape(-1)
                A += J.T @ J
                rhs += J.T @ (w * (T[b].reshape(-1).astype(np.float64) - f0))
                done += 1
                bar.update(done)
            lam = ridge * max(np.mean(np.diag(A)), 1e-12)
            theta = jnp.asarray(np.linalg.solve(A + lam * np.eye(len(A)), rhs), flat0.dtype)
            metrics["least_squares"] = {"train": rmse(theta, train_idx),
                                        "valid": rmse(theta, val_idx)}
        if epochs:
            opt = optax.adam(learning_rate)
            state = opt.init(theta)

            def loss(th, R, idx, t):
                err = (jax.vmap(pred, (None, 0, 0))(th, R, idx) - t) * row_w
                return jnp.mean(err ** 2)

            @jax.jit
            def step(th, st, R, idx, t):
                g = jax.grad(loss)(th, R, idx, t)
                up, st = opt.update(g, st, th)
                return optax.apply_updates(th, up), st

            rng = np.random.default_rng(seed + 1)
            score = rmse(theta, val_idx if len(val_idx) else train_idx)["all"]
            best = (score, theta)
            for epoch in range(epochs):
                perm = train_idx[rng.permutation(len(train_idx))]
                for k in range(0, len(perm), batch_size):
                    b = np.sort(perm[k:k + batch_size])
                    theta, state = step(theta, state, P[b], nbr_idx[b], T[b])
                    done += 1
                    bar.update(done)
                score = rmse(theta, val_idx if len(val_idx) else train_idx)["all"]
                bar.set(epoch=epoch + 1, rmse=f"{score:.4f}")
                if score < best[0]:
                    best = (score, theta)
            theta = best[1]
    finally:
        bar.close()
    metrics["after"] = {"train": rmse(theta, train_idx), "valid": rmse(theta, val_idx)}
    metrics["units"] = "eV/Angstrom"
    fitted = potential.with_params(merged(theta))
    return FitResult(fitted, fitted.coupling, fitted.cg, metrics)


# ====================================================================== from a config
def _off(value: str | None) -> bool:
    """None, or "none"/"off" (made absolute by the config's path rule, so compared by
    name when no such file exists)."""
    return value is None or (os.path.basename(value).lower() in ("none", "off")
                             and not os.path.exists(value))


def from_config(cfg, frames: Sequence) -> tuple[list, HybridPotential]:
    """Hybrid starting frames and the :class:`HybridPotential` for a simulate config with
    a ``[multiscale]`` table (:class:`biojax.md.config.MultiscaleConfig`) and the
    atomistic starting ``frames`` (all with the same atoms). The region is selected once,
    on the first frame, and fixed for the run."""
    from biojax.cg.potential import load_cg_potential
    from biojax.md.stage import potential_from_config

    ms = cfg.multiscale
    first = frames[0]
    check_space(first, cfg.ensemble)
    spec = RegionSpec(atoms=tuple(ms.region_atoms), residues=tuple(ms.region_residues),
                      within=ms.region_within, site_atoms=tuple(ms.site_atoms),
                      site_residues=tuple(ms.site_residues))
    region = check_region(first, select_region(first, spec), ms.capping)
    cg = None if _off(ms.cg_model) else load_cg_potential(ms.cg_model)
    bead_number = ms.bead_number
    if bead_number is None and cg is not None and len(cg.learned.elements) == 1:
        bead_number = int(cg.learned.elements[0])
    hybrids, system = [], None
    for atoms in frames:
        h, sys_k = build_hybrid(atoms, region, ms.environment,
                                "same" if ms.region_beads else None, ms.center,
                                bead_number)
        system = system or sys_k
        hybrids.append(h)
    if ms.fg_model is not None:
        from biojax.nn.io import load_potential

        if not os.path.isdir(ms.fg_model):
            raise ModelError(f"[multiscale] fg_model: model directory not found: "
                             f"{ms.fg_model}")
        fg = load_potential(ms.fg_model)
    else:
        fg = potential_from_config(cfg, system.region_numbers)
    if ms.coupling is None:
        raise ConfigError("[multiscale] coupling: give a coupling file (written by "
                          "biojax.cg.hybrid.save_coupling) or coupling = 'off'")
    coupling = None if _off(ms.coupling) else load_coupling(ms.coupling)
    return hybrids, HybridPotential(fg, cg, coupling, system)
