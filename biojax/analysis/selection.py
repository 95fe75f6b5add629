"""Atom selection by index, element, PDB atom name, residue name or residue number.

A selection is a set of criteria combined with AND; each criterion is a list combined
with OR: ``select(top, names=["CA"], resnames=["ALA", "GLY"])`` picks the CA atoms of
alanines and glycines. An empty result is an error, never a silent empty feature.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from biojax.analysis.trajectory import Topology
from biojax.core.errors import AnalysisError


@dataclasses.dataclass(frozen=True)
class Selection:
    """Criteria (AND across fields, OR within a field); ``None`` means "any"."""

    indices: tuple[int, ...] | None = None
    elements: tuple[str, ...] | None = None
    names: tuple[str, ...] | None = None
    resnames: tuple[str, ...] | None = None
    resids: tuple[int, ...] | None = None

    def describe(self) -> str:
        parts = [f"{f.name}={list(getattr(self, f.name))}" for f in dataclasses.fields(self)
                 if getattr(self, f.name) is not None]
        return ", ".join(parts) or "all atoms"


def select(topology: Topology | None, n_atoms: int, selection: Selection | None = None,
           **criteria: Sequence) -> np.ndarray:
    """Sorted int array of the atom indices matching ``selection`` (or keyword criteria).

    ``topology`` may be None when only ``indices`` are used. Raises AnalysisError if the
    selection matches no atom, an index is out of range, or labels are needed but absent.
    """
    if selection is None:
        selection = Selection(**{k: tuple(v) for k, v in criteria.items() if v is not None})
    mask = np.ones(n_atoms, dtype=bool)
    if selection.indices is not None:
        idx = np.asarray(selection.indices, dtype=int)
        bad = idx[(idx < 0) | (idx >= n_atoms)]
        if bad.size:
            raise AnalysisError(f"selection indices {bad.tolist()} out of range for "
                                f"{n_atoms} atoms")
        m = np.zeros(n_atoms, dtype=bool)
        m[idx] = True
        mask &= m
    label_fields = {"elements": "elements", "names": "names", "resnames": "resnames",
                    "resids": "resids"}
    for field, attr in label_fields.items():
        wanted = getattr(selection, field)
        if wanted is None:
            continue
        if topology is None:
            raise AnalysisError(f"selection by {field} needs a topology (e.g. a PDB file); "
                                f"only 'indices' work without one")
        values = np.asarray(getattr(topology, attr))
        if field in ("elements", "names", "resnames"):
            values = np.char.upper(values.astype(str))
            wanted = [str(w).upper() for w in wanted]
        mask &= np.isin(values, np.asarray(wanted))
    out = np.flatnonzero(mask)
    if out.size == 0:
        raise AnalysisError(f"selection ({selection.describe()}) matches no atom "
                            f"(of {n_atoms})")
    return out


def _residue_table(topology: Topology):
    """Ordered residues as (chain, resid, resname, {atom name: index})."""
    residues: dict[tuple[int, int], dict] = {}
    for i, (ch, rid, rn, name) in enumerate(zip(topology.chains, topology.resids,
                                                 topology.resnames, topology.names)):
        entry = residues.setdefault((ch, rid), {"resname": rn, "atoms": {}})
        entry["atoms"].setdefault(name.upper(), i)
    return [(k[0], k[1], v["resname"], v["atoms"]) for k, v in residues.items()]


_CHI1_GAMMA = ("CG", "CG1", "OG", "OG1", "SG")


def backbone_dihedrals(topology: Topology, kinds: Sequence[str] = ("phi", "psi")
                       ) -> tuple[np.ndarray, list[str]]:
    """Atom quadruples (n, 4) and labels for backbone φ/ψ (and side-chain χ1) angles.

    φ(i) = C(i-1)-N(i)-CA(i)-C(i), ψ(i) = N(i)-CA(i)-C(i)-N(i+1),
    χ1(i) = N-CA-CB-(CG|CG1|OG|OG1|SG). Residues are consecutive within a chain.
    Labels are ``phi_<resname><resid>`` etc. Raises AnalysisError if none is found.
    """
    unknown = sorted(set(kinds) - {"phi", "psi", "chi1"})
    if unknown:
        raise AnalysisError(f"unknown backbone dihedral(s) {unknown}; valid: phi, psi, chi1")
    res = _residue_table(topology)
    quads, labels = [], []
    for kind in kinds:
        for j, (ch, rid, rn, atoms) in enumerate(res):
            prev = res[j - 1] if j > 0 and res[j - 1][0] == ch else None
            nxt = res[j + 1] if j + 1 < len(res) and res[j + 1][0] == ch else None
            names = None
            if kind == "phi" and prev is not None:
                names = [(prev, "C"), (res[j], "N"), (res[j], "CA"), (res[j], "C")]
            elif kind == "psi" and nxt is not None:
                names = [(res[j], "N"), (res[j], "CA"), (res[j], "C"), (nxt, "N")]
            elif kind == "chi1":
                gamma = next((g for g in _CHI1_GAMMA if g in atoms), None)
                if gamma is not None:
                    names = [(res[j], "N"), (res[j], "CA"), (res[j], "CB"), (res[j], gamma)]
            if names is None or any(n not in r[3] for r, n in names):
                continue
            quads.append([r[3][n] for r, n in names])
            labels.append(f"{kind}_{rn}{rid}")
    if not quads:
        raise AnalysisError(f"no {'/'.join(kinds)} dihedral found in topology "
                            f"{topology.source} (need atoms named C, N, CA in consecutive "
                            f"residues)")
    return np.asarray(quads, dtype=int), labels
